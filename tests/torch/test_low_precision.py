"""The low-precision rule: for bfloat16 and float16, |ours - fp64 reference| <= |PyTorch in the same
dtype - fp64 reference| + tol, for the loss and for each gradient, with |e| the relative L2 error
||a - ref|| / ||ref|| of the whole tensor. The float64 reference is computed from the same rounded
low-precision inputs (logits, weights, upstream gradient).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import softmaxce.torch as sce

DTYPES = [torch.bfloat16, torch.float16]
IDS = ["bf16", "fp16"]


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach()
    return float((a - ref).norm() / ref.norm())


def _assert_rule(ours, torch_same, ref, tol):
    e_ours, e_torch = _err(ours, ref), _err(torch_same, ref)
    assert e_ours <= e_torch + tol, (e_ours, e_torch)


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["plain", "confident"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_cross_entropy_rule(dtype, reduction, scale):
    gen = torch.Generator().manual_seed(1)
    z = (torch.randn(64, 1000, generator=gen) * scale).to(dtype)
    t = torch.randint(0, 1000, (64,), generator=gen)
    t[5] = -100
    w = (torch.rand(1000, generator=gen) + 0.5).to(dtype)
    kw = dict(reduction=reduction, label_smoothing=0.1)
    up = (torch.rand(64, generator=gen) + 0.5 if reduction == "none" else torch.tensor(1.0)).to(dtype)
    results = []
    for fn, d in ((sce.cross_entropy, dtype), (F.cross_entropy, dtype), (F.cross_entropy, torch.float64)):
        zz = z.to(d).requires_grad_()
        loss = fn(zz, t, w.to(d), **kw)
        assert loss.dtype == d
        (g,) = torch.autograd.grad(loss, zz, up.to(d))
        results.append((loss, g))
    (lo, go), (lt, gt), (lr, gr) = results
    _assert_rule(lo, lt, lr, tol=1e-5)
    _assert_rule(go, gt, gr, tol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_linear_cross_entropy_rule(dtype, reduction):
    gen = torch.Generator().manual_seed(2)
    N, D, V = 96, 64, 512
    x = torch.randn(N, D, generator=gen).to(dtype)
    W = (torch.randn(V, D, generator=gen) / D**0.5 * 3).to(dtype)
    b = (torch.randn(V, generator=gen) * 0.1).to(dtype)
    t = torch.randint(0, V, (N,), generator=gen)
    up = (torch.rand(N, generator=gen) + 0.5 if reduction == "none" else torch.tensor(1.0)).to(dtype)

    def naive(x, W, t, *, linear_bias, reduction):
        return F.cross_entropy(F.linear(x, W, linear_bias), t, reduction=reduction)

    results = []
    for fn, d in ((sce.linear_cross_entropy, dtype), (naive, dtype), (naive, torch.float64)):
        leaves = [v.to(d).requires_grad_() for v in (x, W, b)]
        loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2], reduction=reduction)
        assert loss.dtype == d
        results.append((loss, *torch.autograd.grad(loss, leaves, up.to(d))))
    ours, theirs, ref = results
    for o, t_, r in zip(ours, theirs, ref, strict=True):
        _assert_rule(o, t_, r, tol=1e-5)
