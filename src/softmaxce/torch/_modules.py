"""nn.Module front ends: CrossEntropyLoss and LinearCrossEntropyLoss.

They subclass torch.nn's modules, so the constructors, attributes, the class-weight buffer, the
state_dict keys and repr are PyTorch's; they add keyword-only z_loss and softcap and compute with
softmaxce (`_functional.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._options import CEOptions
from . import _functional

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss"]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """`torch.nn.CrossEntropyLoss` computed by `softmaxce.torch.cross_entropy`.

    Takes torch's constructor arguments (weight, size_average, ignore_index, reduce, reduction,
    label_smoothing; the class weight is a buffer) and keyword-only `z_loss`, `softcap`, `backend`
    and `inplace_backward` (see `softmaxce.torch.cross_entropy`).

    Example:
        >>> import torch, softmaxce.torch as sce
        >>> loss = sce.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)
        >>> loss(torch.zeros(2, 3), torch.tensor([0, 2])).shape
        torch.Size([])
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        backend: str | None = None,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        # As torch.nn.CrossEntropyLoss, the options (z_loss, softcap, backend too) are checked when called.
        self.z_loss = z_loss
        self.softcap = softcap
        self.backend = backend
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _functional.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            backend=self.backend,
            inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        return f"z_loss={self.z_loss}, softcap={self.softcap}"


class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
    """`torch.nn.LinearCrossEntropyLoss` (a Linear layer and cross-entropy, fused) computed by
    `softmaxce.torch.linear_cross_entropy`, which never forms all the logits.

    Takes torch's constructor arguments (in_features, num_classes, out_features, bias, device,
    dtype, reduction, weight, ignore_index, label_smoothing, options; parameters `linear.weight`,
    `linear.bias`, class weight buffer `weight`) and keyword-only `z_loss`, `softcap` and `backend`.

    Example:
        >>> import torch, softmaxce.torch as sce
        >>> head = sce.LinearCrossEntropyLoss(8, 10, bias=True, z_loss=1e-4)
        >>> head(torch.randn(4, 8), torch.tensor([1, 2, 3, 9])).shape
        torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        options=None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            in_features,
            num_classes,
            out_features=out_features,
            bias=bias,
            device=device,
            dtype=dtype,
            reduction=reduction,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            options=options,
        )
        # torch checks label_smoothing here (and reduction on the call); z_loss and softcap with it.
        CEOptions(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        if backend not in _functional.BACKENDS:
            raise ValueError(f"{backend!r} is not a valid backend: use 'triton', 'torch' or None")
        self.z_loss = z_loss
        self.softcap = softcap
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        linear_weight = self.linear.weight.reshape((self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = None
        if self.linear.bias is not None:
            linear_bias = self.linear.bias.reshape((self.num_classes, *self.out_features))
        return _functional.linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            options=self.options,
            z_loss=self.z_loss,
            softcap=self.softcap,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", z_loss={self.z_loss}, softcap={self.softcap}"
