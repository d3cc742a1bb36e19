"""A float64 torch reference of the contract: torch.nn.functional.cross_entropy on soft-capped
logits plus the z-loss term lam * omega_n * lse_n**2 (omega_n = w[y_n] for kept class-index
positions, 0 for ignored ones, 1 for probability targets), reduced as cross_entropy reduces.
Its autograd gives reference gradients for the logits and for probability targets."""

from __future__ import annotations

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
