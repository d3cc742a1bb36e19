"""`softmaxce demo`: a one-minute tour, no download: the worked example, a network trained on the
digits, the gradient a - y on its logits, the speed of one large batch, and two PNG plots."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import click
import numpy as np

from .. import cross_entropy_and_grad, get_num_threads
from ._app import CONTEXT, DIRECTORY, one_line_errors, quiet_option, sayer
from ._finite_diff import central_difference, reference_loss
from ._model import fit_epochs, logits, new_classifier

__all__ = ["demo"]


@click.command(context_settings=CONTEXT)
@click.option(
    "--out-dir", default="softmaxce-out", type=DIRECTORY, help="Where the loss-curve and confusion-matrix PNGs go."
)
@click.option("--epochs", default=30, type=click.IntRange(1), help="Training epochs.")
@click.option(
    "--speed-size",
    default="4096x32768",
    metavar="ROWSxCLASSES",
    help="Shape of the float32 batch timed for speed; 0 skips the timing.",
)
@click.option("--seed", default=0, type=int, help="Random seed (split, initialization).")
@quiet_option
@one_line_errors
def demo(out_dir: str, epochs: int, speed_size: str, seed: int, quiet: bool) -> None:
    """Train a small network on scikit-learn's digits and show the loss and gradient at work.

    No download and no arguments needed. It prints the seeds' worked example (y = [0, 1, 0],
    a = [0.1, 0.6, 0.3]: the loss -ln 0.6 and the gradient a - y, confirmed by finite differences),
    trains a network with a softmax cross-entropy head on the 8x8 digits (progress bar, per-epoch
    loss and validation accuracy), prints its test accuracy, checks the gradient a - y on a batch
    of its logits against finite differences, times one large loss + gradient batch, and writes a
    loss-curve PNG and a confusion-matrix PNG.

    \b
    Examples:
      softmaxce demo
      softmaxce demo --out-dir /tmp/demo --speed-size 1024x8192
      softmaxce demo --speed-size 0 --quiet
    """
    speed_shape = _parse_shape(speed_size, "--speed-size")
    t_start = time.perf_counter()
    say = sayer(quiet)
    marks: list[tuple[str, float]] = []  # (section, start time)

    def section(number: str, title: str) -> None:
        marks.append((number, time.perf_counter()))
        say(click.style(f"{'' if number == '1' else chr(10)}{number}. {title}", bold=True))

    section("1", "The seeds' worked example")
    _worked_example(say)

    section("2", "Training a network on the digits (sklearn.datasets.load_digits, no download)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = digits.data / 16.0  # pixels 0..16 -> 0..1
    y = digits.target
    X_trval, X_test, y_trval, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    X_tr, X_val, y_tr, y_val = train_test_split(X_trval, y_trval, test_size=0.1, random_state=seed, stratify=y_trval)
    hidden = (128, 64)
    say(
        f"   {len(X_tr)} training, {len(X_val)} validation, {len(X_test)} test images; 64 pixels -> "
        f"{' -> '.join(map(str, hidden))} (relu) -> 10 classes, softmax cross-entropy, adam"
    )
    model = new_classifier(hidden=hidden, batch_size=32, lr=2e-3, seed=seed, label_smoothing=0.0, class_weight=None)
    classes = np.unique(y)
    history = fit_epochs(
        model, X_tr, y_tr, classes, X_val, y_val, epochs=epochs, batch_size=32, seed=seed, quiet=quiet, desc="digits"
    )
    test_pred = model.predict(X_test)
    test_acc = float(np.mean(test_pred == y_test))
    say(f"   test accuracy: {click.style(f'{test_acc:.4f}', bold=True)} on {len(y_test)} unseen images")

    section("3", "The gradient a - y on a batch, against finite differences")
    _batch_gradcheck(logits(model, X_test[:32]), y_test[:32], say)

    if speed_shape[0] > 0:
        rows, cols = speed_shape
        section("4", f"Speed: loss + gradient of one {rows} x {cols} float32 batch")
        _speed(rows, cols, say)

    section("5", "Plots")
    from sklearn.metrics import confusion_matrix

    from ._plots import save_confusion_matrix, save_loss_curve

    curve = save_loss_curve(
        os.path.join(out_dir, "loss_curve.png"),
        [h["train_loss"] for h in history],
        val_loss=[h["val_loss"] for h in history],
        val_accuracy=[h["val_accuracy"] for h in history],
        title="softmaxce demo: digits",
    )
    conf = save_confusion_matrix(
        os.path.join(out_dir, "confusion_matrix.png"),
        confusion_matrix(y_test, test_pred, labels=classes),
        [str(c) for c in classes],
        title=f"digits test set, accuracy {test_acc:.4f}",
    )
    click.echo(f"   loss curve:       {curve}")
    click.echo(f"   confusion matrix: {conf}")
    t_end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [t_end]
    parts = ", ".join(f"{num}: {end - t:.1f} s" for (num, t), end in zip(marks, ends, strict=True))
    say(f"\ndone in {t_end - t_start:.1f} s ({parts})")


def _worked_example(say: Callable[[str], None]) -> None:
    y = np.array([0.0, 1.0, 0.0])
    a = np.array([0.1, 0.6, 0.3])
    z = np.log(a)[None, :]  # logits whose softmax is a
    loss, grad = cross_entropy_and_grad(z, np.array([1]))
    fd = central_difference(lambda zz: reference_loss(zz, np.array([1])), z)
    say(f"   target y = {_vec(y, 0)}, prediction a = softmax(z) = {_vec(a, 1)}")
    say(f"   loss     L = -sum_i y_i ln a_i = -ln 0.6 = {float(loss):.4f}")
    say(f"   gradient dL/dz = a - y = {_vec(grad[0], 4)}")
    say(f"   finite differences     = {_vec(fd[0], 4)}   (max error {np.max(np.abs(fd - grad)):.1e})")
    ok = abs(float(loss) + math.log(0.6)) < 1e-12 and np.allclose(grad[0], a - y, atol=1e-12, rtol=0)
    if not ok or not np.allclose(fd, grad, atol=1e-9, rtol=0):
        raise click.ClickException("the worked example does not reproduce a - y")  # a broken build


def _batch_gradcheck(z: np.ndarray, y: np.ndarray, say: Callable[[str], None]) -> None:
    n, k = z.shape
    loss, grad = cross_entropy_and_grad(z, y)  # reduction "mean": dL/dz = (a - y) / n
    a = np.exp(z - z.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    onehot = np.eye(k)[y]
    fd = central_difference(lambda zz: reference_loss(zz, y), z)
    err_formula = float(np.max(np.abs(n * grad - (a - onehot))))
    err_fd = float(np.max(np.abs(grad - fd)))
    say(f"   {n} test images, logits of the trained network ({n} x {k}), mean loss {float(loss):.4f}")
    say(f"   max |n dL/dz - (a - y)|           = {err_formula:.1e}")
    say(f"   max |dL/dz - finite differences|  = {err_fd:.1e}   over {n * k} entries (float64, 4th order)")
    if err_formula > 1e-12 or err_fd > 1e-9:
        raise click.ClickException("the gradient on the batch disagrees with a - y")  # a broken build


def _speed(rows: int, cols: int, say: Callable[[str], None]) -> None:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((min(rows, 256), cols), dtype=np.float32)  # random draws are slow: 256 rows,
    z = np.empty((rows, cols), dtype=np.float32)  # tiled down the batch (the kernel's speed does not care)
    for start in range(0, rows, len(block)):
        z[start : start + len(block)] = block[: rows - start]
    target = rng.integers(0, cols, rows)
    grad = np.empty_like(z)
    cross_entropy_and_grad(z[:2], target[:2], out=grad[:2])  # compile / load the kernel first
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        cross_entropy_and_grad(z, target, out=grad)
        best = min(best, time.perf_counter() - t)
    gbytes = 2 * z.nbytes / 1e9  # read the logits once, write the gradient once
    say(
        f"   {z.nbytes / 2**20:.0f} MiB of logits: {best * 1e3:.1f} ms (best of 3, {get_num_threads()} threads)"
        f" = {gbytes / best:.1f} GB/s read + write, {rows / best:,.0f} rows/s"
    )


def _vec(v: np.ndarray, digits: int) -> str:
    return "[" + ", ".join(f"{float(x):.{digits}f}" for x in v) + "]"


def _parse_shape(text: str, option: str) -> tuple[int, int]:
    text = text.strip().lower()
    if text in ("0", "", "none", "off"):
        return (0, 0)
    try:
        rows, cols = (int(s) for s in text.split("x"))
    except ValueError:
        raise click.BadParameter(f"expected ROWSxCLASSES such as 4096x32768, got {text!r}", param_hint=option) from None
    if rows < 1 or cols < 2:
        raise click.BadParameter(f"need at least 1 row and 2 classes, got {text!r}", param_hint=option)
    return rows, cols
