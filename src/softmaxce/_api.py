"""Public NumPy functions: softmax cross-entropy loss, its exact gradient, statistics, softmax.

Each function validates its input, normalizes the options into one `CEOptions` and hands the work
to the engine. Semantics: ../shared/SEMANTICS.md (PyTorch's cross_entropy, plus z_loss/softcap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import _engine
from ._options import CEOptions
from ._validation import LogitsDtypeError

__all__ = [
    "CrossEntropyResult",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_stats",
    "log_softmax",
    "softmax",
]


@dataclass(frozen=True)
class CrossEntropyResult:
    """Everything one pass computes.

    Attributes:
        loss: the reduced loss (NumPy scalar in the logits' dtype; an array for reduction="none").
        grad_logits: dL/dlogits, the logits' shape and dtype (None when not asked for).
        lse: per-position log-sum-exp of the (soft-capped) logits, shape of the "none" loss.
        predicted: per-position argmax class (int64).
        entropy: per-position entropy of softmax(logits), -sum_c a_c ln a_c.
    """

    loss: np.ndarray | np.generic
    grad_logits: np.ndarray | None
    lse: np.ndarray
    predicted: np.ndarray
    entropy: np.ndarray


def cross_entropy(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
):
    """Softmax cross-entropy loss: `torch.nn.functional.cross_entropy(logits, target, ...)` in NumPy.

    For logits z (class axis 1, or 0 for 1-D logits) and a = softmax(z), a position's loss is
    -sum_i y_i ln a_i with y the (smoothed, class-weighted) target; see SEMANTICS.md.

    Args:
        logits: (C), (N, C) or (N, C, d1, ..., dk) floating array. float16 computes in float32.
        target: class indices ((), (N) or (N, d1, ..., dk), any integer dtype) or class
            probabilities (the logits' shape, floating).
        weight: optional (C,) class weights.
        ignore_index: class index whose positions are skipped (class-index targets).
        reduction: "mean" (weighted mean over non-ignored positions), "sum" or "none".
        label_smoothing: eps in [0, 1]: targets become (1 - eps) y + eps / C.
        z_loss: lam >= 0 adds lam * lse**2 per position (PaLM's z-loss).
        softcap: s > 0 replaces logits by s * tanh(logits / s) first (Gemma 2).

    Returns:
        A NumPy scalar in the logits' dtype for "mean" and "sum"; for "none" an array of the
        per-position shape.

    Example:
        >>> import numpy as np, softmaxce
        >>> float(softmaxce.cross_entropy(np.log([[0.1, 0.6, 0.3]]), [1]))  # -ln 0.6
        0.5108256237659907
    """
    return _forward(
        logits,
        target,
        weight,
        _options(ignore_index, reduction, label_smoothing, z_loss, softcap),
        want_grad=False,
        want_stats=False,
        grad_output=None,
        out=None,
    ).loss


def cross_entropy_and_grad(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: npt.ArrayLike | None = None,
    out: np.ndarray | None = None,
) -> tuple:
    """Loss and its exact gradient dL/dlogits in one pass (for a one-hot target: a - y).

    Takes every option of `cross_entropy`, and:

    Args:
        grad_output: the upstream gradient dJ/dL: a scalar (default 1), or for reduction="none"
            one value per position (anything that broadcasts to the per-position shape).
        out: optional array for the gradient, with the logits' shape and dtype. Passing the
            logits array itself computes the gradient in place. Without `out` no input is modified.

    Returns:
        (loss, grad_logits): the loss as `cross_entropy` returns it, and the gradient with the
        logits' shape and dtype (`out` itself when given).

    Example:
        >>> import numpy as np, softmaxce
        >>> loss, grad = softmaxce.cross_entropy_and_grad(np.log([[0.1, 0.6, 0.3]]), [1])
        >>> np.round(grad, 6)  # a - y
        array([[ 0.1, -0.4,  0.3]])
    """
    r = _forward(
        logits,
        target,
        weight,
        _options(ignore_index, reduction, label_smoothing, z_loss, softcap),
        want_grad=True,
        want_stats=False,
        grad_output=grad_output,
        out=out,
    )
    return r.loss, r.grad_logits


def cross_entropy_with_stats(
    logits: npt.ArrayLike,
    target: npt.ArrayLike,
    *,
    weight: npt.ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    compute_grad: bool = False,
    grad_output: npt.ArrayLike | None = None,
    out: np.ndarray | None = None,
) -> CrossEntropyResult:
    """Loss, optionally the gradient, and per-position statistics (lse, predicted class, entropy)
    from the same pass over the logits. Options as in `cross_entropy_and_grad`; the statistics are
    of the (soft-capped) logits and are computed for ignored positions too.

    Example:
        >>> import numpy as np, softmaxce
        >>> r = softmaxce.cross_entropy_with_stats(np.log([[0.1, 0.6, 0.3]]), [1])
        >>> int(r.predicted[0]), round(float(r.entropy[0]), 4)
        (1, 0.8979)
    """
    return _forward(
        logits,
        target,
        weight,
        _options(ignore_index, reduction, label_smoothing, z_loss, softcap),
        want_grad=compute_grad,
        want_stats=True,
        grad_output=grad_output,
        out=out,
    )


def log_softmax(z: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """ln softmax(z) = z - lse(z), stable for any logits (never exp() of a raw logit)."""
    z = _float_array(z)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    shifted = z - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(z: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z), stable for any logits."""
    z = _float_array(z)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(z - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def _float_array(z) -> np.ndarray:
    z = np.asarray(z)
    if z.dtype.kind != "f":
        if z.dtype.kind in "iub":
            return z.astype(np.float64)
        raise LogitsDtypeError(f"softmax is not implemented for arrays of dtype {z.dtype}")
    return z


def _options(ignore_index, reduction, label_smoothing, z_loss, softcap) -> CEOptions:
    return CEOptions(
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap
    )


def _forward(
    logits, target, weight, options: CEOptions, *, want_grad, want_stats, grad_output, out
) -> CrossEntropyResult:
    logits = np.asarray(logits)
    target = np.asarray(target)
    if logits.dtype.kind == "f" and logits.dtype.itemsize < 4 and logits.dtype != np.float16:
        raise LogitsDtypeError(f"cross_entropy is not implemented for logits of dtype {logits.dtype}")
    layout = _engine.check_arrays(logits.shape, logits.dtype, target, weight, options)
    dtype = _engine.compute_dtype(logits.dtype)
    target_rows, w, normalizer = _engine.prepare_targets(layout, target, weight, options, dtype)
    if options.reduction != "mean":
        normalizer = 1.0
    P, C = layout.num_positions, layout.num_classes
    rows = _engine.logits_rows(logits, layout, dtype)  # a view when logits are contiguous
    coef = grad_rows = None
    direct = False  # the kernel writes the gradient straight into `out`
    if want_grad:
        coef = _engine.row_coefficients(options.reduction, normalizer, grad_output, layout.positions_shape, P)
        if out is not None:
            _check_out(out, logits)
            direct = logits.ndim <= 2 and out.dtype == dtype and out.flags.c_contiguous
        if direct:
            grad_rows = out.reshape(P, C)
            if np.shares_memory(grad_rows, rows) and grad_rows.ctypes.data != rows.ctypes.data:
                rows = rows.copy()  # partial overlap: only an exact alias is safe for the kernel
        else:
            grad_rows = np.empty((P, C), dtype=dtype)
    result = _engine.run_rows(rows, target_rows, layout.probability, w, options, coef, grad_rows, want_stats)
    loss = _engine.reduce_loss(result.loss, options.reduction, normalizer, layout.positions_shape, logits.dtype)
    grad = None
    if direct:
        grad = out
    elif want_grad:
        if logits.ndim > 2:  # rows are (N, d1..dk, C): move the class axis back to 1
            grad_view = np.moveaxis(grad_rows.reshape(layout.positions_shape + (C,)), -1, 1)
        else:
            grad_view = grad_rows.reshape(logits.shape)
        if out is not None:
            np.copyto(out, grad_view, casting="same_kind")
            grad = out
        else:
            grad = np.ascontiguousarray(grad_view, dtype=logits.dtype)
    shape = layout.positions_shape
    return CrossEntropyResult(
        loss=loss,
        grad_logits=grad,
        lse=result.lse.reshape(shape),
        predicted=result.argmax.reshape(shape) if want_stats else np.empty(0, np.int64),
        entropy=result.entropy.reshape(shape) if want_stats else np.empty(0),
    )


def _check_out(out, logits: np.ndarray) -> None:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != logits.shape:
        raise ValueError(f"out has shape {out.shape}, expected the logits' shape {logits.shape}")
    if out.dtype != logits.dtype:
        raise ValueError(f"out has dtype {out.dtype}, expected the logits' dtype {logits.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
