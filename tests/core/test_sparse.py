"""Sparse targets (SEMANTICS.md, "Sparse targets"): SparseTarget and scipy.sparse matrices equal the
dense scatter-added probability target on every NumPy front end, with ignored all-padding positions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import softmaxce
from option_cases import FRONT_END_OPTIONS
from reference import central_difference_grad, reference_cross_entropy, reference_stats
from softmaxce import SparseTarget

OPTIONS = FRONT_END_OPTIONS
REDUCTIONS = ("mean", "sum", "none")
SHAPES = {"2d": (9, 13), "kdim": (3, 7, 2, 3), "1d": (11,)}


def _options(case: str, C: int, rng) -> dict:
    kw = dict(OPTIONS[case])
    if kw.get("weight") == "w":
        kw["weight"] = rng.random(C) + 0.25
    return kw


def _positions(shape):
    return () if len(shape) == 1 else (shape[0],) + shape[2:]


def _sparse_problem(shape, K=4, seed=0, ignored=True):
    """Logits, a SparseTarget with duplicates, padding and (optionally) all-padding positions."""
    rng = np.random.default_rng(seed)
    C = shape[0] if len(shape) == 1 else shape[1]
    logits = rng.standard_normal(shape) * 2
    pos = _positions(shape)
    idx = rng.integers(0, C, pos + (K,))
    idx[..., 1] = idx[..., 0]  # a duplicate in every position
    idx[..., -1] = -1  # padding
    values = rng.random(pos + (K,))
    if ignored and len(pos):
        flat = idx.reshape(-1, K)
        flat[[0, flat.shape[0] - 2]] = -7  # all padding (any negative index)
    return logits, SparseTarget(idx, values)


def _rows(a, C):
    """(P, C) rows, classes last, of an array with the logits' layout."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(1, C) if a.ndim == 1 else np.moveaxis(a, 1, -1).reshape(-1, C)


def _unrows(rows, shape):
    if len(shape) == 1:
        return rows.reshape(shape)
    return np.moveaxis(rows.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1)


def _dense(target: SparseTarget, C: int) -> tuple[np.ndarray, np.ndarray]:
    """(y (P, C) with y[n, i] += v for every entry that is not padding, kept (P,))."""
    idx = np.asarray(target.indices).reshape(-1, target.k)
    val = np.asarray(target.values, dtype=np.float64).reshape(-1, target.k)
    y = np.zeros((idx.shape[0], C))
    for n, k in zip(*np.nonzero(idx >= 0), strict=True):
        y[n, idx[n, k]] += val[n, k]
    return y, (idx >= 0).any(axis=1)


def _expected(logits, target, *, reduction, grad_output=None, **kw):
    """The float64 reference on the dense target: kept positions only, "mean" over their count."""
    shape = logits.shape
    C = shape[0] if len(shape) == 1 else shape[1]
    z = _rows(logits, C)
    y, kept = _dense(target, C)
    P = z.shape[0]
    go = np.ones(P)
    if grad_output is not None:
        go = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), _positions(shape)).reshape(P).copy()
    if reduction == "mean":
        go = go / kept.sum()
    loss_k, grad_k = reference_cross_entropy(z[kept], y[kept], reduction="none", grad_output=go[kept], **kw)
    loss_rows = np.zeros(P)
    loss_rows[kept] = loss_k
    grad = np.zeros((P, C))
    grad[kept] = grad_k
    if reduction == "none":
        loss = loss_rows.reshape(_positions(shape))
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows.sum() / kept.sum()
    return loss, _unrows(grad, shape)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_equals_dense_scatter_added_target(shape, case, reduction):
    logits, target = _sparse_problem(shape)
    kw = _options(case, shape[0] if len(shape) == 1 else shape[1], np.random.default_rng(1))
    go = None
    if reduction == "none" and len(shape) > 1:
        go = np.random.default_rng(2).standard_normal(_positions(shape))  # a non-uniform upstream gradient
    loss, grad = softmaxce.cross_entropy_and_grad(logits, target, reduction=reduction, grad_output=go, **kw)
    want_loss, want_grad = _expected(logits, target, reduction=reduction, grad_output=go, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-13)
    assert np.shape(loss) == np.shape(want_loss)
    np.testing.assert_allclose(
        softmaxce.cross_entropy(logits, target, reduction=reduction, **kw), want_loss, rtol=1e-12
    )


@pytest.mark.parametrize("case", ["plain", "all"])
def test_float32_is_close_to_float64(case):
    logits, target = _sparse_problem((64, 1000), K=8)
    kw = _options(case, 1000, np.random.default_rng(1))
    t32 = SparseTarget(target.indices.astype(np.int32), target.values.astype(np.float32))
    loss, grad = softmaxce.cross_entropy_and_grad(logits.astype(np.float32), t32, reduction="sum", **kw)
    want_loss, want_grad = _expected(logits.astype(np.float32), target, reduction="sum", **kw)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=2e-6)


def test_statistics_cover_ignored_positions():
    logits, target = _sparse_problem((9, 13))
    r = softmaxce.cross_entropy_with_stats(logits, target, softcap=5.0, compute_grad=True)
    lse, predicted, entropy = reference_stats(logits, softcap=5.0)
    np.testing.assert_allclose(r.lse, lse, rtol=1e-12)
    np.testing.assert_array_equal(r.predicted, predicted)
    np.testing.assert_allclose(r.entropy, entropy, rtol=1e-10)
    np.testing.assert_allclose(r.loss, _expected(logits, target, reduction="mean", softcap=5.0)[0], rtol=1e-12)


@pytest.mark.parametrize("case", ["plain", "all"])
def test_gradient_matches_finite_differences(case):
    logits, target = _sparse_problem((4, 6), K=3)
    kw = _options(case, 6, np.random.default_rng(3))
    _, grad = softmaxce.cross_entropy_and_grad(logits, target, **kw)
    fd = central_difference_grad(lambda z: softmaxce.cross_entropy(z, target, **kw), logits)
    np.testing.assert_allclose(grad, fd, rtol=5e-6, atol=1e-9)


def test_hand_computed_values():
    z = np.log([[0.1, 0.6, 0.3]])
    # y = [0, 0.5 + 0.25, 0.25]: loss = -0.75 ln 0.6 - 0.25 ln 0.3; grad = 1.0 a - y
    t = SparseTarget([[1, 1, 2, -1]], [[0.5, 0.25, 0.25, 9.0]])
    loss, grad = softmaxce.cross_entropy_and_grad(z, t)
    np.testing.assert_allclose(loss, -0.75 * np.log(0.6) - 0.25 * np.log(0.3), rtol=1e-14)
    np.testing.assert_allclose(grad, [[0.1, 0.6 - 0.75, 0.3 - 0.25]], atol=1e-15)


def test_all_padding_and_empty_batches():
    z = np.random.default_rng(0).standard_normal((3, 5))
    t = SparseTarget(np.full((3, 2), -1), np.ones((3, 2)))
    assert np.isnan(softmaxce.cross_entropy(z, t))
    assert softmaxce.cross_entropy(z, t, reduction="sum") == 0
    loss, grad = softmaxce.cross_entropy_and_grad(z, t, reduction="none", label_smoothing=0.1, z_loss=0.1)
    np.testing.assert_array_equal(loss, np.zeros(3))
    np.testing.assert_array_equal(grad, np.zeros((3, 5)))
    empty = SparseTarget(np.zeros((0, 4), np.int64), np.zeros((0, 4)))
    assert np.isnan(softmaxce.cross_entropy(np.zeros((0, 5)), empty))
    k0 = SparseTarget(np.zeros((3, 0), np.int64), np.zeros((3, 0)))  # K = 0: every position ignored
    assert softmaxce.cross_entropy(z, k0, reduction="sum") == 0


def test_explicit_zero_entry_keeps_a_position():
    z = np.log([[0.2, 0.8], [0.5, 0.5]])
    t = SparseTarget([[0, -1], [1, -1]], [[0.0, 0.0], [1.0, 0.0]])
    # row 0 has an entry (value 0): kept, loss 0 without smoothing, and counted by "mean"
    np.testing.assert_allclose(softmaxce.cross_entropy(z, t), np.log(2) / 2, rtol=1e-14)


def test_absent_classes_may_have_minus_inf_logits():
    z = np.array([[0.0, -np.inf, 1.0]])
    loss, grad = softmaxce.cross_entropy_and_grad(z, SparseTarget([[2]], [[1.0]]))
    assert np.isfinite(loss) and np.all(np.isfinite(grad)) and grad[0, 1] == 0
    # with smoothing every class has eps / C of the target: +inf, as for the dense target
    assert softmaxce.cross_entropy(z, SparseTarget([[2]], [[1.0]]), label_smoothing=0.1) == np.inf


def test_extreme_logits_give_finite_gradients():
    z = np.array([[1e9, -1e9, 0.0], [-1e9, 1e9, 5.0]], dtype=np.float32)
    loss, grad = softmaxce.cross_entropy_and_grad(z, SparseTarget([[1, 0], [1, 2]], [[0.5, 0.5], [1.0, 0.0]]))
    assert np.all(np.isfinite(grad)) and np.isfinite(loss)


def test_csr_matrix_equals_sparse_target():
    logits, target = _sparse_problem((9, 13))
    y, kept = _dense(target, 13)
    idx = target.indices
    keep = idx >= 0
    rows = np.broadcast_to(np.arange(9)[:, None], idx.shape)
    csr = sp.csr_matrix((target.values[keep], (rows[keep], idx[keep])), shape=(9, 13))
    csr.sum_duplicates()
    assert csr.nnz < y.size
    for fmt in (csr, sp.csr_array(csr), csr.tocoo(), csr.astype(np.float32)):
        for kw in ({}, {"label_smoothing": 0.1, "reduction": "none"}):
            want = softmaxce.cross_entropy_and_grad(logits, target, **kw)
            got = softmaxce.cross_entropy_and_grad(logits, fmt, **kw)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-12)


def test_in_place_gradient_and_inputs_unmodified():
    logits, target = _sparse_problem((9, 13))
    idx, val = target.indices.copy(), target.values.copy()
    z0 = logits.copy()
    loss, grad = softmaxce.cross_entropy_and_grad(logits, target, label_smoothing=0.1, weight=np.ones(13))
    np.testing.assert_array_equal(logits, z0)
    np.testing.assert_array_equal(target.indices, idx)
    np.testing.assert_array_equal(target.values, val)
    csr = sp.csr_matrix(_dense(target, 13)[0])
    data = csr.data.copy()
    x, W = np.ones((9, 4)), np.ones((13, 4))
    softmaxce.linear_cross_entropy_and_grad(x, W, csr, label_smoothing=0.1)
    softmaxce.linear_cross_entropy_and_grad(x, W, target, label_smoothing=0.1)
    np.testing.assert_array_equal(x, 1.0)
    np.testing.assert_array_equal(target.values, val)
    np.testing.assert_array_equal(csr.data, data)
    out_loss, out = softmaxce.cross_entropy_and_grad(
        logits, target, out=logits, label_smoothing=0.1, weight=np.ones(13)
    )
    assert out is logits
    np.testing.assert_allclose(out, grad, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------ fused head


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["plain", "weight-smooth", "all"])
@pytest.mark.parametrize("x_shape", [(2, 5, 6), (13, 6), (6,)], ids=["3d", "2d", "1d"])
def test_fused_head_equals_logits(x_shape, case, reduction):
    rng = np.random.default_rng(5)
    V, D, K = 17, x_shape[-1], 5
    x, W, b = rng.standard_normal(x_shape), rng.standard_normal((V, D)), rng.standard_normal(V)
    pos = x_shape[:-1]
    idx = rng.integers(-1, V, pos + (K,))
    if len(pos):
        idx.reshape(-1, K)[1] = -1
    target = SparseTarget(idx, rng.random(pos + (K,)))
    kw = _options(case, V, rng)
    go = rng.standard_normal(pos) if reduction == "none" else 0.5
    r = softmaxce.linear_cross_entropy_with_stats(
        x, W, target, bias=b, reduction=reduction, compute_grad=True, grad_output=go, chunk_size=3, **kw
    )
    z = x @ W.T + b  # (..., V): classes last, so compare in row form
    z_rows = z.reshape(-1, V) if len(pos) else z
    t_rows = SparseTarget(idx.reshape(-1, K), target.values.reshape(-1, K)) if len(pos) else target
    go_rows = go.reshape(-1) if reduction == "none" and len(pos) else go
    want = softmaxce.cross_entropy_with_stats(
        z_rows, t_rows, reduction=reduction, compute_grad=True, grad_output=go_rows, **kw
    )
    np.testing.assert_allclose(np.ravel(r.loss), np.ravel(want.loss), rtol=1e-12, atol=1e-13)
    G = want.grad_logits.reshape(-1, V)
    np.testing.assert_allclose(r.grad_x.reshape(-1, D), G @ W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.grad_weight, G.T @ x.reshape(-1, D), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.grad_bias, G.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.ravel(r.lse), np.ravel(want.lse), rtol=1e-12)
    np.testing.assert_array_equal(np.ravel(r.predicted), np.ravel(want.predicted))
    assert r.grad_x.shape == x.shape and np.shape(r.loss) == (pos if reduction == "none" else ())


def test_fused_head_csr_and_float32():
    rng = np.random.default_rng(6)
    x, W = rng.standard_normal((11, 8)).astype(np.float32), rng.standard_normal((300, 8)).astype(np.float32)
    idx = rng.integers(0, 300, (11, 4))
    target = SparseTarget(idx, rng.random((11, 4)).astype(np.float32))
    csr = sp.csr_matrix(_dense(target, 300)[0].astype(np.float32))
    a = softmaxce.linear_cross_entropy_and_grad(x, W, target, label_smoothing=0.1)
    b = softmaxce.linear_cross_entropy_and_grad(x, W, csr, label_smoothing=0.1, chunk_size=4)
    for u, v in zip(a[:3], b[:3], strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    assert a[1].dtype == np.float32


# ------------------------------------------------------------------------------------ validation


def test_validation_errors():
    z = np.zeros((4, 5))
    with pytest.raises(ValueError, match="same shape"):
        SparseTarget(np.zeros((4, 2), int), np.zeros((4, 3)))
    with pytest.raises(TypeError, match="floating point"):
        SparseTarget(np.zeros((4, 2), int), np.zeros((4, 2), int))
    with pytest.raises(TypeError, match="integers"):
        SparseTarget(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"Expected SparseTarget of shape \[4, 'K'\]"):
        softmaxce.cross_entropy(z, SparseTarget(np.zeros((3, 2), int), np.zeros((3, 2))))
    idx = np.zeros((4, 2), int)
    idx[2, 1] = 5
    with pytest.raises(IndexError, match=r"Target 5 is out of bounds.*position \(2,\), entry 1"):
        softmaxce.cross_entropy(z, SparseTarget(idx, np.zeros((4, 2))))
    with pytest.raises(IndexError, match="Target 18446744073709551615 is out of bounds"):
        softmaxce.cross_entropy(z, SparseTarget(np.full((4, 2), 2**64 - 1, np.uint64), np.zeros((4, 2))))
    with pytest.raises(IndexError, match=r"position \(1, 0\)"):
        kidx = np.zeros((2, 3, 1), int)
        kidx[1, 0, 0] = 9
        softmaxce.cross_entropy(np.zeros((2, 5, 3)), SparseTarget(kidx, np.ones((2, 3, 1))))
    with pytest.raises(ValueError, match="ignore_index is not supported"):
        softmaxce.cross_entropy(z, SparseTarget(idx % 5, np.zeros((4, 2))), ignore_index=0)
    with pytest.raises(ValueError, match=r"shape \[4, 5\]"):
        softmaxce.cross_entropy(z, sp.csr_matrix(np.zeros((4, 6))))
    with pytest.raises(TypeError, match="floating point"):
        softmaxce.cross_entropy(z, sp.csr_matrix(np.eye(4, 5, dtype=np.int64)))
    with pytest.raises(ValueError, match="weight tensor"):
        softmaxce.cross_entropy(z, SparseTarget(idx % 5, np.zeros((4, 2))), weight=np.ones(3))
    with pytest.raises(ValueError, match=r"x's leading shape"):
        softmaxce.linear_cross_entropy(np.zeros((4, 3)), np.zeros((5, 3)), SparseTarget(idx[:3] % 5, np.ones((3, 2))))
    with pytest.raises(IndexError, match="Target 5 is out of bounds"):
        softmaxce.linear_cross_entropy(np.zeros((4, 3)), np.zeros((5, 3)), SparseTarget(idx, np.ones((4, 2))))


def test_frozen_two_field_dataclass():
    t = SparseTarget([[0]], [[1.0]])
    assert isinstance(t.indices, np.ndarray) and t.shape == (1,) and t.k == 1
    with pytest.raises(AttributeError):
        t.indices = None
    assert [f.name for f in __import__("dataclasses").fields(SparseTarget)] == ["indices", "values"]


def test_torch_tensors_pytree_and_devices():
    torch = pytest.importorskip("torch")
    from torch.utils import _pytree

    from softmaxce._sparse import register_torch_pytree

    register_torch_pytree()
    logits, target = _sparse_problem((9, 13))
    tt = SparseTarget(torch.from_numpy(target.indices), torch.from_numpy(target.values))
    np.testing.assert_allclose(softmaxce.cross_entropy(logits, tt), softmaxce.cross_entropy(logits, target))
    leaves, spec = _pytree.tree_flatten(tt)
    assert len(leaves) == 2 and leaves[0] is tt.indices
    back = _pytree.tree_unflatten([leaf * 1 for leaf in leaves], spec)
    assert isinstance(back, SparseTarget) and torch.equal(back.values, tt.values)
    with pytest.raises(ValueError, match="meta"):
        SparseTarget(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, device="meta"))
    with pytest.raises(TypeError, match="both"):
        SparseTarget(torch.zeros(2, 1, dtype=torch.long), np.zeros((2, 1)))
