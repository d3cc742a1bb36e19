"""The `softmaxce` command-line tool: demo, train, predict, evaluate, gradcheck.

Built on click (commands and options), tqdm (progress bars, on stderr) and matplotlib (PNG plots,
Agg canvas). Data loading lives in `_cli_data` and plotting in `_cli_plots`; the numerics come from
the public library (`softmaxce.cross_entropy_and_grad`, the fused head, `SoftmaxClassifier`).

Exit status: 0 on success, 2 on bad usage or bad data (one line on stderr naming the file, row and
column; never a traceback), 1 when `gradcheck` finds an error above its tolerance. Output files are
written to a temporary name in the same directory and renamed into place, so they are never half
written.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

import click
import numpy as np

from . import __version__
from ._api import cross_entropy_and_grad
from ._atomic import atomic_path
from ._cli_data import DataError, Table, load_table, parse_labels

__all__ = ["main"]

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_PREDICT_CHUNK = 65536  # rows per predict_proba call, so memory stays bounded on big files


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _one_line_errors(fn: Callable) -> Callable:
    """Turns DataError into `error: <one line>` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DataError as e:
            _fail(str(e).splitlines()[0] if str(e) else "bad data")

    return wrapper


def _quiet_option(fn: Callable) -> Callable:
    return click.option(
        "-q", "--quiet", is_flag=True, help="No progress bars or progress lines; errors still go to stderr."
    )(fn)


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="softmaxce")
def main() -> None:
    """softmaxce: exact, fast softmax cross-entropy (loss and gradient a - y), and a classifier built on it.

    \b
    Examples:
      softmaxce demo                                  # 1-minute tour, no download
      softmaxce train data.csv --target label --out model.npz --plots plots/
      softmaxce predict model.npz new.csv --proba --out predictions.csv
      softmaxce evaluate model.npz test.csv --target label
      softmaxce gradcheck --classes 10 --batch 8

    Run `softmaxce COMMAND --help` for the options of each command.
    """


# ============================================================================================ demo


@main.command(context_settings=_CONTEXT)
@click.option(
    "--out-dir",
    default="softmaxce-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the loss-curve and confusion-matrix PNGs go.",
)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1), help="Training epochs.")
@click.option(
    "--speed-size",
    default="4096x32768",
    show_default=True,
    metavar="ROWSxCLASSES",
    help="Shape of the float32 batch timed for speed; 0 skips the timing.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (split, initialization).")
@_quiet_option
@_one_line_errors
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
    say = _sayer(quiet)
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
    model = _new_classifier(hidden=hidden, batch_size=32, lr=2e-3, seed=seed, label_smoothing=0.0, class_weight=None)
    classes = np.unique(y)
    history = _fit_epochs(
        model, X_tr, y_tr, classes, X_val, y_val, epochs=epochs, batch_size=32, seed=seed, quiet=quiet, desc="digits"
    )
    test_acc = float(np.mean(model.predict(X_test) == y_test))
    say(f"   test accuracy: {click.style(f'{test_acc:.4f}', bold=True)} on {len(y_test)} unseen images")

    section("3", "The gradient a - y on a batch, against finite differences")
    logits = _logits(model, X_test[:32])
    _batch_gradcheck(logits, y_test[:32], say)

    if speed_shape[0] > 0:
        rows, cols = speed_shape
        section("4", f"Speed: loss + gradient of one {rows} x {cols} float32 batch")
        _speed(rows, cols, say)

    section("5", "Plots")
    from sklearn.metrics import confusion_matrix

    from ._cli_plots import save_confusion_matrix, save_loss_curve

    curve = save_loss_curve(
        os.path.join(out_dir, "loss_curve.png"),
        [h["train_loss"] for h in history],
        val_loss=[h["val_loss"] for h in history],
        val_accuracy=[h["val_accuracy"] for h in history],
        title="softmaxce demo: digits",
    )
    cm = confusion_matrix(y_test, model.predict(X_test), labels=classes)
    conf = save_confusion_matrix(
        os.path.join(out_dir, "confusion_matrix.png"),
        cm,
        [str(c) for c in classes],
        title=f"digits test set, accuracy {test_acc:.4f}",
    )
    click.echo(f"   loss curve:       {curve}")
    click.echo(f"   confusion matrix: {conf}")
    t_end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [t_end]
    parts = ", ".join(f"{num}: {end - t:.1f} s" for (num, t), end in zip(marks, ends, strict=True))
    say(f"\ndone in {t_end - t_start:.1f} s ({parts})")


def _worked_example(say) -> None:
    y = np.array([0.0, 1.0, 0.0])
    a = np.array([0.1, 0.6, 0.3])
    z = np.log(a)[None, :]  # logits whose softmax is a
    loss, grad = cross_entropy_and_grad(z, np.array([1]))
    fd = _central_difference(lambda zz: _reference_loss(zz, np.array([1])), z)
    say(f"   target y = {_vec(y, 0)}, prediction a = softmax(z) = {_vec(a, 1)}")
    say(f"   loss     L = -sum_i y_i ln a_i = -ln 0.6 = {float(loss):.4f}")
    say(f"   gradient dL/dz = a - y = {_vec(grad[0], 4)}")
    say(f"   finite differences     = {_vec(fd[0], 4)}   (max error {np.max(np.abs(fd - grad)):.1e})")
    ok = abs(float(loss) + math.log(0.6)) < 1e-12 and np.allclose(grad[0], a - y, atol=1e-12, rtol=0)
    if not ok or not np.allclose(fd, grad, atol=1e-9, rtol=0):
        raise click.ClickException("the worked example does not reproduce a - y")  # a broken build


def _batch_gradcheck(logits: np.ndarray, y: np.ndarray, say) -> None:
    n, k = logits.shape
    loss, grad = cross_entropy_and_grad(logits, y)  # reduction "mean": dL/dz = (a - y) / n
    a = np.exp(logits - logits.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    onehot = np.eye(k)[y]
    fd = _central_difference(lambda zz: _reference_loss(zz, y), logits)
    err_formula = float(np.max(np.abs(n * grad - (a - onehot))))
    err_fd = float(np.max(np.abs(grad - fd)))
    say(f"   {n} test images, logits of the trained network ({n} x {k}), mean loss {float(loss):.4f}")
    say(f"   max |n dL/dz - (a - y)|           = {err_formula:.1e}")
    say(f"   max |dL/dz - finite differences|  = {err_fd:.1e}   over {n * k} entries (float64, 4th order)")
    if err_formula > 1e-12 or err_fd > 1e-9:
        raise click.ClickException("the gradient on the batch disagrees with a - y")  # a broken build


def _speed(rows: int, cols: int, say) -> None:
    from ._threads import get_num_threads

    rng = np.random.default_rng(0)
    block = rng.standard_normal((min(rows, 256), cols), dtype=np.float32)  # random draws are slow: 256 rows,
    logits = np.empty((rows, cols), dtype=np.float32)  # tiled down the batch (the kernel's speed does not care)
    for start in range(0, rows, len(block)):
        logits[start : start + len(block)] = block[: rows - start]
    target = rng.integers(0, cols, rows)
    grad = np.empty_like(logits)
    cross_entropy_and_grad(logits[:2], target[:2], out=grad[:2])  # compile / load the kernel first
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        cross_entropy_and_grad(logits, target, out=grad)
        best = min(best, time.perf_counter() - t)
    gbytes = 2 * logits.nbytes / 1e9  # read the logits once, write the gradient once
    say(
        f"   {logits.nbytes / 2**20:.0f} MiB of logits: {best * 1e3:.1f} ms (best of 3, {get_num_threads()} threads)"
        f" = {gbytes / best:.1f} GB/s read + write, {rows / best:,.0f} rows/s"
    )


# ============================================================================================ train


@main.command(context_settings=_CONTEXT)
@click.argument("data", type=click.Path(dir_okay=False))
@click.option(
    "--target",
    required=True,
    metavar="COLUMN",
    help="The class label column (CSV header name; for .npz the key of the labels array, e.g. y).",
)
@click.option(
    "--hidden",
    default="128,64",
    show_default=True,
    metavar="SIZES",
    help="Hidden layer sizes, comma-separated; '' or 0 for plain softmax regression.",
)
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1), help="Passes over the training data.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Mini-batch size.")
@click.option(
    "--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate."
)
@click.option(
    "--label-smoothing",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Label smoothing eps: targets become (1 - eps) y + eps / C.",
)
@click.option(
    "--class-weight",
    type=click.Choice(["balanced"]),
    default=None,
    help="'balanced' weights class c by n / (n_classes * n_c).",
)
@click.option(
    "--val-fraction",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of rows held out (stratified) for per-epoch validation; 0 for none.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (split, shuffling, initialization).")
@click.option(
    "--standardize/--no-standardize",
    default=True,
    show_default=True,
    help="Train on standardized features; the scaling is folded into the first layer of the saved "
    "model, which therefore takes raw features.",
)
@click.option(
    "--out",
    "out_path",
    default="model.npz",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to save the trained model.",
)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False), help="Write per-epoch metrics as JSON.")
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Write loss_curve.png and confusion_matrix.png (validation set) into this directory.",
)
@_quiet_option
@_one_line_errors
def train(
    data,
    target,
    hidden,
    epochs,
    batch_size,
    lr,
    label_smoothing,
    class_weight,
    val_fraction,
    seed,
    standardize,
    out_path,
    metrics_path,
    plots_dir,
    quiet,
) -> None:
    """Train a classifier on DATA (CSV with a header row, or .npz) and save it.

    \b
    CSV: every column except --target is a numeric feature; rows are streamed.
    .npz: X = (n, d) features, the labels under the key named by --target
          (e.g. --target y), optional feature_names = d strings.

    \b
    Examples:
      softmaxce train iris.csv --target species
      softmaxce train data.csv --target label --hidden 256,128 --epochs 50 --lr 3e-4 \\
          --class-weight balanced --out model.npz --metrics metrics.json --plots plots/
      softmaxce train data.npz --target y --hidden 0      # softmax regression
    """
    hidden_sizes = _parse_hidden(hidden)
    say = _sayer(quiet)
    t0 = time.perf_counter()
    table = load_table(data, target=target, require_target=True, progress=not quiet)
    y = parse_labels(table.labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"{data}: column '{table.target}': only one class ({_plain(classes[0])!r}); need at least two")
    n, d = table.features.shape
    say(f"read {n:,} rows x {d} features, {len(classes)} classes from {data} in {time.perf_counter() - t0:.1f} s")

    X_tr, y_tr, X_val, y_val = _split(table.features, y, val_fraction, seed)
    mu = sd = None
    if standardize:
        mu = X_tr.mean(axis=0)
        sd = X_tr.std(axis=0)
        sd[sd == 0] = 1.0
        X_tr = (X_tr - mu) / sd
        X_val = (X_val - mu) / sd if X_val is not None else None
    weights = None
    if class_weight == "balanced":
        tr_classes, tr_counts = np.unique(y_tr, return_counts=True)
        weights = {c.item(): len(y_tr) / (len(classes) * cnt) for c, cnt in zip(tr_classes, tr_counts, strict=True)}
        for c in classes:  # a class absent from the training part keeps weight 1
            weights.setdefault(c.item(), 1.0)
    model = _new_classifier(
        hidden=hidden_sizes,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        label_smoothing=label_smoothing,
        class_weight=weights,
    )
    try:
        history = _fit_epochs(
            model,
            X_tr,
            y_tr,
            classes,
            X_val,
            y_val,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            quiet=quiet,
            desc=os.path.basename(data),
        )
    except ValueError as e:  # the estimator's own input checks: one line, exit 2, like every data error
        raise DataError(f"{data}: cannot train on this data ({str(e).splitlines()[0]})") from None
    if standardize:
        _fold_standardization(model, mu, sd, X_tr[:64], X_tr[:64] * sd + mu)

    with atomic_path(out_path) as tmp:
        model.save(tmp)
    last = history[-1]
    summary = (
        f"trained {len(history)} epochs in {sum(h['seconds'] for h in history):.1f} s; training loss "
        f"{last['train_loss']:.4f}"
    )
    if last.get("val_accuracy") is not None:
        summary += f", validation accuracy {last['val_accuracy']:.4f} ({len(y_val)} rows)"
    say(summary)
    say(f"model written to {out_path}")
    if metrics_path:
        metrics = {
            "data": data,
            "target": table.target,
            "rows": n,
            "features": d,
            "feature_names": table.feature_names,
            "classes": [c.item() for c in classes],
            "class_counts": [int(c) for c in counts],
            "train_rows": len(y_tr),
            "val_rows": 0 if y_val is None else len(y_val),
            "params": {
                "hidden": list(hidden_sizes),
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "label_smoothing": label_smoothing,
                "class_weight": class_weight,
                "val_fraction": val_fraction,
                "seed": seed,
                "standardize": standardize,
            },
            "epochs": history,
            "final": last,
            "model": out_path,
        }
        _write_json(metrics_path, metrics)
        say(f"metrics written to {metrics_path}")
    if plots_dir:
        from ._cli_plots import save_confusion_matrix, save_loss_curve

        has_val = y_val is not None
        curve = save_loss_curve(
            os.path.join(plots_dir, "loss_curve.png"),
            [h["train_loss"] for h in history],
            val_loss=[h["val_loss"] for h in history] if has_val else None,
            val_accuracy=[h["val_accuracy"] for h in history] if has_val else None,
            title=f"softmaxce train: {os.path.basename(data)}",
        )
        Xc, yc = (X_val, y_val) if has_val else (X_tr, y_tr)
        Xc_raw = Xc * sd + mu if standardize else Xc
        cm = _confusion(yc, _predict_labels(model, Xc_raw), classes)
        conf = save_confusion_matrix(
            os.path.join(plots_dir, "confusion_matrix.png"),
            cm,
            [str(c) for c in classes],
            title=f"{'validation' if has_val else 'training'} set",
        )
        say(f"plots written to {curve} and {conf}")


# ============================================================================================ predict


@main.command(context_settings=_CONTEXT)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--proba", is_flag=True, help="Also write the probability of every class (columns p_<class>).")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Write predictions here (CSV; .npz gives arrays 'prediction' and 'proba'); default stdout.",
)
@click.option("--target", metavar="COLUMN", help="A label column in DATA to leave out of the features, if present.")
@_quiet_option
@_one_line_errors
def predict(model_path, data, proba, out_path, target, quiet) -> None:
    """Predict the class of every row of DATA with a saved MODEL.

    DATA has the same feature columns as the training data (a target column, if any, named with
    --target, is ignored). Output: a CSV with a `prediction` column (and p_<class> columns with
    --proba), one row per input row, in order.

    \b
    Examples:
      softmaxce predict model.npz new.csv
      softmaxce predict model.npz new.csv --proba --out predictions.csv
      softmaxce predict model.npz test.csv --target label --out predictions.npz
    """
    model = _load_model(model_path)
    table = load_table(data, target=target, require_target=False, progress=not quiet)
    _check_features(model, table)
    labels, P = _predict_all(model, table.features, want_proba=proba)
    classes = model.classes_
    if out_path and out_path.lower().endswith(".npz"):
        with atomic_path(out_path) as tmp:
            arrays = {"prediction": labels}
            if proba:
                arrays["proba"] = P
                arrays["classes"] = classes
            np.savez(tmp, **arrays)
    else:
        header = ["prediction"] + ([f"p_{c}" for c in classes] if proba else [])

        def write(f):
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            for i in range(len(labels)):
                if proba:
                    w.writerow([labels[i]] + [f"{p:.6g}" for p in P[i]])
                else:
                    w.writerow([labels[i]])

        if out_path:
            with atomic_path(out_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                write(f)
        else:
            buf = io.StringIO()
            write(buf)
            click.echo(buf.getvalue(), nl=False)
    if out_path:
        _sayer(quiet)(f"{len(labels):,} predictions written to {out_path}")


# ============================================================================================ evaluate


@main.command(context_settings=_CONTEXT)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--target", required=True, metavar="COLUMN", help="The true class label column (or .npz key).")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False), help="Also write the metrics as JSON.")
@click.option(
    "--plots",
    "plots_dir",
    default="softmaxce-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for confusion_matrix.png.",
)
@click.option("--no-plots", is_flag=True, help="Do not write the confusion-matrix PNG.")
@_quiet_option
@_one_line_errors
def evaluate(model_path, data, target, metrics_path, plots_dir, no_plots, quiet) -> None:
    """Score a saved MODEL on labelled DATA: accuracy, log loss, per-class precision / recall / F1,
    and a confusion-matrix PNG.

    Log loss is the mean of -ln p(true class), the softmax cross-entropy of the model's logits.
    With --quiet only the summary line is printed.

    \b
    Examples:
      softmaxce evaluate model.npz test.csv --target label
      softmaxce evaluate model.npz test.npz --target y --metrics eval.json --plots plots/
    """
    model = _load_model(model_path)
    table = load_table(data, target=target, require_target=True, progress=not quiet)
    _check_features(model, table)
    classes = model.classes_
    index = {str(c): i for i, c in enumerate(classes)}
    y = parse_labels(table.labels)
    y_idx = np.empty(len(y), dtype=np.int64)
    for i, label in enumerate(y):
        j = index.get(str(label))
        if j is None:
            raise DataError(
                f"{table.where(i, table.target)}: unknown class {_plain(label)!r} (the model knows {_short(classes)})"
            )
        y_idx[i] = j
    logp = np.concatenate(
        [_log_proba(model, table.features[s : s + _PREDICT_CHUNK]) for s in range(0, len(y_idx), _PREDICT_CHUNK)]
    )  # (n, k) ln p
    pred_idx = np.argmax(logp, axis=1)
    n, k = len(y_idx), len(classes)
    accuracy = float(np.mean(pred_idx == y_idx))
    log_loss = float(-np.mean(logp[np.arange(n), y_idx]))  # mean of -ln p(true class)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_idx, pred_idx), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)

    click.echo(f"accuracy {accuracy:.4f}   log loss {log_loss:.4f}   ({n:,} rows, {k} classes)")
    if not quiet:
        width = max(5, max(len(str(c)) for c in classes))
        click.echo(f"{'class':>{width}}  precision  recall     f1  support")
        for i, c in enumerate(classes):
            click.echo(f"{c!s:>{width}}  {precision[i]:9.4f}  {recall[i]:6.4f}  {f1[i]:.4f}  {support[i]:7d}")
        present = support > 0
        click.echo(
            f"{'macro':>{width}}  {precision[present].mean():9.4f}  {recall[present].mean():6.4f}  "
            f"{f1[present].mean():.4f}  {n:7d}"
        )
    if not no_plots:
        from ._cli_plots import save_confusion_matrix

        png = save_confusion_matrix(
            os.path.join(plots_dir, "confusion_matrix.png"),
            cm,
            [str(c) for c in classes],
            title=f"{os.path.basename(data)}: accuracy {accuracy:.4f}",
        )
        _sayer(quiet)(f"confusion matrix written to {png}")
    if metrics_path:
        _write_json(
            metrics_path,
            {
                "model": model_path,
                "data": data,
                "rows": n,
                "accuracy": accuracy,
                "log_loss": log_loss,
                "classes": [c.item() for c in classes],
                "per_class": {
                    str(c): {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
                    for i, c in enumerate(classes)
                },
                "confusion_matrix": cm.tolist(),
            },
        )
        _sayer(quiet)(f"metrics written to {metrics_path}")


# ============================================================================================ gradcheck


@main.command(context_settings=_CONTEXT)
@click.option("--classes", default=10, show_default=True, type=click.IntRange(2), help="Number of classes C.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1), help="Number of positions N.")
@click.option("--features", default=6, show_default=True, type=click.IntRange(1), help="Input size D.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed of W, b, x and the targets.")
@click.option(
    "--dtype",
    type=click.Choice(["float64", "float32"]),
    default="float64",
    show_default=True,
    help="Precision of the analytic gradient (finite differences are always float64).",
)
@click.option("--reduction", type=click.Choice(["mean", "sum"]), default="mean", show_default=True)
@click.option("--label-smoothing", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--max-entries",
    default=400,
    show_default=True,
    type=click.IntRange(1),
    help="Entries checked per tensor (a random sample when the tensor is larger).",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Largest allowed max|error| / max|gradient| (default 1e-7 for float64, 1e-5 for float32).",
)
@_quiet_option
def gradcheck(classes, batch, features, seed, dtype, reduction, label_smoothing, max_entries, tol, quiet) -> None:
    """Check the analytic gradient of a softmax layer z = W x + b against finite differences.

    The loss is the softmax cross-entropy of z; its analytic gradients are dL/dz = a - y (scaled
    by 1/N for --reduction mean), dL/dW = dz^T x, dL/db = sum_n dz, dL/dx = dz W. Each is compared
    with 4th-order central finite differences of the loss in float64; the fused head
    (`linear_cross_entropy_and_grad`, which never forms the logits) is checked the same way. Prints
    a table of max errors and exits with status 1 when any error exceeds --tol.

    \b
    Examples:
      softmaxce gradcheck
      softmaxce gradcheck --classes 1000 --batch 32 --features 16 --seed 3
      softmaxce gradcheck --dtype float32 --label-smoothing 0.1
    """
    tol = tol if tol is not None else (1e-7 if dtype == "float64" else 1e-5)
    rows = _layer_gradcheck(classes, batch, features, seed, np.dtype(dtype), reduction, label_smoothing, max_entries)
    if not quiet:
        click.echo(
            f"softmax layer z = W x + b: N={batch} positions, D={features} features, C={classes} classes, "
            f"{dtype} analytic gradient, reduction={reduction}, label_smoothing={label_smoothing}"
        )
        click.echo(
            f"{'quantity':<18}{'shape':<14}{'checked':>8}{'max|ours-ref|':>18}{'max|ref|':>11}{'scaled':>10}  status"
        )
        click.echo("(ref: a float64 NumPy loss written from the math, and its 4th-order central finite differences)")
    worst = 0.0
    for r in rows:
        scaled = r["max_err"] / max(r["max_fd"], 1e-300)
        worst = max(worst, scaled)
        if not quiet:
            ok = click.style("ok", fg="green") if scaled <= tol else click.style("FAIL", fg="red", bold=True)
            click.echo(
                f"{r['name']:<18}{str(r['shape']):<14}{r['checked']:>8}{r['max_err']:>18.2e}"
                f"{r['max_fd']:>11.2e}{scaled:>10.1e}  {ok}"
            )
    if worst > tol:
        click.echo(f"FAILED: largest scaled error {worst:.1e} exceeds the tolerance {tol:.0e}", err=True)
        sys.exit(1)
    click.echo(f"passed: largest scaled error {worst:.1e} <= tolerance {tol:.0e}")


def _layer_gradcheck(C, N, D, seed, dtype, reduction, eps, max_entries) -> list[dict]:
    """Analytic gradients of CE(W x + b, y) (plain and fused head) vs float64 finite differences."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((C, D)) / math.sqrt(D)  # (C, D)
    b = 0.1 * rng.standard_normal(C)  # (C,)
    x = rng.standard_normal((N, D))  # (N, D)
    y = rng.integers(0, C, N)  # (N,)
    opts = {"reduction": reduction, "label_smoothing": eps}

    def loss64(W_, b_, x_):
        return _reference_loss(x_ @ W_.T + b_, y, **opts)

    z = x @ W.T + b  # (N, C)
    loss, dz = cross_entropy_and_grad(z.astype(dtype), y, **opts)
    loss_ref = loss64(W, b, x)
    dz = dz.astype(np.float64)  # dL/dz = a - y (over N for "mean")
    analytic = {"dL/dz": dz, "dL/dW": dz.T @ x, "dL/db": dz.sum(axis=0), "dL/dx": dz @ W}
    fds = {
        "dL/dz": lambda idx: _fd_entry(lambda zz: _reference_loss(zz, y, **opts), z, idx),
        "dL/dW": lambda idx: _fd_entry(lambda WW: loss64(WW, b, x), W, idx),
        "dL/db": lambda idx: _fd_entry(lambda bb: loss64(W, bb, x), b, idx),
        "dL/dx": lambda idx: _fd_entry(lambda xx: loss64(W, b, xx), x, idx),
    }
    samples = {name: _sample_indices(g.shape, max_entries, rng) for name, g in analytic.items()}
    fd_values = {name: np.array([fds[name](idx) for idx in samples[name]]) for name in analytic}
    rows = [_err_row("loss L", (), np.array([float(loss)]), np.array([loss_ref]))]
    for name, g in analytic.items():
        got = np.array([g[idx] for idx in samples[name]])
        rows.append(_err_row(name, g.shape, got, fd_values[name]))
    try:
        from ._linear import linear_cross_entropy_and_grad
    except ImportError:  # the fused head is optional for this check
        return rows
    lin_loss, gx, gW, gb = linear_cross_entropy_and_grad(
        x.astype(dtype), W.astype(dtype), y, bias=b.astype(dtype), **opts
    )
    rows.append(_err_row("fused loss L", (), np.array([float(lin_loss)]), np.array([loss_ref])))
    for name, g in (("fused dL/dW", gW), ("fused dL/db", gb), ("fused dL/dx", gx)):
        key = name.split()[1]
        got = np.array([np.float64(g[idx]) for idx in samples[key]])
        rows.append(_err_row(name, g.shape, got, fd_values[key]))
    return rows


def _reference_loss(z, y, *, reduction: str = "mean", label_smoothing: float = 0.0) -> float:
    """Softmax cross-entropy in float64 NumPy, written from the math, independent of the kernels:
    ln a = z - lse(z);  l_n = (1 - eps) (-ln a_{n, y_n}) + (eps / C) sum_c (-ln a_{n, c})."""
    z = np.asarray(z, dtype=np.float64)  # (N, C)
    m = z.max(axis=1, keepdims=True)
    log_a = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    n, c = z.shape
    eps = label_smoothing
    per_row = -(1 - eps) * log_a[np.arange(n), y] - (eps / c) * log_a.sum(axis=1)
    return float(per_row.sum() / (n if reduction == "mean" else 1))


def _err_row(name, shape, got, fd) -> dict:
    return {
        "name": name,
        "shape": tuple(shape),
        "checked": len(fd),
        "max_err": float(np.max(np.abs(got - fd))),
        "max_fd": float(np.max(np.abs(fd))),
    }


def _sample_indices(shape, limit, rng) -> list[tuple]:
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= limit else np.sort(rng.choice(size, limit, replace=False))
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def _fd_entry(f: Callable[[np.ndarray], float], a: np.ndarray, idx: tuple, h: float = 1e-3) -> float:
    """4th-order central difference of f at a along entry idx, in float64 (error O(h^4))."""
    a = np.array(a, dtype=np.float64)  # a private copy: the caller's array is never touched
    a0 = a[idx]
    vals = []
    for step in (2 * h, h, -h, -2 * h):
        a[idx] = a0 + step
        vals.append(f(a))
    return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)


def _central_difference(f: Callable[[np.ndarray], float], a: np.ndarray) -> np.ndarray:
    """The finite-difference gradient of f at a, every entry (float64)."""
    out = np.empty(a.shape, dtype=np.float64)
    for idx in np.ndindex(a.shape):
        out[idx] = _fd_entry(f, a, idx)
    return out


# ============================================================================================ helpers


def _sayer(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    return lambda message: click.echo(message)


def _plain(value):
    """A NumPy scalar as the Python value it holds (so messages show 'yak', not np.str_('yak'))."""
    return value.item() if isinstance(value, np.generic) else value


def _vec(v, digits: int) -> str:
    return "[" + ", ".join(f"{float(x):.{digits}f}" for x in v) + "]"


def _short(items, limit: int = 10) -> str:
    items = [str(s) for s in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


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


def _parse_hidden(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "0", "()", "none"):
        return ()
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated layer sizes such as 128,64, got {text!r}", param_hint="--hidden"
        ) from None
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"layer sizes must be positive, got {text!r}", param_hint="--hidden")
    return sizes


def _new_classifier(*, hidden, batch_size, lr, seed, label_smoothing, class_weight):
    from ._classifier import SoftmaxClassifier

    return SoftmaxClassifier(
        hidden_layer_sizes=hidden,
        activation="relu",
        solver="adam",
        batch_size=batch_size,
        learning_rate_init=lr,
        random_state=seed,
        label_smoothing=label_smoothing,
        class_weight=class_weight,
        early_stopping=False,
        verbose=False,
    )


def _split(X, y, val_fraction, seed):
    """Stratified (when every class has 2+ rows) train / validation split; (X, y, None, None) for 0."""
    if val_fraction <= 0:
        return X, y, None, None
    from sklearn.model_selection import train_test_split

    n_val = max(1, int(round(val_fraction * len(y))))
    if n_val >= len(y):
        raise DataError(f"--val-fraction {val_fraction} leaves no training rows out of {len(y)}")
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and n_val >= len(counts) and len(y) - n_val >= len(counts) else None
    X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=n_val, random_state=seed, stratify=stratify)
    return X_tr, y_tr, X_val, y_val


def _fit_epochs(model, X_tr, y_tr, classes, X_val, y_val, *, epochs, batch_size, seed, quiet, desc) -> list[dict]:
    """Trains epoch by epoch with partial_fit on shuffled chunks, with a tqdm bar (samples/s) and one
    line per epoch: training loss (mean of the mini-batch losses) and validation loss / accuracy."""
    widths = [X_tr.shape[1], *getattr(model, "hidden_layer_sizes", ())]
    with _small_batch_threads(batch_size * max(widths)):
        return _fit_epochs_loop(
            model,
            X_tr,
            y_tr,
            classes,
            X_val,
            y_val,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            quiet=quiet,
            desc=desc,
        )


@contextlib.contextmanager
def _small_batch_threads(work: int, threshold: int = 1 << 17):
    """One thread (numba kernels and BLAS) while training on small mini-batches: waking a thread pool
    for a 32 x 10 batch costs more than the work itself, several times over on a busy machine."""
    if work >= threshold:
        yield
        return
    from threadpoolctl import threadpool_limits

    from ._threads import get_num_threads, set_num_threads

    before = get_num_threads()
    set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        set_num_threads(before)


def _fit_epochs_loop(model, X_tr, y_tr, classes, X_val, y_val, *, epochs, batch_size, seed, quiet, desc):
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    n = len(y_tr)
    chunk = max(batch_size, min(n, batch_size * 16))  # rows per partial_fit call: a few bar updates per epoch
    bounds = list(range(0, n, chunk)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < batch_size:
        del bounds[-2]  # a short tail joins the previous chunk
    history = []
    bar = tqdm(
        total=epochs * n,
        unit=" samples",
        unit_scale=True,
        desc=desc,
        disable=quiet,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.2,
    )
    try:
        for epoch in range(1, epochs + 1):
            t = time.perf_counter()
            perm = rng.permutation(n)
            loss_sum = 0.0
            loss_rows = 0
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
                idx = perm[start:stop]
                before = len(getattr(model, "loss_curve_", []) or [])
                with warnings.catch_warnings():  # fewer rows than --batch-size: the model clips the batch
                    warnings.filterwarnings("ignore", message="batch_size=", category=UserWarning)
                    model.partial_fit(X_tr[idx], y_tr[idx], classes=classes)
                curve = getattr(model, "loss_curve_", None) or []
                if len(curve) > before:
                    loss_sum += float(curve[-1]) * len(idx)
                    loss_rows += len(idx)
                bar.update(len(idx))
            seconds = time.perf_counter() - t
            if loss_rows == n:
                train_loss = loss_sum / n
            else:  # the model does not report its mini-batch losses: measure on the training data
                train_loss = _mean_log_loss(model, X_tr, y_tr)
            h = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": None,
                "val_accuracy": None,
                "seconds": seconds,
                "samples_per_s": n / seconds if seconds > 0 else None,
            }
            line = f"epoch {epoch:3d}/{epochs}  loss {train_loss:.4f}"
            if y_val is not None:
                logp = _log_proba(model, X_val)
                y_idx = np.searchsorted(model.classes_, y_val)
                h["val_loss"] = float(-np.mean(logp[np.arange(len(y_val)), y_idx]))
                h["val_accuracy"] = float(np.mean(np.argmax(logp, axis=1) == y_idx))
                line += f"  val_loss {h['val_loss']:.4f}  val_acc {h['val_accuracy']:.4f}"
                bar.set_postfix(loss=f"{train_loss:.4f}", val_acc=f"{h['val_accuracy']:.4f}", refresh=False)
            else:
                bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)
            line += f"  ({n / max(seconds, 1e-9):,.0f} samples/s)"
            history.append(h)
            if not quiet:
                bar.write(line)
    finally:
        bar.close()
    return history


def _log_proba(model, X) -> np.ndarray:
    if hasattr(model, "predict_log_proba"):
        return np.asarray(model.predict_log_proba(X), dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(model.predict_proba(X), dtype=np.float64))


def _mean_log_loss(model, X, y) -> float:
    logp = _log_proba(model, X)
    return float(-np.mean(logp[np.arange(len(y)), np.searchsorted(model.classes_, y)]))


def _logits(model, X) -> np.ndarray:
    """The network's output-layer logits z for X (decision_function), as float64 (N, C)."""
    z = np.asarray(model.decision_function(X), dtype=np.float64)
    return z if z.ndim == 2 else np.stack([-z / 2, z / 2], axis=1)


def _fold_standardization(model, mu, sd, X_scaled_probe, X_raw_probe) -> None:
    """Makes the model take raw features: with x' = (x - mu) / sd, the first layer
    x' @ W + b = x @ (W / sd[:, None]) + (b - (mu / sd) @ W)."""
    before = model.predict_proba(X_scaled_probe)
    W = np.array(model.coefs_[0], dtype=np.float64)  # (d, fan_out)
    b = np.array(model.intercepts_[0], dtype=np.float64)
    # in place: coefs_ / intercepts_ may be views of the model's flat parameter vector
    model.coefs_[0][...] = W / sd[:, None]
    model.intercepts_[0][...] = b - (mu / sd) @ W
    after = model.predict_proba(X_raw_probe)
    if not np.allclose(before, after, atol=1e-5):
        raise click.ClickException("internal error: folding the standardization into the model changed it")


def _load_model(path: str):
    if not os.path.exists(path):
        raise DataError(f"{path}: no such model file")
    from ._classifier import SoftmaxClassifier

    try:
        return SoftmaxClassifier.load(path)
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise DataError(
            f"{path}: cannot load the model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None


def _check_features(model, table: Table) -> None:
    d = table.features.shape[1]
    expected = int(model.n_features_in_)
    if d != expected:
        where = "line 1 (header)" if table.row_kind == "line" else "array 'X'"
        raise DataError(
            f"{table.path}: {where}: {d} feature columns ({_short(table.feature_names, 6)}), "
            f"but the model was trained on {expected}"
        )


def _predict_all(model, X, *, want_proba: bool):
    """Labels and (when asked, or always for argmax) probabilities in row chunks."""
    labels, probs = [], []
    for start in range(0, len(X), _PREDICT_CHUNK):
        P = np.asarray(model.predict_proba(X[start : start + _PREDICT_CHUNK]))
        labels.append(model.classes_[np.argmax(P, axis=1)])
        if want_proba:
            probs.append(P)
    return np.concatenate(labels), (np.concatenate(probs) if want_proba else None)


def _predict_labels(model, X) -> np.ndarray:
    return _predict_all(model, X, want_proba=False)[0]


def _confusion(y, pred, classes) -> np.ndarray:
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.searchsorted(classes, y), np.searchsorted(classes, pred)), 1)
    return cm


def _write_json(path: str, obj) -> None:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serializable: {type(o).__name__}")

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=default)
        f.write("\n")


if __name__ == "__main__":  # pragma: no cover
    main()
