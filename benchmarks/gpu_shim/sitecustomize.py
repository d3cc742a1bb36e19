"""For gpu_check.sh on a machine whose CUDA torch is older than 2.13 (a lent GPU machine's image):
torch.nn.LinearCrossEntropyLoss and LinearCrossEntropyOptions, which softmaxce.torch's module
subclasses and annotates, as PyTorch 2.13 defines their constructor. Nothing else is patched; the
kernels and front ends under test are softmaxce's own. Not for users: install torch>=2.13."""

import dataclasses
import math

import torch

if not hasattr(torch.nn, "LinearCrossEntropyLoss"):
    from torch.nn.modules.loss import _WeightedLoss

    @dataclasses.dataclass(slots=True, frozen=True)
    class LinearCrossEntropyOptions:
        allow_retain_graph: bool = False

    class LinearCrossEntropyLoss(_WeightedLoss):
        def __init__(self, in_features, num_classes, *, out_features=(), bias=False, device=None, dtype=None,
                     reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0, options=None):  # fmt: skip
            if weight is not None and weight.shape != (num_classes,):
                raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
            if label_smoothing < 0 or label_smoothing > 1.0:
                raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
            super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
            self.num_classes = num_classes
            self.out_features = out_features
            self.ignore_index = ignore_index
            self.label_smoothing = label_smoothing
            self.linear = torch.nn.Linear(
                in_features, math.prod(out_features, start=num_classes), bias=bias, device=device, dtype=dtype
            )
            self.options = options

    torch.nn.LinearCrossEntropyLoss = LinearCrossEntropyLoss
    torch.nn.LinearCrossEntropyOptions = LinearCrossEntropyOptions
