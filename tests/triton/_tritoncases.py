"""Problems and the float64 reference shared by the interpreter tests (small odd shapes)."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from reference import reference_cross_entropy
from softmaxce import CEOptions
from softmaxce.torch import _triton

IGNORED = (2, 5)  # positions whose class-index target is ignore_index


def option_grid():
    """Every combination of the contract's options: (id, probability, weighted, options)."""
    for prob, weighted, eps, lam, cap, red in itertools.product(
        (False, True), (False, True), (0.0, 0.1), (0.0, 1e-2), (None, 3.0), ("mean", "sum", "none")
    ):
        name = "-".join(
            s
            for s in (
                "prob" if prob else "index",
                red,
                "weight" if weighted else "",
                f"smooth{eps}" if eps else "",
                f"zloss{lam}" if lam else "",
                f"cap{cap}" if cap else "",
            )
            if s
        )
        yield name, prob, weighted, CEOptions(reduction=red, label_smoothing=eps, z_loss=lam, softcap=cap)


# a representative subset: each option on, each reduction, both target kinds, with and without weights
SUBSET = {
    "index-mean",
    "index-sum-weight",
    "index-none-weight-smooth0.1",
    "index-mean-weight-smooth0.1-zloss0.01-cap3.0",
    "index-none-zloss0.01",
    "prob-mean",
    "prob-sum-weight-smooth0.1",
    "prob-none-zloss0.01-cap3.0",
    "prob-mean-weight-smooth0.1-zloss0.01-cap3.0",
}


def targets(rng, P, C, probability, ignore_index=-100):
    if probability:
        t = rng.random((P, C))
        return torch.from_numpy(t / t.sum(axis=1, keepdims=True))
    t = rng.integers(0, C, P)
    t[list(IGNORED)] = ignore_index
    return torch.from_numpy(t)


def upstream(rng, P, reduction):
    """A non-uniform per-position upstream gradient for "none", a scalar otherwise."""
    return torch.from_numpy(rng.uniform(-2.0, 2.0, P)) if reduction == "none" else torch.tensor(0.7)


def reference(z, t, weight, options, grad_output):
    """(loss, dJ/dz) in float64 (tests/reference.py)."""
    z, t, grad_output = z.cpu(), t.cpu(), grad_output.cpu()
    loss, grad = reference_cross_entropy(
        z.double().numpy(),
        t.numpy(),
        weight=None if weight is None else weight.cpu().double().numpy(),
        ignore_index=options.ignore_index,
        reduction=options.reduction,
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        softcap=options.softcap,
        grad_output=grad_output.double().numpy(),
    )
    return torch.from_numpy(np.asarray(loss)), torch.from_numpy(grad)


def close(ours, ref, rtol=2e-5, atol=2e-6):
    """assert_close in float64 on the CPU (either side may be a CUDA tensor)."""
    torch.testing.assert_close(ours.cpu().double(), ref.cpu().double(), rtol=rtol, atol=atol, equal_nan=True)


def rel_err(ours, ref):
    """max |ours - ref| / max(1, max |ref|), in float64."""
    ours, ref = ours.cpu().double(), ref.cpu().double()
    return float((ours - ref).abs().max() / max(1.0, float(ref.abs().max())))


def assert_head_reproducible(x, W, t, b):
    """The fused head run twice under torch.use_deterministic_algorithms(True) gives the same bits."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _triton.linear_cross_entropy_rows(x, W, t, b, None, CEOptions(), (True, True, True))
        again = _triton.linear_cross_entropy_rows(x, W, t, b, None, CEOptions(), (True, True, True))
    finally:
        torch.use_deterministic_algorithms(before)
    for a, r in zip(first, again, strict=True):
        assert torch.equal(a, r)
