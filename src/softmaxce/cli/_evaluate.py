"""`softmaxce evaluate`: score a saved model on labelled data (sklearn.metrics) and plot its confusion matrix."""

from __future__ import annotations

import os

import click
import numpy as np

from ._app import CONTEXT, DIRECTORY, FILE, one_line_errors, plain, quiet_option, sayer, write_json
from ._data import DataError, Table, load_table, short
from ._model import check_features, load_model, log_loss, predict_proba

__all__ = ["evaluate"]


@click.command(context_settings=CONTEXT)
@click.argument("model_path", metavar="MODEL", type=FILE)
@click.argument("data", type=FILE)
@click.option("--target", required=True, metavar="COLUMN", help="The true class label column (or .npz key).")
@click.option("--metrics", "metrics_path", type=FILE, help="Also write the metrics as JSON.")
@click.option(
    "--plots", "plots_dir", default="softmaxce-out", type=DIRECTORY, help="Directory for confusion_matrix.png."
)
@click.option("--no-plots", is_flag=True, help="Do not write the confusion-matrix PNG.")
@quiet_option
@one_line_errors
def evaluate(
    model_path: str, data: str, target: str, metrics_path: str | None, plots_dir: str, no_plots: bool, quiet: bool
) -> None:
    """Score a saved MODEL on labelled DATA: accuracy, log loss, per-class precision / recall / F1,
    and a confusion-matrix PNG.

    Log loss is the mean of -ln p(true class), the softmax cross-entropy of the model's logits.
    With --quiet only the summary line is printed.

    \b
    Examples:
      softmaxce evaluate model.npz test.csv --target label
      softmaxce evaluate model.npz test.npz --target y --metrics eval.json --plots plots/
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    model = load_model(model_path)
    table = load_table(data, target=target, require_target=True, progress=not quiet)
    check_features(model, table)
    classes = model.classes_
    y_idx = _class_indices(table, classes)  # (n,)
    P = predict_proba(model, table.features)  # (n, k)
    pred_idx = np.argmax(P, axis=1)
    n, k = len(y_idx), len(classes)
    every = np.arange(k)
    accuracy = float(accuracy_score(y_idx, pred_idx))
    loss = log_loss(y_idx, P)
    cm = confusion_matrix(y_idx, pred_idx, labels=every)  # rows: true class, columns: predicted
    precision, recall, f1, support = precision_recall_fscore_support(y_idx, pred_idx, labels=every, zero_division=0)

    click.echo(f"accuracy {accuracy:.4f}   log loss {loss:.4f}   ({n:,} rows, {k} classes)")
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
        from ._plots import save_confusion_matrix

        png = save_confusion_matrix(
            os.path.join(plots_dir, "confusion_matrix.png"),
            cm,
            [str(c) for c in classes],
            title=f"{os.path.basename(data)}: accuracy {accuracy:.4f}",
        )
        sayer(quiet)(f"confusion matrix written to {png}")
    if metrics_path:
        write_json(
            metrics_path,
            {
                "model": model_path,
                "data": data,
                "rows": n,
                "accuracy": accuracy,
                "log_loss": loss,
                "classes": [c.item() for c in classes],
                "per_class": {
                    str(c): {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
                    for i, c in enumerate(classes)
                },
                "confusion_matrix": cm.tolist(),
            },
        )
        sayer(quiet)(f"metrics written to {metrics_path}")


def _class_indices(table: Table, classes: np.ndarray) -> np.ndarray:
    """The index into `classes` of every label (matched as text, so 3 and "3" are one class);
    DataError naming the row of the first label the model does not know."""
    names = classes.astype(str)
    order = np.argsort(names)
    labels = np.asarray(table.labels).astype(str)
    pos = np.minimum(np.searchsorted(names, labels, sorter=order), len(names) - 1)
    known = names[order[pos]] == labels
    if not known.all():
        i = int(np.argmin(known))
        label = plain(table.labels[i])
        raise DataError(f"{table.where(i, table.target)}: unknown class {label!r} (the model knows {short(classes)})")
    return order[pos]
