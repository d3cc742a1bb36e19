"""backend= on the front ends: softmaxce.torch's functions and modules reach the Triton kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import softmaxce.torch as sce
from softmaxce.torch import _triton


def _spy(monkeypatch):
    """The names of the `_triton` launchers called from now on, in order."""
    calls = []
    for name in ("cross_entropy_rows", "linear_cross_entropy_rows"):
        real = getattr(_triton, name)
        monkeypatch.setattr(
            _triton, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    return calls


def _front_ends(device, backend):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 13, generator=g).to(device).requires_grad_()
    t = torch.tensor([0, 12, 3, -100, 5, 5, 1], device=device)
    loss = sce.cross_entropy(z, t, label_smoothing=0.1, backend=backend)
    loss.backward()
    z_ref = z.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(z_ref, t, label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-5, atol=1e-6)
    x = torch.randn(7, 5, generator=g).to(device).requires_grad_()
    head = sce.LinearCrossEntropyLoss(5, 13, bias=True, backend=backend).to(device)
    loss = head(x, t)
    loss.backward()
    ref = F.cross_entropy(F.linear(x.detach(), head.linear.weight.detach(), head.linear.bias.detach()), t)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_backend_triton_runs_the_kernels_through_every_front_end(device, monkeypatch):
    calls = _spy(monkeypatch)
    _front_ends(device, "triton")
    assert calls[0] == "cross_entropy_rows" and "linear_cross_entropy_rows" in calls


def test_cuda_defaults_logits_kernel_yes_fused_head_no(device, monkeypatch):
    """backend=None on CUDA tensors: cross-entropy on logits runs the Triton kernel; the fused head runs
    the chunked torch path (the Triton head is not yet faster there), with the same results."""
    if device.type != "cuda":
        pytest.skip("backend=None picks the Triton kernels for CUDA tensors only")
    calls = _spy(monkeypatch)
    _front_ends(device, None)
    assert "cross_entropy_rows" in calls and "linear_cross_entropy_rows" not in calls


def test_backend_triton_without_the_interpreter_fails_at_call_time(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    criterion = sce.CrossEntropyLoss(backend="triton")  # constructs, as torch's option checks wait for the call
    with pytest.raises(_triton.BackendError, match="CUDA tensors"):
        criterion(torch.randn(3, 4), torch.tensor([0, 1, 2]))
