"""The tiny model of the torch.compile tests (test_compile.py, test_sparse.py): compiled with
fullgraph=True, it must give eager's loss and gradients."""

from __future__ import annotations

import torch

import softmaxce.torch as sce


class TinyModel(torch.nn.Module):
    """Linear(6, 8) -> relu -> a softmaxce head over 11 classes (label smoothing, z-loss, softcap):
    head="fused" is linear_cross_entropy on the output layer's weight and bias, head="logits" is
    cross_entropy of the output layer's logits. With reduction="none" the per-position losses are
    summed with weights 1, 2, ..., P (a non-uniform upstream gradient)."""

    def __init__(self, head: str, reduction: str):
        super().__init__()
        self.body = torch.nn.Linear(6, 8)
        self.out = torch.nn.Linear(8, 11, bias=True)
        self.head = head
        self.reduction = reduction

    def forward(self, x, target):
        h = torch.relu(self.body(x))
        kw = dict(reduction=self.reduction, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
        if self.head == "fused":
            loss = sce.linear_cross_entropy(h, self.out.weight, target, linear_bias=self.out.bias, **kw)
        else:
            loss = sce.cross_entropy(self.out(h), target, **kw)
        if self.reduction == "none":
            loss = (loss * torch.arange(1, loss.numel() + 1, dtype=loss.dtype)).sum()  # non-uniform upstream
        return loss


def assert_matches_eager(loss, grads, eager, eager_grads, dtype: torch.dtype) -> None:
    """The compiled loss and gradients equal eager's, to float32 or bfloat16 tolerances."""
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(loss, eager, **tol)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, **tol)
