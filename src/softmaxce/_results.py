"""The result types of the NumPy front ends (one pass computes the loss, gradients and statistics)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CrossEntropyResult", "LinearCrossEntropyResult"]


@dataclass(frozen=True)
class CrossEntropyResult:
    """Everything one pass computes.

    Attributes:
        loss: the reduced loss (NumPy scalar in the logits' dtype; an array for reduction="none").
        grad_logits: dL/dlogits, the logits' shape and dtype (None when not asked for).
        lse: per-position log-sum-exp of the (soft-capped) logits, shape of the "none" loss.
        predicted: per-position argmax class (int64).
        entropy: per-position entropy of softmax(logits), -sum_c a_c ln a_c.
        (lse, predicted and entropy are empty unless the statistics were asked for.)
    """

    loss: np.ndarray | np.generic
    grad_logits: np.ndarray | None
    lse: np.ndarray
    predicted: np.ndarray
    entropy: np.ndarray


@dataclass(frozen=True)
class LinearCrossEntropyResult:
    """Everything one pass of the fused head computes.

    Attributes:
        loss: the reduced loss (NumPy scalar in x's dtype; an array for reduction="none").
        grad_x: dL/dx, x's shape (None when not asked for).
        grad_weight: dL/dW, (V, D) (None when not asked for).
        grad_bias: dL/db, (V,) (None without bias or when not asked for).
        lse, predicted, entropy: per-position log-sum-exp, argmax class and entropy of softmax.
    """

    loss: np.ndarray | np.generic
    grad_x: np.ndarray | None
    grad_weight: np.ndarray | None
    grad_bias: np.ndarray | None
    lse: np.ndarray
    predicted: np.ndarray
    entropy: np.ndarray
