"""Fused linear + softmax + cross-entropy head that never holds the N x V logits.

    linear_cross_entropy(x, W, y, bias=b, ...) == cross_entropy(x @ W.T + b, y, ...)

computed over chunks of rows: for each chunk of positions the logits (n, V) are formed in one
reusable buffer, the row kernel turns them into their gradient G = coef * (alpha a - beta) in place,
and three matrix products (all on scipy's BLAS) finish the chunk:

    grad_x[chunk] = G @ W          (n, D)
    grad_W       += G.T @ x[chunk] (V, D)   BLAS gemm with beta=1: accumulated in place, fixed order
                                            (the first chunk writes it: beta=0, no zero-filled start)
    grad_b       += sum_rows G     (V,)

Extra memory is the chunk buffer (rows x V), chosen from `chunk_size` or about 48 MiB, independent
of N. Every option of `cross_entropy` is supported on this path (no fallback that forms all logits),
because the row kernel handles them all, and the normalizer for "mean" is computed from the targets
before the first chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from . import _fused
from ._api import Target
from ._options import CEOptions, LossOptions
from ._results import LinearCrossEntropyResult

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = [
    "LinearOptions",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "linear_cross_entropy_with_stats",
]


class LinearOptions(LossOptions, total=False):
    """The keyword options of the fused head: `LossOptions` (with a (V,) class `weight`) and

    bias: optional (V,) output-layer bias (default None).
    chunk_size: positions per chunk (default None: as many as fit about 48 MiB of logits).
    """

    bias: npt.ArrayLike | None
    chunk_size: int | None


def linear_cross_entropy(
    x: npt.ArrayLike, linear_weight: npt.ArrayLike, target: Target, **options: Unpack[LinearOptions]
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
        **options: keyword-only (`LinearOptions`): `bias`, an optional (V,) output-layer bias;
            `chunk_size`, positions per chunk (default: as many as fit about 48 MiB of logits);
            `weight`, optional (V,) class weights; and the other options of `softmaxce.cross_entropy`.

    Returns:
        The loss, as `softmaxce.cross_entropy` returns it.

    Example:
        >>> import numpy as np, softmaxce
        >>> x, W = np.eye(2), np.log([[0.1, 0.6], [0.6, 0.1], [0.3, 0.3]])  # logits ln a
        >>> round(float(softmaxce.linear_cross_entropy(x, W, [1, 0])), 6)  # -ln 0.6
        0.510826
    """
    return _forward("linear_cross_entropy", x, linear_weight, target, options, want_grad=False).loss


def linear_cross_entropy_and_grad(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: Target,
    *,
    grad_output: npt.ArrayLike | None = None,
    **options: Unpack[LinearOptions],
) -> tuple[np.ndarray | np.generic, np.ndarray, np.ndarray, np.ndarray | None]:
    """Loss and the gradients dx = G W, dW = G^T x, db = sum G with G = dL/dlogits (a - y per row
    for a one-hot target), without the N x V logits. Options as in `linear_cross_entropy`;
    `grad_output` as in `softmaxce.cross_entropy_and_grad`.

    Returns:
        (loss, grad_x, grad_weight, grad_bias); grad_bias is None without bias.
    """
    r = _forward("linear_cross_entropy_and_grad", x, linear_weight, target, options, True, grad_output=grad_output)
    return r.loss, r.grad_x, r.grad_weight, r.grad_bias


def linear_cross_entropy_with_stats(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: Target,
    *,
    compute_grad: bool = False,
    grad_output: npt.ArrayLike | None = None,
    **options: Unpack[LinearOptions],
) -> LinearCrossEntropyResult:
    """Loss, optionally the gradients, and per-position lse, predicted class and entropy, all from
    the same chunked pass (the logits are never held whole)."""
    function = "linear_cross_entropy_with_stats"
    return _forward(function, x, linear_weight, target, options, compute_grad, want_stats=True, grad_output=grad_output)


def _forward(
    function: str, x, linear_weight, target, options: LinearOptions, want_grad: bool, want_stats=False, grad_output=None
) -> LinearCrossEntropyResult:
    """The fused head's one pass for a public function; its keywords become CEOptions (errors name it)."""
    ce_options = CEOptions.from_keywords(function, options, LinearOptions)
    bias, weight, chunk_size = options.get("bias"), options.get("weight"), options.get("chunk_size")
    return _fused.forward_linear(
        x,
        linear_weight,
        target,
        bias,
        weight,
        ce_options,
        chunk_size,
        want_grad=want_grad,
        want_stats=want_stats,
        grad_output=grad_output,
    )
