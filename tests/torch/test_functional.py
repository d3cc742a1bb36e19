"""softmaxce.torch.cross_entropy and CrossEntropyLoss against PyTorch and a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _torchref import assert_drop_in_signature, assert_raises_like_torch, ref_cross_entropy

import softmaxce.torch as sce


def _problem(shape, kind, gen, *, ignore=True):
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    C = shape[0] if len(shape) == 1 else shape[1]
    pos = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    if kind == "prob":
        t = torch.rand(shape, generator=gen, dtype=torch.float64).softmax(dim=0 if len(shape) == 1 else 1)
    else:
        t = torch.randint(0, C, pos, generator=gen)
        if ignore and t.numel() > 1:
            t.view(-1)[1] = -100
    return z, t


CASES = [
    # shape, target kind, weighted, label_smoothing, z_loss, softcap
    ((7, 5), "index", False, 0.0, 0.0, None),
    ((7, 5), "index", True, 0.0, 0.0, None),
    ((7, 5), "index", True, 0.2, 0.0, None),
    ((7, 5), "index", True, 0.2, 1e-2, 3.0),
    ((7, 5), "prob", False, 0.0, 0.0, None),
    ((7, 5), "prob", True, 0.3, 1e-2, 2.5),
    ((5,), "index", False, 0.1, 0.0, None),
    ((5,), "prob", True, 0.0, 0.0, None),
    ((3, 4, 2, 3), "index", True, 0.1, 1e-3, None),
    ((3, 4, 2, 3), "prob", False, 0.1, 0.0, 4.0),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-{k}{'-w' if w else ''}-eps{e}-lam{lam}-cap{c}" for s, k, w, e, lam, c in CASES]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("shape", "kind", "weighted", "eps", "lam", "cap"), CASES, ids=CASE_IDS)
def test_matches_float64_reference(path, shape, kind, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(hash((shape, kind, weighted, eps, reduction)) % 2**31)
    z, t = _problem(shape, kind, gen)
    C = shape[0] if len(shape) == 1 else shape[1]
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    kw = dict(reduction=reduction, label_smoothing=eps, z_loss=lam, softcap=cap)
    probability = kind == "prob"
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    t1, t2 = (t.clone().requires_grad_(), t.clone().requires_grad_()) if probability else (t, t)
    z_before, t_before = z1.detach().clone(), t1.detach().clone()
    ours = sce.cross_entropy(z1, t1, w, **kw)
    ref = ref_cross_entropy(z2, t2, w, **kw)
    assert ours.dtype == torch.float64 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    up = torch.rand(ref.shape, generator=gen, dtype=torch.float64) + 0.5  # non-uniform upstream for "none"
    grads = torch.autograd.grad(ours, [z1, t1] if probability else [z1], up)
    refs = torch.autograd.grad(ref, [z2, t2] if probability else [z2], up)
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    assert torch.equal(z1.detach(), z_before) and torch.equal(t1.detach(), t_before)  # inputs untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_modules_match_torch(path, dtype):
    gen = torch.Generator().manual_seed(3)
    z, t = _problem((33, 17), "index", gen)
    z = z.to(dtype)
    w = (torch.rand(17, generator=gen) + 0.1).to(dtype)
    ours_mod = sce.CrossEntropyLoss(weight=w, label_smoothing=0.05, ignore_index=-100)
    torch_mod = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.05)
    assert [n for n, _ in ours_mod.named_buffers()] == ["weight"]
    assert ours_mod.state_dict().keys() == torch_mod.state_dict().keys()
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    a, b = ours_mod(z1, t), torch_mod(z2, t)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, b, **tol)
    a.backward()
    b.backward()
    torch.testing.assert_close(z1.grad, z2.grad, **tol)


def test_gradient_only_for_tensors_that_require_it(path):
    gen = torch.Generator().manual_seed(4)
    z, t = _problem((6, 4), "prob", gen)
    zr = z.clone().requires_grad_()
    loss = sce.cross_entropy(zr, t)  # target does not require grad
    loss.backward()
    assert zr.grad is not None and t.grad is None
    tr = t.clone().requires_grad_()
    loss = sce.cross_entropy(z, tr, reduction="sum")  # only the target requires grad
    (gt,) = torch.autograd.grad(loss, tr)
    torch.testing.assert_close(gt, -torch.log_softmax(z, 1))  # dL/dt = -ln a
    with torch.no_grad():
        assert not sce.cross_entropy(zr, t).requires_grad


def test_retain_graph_twice_gives_same_gradient(path):
    gen = torch.Generator().manual_seed(5)
    z, t = _problem((6, 4), "index", gen)
    z.requires_grad_()
    loss = sce.cross_entropy(z, t) * 2
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    torch.testing.assert_close(g1, 2 * torch.autograd.grad(F.cross_entropy(z, t), z)[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_edge_cases_match_torch(path, reduction):
    z = torch.tensor(
        [
            [1000.0, 0.0, -1000.0],
            [0.0, 1.0, 2.0],
            [1.0, float("-inf"), 0.0],
            [float("nan"), 0.0, 1.0],
            [float("inf"), 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    t = torch.tensor([0, -100, 0, 1, 1])
    ours = sce.cross_entropy(z, t, reduction=reduction)
    torch.testing.assert_close(ours, F.cross_entropy(z, t, reduction=reduction), equal_nan=True)
    t_all = torch.full((5,), -100)  # every position ignored
    zr = z.clone().nan_to_num(0.0).requires_grad_()
    ours = sce.cross_entropy(zr, t_all, reduction=reduction)
    torch.testing.assert_close(ours, F.cross_entropy(zr, t_all, reduction=reduction), equal_nan=True)
    ours.sum().backward()
    assert torch.equal(zr.grad, torch.zeros_like(zr))
    empty = torch.zeros(0, 3, dtype=torch.float64)
    torch.testing.assert_close(
        sce.cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction=reduction),
        F.cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction=reduction),
        equal_nan=True,
    )


def test_signature_matches_torch():
    assert_drop_in_signature(sce.cross_entropy, F.cross_entropy, sce.CrossEntropyLoss, torch.nn.CrossEntropyLoss)


def test_legacy_size_average_reduce():
    z, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    with pytest.warns(UserWarning):
        ours = sce.cross_entropy(z, t, size_average=False)
    torch.testing.assert_close(ours, F.cross_entropy(z, t, reduction="sum"))


def _bad_inputs():
    z = torch.randn(4, 3)
    zk = torch.randn(2, 3, 5)
    return [
        ("out of bounds", (z, torch.tensor([0, 1, 3, 0])), {}),
        ("negative target", (z, torch.tensor([0, -1, 2, 0])), {}),
        ("batch size", (z, torch.tensor([0, 1, 2])), {}),
        ("k-dim shape", (zk, torch.zeros(2, 4, dtype=torch.long)), {}),
        ("1-d target size", (torch.randn(3), torch.tensor([0, 1])), {}),
        ("multi-target", (z, torch.zeros(4, 2, dtype=torch.long)), {}),
        ("integer probs", (z, torch.zeros(4, 3, dtype=torch.long)), {}),
        ("float class idx", (z, torch.zeros(4, dtype=torch.float64)), {}),
        ("weight length", (z, torch.tensor([0, 1, 2, 0])), {"weight": torch.ones(4)}),
        ("ignore_index with probs", (z, torch.rand(4, 3)), {"ignore_index": 1}),
        ("label_smoothing", (z, torch.tensor([0, 1, 2, 0])), {"label_smoothing": 1.5}),
        ("reduction", (z, torch.tensor([0, 1, 2, 0])), {"reduction": "avg"}),
        ("integer logits", (z.long(), torch.tensor([0, 1, 2, 0])), {}),
        ("uint16 logits", (z.to(torch.uint16), torch.tensor([0, 1, 2, 0])), {}),
        ("uint16 probs", (z, torch.zeros(4, 3, dtype=torch.uint16)), {}),
    ]


@pytest.mark.parametrize(("name", "args", "kwargs"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_errors_match_torch(name, args, kwargs):
    # for integer logits PyTorch names its internal kernel, we name the dtype
    assert_raises_like_torch(sce.cross_entropy, F.cross_entropy, args, kwargs, same_message="logits" not in name)


def test_out_of_bounds_on_chunked_path():
    z = torch.randn(4, 3, dtype=torch.bfloat16)
    with pytest.raises(IndexError, match="Target 7 is out of bounds."):
        sce.cross_entropy(z, torch.tensor([0, 7, 1, 0]))


def test_noncontiguous_and_uint8_targets(path):
    z = torch.randn(6, 10, dtype=torch.float64)[:, ::2]  # non-contiguous (6, 5)
    t = torch.tensor([0, 4, 1, 2, 3, 0], dtype=torch.uint8)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    a, b = sce.cross_entropy(z1[:, :], t), F.cross_entropy(z2, t.long())
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_float32_cpu_logits_reach_the_engine_without_a_copy(monkeypatch):
    import numpy as np

    from softmaxce import _engine

    seen = {}
    run_rows = _engine.run_rows

    def spy(rows, *args, **kwargs):
        seen["rows"] = rows
        return run_rows(rows, *args, **kwargs)

    monkeypatch.setattr(_engine, "run_rows", spy)
    z = torch.randn(8, 5, requires_grad=True)
    sce.cross_entropy(z, torch.arange(8) % 5).backward()
    assert np.shares_memory(seen["rows"], z.detach().numpy())
    assert z.grad is not None


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_eager_calls_match_the_custom_op_bit_for_bit(reduction):
    """Eager calls skip the dispatcher (`_ops._EagerRows`); traced code calls the op. Both give the
    same loss and gradients, first and second order."""
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(7, 5, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 4, -100, 2, 2, 1, 3])
    u = torch.randn(7, dtype=torch.float64, generator=g)
    results = []
    for call in ("eager", "op"):
        z = z0.clone().requires_grad_()
        if call == "eager":
            loss = sce.cross_entropy(z, t, reduction=reduction, label_smoothing=0.1)
        else:
            op = torch.ops.softmaxce.cross_entropy_rows
            loss = op(z, t, None, -100, 0.1, 0.0, 0.0, reduction, True, "", None)[0]
        scalar = (loss * u).sum() if reduction == "none" else loss
        (grad,) = torch.autograd.grad(scalar, z, create_graph=True)
        (second,) = torch.autograd.grad((grad * grad).sum(), z)
        results.append((loss.detach(), grad.detach(), second))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
