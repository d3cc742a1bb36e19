"""`softmaxce train`: fit a SoftmaxClassifier on a CSV, Parquet or .npz file and save it."""

from __future__ import annotations

import os
import time
from typing import Any

import click
import numpy as np

from ..classifier._atomic import atomic_path
from ._app import CONTEXT, DIRECTORY, FILE, one_line_errors, plain, quiet_option, sayer, write_json
from ._data import DataError, load_table
from ._model import fit_epochs, new_classifier

__all__ = ["train"]


@click.command(context_settings=CONTEXT)
@click.argument("data", type=FILE)
@click.option(
    "--target",
    required=True,
    metavar="COLUMN",
    help="The class label column (CSV header or Parquet column name; for .npz the key of the labels array, e.g. y).",
)
@click.option(
    "--hidden",
    default="128,64",
    metavar="SIZES",
    help="Hidden layer sizes, comma-separated; '' or 0 for plain softmax regression.",
)
@click.option("--epochs", default=20, type=click.IntRange(1), help="Passes over the training data.")
@click.option("--batch-size", default=64, type=click.IntRange(1), help="Mini-batch size.")
@click.option("--lr", default=1e-3, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option(
    "--label-smoothing",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Label smoothing eps: targets become (1 - eps) y + eps / C.",
)
@click.option(
    "--class-weight", type=click.Choice(["balanced"]), help="'balanced' weights class c by n / (n_classes * n_c)."
)
@click.option(
    "--val-fraction",
    default=0.1,
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of rows held out (stratified) for per-epoch validation; 0 for none.",
)
@click.option("--seed", default=0, type=int, help="Random seed (split, shuffling, initialization).")
@click.option(
    "--standardize/--no-standardize",
    default=True,
    help="Train on standardized features; the scaling is folded into the first layer of the saved "
    "model, which therefore takes raw features.",
)
@click.option("--out", "out_path", default="model.npz", type=FILE, help="Where to save the trained model.")
@click.option("--metrics", "metrics_path", type=FILE, help="Write per-epoch metrics as JSON.")
@click.option(
    "--plots",
    "plots_dir",
    type=DIRECTORY,
    help="Write loss_curve.png and confusion_matrix.png (validation set) into this directory.",
)
@quiet_option
@one_line_errors
def train(
    data: str,
    target: str,
    hidden: str,
    epochs: int,
    batch_size: int,
    lr: float,
    label_smoothing: float,
    class_weight: str | None,
    val_fraction: float,
    seed: int,
    standardize: bool,
    out_path: str,
    metrics_path: str | None,
    plots_dir: str | None,
    quiet: bool,
) -> None:
    """Train a classifier on DATA (CSV with a header row, Parquet, or .npz) and save it.

    \b
    CSV, Parquet: every column except --target is a numeric feature.
    .npz: X = (n, d) features, the labels under the key named by --target
          (e.g. --target y), optional feature_names = d strings.

    \b
    Examples:
      softmaxce train iris.csv --target species
      softmaxce train data.csv --target label --hidden 256,128 --epochs 50 --lr 3e-4 \\
          --class-weight balanced --out model.npz --metrics metrics.json --plots plots/
      softmaxce train data.parquet --target label --val-fraction 0.2
      softmaxce train data.npz --target y --hidden 0      # softmax regression
    """
    hidden_sizes = _parse_hidden(hidden)
    say = sayer(quiet)
    t0 = time.perf_counter()
    table = load_table(data, target=target, require_target=True, progress=not quiet)
    X, y = table.features, table.labels  # X: (n, d), this command's own array
    feature_names, target = table.feature_names, table.target
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"{data}: column '{target}': only one class ({plain(classes[0])!r}); need at least two")
    n, d = X.shape
    say(f"read {n:,} rows x {d} features, {len(classes)} classes from {data} in {time.perf_counter() - t0:.1f} s")

    rows, val_rows = _split(y, val_fraction, seed)  # the training rows are X[rows], never copied whole
    y_tr = y if rows is None else y[rows]
    mu = sd = None
    if standardize:
        mu, sd = _mean_std(X, rows)
        sd[sd == 0] = 1.0
        X -= mu  # in place, every row: x' = (x - mu) / sd
        X /= sd
    X_val, y_val = (None, None) if val_rows is None else (X[val_rows], y[val_rows])
    probe = X[:64] if rows is None else X[rows[:64]]  # training rows, to check the folding below
    model = new_classifier(
        hidden=hidden_sizes,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        label_smoothing=label_smoothing,
        class_weight=_balanced_weights(y_tr, classes) if class_weight == "balanced" else None,
    )
    try:
        history = fit_epochs(
            model,
            X,
            y,
            classes,
            X_val,
            y_val,
            rows=rows,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            quiet=quiet,
            desc=os.path.basename(data),
        )
    except ValueError as e:  # the estimator's own input checks: one line, exit 2, like every data error
        raise DataError(f"{data}: cannot train on this data ({str(e).splitlines()[0]})") from None
    if standardize:
        _fold_standardization(model, mu, sd, probe, probe * sd + mu)

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
            "target": target,
            "rows": n,
            "features": d,
            "feature_names": feature_names,
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
        write_json(metrics_path, metrics)
        say(f"metrics written to {metrics_path}")
    if plots_dir:
        Xc, yc = (X_val, y_val) if y_val is not None else (X, y)  # no validation rows: every row trains
        Xc_raw = Xc * sd + mu if standardize else Xc
        say(_plot(plots_dir, history, model.predict(Xc_raw), yc, classes, data, has_val=y_val is not None))


def _plot(
    plots_dir: str,
    history: list[dict[str, Any]],
    pred: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    data: str,
    *,
    has_val: bool,
) -> str:
    """Writes the loss curve and the confusion matrix of (y, pred); the line that says where."""
    from sklearn.metrics import confusion_matrix

    from ._plots import save_confusion_matrix, save_loss_curve

    curve = save_loss_curve(
        os.path.join(plots_dir, "loss_curve.png"),
        [h["train_loss"] for h in history],
        val_loss=[h["val_loss"] for h in history] if has_val else None,
        val_accuracy=[h["val_accuracy"] for h in history] if has_val else None,
        title=f"softmaxce train: {os.path.basename(data)}",
    )
    conf = save_confusion_matrix(
        os.path.join(plots_dir, "confusion_matrix.png"),
        confusion_matrix(y, pred, labels=classes),
        [str(c) for c in classes],
        title=f"{'validation' if has_val else 'training'} set",
    )
    return f"plots written to {curve} and {conf}"


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


def _split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Stratified (when every class has 2+ rows) train / validation split of the rows: (training
    rows, validation rows), in train_test_split's order; (None, None) (every row trains) for 0."""
    if val_fraction <= 0:
        return None, None
    from sklearn.model_selection import train_test_split

    n_val = max(1, int(round(val_fraction * len(y))))
    if n_val >= len(y):
        raise DataError(f"--val-fraction {val_fraction} leaves no training rows out of {len(y)}")
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and n_val >= len(counts) and len(y) - n_val >= len(counts) else None
    rows, val_rows = train_test_split(np.arange(len(y)), test_size=n_val, random_state=seed, stratify=stratify)
    return rows, val_rows


def _mean_std(X: np.ndarray, rows: np.ndarray | None, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """X[rows].mean(axis=0) and X[rows].std(axis=0) (rows None: all of X), bit for bit, but without
    a copy of X[rows] or of X - mean: a chunk of rows at a time.

    NumPy sums a C-contiguous (n, d > 1) array over axis 0 row after row, so a sum carried from chunk
    to chunk (as the first row of the next chunk) rounds exactly as the one sum does. One column
    (summed pairwise) and small parts are copied instead.
    """
    n, d = (X.shape[0] if rows is None else len(rows)), X.shape[1]
    if d == 1 or n * d <= 1 << 20:
        part = X if rows is None else X[rows]
        return part.mean(axis=0), part.std(axis=0)
    buf = np.empty((chunk + 1, d), dtype=np.float64)  # row 0: the sum so far; rows 1..: the next chunk

    def running_sum(center: np.ndarray | None) -> np.ndarray:
        """sum_i x_i, or with a center sum_i (x_i - center)^2, row after row."""
        total = None
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            part = buf[1 : m + 1]
            if rows is None:
                part[...] = X[s : s + m]
            else:
                np.take(X, rows[s : s + m], axis=0, out=part)
            if center is not None:
                part -= center
                part *= part
            if total is not None:
                buf[0] = total
            total = np.add.reduce(part if total is None else buf[: m + 1], axis=0)
        return total

    mu = running_sum(None) / n  # mean = sum_i x_i / n
    var = running_sum(mu) / n  # var = sum_i (x_i - mean)^2 / n
    return mu, np.sqrt(var)


def _balanced_weights(y_tr: np.ndarray, classes: np.ndarray) -> dict[Any, float]:
    """Class c weighs n / (n_classes * n_c) over the training rows; a class absent from them, 1."""
    tr_classes, tr_counts = np.unique(y_tr, return_counts=True)
    weights = {c.item(): len(y_tr) / (len(classes) * cnt) for c, cnt in zip(tr_classes, tr_counts, strict=True)}
    for c in classes:
        weights.setdefault(c.item(), 1.0)
    return weights


def _fold_standardization(model: Any, mu: np.ndarray, sd: np.ndarray, X_scaled: np.ndarray, X_raw: np.ndarray) -> None:
    """Makes the model take raw features: with x' = (x - mu) / sd, the first layer
    x' @ W + b = x @ (W / sd[:, None]) + (b - (mu / sd) @ W)."""
    before = model.predict_proba(X_scaled)
    W = np.array(model.coefs_[0], dtype=np.float64)  # (d, fan_out)
    b = np.array(model.intercepts_[0], dtype=np.float64)
    # in place: coefs_ / intercepts_ may be views of the model's flat parameter vector
    model.coefs_[0][...] = W / sd[:, None]
    model.intercepts_[0][...] = b - (mu / sd) @ W
    after = model.predict_proba(X_raw)
    if not np.allclose(before, after, atol=1e-5):
        raise click.ClickException("internal error: folding the standardization into the model changed it")
