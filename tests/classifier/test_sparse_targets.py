"""Sparse soft targets for SoftmaxClassifier: a scipy.sparse matrix or a SparseTarget trains exactly
as the dense (n_samples, n_classes) probabilities it stands for, on both output heads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_blobs

from softmaxce import SparseTarget
from softmaxce.classifier import SoftmaxClassifier


def _flat(clf):
    return np.concatenate([c.ravel() for c in clf.coefs_] + [b.ravel() for b in clf.intercepts_])


def _multi_positive(n=90, C=6, seed=0):
    """Blobs whose label y has the positives {y, y + 1 mod C}, each of probability 1/2, as a
    SparseTarget with a duplicate split of one positive and a padding entry, and the dense Y."""
    X, y = make_blobs(n_samples=n, centers=C, n_features=5, random_state=seed, cluster_std=2.0)
    idx = np.stack([y, (y + 1) % C, (y + 1) % C, np.full(n, -1)], axis=1)
    val = np.tile([0.5, 0.25, 0.25, 7.0], (n, 1))
    Y = np.zeros((n, C))
    Y[np.arange(n), y] += 0.5
    Y[np.arange(n), (y + 1) % C] += 0.5
    return X, SparseTarget(idx, val), Y


@pytest.mark.parametrize("fused_head", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize(
    "extra",
    [{}, {"class_weight": "balanced", "label_smoothing": 0.1, "z_loss": 1e-3}, {"early_stopping": True}],
    ids=["plain", "options", "early-stopping"],
)
def test_sparse_soft_targets_equal_dense(fused_head, extra):
    X, target, Y = _multi_positive()
    kw = dict(hidden_layer_sizes=(7,), max_iter=6, random_state=0, fused_head=fused_head, **extra)
    sw = np.random.default_rng(1).random(len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        dense = SoftmaxClassifier(**kw).fit(X, Y, sample_weight=sw)
        for y in (target, sp.csr_matrix(Y), sp.csr_array(Y)):
            sparse = SoftmaxClassifier(**kw).fit(X, y, sample_weight=sw)
            np.testing.assert_allclose(_flat(sparse), _flat(dense), rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(sparse.classes_, np.arange(6))
            assert sparse.loss_curve_ == pytest.approx(dense.loss_curve_, rel=1e-10)


def test_multi_positive_classification_learns_both_positives():
    X, target, _ = _multi_positive(n=300, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = SoftmaxClassifier((), max_iter=80, random_state=0, learning_rate_init=0.05).fit(X, target)
    proba = clf.predict_proba(X)
    top2 = np.sort(np.argsort(proba, axis=1)[:, -2:], axis=1)
    want = np.sort(np.asarray(target.indices)[:, :2], axis=1)
    assert np.mean(np.all(top2 == want, axis=1)) > 0.8


def test_class_count_from_classes_or_the_fitted_model():
    X, target, Y = _multi_positive(C=6)
    labels = np.arange(10)  # more classes than the target's largest index + 1
    clf = SoftmaxClassifier((), max_iter=1, random_state=0)
    clf.partial_fit(X, target, classes=labels)
    assert clf.n_outputs_ == 10
    clf.partial_fit(X, target)  # the fitted classes_ give C
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        assert SoftmaxClassifier((), max_iter=1).fit(X, target).n_outputs_ == 6


@pytest.mark.parametrize(
    "y,match",
    [
        (sp.csr_matrix(np.full((4, 3), 0.5)), "sum to 1"),
        (sp.csr_matrix(np.array([[1.5, -0.5, 0]] * 4)), "non-negative"),
        (sp.csr_matrix(np.eye(3, dtype=int)[[0, 1, 2, 0]]), "floating"),
        (SparseTarget(np.tile([0, 1], (4, 1)), np.tile([0.5, 0.2], (4, 1))), "sum to 1"),
    ],
    ids=["rows-not-1", "negative", "integer", "sparse-target-not-1"],
)
def test_bad_sparse_soft_targets(y, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxClassifier((), max_iter=1).fit(np.zeros((4, 2)), y)


def test_sparse_target_index_beyond_classes():
    X, target, _ = _multi_positive(C=6)
    with pytest.raises(IndexError, match="out of bounds for 4 classes"):
        SoftmaxClassifier((), max_iter=1).partial_fit(X, target, classes=np.arange(4))
