"""`softmaxce predict`: the class (and with --proba the probabilities) of every row of a file."""

from __future__ import annotations

import csv
import io
from typing import TextIO

import click
import numpy as np

from ..classifier._atomic import atomic_path
from ._app import CONTEXT, FILE, one_line_errors, quiet_option, sayer
from ._data import load_table
from ._model import check_features, load_model, predict_proba

__all__ = ["predict"]


@click.command(context_settings=CONTEXT)
@click.argument("model_path", metavar="MODEL", type=FILE)
@click.argument("data", type=FILE)
@click.option("--proba", is_flag=True, help="Also write the probability of every class (columns p_<class>).")
@click.option(
    "--out",
    "out_path",
    type=FILE,
    help="Write predictions here (CSV; .npz gives arrays 'prediction' and 'proba'); default stdout.",
)
@click.option("--target", metavar="COLUMN", help="A label column in DATA to leave out of the features, if present.")
@quiet_option
@one_line_errors
def predict(model_path: str, data: str, proba: bool, out_path: str | None, target: str | None, quiet: bool) -> None:
    """Predict the class of every row of DATA (CSV, Parquet or .npz) with a saved MODEL.

    DATA has the same feature columns as the training data (a target column, if any, named with
    --target, is ignored). Output: a CSV with a `prediction` column (and p_<class> columns with
    --proba), one row per input row, in order.

    \b
    Examples:
      softmaxce predict model.npz new.csv
      softmaxce predict model.npz new.csv --proba --out predictions.csv
      softmaxce predict model.npz test.parquet --target label --out predictions.npz
    """
    model = load_model(model_path)
    table = load_table(data, target=target, require_target=False, progress=not quiet)
    check_features(model, table)
    classes = model.classes_
    if proba:
        P = predict_proba(model, table.features)  # (n, k)
        labels = classes[np.argmax(P, axis=1)]
    else:  # no (n, k) array: the model forms the logits a chunk of rows at a time
        P = None
        labels = model.predict(table.features)
    if out_path and out_path.lower().endswith(".npz"):
        with atomic_path(out_path) as tmp:
            arrays = {"prediction": labels}
            if proba:
                arrays["proba"] = P
                arrays["classes"] = classes
            np.savez(tmp, **arrays)
    elif out_path:
        with atomic_path(out_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            _write_csv(f, labels, P, classes)
    else:
        buf = io.StringIO()
        _write_csv(buf, labels, P, classes)
        click.echo(buf.getvalue(), nl=False)
    if out_path:
        sayer(quiet)(f"{len(labels):,} predictions written to {out_path}")


def _write_csv(f: TextIO, labels: np.ndarray, P: np.ndarray | None, classes: np.ndarray) -> None:
    """A `prediction` column, and p_<class> columns (6 significant digits) when P is given."""
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["prediction"] + ([f"p_{c}" for c in classes] if P is not None else []))
    if P is None:
        w.writerows([label] for label in labels)
        return
    for label, p in zip(labels, P, strict=True):
        w.writerow([label] + [f"{v:.6g}" for v in p])
