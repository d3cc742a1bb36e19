"""A float64 torch reference of the contract: torch.nn.functional.cross_entropy on soft-capped
logits plus the z-loss term lam * omega_n * lse_n**2 (omega_n = w[y_n] for kept class-index
positions, 0 for ignored ones, 1 for probability targets), reduced as cross_entropy reduces.
Its autograd gives reference gradients for the logits and for probability targets. Also the
drop-in check: our functions and modules take PyTorch's parameters, in its order, with its defaults."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F


def ref_cross_entropy(
    z, t, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None
):
    zc = softcap * torch.tanh(z / softcap) if softcap else z
    per = F.cross_entropy(zc, t, weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    class_axis = 0 if z.dim() == 1 else 1
    lse = torch.logsumexp(zc, dim=class_axis)
    probability = t.shape == z.shape
    if probability:
        omega = torch.ones_like(lse)
        norm = torch.tensor(float(lse.numel()), dtype=z.dtype)
    else:
        kept = t != ignore_index
        w = torch.ones(z.shape[class_axis], dtype=z.dtype) if weight is None else weight.to(z.dtype)
        omega = torch.where(kept, w[torch.where(kept, t, 0)], 0.0)
        norm = omega.sum()
    if z_loss:
        per = per + z_loss * omega * lse * lse
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / norm


def assert_drop_in_signature(ours_fn, theirs_fn, ours_module, theirs_module) -> None:
    """PyTorch's parameters come first, with its kinds and defaults; z_loss and softcap are keyword-only."""
    ours = inspect.signature(ours_fn).parameters
    theirs = inspect.signature(theirs_fn).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, p in theirs.items():
        assert (ours[name].kind, ours[name].default) == (p.kind, p.default), name
    assert [ours[n].kind for n in ("z_loss", "softcap")] == [inspect.Parameter.KEYWORD_ONLY] * 2
    ours_init = inspect.signature(ours_module.__init__).parameters
    for name, p in inspect.signature(theirs_module.__init__).parameters.items():
        assert (ours_init[name].kind, ours_init[name].default) == (p.kind, p.default), name


def assert_raises_like_torch(ours_fn, theirs_fn, args, kwargs, *, same_message: bool = True) -> None:
    """Our function raises PyTorch's exception type (a subclass of it), with its message when asked."""
    with pytest.raises(Exception) as theirs:
        theirs_fn(*args, **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        ours_fn(*args, **kwargs)
    if same_message:
        assert str(ours.value) == str(theirs.value)
