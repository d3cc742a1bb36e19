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

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.linalg import blas

from . import _engine
from ._api import _options
from ._options import CEOptions
from ._validation import LogitsDtypeError, TargetShapeError

__all__ = [
    "LinearCrossEntropyResult",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "linear_cross_entropy_with_stats",
]

CHUNK_BYTES = 96 * 2**20  # default size of the logits chunk buffer (768 rows at V = 32768)


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


def linear_cross_entropy(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    bias: npt.ArrayLike | None = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
):
    """`cross_entropy(x @ linear_weight.T + bias, target, ...)` without allocating the logits.

    Args:
        x: (..., D) features; the leading dimensions are positions (the class axis of the
            logits is last), so a (B, T, D) language-model activation takes a (B, T) target.
        linear_weight: (V, D) output-layer weight, one row per class.
        target: class indices of shape x.shape[:-1], or probabilities of shape x.shape[:-1] + (V,).
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
    options = _options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _run(
        x, linear_weight, target, bias, weight, options, chunk_size, want_grad=False, want_stats=False, grad_output=None
    ).loss


def linear_cross_entropy_and_grad(
    x: npt.ArrayLike,
    linear_weight: npt.ArrayLike,
    target: npt.ArrayLike,
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
) -> tuple:
    """Loss and the gradients dx = G W, dW = G^T x, db = sum G with G = dL/dlogits (a - y per row
    for a one-hot target), without the N x V logits. Options as in `linear_cross_entropy`;
    `grad_output` as in `softmaxce.cross_entropy_and_grad`.

    Returns:
        (loss, grad_x, grad_weight, grad_bias); grad_bias is None without bias.
    """
    options = _options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    r = _run(
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
    target: npt.ArrayLike,
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
    options = _options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _run(
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


def _float(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise LogitsDtypeError(f"linear_cross_entropy is not implemented for {name} of dtype {a.dtype}")
    return a


def _run(x, W, target, bias, weight, options: CEOptions, chunk_size, *, want_grad, want_stats, grad_output):
    x = _float("x", x)
    W = _float("linear_weight", W)
    target = np.asarray(target)
    if x.ndim < 1:
        raise ValueError(f"x must have at least one dimension (the features), got shape {x.shape}")
    if W.ndim != 2 or W.shape[1] != x.shape[-1]:
        raise ValueError(f"linear_weight must have shape (V, {x.shape[-1]}) to match x's features, got {W.shape}")
    V, D = W.shape
    if bias is not None:
        bias = _float("bias", bias)
        if bias.shape != (V,):
            raise ValueError(f"bias must have shape ({V},), got {bias.shape}")
    out_dtype = np.result_type(x.dtype, W.dtype)
    dtype = _engine.compute_dtype(out_dtype)
    positions = x.shape[:-1]
    P = int(np.prod(positions, dtype=np.int64))
    # The logits are (P, V) with classes last; validate as cross_entropy would on them.
    if x.ndim == 1:
        logits_shape, target_view = (V,), target
    elif target.shape == positions + (V,):
        logits_shape, target_view = (P, V), target.reshape(P, V)
    elif target.shape == positions:
        logits_shape, target_view = (P, V), target.reshape(P)
    else:
        raise TargetShapeError(
            f"Expected target size {list(positions)} (class indices) or {list(positions) + [V]} "
            f"(class probabilities), got {list(target.shape)}"
        )
    layout = _engine.check_arrays(logits_shape, dtype, target_view, weight, options)
    target_rows, w, normalizer = _engine.prepare_targets(layout, target_view, weight, options, dtype)
    if options.reduction != "mean":
        normalizer = 1.0
    out_positions = layout.positions_shape if x.ndim == 1 else positions

    x2 = np.ascontiguousarray(x.reshape(P, D) if x.ndim > 1 else x.reshape(1, D), dtype=dtype)
    W2 = np.ascontiguousarray(W, dtype=dtype)
    b2 = None if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    coef = None
    if want_grad:
        coef = _engine.row_coefficients(options.reduction, normalizer, grad_output, out_positions, P)

    rows = _chunk_rows(chunk_size, P, V, dtype)
    buf = np.empty((rows, V), dtype=dtype)  # the only logits-sized memory: one chunk
    loss = np.empty(P)
    lse = np.empty(P)
    predicted = np.empty(P if want_stats else 0, dtype=np.int64)
    entropy = np.empty(P if want_stats else 0)
    gx = gW = gb = None
    if want_grad:
        gx = np.empty((P, D), dtype=dtype)
        gW = np.zeros((V, D), dtype=dtype)
        gb = np.zeros(V, dtype=dtype) if b2 is not None else None
    gemm = blas.dgemm if dtype == np.float64 else blas.sgemm
    for start in range(0, P, rows):
        stop = min(start + rows, P)
        xc = x2[start:stop]
        z = buf[: stop - start]
        # All three products on one BLAS (scipy's), Fortran view of C arrays: handing work back and
        # forth between numpy's and scipy's OpenBLAS pools costs their idle threads' spinning.
        gemm(1.0, W2.T, xc.T, trans_a=1, beta=0.0, c=z.T, overwrite_c=1)  # z (n, V) = x_c W^T
        if b2 is not None:
            z += b2
        r = _engine.run_rows(
            z,
            target_rows[start:stop],
            layout.probability,
            w,
            options,
            coef[start:stop] if want_grad else None,
            z if want_grad else None,
            want_stats,
        )
        loss[start:stop] = r.loss
        lse[start:stop] = r.lse
        if want_stats:
            predicted[start:stop] = r.argmax
            entropy[start:stop] = r.entropy
        if want_grad:  # z now holds G = dL/dlogits for the chunk
            gemm(1.0, W2.T, z.T, beta=0.0, c=gx[start:stop].T, overwrite_c=1)  # grad_x (n, D) = G W
            # grad_W^T (D, V, Fortran order) += x_c^T (D, n) @ G (n, V): in place, beta = 1
            gemm(1.0, xc.T, z.T, beta=1.0, c=gW.T, trans_b=1, overwrite_c=1)
            if gb is not None:
                gb += z.sum(axis=0)

    loss_out = _engine.reduce_loss(loss, options.reduction, normalizer, out_positions, out_dtype)
    if want_grad:
        gx = gx.reshape(x.shape).astype(x.dtype, copy=False)
        gW = gW.astype(W.dtype, copy=False)
        if gb is not None:
            gb = gb.astype(bias.dtype, copy=False)
    return LinearCrossEntropyResult(
        loss=loss_out,
        grad_x=gx,
        grad_weight=gW,
        grad_bias=gb,
        lse=lse.reshape(out_positions),
        predicted=predicted.reshape(out_positions) if want_stats else predicted,
        entropy=entropy.reshape(out_positions) if want_stats else entropy,
    )


def _chunk_rows(chunk_size, P: int, V: int, dtype) -> int:
    if chunk_size is None:
        return max(1, min(max(P, 1), CHUNK_BYTES // max(1, V * np.dtype(dtype).itemsize)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return int(min(chunk_size, max(P, 1)))
