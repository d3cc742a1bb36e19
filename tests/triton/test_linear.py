"""The fused linear head (interpreted and on CUDA) against F.cross_entropy(x @ W.T + b) in float64:
the loss and grad_x, grad_W, grad_b, for every option, with atomic and deterministic weight gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tritoncases import SUBSET, assert_head_reproducible, close, option_grid, reference, rel_err, targets, upstream

from softmaxce import CEOptions
from softmaxce.torch import _triton

P, D, V = 7, 5, 37  # V spans three 16-wide tiles in the interpreter
GRID = [
    pytest.param(*case[1:], id=case[0], marks=() if case[0] in SUBSET else pytest.mark.slow) for case in option_grid()
]


def _problem(rng, probability, weighted, options, device, d=D, dtype=torch.float32, scale=1.0):
    x = torch.from_numpy(rng.normal(0.0, scale, (P, d))).to(device, dtype)
    W = torch.from_numpy(rng.normal(0.0, 1.0, (V, d))).to(device, dtype)
    b = torch.from_numpy(rng.normal(0.0, 0.5, V)).to(device, dtype)
    t = targets(rng, P, V, probability, options.ignore_index).to(device)
    w = torch.from_numpy(rng.uniform(0.2, 2.0, V)).float().to(device) if weighted else None
    return x, W, b, t.float() if probability else t, w


def _reference(x, W, b, t, w, options, go):
    """(loss, grad_x, grad_W, grad_b) in float64 from the logits' reference gradient G: G W, G^T x, sum G."""
    x, W, b = x.cpu().double(), W.cpu().double(), b.cpu().double()
    loss, G = reference(x @ W.T + b, t, w, options, go)
    return loss, G @ W, G.T @ x, G.sum(dim=0)


def _check(ours, ref, **tol):
    for a, r in zip(ours, ref, strict=True):
        close(a, r, **tol)


@pytest.mark.parametrize(("probability", "weighted", "options"), GRID)
def test_matches_reference(device, rng, deterministic, probability, weighted, options):
    x, W, b, t, w = _problem(rng, probability, weighted, options, device)
    go = upstream(rng, P, options.reduction)
    ours = _triton.linear_cross_entropy_rows(x, W, t, b, w, options, (True, True, True), go.float().to(device))
    _check(ours, _reference(x, W, b, t, w, options, go), rtol=5e-5, atol=5e-6)


def test_several_feature_tiles_and_no_bias(device, rng, deterministic):
    options = CEOptions(reduction="none", label_smoothing=0.1, softcap=4.0)
    x, W, _, t, _ = _problem(rng, False, False, options, device, d=37)
    go = upstream(rng, P, "none").float().to(device)
    loss, gx, gw, gb = _triton.linear_cross_entropy_rows(x, W, t, None, None, options, (True, True, True), go)
    assert gb is None
    ref = _reference(x, W, torch.zeros(V), t, None, options, go)
    _check((loss, gx, gw), ref[:3], rtol=5e-5, atol=5e-6)


@pytest.mark.parametrize("want", [(True, False, False), (False, True, True), (False, False, False)], ids=str)
def test_only_the_gradients_asked_for(device, rng, want):
    options = CEOptions(z_loss=1e-2)
    x, W, b, t, _ = _problem(rng, False, False, options, device)
    got = _triton.linear_cross_entropy_rows(x, W, t, b, None, options, want)
    ref = _reference(x, W, b, t, None, options, torch.tensor(1.0))
    close(got[0], ref[0])
    for wanted, g, r in zip(want, got[1:], ref[1:], strict=True):
        assert (g is None) != wanted
        if wanted:
            close(g, r, rtol=5e-5, atol=5e-6)


def test_deterministic_weight_gradient_is_reproducible(device, rng):
    x, W, b, t, _ = _problem(rng, False, False, CEOptions(), device)
    assert_head_reproducible(x, W, t, b)


def test_inputs_not_mutated(device, rng):
    x, W, b, t, w = _problem(rng, True, True, CEOptions(), device)
    copies = [a.clone() for a in (x, W, b, t, w)]
    _triton.linear_cross_entropy_rows(x, W, t, b, w, CEOptions(label_smoothing=0.1), (True, True, True))
    for a, c in zip((x, W, b, t, w), copies, strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [pytest.param(torch.bfloat16, 2**-8, id="bf16"), pytest.param(torch.float16, 2**-11, id="fp16")],
)
def test_low_precision_no_worse_than_torch(device, rng, dtype, tol):
    """Confident logits (scale 4): our error vs float64 at most torch's same-dtype error + tol."""
    options = CEOptions(reduction="sum", label_smoothing=0.1)
    x, W, b, t, _ = _problem(rng, False, False, options, device, d=20, dtype=dtype, scale=4.0)
    ours = _triton.linear_cross_entropy_rows(x, W, t, b, None, options, (True, True, True))
    assert [a.dtype for a in ours] == [dtype] * 4
    ref = _reference(x, W, b, t, None, options, torch.tensor(1.0))
    xt, Wt, bt = (a.clone().requires_grad_() for a in (x, W, b))
    theirs = F.cross_entropy(xt @ Wt.T + bt, t, reduction="sum", label_smoothing=0.1)
    theirs.backward()
    for a, th, r in zip(ours, (theirs.detach(), xt.grad, Wt.grad, bt.grad), ref, strict=True):
        assert rel_err(a, r) <= rel_err(th, r) + tol
