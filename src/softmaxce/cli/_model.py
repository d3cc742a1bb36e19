"""The commands' side of `SoftmaxClassifier`: build one, train it epoch by epoch with a progress
bar, load a saved one, predict a chunk of rows at a time, and the log loss of its predictions."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ._data import DataError, Table, first_line, short

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..classifier import SoftmaxClassifier

__all__ = [
    "check_features",
    "fit_epochs",
    "load_model",
    "log_loss",
    "logits",
    "new_classifier",
    "predict_proba",
]

PREDICT_CHUNK = 65536  # rows per predict_proba call, so memory stays bounded on big files
_BAR = {"unit": " samples", "unit_scale": True, "leave": False, "dynamic_ncols": True, "mininterval": 0.2}
_VALIDATION_CHUNK = 8192  # the same while training: the network's activations for 8192 rows, not all


def new_classifier(
    *,
    hidden: tuple[int, ...],
    batch_size: int,
    lr: float,
    seed: int,
    label_smoothing: float,
    class_weight: dict[Any, float] | None,
) -> SoftmaxClassifier:
    """A ReLU network trained by Adam, with no early stopping (the commands count the epochs)."""
    from ..classifier import SoftmaxClassifier

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


def fit_epochs(
    model: SoftmaxClassifier,
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    *,
    rows: np.ndarray | None = None,
    epochs: int,
    batch_size: int,
    seed: int,
    quiet: bool,
    desc: str,
) -> list[dict[str, Any]]:
    """Trains epoch by epoch with partial_fit on shuffled chunks, with a tqdm bar (samples/s) and one
    line per epoch: training loss (mean of the mini-batch losses) and validation loss / accuracy.

    The training set is X[rows], y[rows] (rows: default all, in order), read a chunk at a time, so
    it is never copied whole. Returns one dict per epoch: epoch, train_loss, val_loss,
    val_accuracy, seconds, samples_per_s.
    """
    from tqdm.auto import tqdm

    widths = [X.shape[1], *getattr(model, "hidden_layer_sizes", ())]
    rows = np.arange(len(y)) if rows is None else rows
    n = len(rows)
    chunk = max(batch_size, min(n, batch_size * 16))  # rows per partial_fit call: a few bar updates per epoch
    bounds = list(range(0, n, chunk)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < batch_size:
        del bounds[-2]  # a short tail joins the previous chunk
    rng = np.random.default_rng(seed)
    history = []
    bar = tqdm(total=epochs * n, desc=desc, disable=quiet, **_BAR)
    with bar, _small_batch_threads(batch_size * max(widths)), _interrupt_between_steps() as check_interrupt:
        for epoch in range(1, epochs + 1):
            t = time.perf_counter()
            order = rows[rng.permutation(n)]
            train_loss = _one_epoch(model, X, y, classes, order, bounds, bar, check_interrupt)
            seconds = time.perf_counter() - t
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
                from sklearn.metrics import accuracy_score

                P = predict_proba(model, X_val, chunk=_VALIDATION_CHUNK)  # (n_val, k)
                h["val_loss"] = log_loss(np.searchsorted(model.classes_, y_val), P)
                h["val_accuracy"] = float(accuracy_score(y_val, model.classes_[np.argmax(P, axis=1)]))
                line += f"  val_loss {h['val_loss']:.4f}  val_acc {h['val_accuracy']:.4f}"
                bar.set_postfix(loss=f"{train_loss:.4f}", val_acc=f"{h['val_accuracy']:.4f}", refresh=False)
            else:
                bar.set_postfix(loss=f"{train_loss:.4f}", refresh=False)
            line += f"  ({n / max(seconds, 1e-9):,.0f} samples/s)"
            history.append(h)
            if not quiet:
                bar.write(line)
            check_interrupt()
    return history


@contextlib.contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], None]]:
    """While training, Ctrl-C (SIGINT) only sets a flag, and the loop raises KeyboardInterrupt at its
    next check (after each partial_fit chunk and each epoch). Python's own handler raises it wherever
    the main thread happens to be, and raised inside a finalizer (a __del__ or a weakref callback that
    runs during training) it is printed and dropped, and training goes on. Only where Python's own
    handler is in place: outside the main thread (where no handler can be set), in a process that
    ignores SIGINT (a background job, nohup) or under another handler, nothing changes."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: None
        return
    received: list[int] = []

    def check() -> None:
        if received:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
    check()  # a Ctrl-C after the last check still interrupts the command


def _one_epoch(
    model: SoftmaxClassifier,
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    order: np.ndarray,
    bounds: list[int],
    bar: tqdm,
    check_interrupt: Callable[[], None],
) -> float:
    """One pass over the rows X[order]; the mean training loss of its mini-batches."""
    loss_sum = 0.0
    loss_rows = 0
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[start:stop]
        before = len(getattr(model, "loss_curve_", []) or [])
        with warnings.catch_warnings():  # fewer rows than --batch-size: the model clips the batch
            warnings.filterwarnings("ignore", message="batch_size=", category=UserWarning)
            model.partial_fit(X[idx], y[idx], classes=classes)
        curve = getattr(model, "loss_curve_", None) or []
        if len(curve) > before:
            loss_sum += float(curve[-1]) * len(idx)
            loss_rows += len(idx)
        bar.update(len(idx))
        check_interrupt()
    if loss_rows == len(order):
        return loss_sum / len(order)
    # the model does not report its mini-batch losses: measure on the training data
    return log_loss(np.searchsorted(model.classes_, y[order]), predict_proba(model, X[order]))


@contextlib.contextmanager
def _small_batch_threads(work: int, threshold: int = 1 << 17) -> Iterator[None]:
    """One thread (numba kernels and BLAS) while training on small mini-batches: waking a thread pool
    for a 32 x 10 batch costs more than the work itself, several times over on a busy machine."""
    if work >= threshold:
        yield
        return
    from threadpoolctl import threadpool_limits

    from .._threads import get_num_threads, set_num_threads

    before = get_num_threads()
    set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        set_num_threads(before)


def predict_proba(model: SoftmaxClassifier, X: np.ndarray, *, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """The class probabilities (n, k) of X, `chunk` rows at a time."""
    if len(X) <= chunk:
        return np.asarray(model.predict_proba(X))
    return np.concatenate([model.predict_proba(X[s : s + chunk]) for s in range(0, len(X), chunk)])


def log_loss(y_idx: np.ndarray, proba: np.ndarray) -> float:
    """sklearn.metrics.log_loss: the mean of -ln p(true class), for class indices y_idx (n,)."""
    from sklearn.metrics import log_loss as sk_log_loss

    labels = np.arange(proba.shape[1])
    if "y_proba" in inspect.signature(sk_log_loss).parameters:  # scikit-learn >= 1.9
        return float(sk_log_loss(y_idx, y_proba=proba, labels=labels))
    return float(sk_log_loss(y_idx, proba, labels=labels))


def logits(model: SoftmaxClassifier, X: np.ndarray) -> np.ndarray:
    """The network's output-layer logits z for X (decision_function), as float64 (N, C)."""
    z = np.asarray(model.decision_function(X), dtype=np.float64)
    return z if z.ndim == 2 else np.stack([-z / 2, z / 2], axis=1)


def load_model(path: str) -> SoftmaxClassifier:
    """A saved model, or DataError naming the file."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such model file")
    from ..classifier import ModelFileError, SoftmaxClassifier

    try:
        return SoftmaxClassifier.load(path)
    except (ModelFileError, ValueError, OSError, KeyError, EOFError) as e:
        raise DataError(f"{path}: cannot load the model ({first_line(e)})") from None


def check_features(model: SoftmaxClassifier, table: Table) -> None:
    """DataError unless the table has as many feature columns as the model was trained on."""
    d = table.features.shape[1]
    expected = int(model.n_features_in_)
    if d != expected:
        raise DataError(
            f"{table.path}: {table.columns_at}: {d} feature columns ({short(table.feature_names, 6)}), "
            f"but the model was trained on {expected}"
        )
