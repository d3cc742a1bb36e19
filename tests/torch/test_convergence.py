"""Training a small model with softmaxce's head follows the same loss curve as with PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import softmaxce.torch as sce

STEPS = 150


def _data(gen):
    N, D, C = 256, 16, 10
    x = torch.randn(N, D, generator=gen)
    teacher = torch.randn(D, C, generator=gen) * 2
    t = (x @ teacher + 0.5 * torch.randn(N, C, generator=gen)).argmax(dim=1)
    t[::17] = -100  # some ignored positions
    return x, t


def _train(head: str, dtype: torch.dtype) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    x, t = _data(gen)
    torch.manual_seed(1)
    body = torch.nn.Linear(16, 32).to(dtype)
    out = torch.nn.Linear(32, 10).to(dtype)
    params = list(body.parameters()) + list(out.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    x = x.to(dtype)
    curve = []
    for _ in range(STEPS):
        h = torch.tanh(body(x))
        if head == "softmaxce":
            loss = sce.linear_cross_entropy(h, out.weight, t, linear_bias=out.bias, label_smoothing=0.05)
        else:
            loss = F.cross_entropy(F.linear(h, out.weight, out.bias), t, label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    return curve


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_same_loss_curve_as_torch(dtype, tol):
    ours = torch.tensor(_train("softmaxce", dtype))
    theirs = torch.tensor(_train("torch", dtype))
    assert ours[-1] < 0.5 * ours[0]  # it learns
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
