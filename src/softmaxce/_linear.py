"""Fused linear + softmax + cross-entropy head that never holds the N x V logits.

    linear_cross_entropy(x, W, y, bias=b, ...) == cross_entropy(x @ W.T + b, y, ...)

computed over chunks of rows: for each chunk of positions the logits (n, V) are formed in one
reusable buffer, the row kernel turns them into their gradient G = coef * (alpha a - beta) in place,
and three matrix products (all on scipy's BLAS) finish the chunk:

    grad_x[chunk] = G @ W          (n, D)
    grad_W       += G.T @ x[chunk] (V, D)   BLAS gemm with beta=1: accumulated in place, fixed order
    grad_b       += sum_rows G     (V,)

Extra memory is the chunk buffer (rows x V), chosen from `chunk_size` or about 96 MiB, independent
of N. Every option of `cross_entropy` is supported on this path (no fallback that forms all logits),
because the row kernel handles them all, and the normalizer for "mean" is computed from the targets
before the first chunk.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import _fused
from ._options import CEOptions
from ._results import LinearCrossEntropyResult
from ._sparse import SparseTarget

__all__ = [
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "linear_cross_entropy_with_stats",
]


def linear_cross_entropy(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: npt.ArrayLike | SparseTarget,
    *,
    bias: npt.ArrayLike | None = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | np.generic:
    """`cross_entropy(x @ linear_weight.T + bias, target, ...)` without allocating the logits.

    Args:
        x: (..., D) features; the leading dimensions are positions (the class axis of the
            logits is last), so a (B, T, D) language-model activation takes a (B, T) target.
        linear_weight: (V, D) output-layer weight, one row per class.
        target: class indices of shape x.shape[:-1], probabilities of shape x.shape[:-1] + (V,),
            or a sparse target: a `SparseTarget` with indices/values of shape x.shape[:-1] + (K,),
            or a scipy.sparse (positions, V) matrix; then neither the N x V logits nor an N x V
            target is ever formed (top-k distillation).
        bias: optional (V,) output-layer bias.
        weight: optional (V,) class weights. Other options as in `softmaxce.cross_entropy`.
        chunk_size: positions per chunk (default: as many as fit about 96 MiB of logits).

    Returns:
        The loss, as `softmaxce.cross_entropy` returns it.

    Example:
        >>> import numpy as np, softmaxce
        >>> x, W = np.eye(2), np.log([[0.1, 0.6], [0.6, 0.1], [0.3, 0.3]])  # logits ln a
        >>> round(float(softmaxce.linear_cross_entropy(x, W, [1, 0])), 6)  # -ln 0.6
        0.510826
    """
    options = CEOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _fused.forward_linear(
        x, linear_weight, target, bias, weight, options, chunk_size, want_grad=False, want_stats=False, grad_output=None
    ).loss


def linear_cross_entropy_and_grad(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: npt.ArrayLike | SparseTarget,
    *,
    bias: npt.ArrayLike | None = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    grad_output: npt.ArrayLike | None = None,
) -> tuple[np.ndarray | np.generic, np.ndarray, np.ndarray, np.ndarray | None]:
    """Loss and the gradients dx = G W, dW = G^T x, db = sum G with G = dL/dlogits (a - y per row
    for a one-hot target), without the N x V logits. Options as in `linear_cross_entropy`;
    `grad_output` as in `softmaxce.cross_entropy_and_grad`.

    Returns:
        (loss, grad_x, grad_weight, grad_bias); grad_bias is None without bias.
    """
    options = CEOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    r = _fused.forward_linear(
        x,
        linear_weight,
        target,
        bias,
        weight,
        options,
        chunk_size,
        want_grad=True,
        want_stats=False,
        grad_output=grad_output,
    )
    return r.loss, r.grad_x, r.grad_weight, r.grad_bias


def linear_cross_entropy_with_stats(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: npt.ArrayLike | SparseTarget,
    *,
    bias: npt.ArrayLike | None = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    compute_grad: bool = False,
    grad_output: npt.ArrayLike | None = None,
) -> LinearCrossEntropyResult:
    """Loss, optionally the gradients, and per-position lse, predicted class and entropy, all from
    the same chunked pass (the logits are never held whole)."""
    options = CEOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _fused.forward_linear(
        x,
        linear_weight,
        target,
        bias,
        weight,
        options,
        chunk_size,
        want_grad=compute_grad,
        want_stats=True,
        grad_output=grad_output,
    )
