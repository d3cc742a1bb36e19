"""Training data: labels to class indices, soft targets checked, `class_weight` to a (C,) vector,
and the rows themselves (`TrainingData`: mini-batches, the early-stopping split, accuracy).

`fit(X, y)` takes either labels y (n_samples,) of any hashable kind, encoded as indices into the
sorted `classes_`, or a floating (n_samples, n_classes) array Y of class probabilities (soft
targets: rows >= 0 summing to 1), whose column c is the class `classes_[c]`. Sparse soft targets
(a scipy.sparse (n_samples, n_classes) matrix or a `softmaxce.SparseTarget` of (n_samples, K)
entries) are kept as a CSR matrix and never densified; a SparseTarget's class count is that of
`classes` / the fitted `classes_`, else its largest index + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from .._sparse import SparseTarget

__all__ = ["TrainingData", "class_weight_vector", "encode_targets", "sparse_target_matrix"]

_NEED_CLASSES = "classes must be passed on the first call to partial_fit"


def encode_targets(
    y: npt.ArrayLike, classes: npt.ArrayLike | None, fitted_classes: np.ndarray | None, *, incremental: bool
) -> tuple[np.ndarray, bool, np.ndarray]:
    """Validated targets and the classes they refer to.

    Args:
        y: labels (n_samples,) or soft targets (n_samples, n_classes), as given to fit / partial_fit.
        classes: the `classes` argument of partial_fit (None for fit).
        fitted_classes: `classes_` of the model being continued, or None when it starts afresh.
        incremental: called from partial_fit.

    Returns:
        (target, soft, classes_): int64 class indices and False, or the (n, C) probabilities and
        True; and the classes (new ones when `fitted_classes` is None, else `fitted_classes`).
    """
    y = np.asarray(y) if not sp.issparse(y) else y
    if getattr(y, "ndim", 1) == 2 and y.shape[1] >= 2:
        return _soft_targets(y, classes, fitted_classes, incremental=incremental)
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    if fitted_classes is None:
        if incremental and classes is None:
            raise ValueError(_NEED_CLASSES)
        labels = np.unique(y) if classes is None else _unique_labels(classes)
        if len(labels) < 2:
            raise ValueError(f"SoftmaxClassifier needs samples of at least 2 classes; got 1 class: {labels!r}")
    else:
        labels = fitted_classes
        if incremental and classes is not None and not np.array_equal(_unique_labels(classes), labels):
            raise ValueError(
                f"classes={classes!r} is not the same as on the first call to partial_fit, which was {labels!r}"
            )
    idx = np.minimum(np.searchsorted(labels, y), len(labels) - 1)
    unknown = labels[idx] != y
    if unknown.any():
        raise ValueError(f"y contains labels not in classes_ {labels!r}: {np.unique(y[unknown])!r}")
    return idx.astype(np.int64), False, labels


def sparse_target_matrix(y, classes, fitted_classes):
    """A SparseTarget y as the (n_samples, C) CSR matrix it stands for (duplicates added, padding
    dropped); anything else unchanged. C: len(classes), else len(fitted_classes), else max index + 1."""
    if not isinstance(y, SparseTarget):
        return y
    if len(y.shape) != 1:
        raise ValueError(f"a SparseTarget y must have indices of shape (n_samples, K), got {y.indices.shape}")
    idx = np.asarray(y.indices.cpu() if hasattr(y.indices, "cpu") else y.indices).astype(np.int64)
    val = np.asarray(y.values.cpu() if hasattr(y.values, "cpu") else y.values)
    n, K = idx.shape
    if classes is not None:
        C = len(np.asarray(classes))
    elif fitted_classes is not None:
        C = len(fitted_classes)
    else:
        C = int(idx.max()) + 1 if idx.size else 0
    if idx.size and idx.max() >= C:
        raise IndexError(f"SparseTarget index {int(idx.max())} is out of bounds for {C} classes")
    keep = idx >= 0
    rows = np.repeat(np.arange(n), K).reshape(n, K)
    return sp.csr_matrix((val[keep], (rows[keep], idx[keep])), shape=(n, C))  # duplicates add


def _soft_targets(y, classes, fitted_classes, *, incremental: bool) -> tuple[np.ndarray, bool, np.ndarray]:
    if sp.issparse(y):  # kept sparse (CSR): the checks read the stored entries only
        y = sp.csr_matrix(y)
        if y.dtype.kind != "f":
            raise ValueError(
                "sparse soft targets must be a floating (n_samples, n_classes) matrix of class "
                f"probabilities; got dtype {y.dtype}"
            )
        values, row_sums = y.data, np.asarray(y.sum(axis=1)).ravel()
    else:
        if y.dtype.kind != "f":
            raise ValueError(
                "a 2-D y is read as soft targets and must be a floating (n_samples, n_classes) "
                f"array of class probabilities; got dtype {y.dtype}. Multilabel targets are not "
                "supported."
            )
        y = np.ascontiguousarray(y)
        values, row_sums = y, y.sum(axis=1)
    if not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError("soft targets must be finite and non-negative")
    if not np.allclose(row_sums, 1.0, rtol=0, atol=1e-4):
        raise ValueError("each row of soft targets must sum to 1 (class probabilities)")
    return y, True, _soft_target_classes(y.shape[1], classes, fitted_classes, incremental=incremental)


def _soft_target_classes(C: int, classes, fitted_classes, *, incremental: bool) -> np.ndarray:
    """The labels of soft targets' C columns: `fitted_classes`, `classes`, or arange(C)."""
    named = classes is not None
    labels = np.asarray(classes) if named else np.arange(C)
    if len(labels) != C:
        raise ValueError(f"soft targets have {C} columns but classes has {len(labels)} labels")
    if fitted_classes is not None:
        if len(fitted_classes) != C:
            raise ValueError(f"soft targets have {C} columns, the model has {len(fitted_classes)} classes")
        return fitted_classes
    if incremental and not named:
        raise ValueError(_NEED_CLASSES)
    if named:
        unique = _unique_labels(labels)
        if not np.array_equal(unique, labels):
            raise ValueError("classes for soft targets must be sorted and unique (column c is classes_[c])")
        labels = unique
    return labels


def class_weight_vector(
    class_weight: None | str | dict, classes: np.ndarray, target: np.ndarray, soft: bool
) -> np.ndarray | None:
    """The (C,) class weights softmaxce's `weight=` takes, or None for `class_weight=None`.

    "balanced" gives class c the weight n / (C * count_c) (count_c the column sum of soft
    targets; 1 for a class without samples); a dict gives its labels their weights and every other
    class 1.
    """
    C = len(classes)
    if class_weight is None:
        return None
    if class_weight == "balanced":
        if soft:
            counts = np.asarray(target.sum(axis=0), dtype=np.float64).ravel()
        else:
            counts = np.bincount(target, minlength=C).astype(np.float64)
        n = counts.sum()
        with np.errstate(divide="ignore"):
            return np.where(counts > 0, n / (C * np.maximum(counts, 1e-300)), 1.0)  # n / (C count_c)
    w = np.ones(C)
    for label, value in class_weight.items():
        hit = (
            np.flatnonzero(classes == label)
            if classes.dtype.kind != "O"
            else [i for i, c in enumerate(classes) if c == label]
        )
        if len(hit) == 0:
            raise ValueError(f"class_weight has the label {label!r}, which is not in classes_ {classes!r}")
        w[hit[0]] = float(value)
    return w


@dataclass(frozen=True)
class TrainingData:
    """Training rows: X (n, n_features), targets (n,) indices or (n, C) probabilities (dense or
    CSR), weights (n,)."""

    X: np.ndarray | sp.csr_matrix
    target: np.ndarray | sp.csr_matrix
    sample_weight: np.ndarray

    def __len__(self) -> int:
        return self.X.shape[0]

    def split(self, rng: np.random.RandomState, fraction: float) -> tuple[TrainingData, TrainingData]:
        """(train, validation): `fraction` of the rows held out, stratified for class-index targets."""
        stratify = self.target if self.target.ndim == 1 else None
        X, X_val, t, t_val, sw, sw_val = train_test_split(
            self.X, self.target, self.sample_weight, random_state=rng, test_size=fraction, stratify=stratify
        )
        if X_val.shape[0] < 2:
            raise ValueError(
                f"The validation set is too small (n_samples={X_val.shape[0]}): "
                "increase validation_fraction or disable early_stopping"
            )
        return TrainingData(X, t, sw), TrainingData(X_val, t_val, sw_val)

    def accuracy(self, z: np.ndarray) -> float:
        """Sample-weighted share of rows whose argmax z is the target (argmax of soft targets)."""
        if sp.issparse(self.target):
            truth = np.asarray(self.target.argmax(axis=1)).ravel()
        else:
            truth = np.argmax(self.target, axis=1) if self.target.ndim == 2 else self.target
        hit = (np.argmax(z, axis=1) == truth).astype(np.float64)
        total = float(self.sample_weight.sum())
        return float(np.dot(hit, self.sample_weight) / total) if total > 0 else float(hit.mean())


def _unique_labels(labels) -> np.ndarray:
    return np.unique(column_or_1d(np.asarray(labels)))
