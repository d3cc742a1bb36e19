"""The cross-entropy kernel on given logits (interpreted and on CUDA), against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tritoncases import SUBSET, close, option_grid, reference, rel_err, targets, upstream

from softmaxce import CEOptions
from softmaxce.torch import _triton

P, C = 7, 13
GRID = [
    pytest.param(*case[1:], id=case[0], marks=() if case[0] in SUBSET else pytest.mark.slow) for case in option_grid()
]


def _problem(rng, probability, weighted, options, device, scale=3.0):
    z = torch.from_numpy(rng.normal(0.0, scale, (P, C))).float().to(device)
    t = targets(rng, P, C, probability, options.ignore_index).to(device)
    w = torch.from_numpy(rng.uniform(0.2, 2.0, C)).float().to(device) if weighted else None
    return z, t.float() if probability else t, w


@pytest.mark.parametrize(("probability", "weighted", "options"), GRID)
def test_matches_reference(device, rng, probability, weighted, options):
    z, t, w = _problem(rng, probability, weighted, options, device)
    go = upstream(rng, P, options.reduction)
    loss, grad = _triton.cross_entropy_rows(z, t, w, options, True, go.float().to(device))
    ref_loss, ref_grad = reference(z, t, w, options, go)
    assert loss.dtype == grad.dtype == torch.float32
    close(loss, ref_loss)
    close(grad, ref_grad)


def test_ignore_index_in_range(device, rng):
    options = CEOptions(ignore_index=3, label_smoothing=0.2)
    z, t, _ = _problem(rng, False, False, options, device)
    t[[0, 4]] = 3
    go = torch.tensor(1.0)
    loss, grad = _triton.cross_entropy_rows(z, t, None, options, True, go.to(device))
    ref_loss, ref_grad = reference(z, t, None, options, go)
    close(loss, ref_loss)
    close(grad, ref_grad)
    assert not grad[[0, 4]].any()


def test_loss_only_and_gradient_in_place(device, rng):
    options = CEOptions(label_smoothing=0.1, softcap=5.0)
    z, t, w = _problem(rng, False, True, options, device)
    original = z.clone()
    loss_only, none = _triton.cross_entropy_rows(z, t, w, options, False)
    assert none is None
    loss, grad = _triton.cross_entropy_rows(z, t, w, options, True)
    torch.testing.assert_close(z, original, rtol=0, atol=0)  # never mutated unless asked
    buf = z.clone()
    loss_inplace, out = _triton.cross_entropy_rows(buf, t, w, options, True, out=buf)
    assert out is buf
    torch.testing.assert_close(buf, grad, rtol=0, atol=0)
    torch.testing.assert_close(loss_only, loss, rtol=0, atol=0)
    torch.testing.assert_close(loss_inplace, loss, rtol=0, atol=0)


def test_extreme_logits_are_exact(device):
    z = torch.tensor([[1000.0, 0.0, -1000.0], [1000.0, 0.0, -1000.0]], device=device)
    t = torch.tensor([0, 2], device=device)
    go = torch.ones(2, device=device)
    loss, grad = _triton.cross_entropy_rows(z, t, None, CEOptions(reduction="none"), True, go)
    torch.testing.assert_close(loss.cpu(), torch.tensor([0.0, 2000.0]))
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad.cpu(), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]))


def test_minus_inf_on_a_non_target_class_contributes_nothing(device):
    z = torch.tensor([[0.0, float("-inf"), 0.0, 1.0, 2.0, 0.5, -1.0, 0.25, 3.0, 1.5]])
    loss, grad = _triton.cross_entropy_rows(z.to(device), torch.tensor([0], device=device), None, CEOptions(), True)
    zz = z.double().requires_grad_()
    F.cross_entropy(zz, torch.tensor([0])).backward()
    close(loss, F.cross_entropy(z.double(), torch.tensor([0])))
    close(grad, zz.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_position_ignored_and_empty_batch(device, reduction):
    options = CEOptions(reduction=reduction)
    z, one = torch.randn(3, 5, device=device), torch.ones((), device=device)
    loss, grad = _triton.cross_entropy_rows(z, torch.full((3,), -100, device=device), None, options, True, one)
    expected = {"mean": torch.tensor(float("nan")), "sum": torch.tensor(0.0), "none": torch.zeros(3)}[reduction]
    torch.testing.assert_close(loss.cpu(), expected, equal_nan=True)
    assert not grad.any()
    loss, grad = _triton.cross_entropy_rows(
        z[:0], torch.zeros(0, dtype=torch.long, device=device), None, options, True, one
    )
    assert grad.shape == (0, 5)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [pytest.param(torch.bfloat16, 2**-8, id="bf16"), pytest.param(torch.float16, 2**-11, id="fp16")],
)
@pytest.mark.parametrize("probability", [False, True], ids=["index", "prob"])
def test_low_precision_no_worse_than_torch(device, rng, dtype, tol, probability):
    """Our error against float64 is at most torch's same-dtype error + tol (confident logits too)."""
    options = CEOptions(reduction="sum", label_smoothing=0.1)
    z, t, _ = _problem(rng, probability, False, options, device, scale=8.0)
    z = z.to(dtype)
    go = torch.tensor(1.0)
    loss, grad = _triton.cross_entropy_rows(z, t, None, options, True, go.to(device))
    assert loss.dtype == grad.dtype == dtype
    ref_loss, ref_grad = reference(z, t, None, options, go)
    zt = z.clone().requires_grad_()
    torch_loss = F.cross_entropy(zt, t.to(dtype) if probability else t, reduction="sum", label_smoothing=0.1)
    torch_loss.backward()
    assert rel_err(loss, ref_loss) <= rel_err(torch_loss.detach(), ref_loss) + tol
    assert rel_err(grad, ref_grad) <= rel_err(zt.grad, ref_grad) + tol
    assert np.isfinite(grad.float().cpu().numpy()).all()
