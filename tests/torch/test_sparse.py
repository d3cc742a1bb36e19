"""Sparse targets through every torch front end: equal to the dense scatter-added target.

The reference is `_torchref.ref_cross_entropy` (float64) on the dense target
torch.zeros(P, C).scatter_add_(1, idx.clamp(min=0), val * (idx >= 0)), with the all-padding
positions' losses set to 0 and "mean" dividing by the number of kept positions (SEMANTICS.md,
"Sparse targets"). Its autograd gives the reference gradients for logits, x, W, b and the values.
"""

from __future__ import annotations

import math

import pytest
import torch
from _tiny_model import TinyModel, assert_matches_eager
from _torchref import ref_cross_entropy

import softmaxce
import softmaxce.torch as sce
from softmaxce import SparseTarget
from softmaxce.torch import _linear_ops, _ops


def _dense(idx: torch.Tensor, val: torch.Tensor, C: int) -> torch.Tensor:
    """(P, C) dense target of (P, K) rows: duplicates add, negative indices are padding."""
    return torch.zeros(idx.shape[0], C, dtype=val.dtype).scatter_add(1, idx.clamp(min=0), val * (idx >= 0))


def _reference(z, idx, val, weight=None, *, reduction="mean", **kw):
    """The float64 reference on the dense target; z (C), (N, C) or (N, C, d1..dk), idx/val (*positions, K)."""
    C = z.shape[0] if z.dim() == 1 else z.shape[1]
    K = idx.shape[-1]
    rows = _dense(idx.reshape(-1, K), val.reshape(-1, K), C)  # (P, C)
    positions = tuple(idx.shape[:-1])
    if z.dim() == 1:
        t = rows.reshape(C)
    else:  # class axis back to 1
        t = rows.reshape(*positions, C).movedim(-1, 1)
    per = ref_cross_entropy(z, t, weight, reduction="none", **kw)
    kept = (idx >= 0).any(dim=-1)
    per = torch.where(kept, per, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / kept.sum()


def _sparse_problem(positions, C, K, gen, dtype=torch.float64):
    """indices (*positions, K) with duplicates, padding and (when there are >= 3 positions) one
    all-padding position; values (*positions, K) > 0."""
    idx = torch.randint(-1, C, (*positions, K), generator=gen)
    flat = idx.reshape(-1, K)
    if flat.shape[0] >= 1 and K >= 2:
        flat[0, 1] = flat[0, 0] = C - 1  # a duplicate
    if flat.shape[0] >= 3:
        flat[2] = -1  # an all-padding (ignored) position
    if flat.shape[0] >= 2:
        flat[1, -1] = -5  # padding may be any negative number
    val = torch.rand(*positions, K, generator=gen, dtype=dtype) + 0.1
    return idx, val


OPTIONS = [
    # weighted, label_smoothing, z_loss, softcap
    (False, 0.0, 0.0, None),
    (True, 0.0, 0.0, None),
    (True, 0.2, 1e-2, 3.0),
    (False, 0.1, 0.0, 2.5),
]
OPTION_IDS = [f"{'w' if w else 'nw'}-eps{e}-lam{lam}-cap{c}" for w, e, lam, c in OPTIONS]
SHAPES = [((7, 5), 3), ((5,), 2), ((3, 4, 2, 3), 2), ((6, 9), 1), ((0, 5), 2)]
SHAPE_IDS = [f"{'x'.join(map(str, s))}-K{k}" for s, k in SHAPES]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "eps", "lam", "cap"), OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize(("shape", "K"), SHAPES, ids=SHAPE_IDS)
def test_cross_entropy_matches_dense_target(path, shape, K, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(hash((shape, K, weighted, eps, reduction)) % 2**31)
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    C = shape[0] if len(shape) == 1 else shape[1]
    positions = () if len(shape) == 1 else (shape[0], *shape[2:])
    idx, val = _sparse_problem(positions, C, K, gen)
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    kw = dict(reduction=reduction, label_smoothing=eps, z_loss=lam, softcap=cap)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    v1, v2 = val.clone().requires_grad_(), val.clone().requires_grad_()
    idx_before = idx.clone()
    ours = sce.cross_entropy(z1, SparseTarget(idx, v1), w, **kw)
    ref = _reference(z2, idx, v2, w, **kw)
    assert ours.dtype == torch.float64 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12, equal_nan=True)
    if math.prod(positions) == 0:
        return
    up = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5  # non-uniform upstream for "none"
    grads = torch.autograd.grad(ours, [z1, v1], up)
    refs = torch.autograd.grad(ref, [z2, v2], up)
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    # inputs untouched
    assert torch.equal(z1.detach(), z) and torch.equal(v1.detach(), val) and torch.equal(idx, idx_before)
    # the module gives the same
    mod = sce.CrossEntropyLoss(w, reduction=reduction, label_smoothing=eps, z_loss=lam, softcap=cap)
    torch.testing.assert_close(mod(z, SparseTarget(idx, val)), ours.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("weighted", "eps", "lam", "cap"), OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_linear_cross_entropy_matches_dense_target(path, bias, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(hash((bias, weighted, eps, reduction)) % 2**31)
    N, D, V, K = 7, 5, 9, 3
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    W = torch.randn(V, D, generator=gen, dtype=torch.float64)
    b = torch.randn(V, generator=gen, dtype=torch.float64) if bias else None
    idx, val = _sparse_problem((N,), V, K, gen)
    w = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    kw = dict(reduction=reduction, label_smoothing=eps, z_loss=lam, softcap=cap)
    leaves = [t.clone().requires_grad_() for t in (x, W, val)] + ([b.clone().requires_grad_()] if bias else [])
    refs = [t.clone().requires_grad_() for t in (x, W, val)] + ([b.clone().requires_grad_()] if bias else [])
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=3)  # chunks of 3 rows: 3 + 3 + 1
    ours = sce.linear_cross_entropy(
        leaves[0], leaves[1], SparseTarget(idx, leaves[2]), linear_bias=leaves[3] if bias else None, weight=w,
        options=opts, **kw,
    )  # fmt: skip
    z = refs[0] @ refs[1].T + (refs[3] if bias else 0.0)
    ref = _reference(z, idx, refs[2], w, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    up = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5
    for g, r in zip(torch.autograd.grad(ours, leaves, up), torch.autograd.grad(ref, refs, up), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    # the module, with the head's parameters copied in
    head = sce.LinearCrossEntropyLoss(D, V, bias=bias, dtype=torch.float64, weight=w, **kw)
    with torch.no_grad():
        head.linear.weight.copy_(W)
        if bias:
            head.linear.bias.copy_(b)
    torch.testing.assert_close(head(x, SparseTarget(idx, val)), ours.detach(), rtol=1e-10, atol=1e-12)


def test_linear_unbatched_and_k_dimensional(path):
    gen = torch.Generator().manual_seed(5)
    D, V = 4, 6
    x1 = torch.randn(D, generator=gen, dtype=torch.float64)
    W = torch.randn(V, D, generator=gen, dtype=torch.float64)
    idx, val = torch.tensor([1, -1, 1]), torch.tensor([0.25, 9.0, 0.5], dtype=torch.float64)
    ours = sce.linear_cross_entropy(x1, W, SparseTarget(idx, val), label_smoothing=0.1)
    torch.testing.assert_close(ours, _reference(W @ x1, idx, val, label_smoothing=0.1), rtol=1e-12, atol=0)
    # out_features: (N, V, 2) logits, target positions (N, 2)
    x = torch.randn(3, D, generator=gen, dtype=torch.float64)
    W3 = torch.randn(V, 2, D, generator=gen, dtype=torch.float64)
    idx3, val3 = _sparse_problem((3, 2), V, 2, gen)
    ours = sce.linear_cross_entropy(x, W3, SparseTarget(idx3, val3), reduction="sum")
    z = torch.einsum("nd,vkd->nvk", x, W3)
    torch.testing.assert_close(ours, _reference(z, idx3, val3, reduction="sum"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_and_empty(path, reduction):
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.full((3, 2), -1)
    val = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    loss = sce.cross_entropy(z, SparseTarget(idx, val), reduction=reduction, label_smoothing=0.1, z_loss=0.1)
    if reduction == "mean":
        assert torch.isnan(loss)
    else:
        assert torch.equal(loss, torch.zeros_like(loss))
        gz, gv = torch.autograd.grad(loss.sum(), [z, val])
        assert torch.equal(gz, torch.zeros_like(z)) and torch.equal(gv, torch.zeros_like(val))
    empty = sce.cross_entropy(torch.zeros(3, 4), SparseTarget(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0)))
    assert torch.isnan(empty)


def test_absent_class_at_minus_inf_is_fine(path):
    z = torch.tensor([[0.0, -math.inf, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    idx, val = torch.tensor([[2, 3, -1]]), torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    loss = sce.cross_entropy(z, SparseTarget(idx, val))
    ref = -(0.5 * torch.log_softmax(z.detach(), 1)[0, 2] + 0.5 * torch.log_softmax(z.detach(), 1)[0, 3])
    torch.testing.assert_close(loss.detach(), ref)
    (g,) = torch.autograd.grad(loss, [z])
    assert torch.isfinite(g).all() and g[0, 1] == 0


def test_sparse_matrices_equal_sparse_target(path):
    gen = torch.Generator().manual_seed(11)
    P, C = 6, 7
    z = torch.randn(P, C, generator=gen, dtype=torch.float64)
    dense = torch.rand(P, C, generator=gen, dtype=torch.float64) * (torch.rand(P, C, generator=gen) < 0.4)
    dense[3] = 0.0  # an empty row: an ignored position
    csr = dense.to_sparse_csr()
    idx = torch.where(dense > 0, torch.arange(C), -1)
    st = SparseTarget(idx, dense)
    for red in ("mean", "sum", "none"):
        expected = sce.cross_entropy(z, st, reduction=red, label_smoothing=0.1)
        for target in (csr, dense.to_sparse()):  # CSR, and COO (converted to CSR)
            got = sce.cross_entropy(z, target, reduction=red, label_smoothing=0.1)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    scipy_sparse = pytest.importorskip("scipy.sparse")
    got = sce.cross_entropy(z, scipy_sparse.csr_matrix(dense.numpy()))
    torch.testing.assert_close(got, sce.cross_entropy(z, st), rtol=1e-12, atol=0)
    # the fused head, and K-dimensional logits with one matrix row per position (C order)
    x, W = torch.randn(P, 3, generator=gen, dtype=torch.float64), torch.randn(C, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        sce.linear_cross_entropy(x, W, csr), sce.linear_cross_entropy(x, W, st), rtol=1e-12, atol=0
    )
    z4 = torch.randn(2, C, 3, generator=gen, dtype=torch.float64)
    got = sce.cross_entropy(z4, csr, reduction="none")
    ref = sce.cross_entropy(z4, SparseTarget(idx.reshape(2, 3, C), dense.reshape(2, 3, C)), reduction="none")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


def test_csr_values_get_the_gradient():
    gen = torch.Generator().manual_seed(12)
    z = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    dense = torch.tensor([[0.5, 0, 0, 0.5, 0], [0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [0, 0.2, 0.3, 0, 0.5]])
    vals = dense.to(torch.float64).to_sparse_csr().values().clone().requires_grad_()
    crow, col = dense.to_sparse_csr().crow_indices(), dense.to_sparse_csr().col_indices()
    csr = torch.sparse_csr_tensor(crow, col, vals, (4, 5))
    (g,) = torch.autograd.grad(sce.cross_entropy(z, csr, reduction="sum"), [vals])
    expected = -torch.log_softmax(z, 1)[dense > 0]  # dL/dv = lse - z at the entries
    torch.testing.assert_close(g, expected)


def test_low_precision_no_worse_than_dense():
    """bfloat16 (chunked path): the sparse error against float64 is no worse than the dense bf16 path's
    (the same algorithm on the dense target) plus a small tolerance."""
    gen = torch.Generator().manual_seed(21)
    N, C, K, D = 33, 50, 4, 16
    z = (torch.randn(N, C, generator=gen, dtype=torch.float64) * 4).to(torch.bfloat16)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64).to(torch.bfloat16)
    W = (torch.randn(C, D, generator=gen, dtype=torch.float64) / 2).to(torch.bfloat16)
    idx, val = _sparse_problem((N,), C, K, gen, torch.bfloat16)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=10.0)

    def run(fn, dtype, sparse, *inputs):
        leaves = [t.to(dtype).requires_grad_() for t in inputs]
        dense = _dense(idx, val.to(dtype), C)
        kept = (idx >= 0).any(1)
        if sparse:
            loss = fn(*leaves, SparseTarget(idx, val.to(dtype)), reduction="none", **kw)
        else:  # the dense probability target, the ignored positions masked
            loss = torch.where(kept, fn(*leaves, dense, reduction="none", **kw), 0.0)
        up = torch.linspace(0.5, 1.5, N, dtype=torch.float64).to(dtype)
        return [loss.double(), *(g.double() for g in torch.autograd.grad(loss, leaves, up))]

    for fn, inputs in (
        (sce.cross_entropy, (z,)),
        (lambda x_, w_, t, **k: sce.linear_cross_entropy(x_, w_, t, **k), (x, W)),
    ):
        truth = run(fn, torch.float64, True, *inputs)
        sparse = run(fn, torch.bfloat16, True, *inputs)
        dense = run(fn, torch.bfloat16, False, *inputs)
        for s, d, t in zip(sparse, dense, truth, strict=True):
            s, d, t = s.detach(), d.detach(), t.detach()
            err_s = float((s - t).abs().max() / t.abs().max())
            err_d = float((d - t).abs().max() / t.abs().max())
            assert err_s <= err_d + 1e-2, (err_s, err_d)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(path, reduction):
    gen = torch.Generator().manual_seed(31)
    N, C, D, K = 4, 5, 3, 3
    idx, val = _sparse_problem((N,), C, K, gen)
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=0.01, softcap=4.0)
    z = torch.randn(N, C, generator=gen, dtype=torch.float64, requires_grad=True)
    v = val.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z_, v_: sce.cross_entropy(z_, SparseTarget(idx, v_), w, **kw), (z, v))
    x = torch.randn(N, D, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(C, D, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=gen, dtype=torch.float64, requires_grad=True)

    def head(x_, W_, b_, v_):
        return sce.linear_cross_entropy(x_, W_, SparseTarget(idx, v_), linear_bias=b_, weight=w, **kw)

    assert torch.autograd.gradcheck(head, (x, W, b, v))


def test_second_order_and_torch_func(path):
    gen = torch.Generator().manual_seed(41)
    N, C, K = 4, 6, 2
    idx, val = _sparse_problem((N,), C, K, gen)
    kw = dict(label_smoothing=0.1, z_loss=0.01, softcap=3.0)
    z = torch.randn(N, C, generator=gen, dtype=torch.float64, requires_grad=True)
    v = val.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z_, v_: sce.cross_entropy(z_, SparseTarget(idx, v_), **kw), (z, v))
    # torch.func.grad and vmap take the composite path: same gradient as the ops
    g_func = torch.func.grad(lambda z_: sce.cross_entropy(z_, SparseTarget(idx, val), **kw))(z.detach())
    (g_ops,) = torch.autograd.grad(sce.cross_entropy(z, SparseTarget(idx, val), **kw), [z])
    torch.testing.assert_close(g_func, g_ops, rtol=1e-10, atol=1e-12)
    per_row = torch.func.vmap(lambda zr, ir, vr: sce.cross_entropy(zr, SparseTarget(ir, vr), **kw))(
        z.detach(), idx, val
    )
    expected = sce.cross_entropy(z.detach(), SparseTarget(idx, val), reduction="none", **kw)
    kept = (idx >= 0).any(1)
    torch.testing.assert_close(per_row[kept], expected[kept], rtol=1e-10, atol=1e-12)
    assert torch.isnan(per_row[~kept]).all()  # one position's "mean" with nothing kept: 0 / 0


def test_class_weight_gradient_and_inplace_backward(path):
    gen = torch.Generator().manual_seed(43)
    z = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    idx, val = _sparse_problem((5,), 6, 3, gen)
    w = (torch.rand(6, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(sce.cross_entropy(z, SparseTarget(idx, val), w, label_smoothing=0.2), [w])
    (r,) = torch.autograd.grad(_reference(z, idx, val, w2, label_smoothing=0.2), [w2])
    torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    if path != "numpy":
        return
    # inplace_backward (the NumPy engine only): the gradient written over the logits
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = sce.cross_entropy(z1, SparseTarget(idx, val), reduction="sum", inplace_backward=True)
    (gz,) = torch.autograd.grad(loss, [z1])
    ref = _reference(z2, idx, val, reduction="sum")
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gz, torch.autograd.grad(ref, [z2])[0])


def test_errors():
    z = torch.randn(3, 5)
    idx, val = torch.tensor([[0, 1], [2, -1], [4, 7]]), torch.rand(3, 2)
    message = r"^Target 7 is out of bounds\. \(SparseTarget index at position \(2,\), entry 1; classes: 5\)$"
    with pytest.raises(IndexError, match=message):
        sce.cross_entropy(z, SparseTarget(idx, val))
    with pytest.raises(IndexError, match=r"position \(1, 0, 1\), entry 0"):
        i4 = torch.zeros(2, 3, 2, 1, dtype=torch.long)
        i4[1, 0, 1, 0] = 5
        sce.cross_entropy(torch.randn(2, 5, 3, 2), SparseTarget(i4, torch.rand(2, 3, 2, 1)))
    with pytest.raises(IndexError, match=r"Target 6 is out of bounds\. \(SparseTarget index at position \(2,\)"):
        sce.linear_cross_entropy(torch.randn(3, 2), torch.randn(5, 2), SparseTarget(idx + 2, val))
    with pytest.raises(RuntimeError, match=r"Expected SparseTarget of shape \[3, 'K'\]"):
        sce.cross_entropy(z, SparseTarget(idx[:2], val[:2]))
    with pytest.raises(ValueError, match="same shape"):
        SparseTarget(idx, val[:, :1])
    with pytest.raises(RuntimeError, match="Expected floating point type for target with class probabilities"):
        SparseTarget(idx, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="Expected floating point type for target with class probabilities"):
        sce.cross_entropy(z, torch.ones(3, 5, dtype=torch.long).to_sparse_csr())
    with pytest.raises(RuntimeError, match=r"sparse target matrix of shape \[3, 5\]"):
        sce.cross_entropy(z, torch.rand(3, 4).to_sparse_csr())
    with pytest.raises(ValueError, match="on the logits' device cpu, but it is on meta"):
        sce.cross_entropy(z, SparseTarget(idx.to("meta"), val.to("meta")))
    with pytest.raises(ValueError, match="different|indices are on"):
        SparseTarget(idx, val.to("meta"))
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        sce.cross_entropy(z, SparseTarget(idx.clamp(max=4), val), ignore_index=1)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified when target contains probabilities"):
        target = SparseTarget(idx.clamp(max=4), val)
        sce.linear_cross_entropy(torch.randn(3, 2), torch.randn(5, 2), target, ignore_index=-1)
    with pytest.MonkeyPatch.context() as mp:  # backend="triton" takes sparse targets, not CPU tensors uninterpreted
        mp.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="backend='triton'"):
            sce.cross_entropy(z, SparseTarget(idx.clamp(max=4), val), backend="triton")
    # NumPy arrays in a SparseTarget are moved onto the logits' device
    np_target = SparseTarget(idx.clamp(max=4).numpy(), val.numpy())
    torch.testing.assert_close(
        sce.cross_entropy(z, np_target), sce.cross_entropy(z, SparseTarget(idx.clamp(max=4), val))
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("head", ["fused", "logits"])
def test_compiled_matches_eager(head, dtype):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyModel(head, "none" if dtype == torch.float32 else "mean").to(dtype)
    x = torch.randn(10, 6, dtype=dtype)
    idx, val = _sparse_problem((10,), 11, 3, torch.Generator().manual_seed(1), dtype)
    v_eager, v_comp = val.clone().requires_grad_(), val.clone().requires_grad_()
    eager = model(x, SparseTarget(idx, v_eager))
    params = list(model.parameters())
    eager_grads = torch.autograd.grad(eager, [*params, v_eager])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x, SparseTarget(idx, v_comp))
    grads = torch.autograd.grad(loss, [*params, v_comp])
    assert_matches_eager(loss, grads, eager, eager_grads, dtype)


def test_opcheck():
    """torch.library.opcheck of the ops with a sparse target (indices and values as tensor arguments)."""
    gen = torch.Generator().manual_seed(51)
    idx, val = _sparse_problem((5,), 7, 3, gen)
    v = val.clone().requires_grad_()
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, dtype=torch.float64)
    torch.library.opcheck(_ops._ce_fwd, (z, idx, w, -100, 0.1, 1e-3, 0.0, "mean", True, "", v))
    torch.library.opcheck(_ops._ce_fwd, (z, idx, None, -100, 0.0, 0.0, 3.0, "none", False, "torch", v))
    up = torch.rand(5, dtype=torch.float64)
    torch.library.opcheck(_ops._ce_bwd, (z.detach(), idx, None, up, -100, 0.1, 1e-3, 2.0, "none", "", val))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    args = (x, W, idx, b, w, -100, 0.1, 1e-3, 0.0, "sum", 2, True, True, True, "", v)
    torch.library.opcheck(_linear_ops._lce_fwd, args)
    x, W, b = x.detach(), W.detach(), b.detach()  # the backward ops have no autograd of their own
    bwd = (x, W, idx, b, None, up, -100, 0.1, 0.0, 0.0, "none", 2, True, True, True, "torch", val)
    torch.library.opcheck(_linear_ops._lce_bwd, bwd)


def test_numpy_front_end_agrees():
    """softmaxce.cross_entropy (NumPy) and softmaxce.torch.cross_entropy give the same sparse loss."""
    gen = torch.Generator().manual_seed(61)
    z = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    idx, val = _sparse_problem((6,), 8, 3, gen)
    ours = sce.cross_entropy(z, SparseTarget(idx, val), label_smoothing=0.1, reduction="sum")
    np_loss = softmaxce.cross_entropy(
        z.numpy(), SparseTarget(idx.numpy(), val.numpy()), label_smoothing=0.1, reduction="sum"
    )
    assert float(ours) == pytest.approx(float(np_loss), rel=1e-12)
