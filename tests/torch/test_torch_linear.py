"""softmaxce.torch.linear_cross_entropy and LinearCrossEntropyLoss against PyTorch and a float64
reference (logits formed explicitly, then the reference cross-entropy)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _torchref import assert_drop_in_signature, assert_raises_like_torch, ref_cross_entropy

import softmaxce.torch as sce
from softmaxce import _engine
from softmaxce.torch import _chunked, _linear_ops, _ops


@pytest.fixture(params=["numpy", "chunked"])
def path(request, monkeypatch):
    """The NumPy fused head, or the torch chunked head (forced, in float64, with small chunks)."""
    if request.param == "chunked":
        monkeypatch.setattr(_ops, "_numpy_path", lambda t: False)
        monkeypatch.setattr(_engine, "CHUNK_BYTES", 3 * 11 * 8)  # 3 rows of 11 float64 classes per chunk
    return request.param


CASES = [
    # batched, target kind, bias, weighted, eps, z_loss, softcap
    (True, "index", False, False, 0.0, 0.0, None),
    (True, "index", True, True, 0.1, 0.0, None),
    (True, "index", True, True, 0.1, 1e-2, 5.0),
    (True, "prob", True, False, 0.0, 0.0, None),
    (True, "prob", False, True, 0.2, 1e-2, 3.0),
    (False, "index", True, False, 0.0, 0.0, None),
    (False, "prob", True, True, 0.1, 0.0, None),
]
IDS = [
    f"{'N' if b else '1'}-{k}{'-bias' if bb else ''}{'-w' if w else ''}-eps{e}-lam{lam}-cap{c}"
    for b, k, bb, w, e, lam, c in CASES
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("batched", "kind", "has_bias", "weighted", "eps", "lam", "cap"), CASES, ids=IDS)
def test_matches_float64_reference(path, batched, kind, has_bias, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(hash((batched, kind, has_bias, weighted, reduction)) % 2**31)
    N, D, V = 10, 6, 11
    x = torch.randn((N, D) if batched else (D,), generator=gen, dtype=torch.float64)
    W = torch.randn(V, D, generator=gen, dtype=torch.float64)
    b = torch.randn(V, generator=gen, dtype=torch.float64) if has_bias else None
    w = torch.rand(V, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    probability = kind == "prob"
    if probability:
        t = torch.rand((N, V) if batched else (V,), generator=gen, dtype=torch.float64).softmax(-1)
    else:
        t = torch.randint(0, V, (N,) if batched else (), generator=gen)
        if batched:
            t[3] = -100
    leaves1 = [x.clone(), W.clone()] + ([b.clone()] if has_bias else []) + ([t.clone()] if probability else [])
    leaves2 = [v.clone() for v in leaves1]
    for v in leaves1 + leaves2:
        v.requires_grad_()
    before = [v.detach().clone() for v in leaves1]

    def unpack(leaves):
        x_, W_ = leaves[:2]
        b_ = leaves[2] if has_bias else None
        t_ = leaves[-1] if probability else t
        return x_, W_, b_, t_

    x1, W1, b1, t1 = unpack(leaves1)
    x2, W2, b2, t2 = unpack(leaves2)
    kw = dict(reduction=reduction, label_smoothing=eps, z_loss=lam, softcap=cap)
    ours = sce.linear_cross_entropy(x1, W1, t1, linear_bias=b1, weight=w, **kw)
    ref = ref_cross_entropy(F.linear(x2, W2, b2), t2, w, **kw)
    assert ours.shape == ref.shape and ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    up = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5
    for g, r in zip(torch.autograd.grad(ours, leaves1, up), torch.autograd.grad(ref, leaves2, up), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
    for v, v0 in zip(leaves1, before, strict=True):
        assert torch.equal(v.detach(), v0)


@pytest.mark.parametrize("which", ["x", "W", "b"])
def test_only_required_gradients(path, which):
    gen = torch.Generator().manual_seed(7)
    x, W, b = (torch.randn(s, generator=gen, dtype=torch.float64) for s in [(5, 4), (7, 4), (7,)])
    t = torch.randint(0, 7, (5,), generator=gen)
    leaf = {"x": x, "W": W, "b": b}[which].requires_grad_()
    loss = sce.linear_cross_entropy(x, W, t, linear_bias=b)
    (g,) = torch.autograd.grad(loss, leaf)
    x2, W2, b2 = (v.detach().clone().requires_grad_() for v in (x, W, b))
    ref = F.cross_entropy(F.linear(x2, W2, b2), t)
    torch.testing.assert_close(g, torch.autograd.grad(ref, {"x": x2, "W": W2, "b": b2}[which])[0])
    assert [v.grad for v in (x, W, b)] == [None, None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_matches_torch_module(dtype):
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(
        8, 13, bias=True, dtype=dtype, weight=torch.rand(13, dtype=dtype), label_smoothing=0.1
    )
    ours = sce.LinearCrossEntropyLoss(
        8, 13, bias=True, dtype=dtype, weight=torch.rand(13, dtype=dtype), label_smoothing=0.1
    )
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, t = torch.randn(9, 8, dtype=dtype), torch.randint(0, 13, (9,))
    a, b = ours(x, t), theirs(x, t)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == torch.float32 else {}
    torch.testing.assert_close(a, b, **tol)
    a.backward()
    b.backward()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **tol)


def test_k_dimensional_weight_matches_torch():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (4, 2), generator=gen)
    a = sce.linear_cross_entropy(x, W, t)
    b = F.linear_cross_entropy(x, W, t)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, (x, W)), torch.autograd.grad(b, (x, W)))


def test_options_chunk_size_is_used():
    gen = torch.Generator().manual_seed(10)
    x, W = torch.randn(10, 4, generator=gen), torch.randn(6, 4, generator=gen)
    t = torch.randint(0, 6, (10,), generator=gen)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=3)
    torch.testing.assert_close(
        sce.linear_cross_entropy(x, W, t, options=opts), F.cross_entropy(F.linear(x, W), t), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(("dtype", "rows"), [(torch.float64, 3), (torch.bfloat16, 6)], ids=["fp64", "bf16"])
def test_chunks_fill_the_engine_byte_budget(monkeypatch, dtype, rows):
    """The chunked head's rows per chunk come from softmaxce._engine.CHUNK_BYTES over (classes x the
    accumulation dtype's itemsize): 264 bytes are 3 rows of 11 float64 logits, 6 rows of 11 float32."""
    monkeypatch.setattr(_linear_ops, "_numpy_path", lambda t: False)
    monkeypatch.setattr(_engine, "CHUNK_BYTES", 3 * 11 * 8)
    seen = []
    chunk = _chunked._chunk

    def spy(z, *args):
        seen.append(z.shape[0])
        return chunk(z, *args)

    monkeypatch.setattr(_chunked, "_chunk", spy)
    gen = torch.Generator().manual_seed(11)
    x, W = torch.randn(14, 4, generator=gen).to(dtype), torch.randn(11, 4, generator=gen).to(dtype)
    t = torch.randint(0, 11, (14,), generator=gen)
    loss = sce.linear_cross_entropy(x, W, t)
    assert seen == [rows] * (14 // rows) + [14 % rows]
    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(loss.double(), F.cross_entropy(F.linear(x.double(), W.double()), t), **tol)


@pytest.mark.parametrize(("dtype", "rows"), [(torch.float32, 6), (torch.float64, 3)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("batch_chunk_size", [None, 4])
def test_numpy_head_from_torch_uses_the_torch_budget(monkeypatch, dtype, rows, batch_chunk_size):
    """On CPU the torch front end runs the NumPy head in chunks of `_linear_ops.TORCH_CHUNK_BYTES` of
    logits (not the NumPy API's smaller `_engine.CHUNK_BYTES`), unless options set the rows."""
    from softmaxce import _fused

    monkeypatch.setattr(_linear_ops, "TORCH_CHUNK_BYTES", 3 * 11 * 8)  # 3 float64 / 6 float32 rows of 11
    seen = []
    forward = _fused.forward_linear

    def spy(*args, **kwargs):
        seen.append(args[6])  # the chunk rows
        return forward(*args, **kwargs)

    monkeypatch.setattr(_fused, "forward_linear", spy)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(14, 4, generator=gen, dtype=dtype, requires_grad=True)
    W = torch.randn(11, 4, generator=gen, dtype=dtype, requires_grad=True)
    t = torch.randint(0, 11, (14,), generator=gen)
    opts = None if batch_chunk_size is None else torch.nn.LinearCrossEntropyOptions(batch_chunk_size=batch_chunk_size)
    loss = sce.linear_cross_entropy(x, W, t, options=opts)
    loss.backward()
    assert seen == [rows if batch_chunk_size is None else batch_chunk_size]
    ref = F.cross_entropy(F.linear(x.detach().double(), W.detach().double()), t)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize(("available", "budget"), [(None, 2**30), (2**40, 2**30), (2**30, 2**28), (2**10, 3 * 2**10)])
def test_torch_chunk_budget_shrinks_where_memory_is_short(monkeypatch, available, budget):
    """The torch front end's chunk budget: TORCH_CHUNK_BYTES, or a quarter of the available memory,
    but never below the NumPy API's CHUNK_BYTES."""
    from softmaxce import _resources

    monkeypatch.setattr(_linear_ops, "TORCH_CHUNK_BYTES", 2**30)
    monkeypatch.setattr(_engine, "CHUNK_BYTES", 3 * 2**10)
    monkeypatch.setattr(_resources, "available_memory", lambda: available)
    assert _linear_ops._torch_chunk_bytes() == budget


def test_signature_matches_torch():
    assert_drop_in_signature(
        sce.linear_cross_entropy, F.linear_cross_entropy, sce.LinearCrossEntropyLoss, torch.nn.LinearCrossEntropyLoss
    )


def _bad():
    x, W = torch.randn(4, 3), torch.randn(5, 3)
    t = torch.tensor([0, 1, 2, 3])
    return [
        ("3-d input", (torch.randn(2, 4, 3), W, t), {}),
        ("1-d weight", (x, torch.randn(3), t), {}),
        ("in_features", (x, torch.randn(5, 2), t), {}),
        ("bias shape", (x, W, t), {"linear_bias": torch.randn(4)}),
        ("probs with ignore_index", (x, W, torch.rand(4, 5)), {"ignore_index": -100}),
        ("out of bounds", (x, W, torch.tensor([0, 1, 5, 3])), {}),
        ("batch size", (x, W, torch.tensor([0, 1, 2])), {}),
        ("float class idx", (x, W, t.double()), {}),
        ("weight length", (x, W, t), {"weight": torch.ones(4)}),
        ("reduction", (x, W, t), {"reduction": "avg"}),
    ]


@pytest.mark.parametrize(("name", "args", "kwargs"), _bad(), ids=[c[0] for c in _bad()])
def test_errors_match_torch(name, args, kwargs):
    assert_raises_like_torch(sce.linear_cross_entropy, F.linear_cross_entropy, args, kwargs)
