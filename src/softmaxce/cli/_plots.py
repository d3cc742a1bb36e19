"""PNG plots for the command-line tool: the loss curve and the confusion matrix.

matplotlib is driven through its object API with the Agg canvas (no pyplot, no display, no global
state), and every file is written to a temporary name and renamed into place (`atomic_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..classifier._atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_confusion_matrix", "save_loss_curve"]


def save_loss_curve(
    path: str,
    train_loss: Sequence[float],
    *,
    val_loss: Sequence[float] | None = None,
    val_accuracy: Sequence[float] | None = None,
    title: str = "Training",
) -> str:
    """Writes the per-epoch training loss (and validation loss / accuracy when given) to a PNG.

    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epochs = np.arange(1, len(train_loss) + 1)
    lines = ax.plot(epochs, train_loss, marker="o", markersize=3, label="training loss")
    if val_loss is not None and len(val_loss):
        lines += ax.plot(epochs[: len(val_loss)], val_loss, marker="s", markersize=3, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log" if len(train_loss) and min(train_loss) > 0 else "linear")
    ax.grid(True, alpha=0.3)
    if val_accuracy is not None and len(val_accuracy):
        ax2 = ax.twinx()
        lines += ax2.plot(
            epochs[: len(val_accuracy)],
            val_accuracy,
            color="tab:green",
            marker="^",
            markersize=3,
            label="validation accuracy",
        )
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(min(0.0, float(np.min(val_accuracy))), 1.0)
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def save_confusion_matrix(
    path: str, cm: np.ndarray, class_names: Sequence[str], *, title: str = "Confusion matrix"
) -> str:
    """Writes a confusion matrix (rows: true class, columns: predicted class) to a PNG.

    Counts are written in the cells when there are at most 30 classes. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = cm.shape[0]
    size = min(4.0 + 0.35 * k, 16.0)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 50:
        ax.set_xticks(range(k), [str(c) for c in class_names], rotation=90 if k > 12 else 0)
        ax.set_yticks(range(k), [str(c) for c in class_names])
    if k <= 30:
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > threshold else "black",
                )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
