"""Public NumPy functions: softmax cross-entropy loss, its exact gradient, statistics, softmax.

Each function validates its input, normalizes the options into one `CEOptions` and hands the work
to the engine. Semantics: docs/SEMANTICS.md (PyTorch's cross_entropy, plus z_loss/softcap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from . import _engine
from ._options import CEOptions, LossOptions
from ._results import CrossEntropyResult
from ._sparse import SparseTarget
from ._validation import LogitsDtypeError

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

Target = npt.ArrayLike | SparseTarget  # class indices, probabilities or a sparse target

__all__ = [
    "CrossEntropyResult",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_stats",
    "log_softmax",
    "softmax",
]


def cross_entropy(logits: npt.ArrayLike, target: Target, **options: Unpack[LossOptions]) -> np.ndarray | np.generic:
    """Softmax cross-entropy loss: `torch.nn.functional.cross_entropy(logits, target, ...)` in NumPy.

    For logits z (class axis 1, or 0 for 1-D logits) and a = softmax(z), a position's loss is
    -sum_i y_i ln a_i with y the (smoothed, class-weighted) target; see docs/SEMANTICS.md.

    Args:
        logits: (C), (N, C) or (N, C, d1, ..., dk) floating array. float16 computes in float32.
        target: class indices ((), (N) or (N, d1, ..., dk), any integer dtype), class
            probabilities (the logits' shape, floating), or a sparse probability target: a
            `SparseTarget` of (positions..., K) entries or a scipy.sparse (positions, C) matrix,
            never densified; its all-padding positions are ignored (docs/SEMANTICS.md, "Sparse targets").
        **options: keyword-only, declared once in `LossOptions` (the same on every loss function);
            an unknown keyword raises TypeError:
        weight: optional (C,) class weights (default None: all ones).
        ignore_index: class index whose positions are skipped (class-index targets; default -100).
        reduction: "mean" (the default: weighted mean over non-ignored positions; for probability
            targets the mean over positions, for sparse targets over kept positions), "sum" or "none".
        label_smoothing: eps in [0, 1] (default 0): targets become (1 - eps) y + eps / C.
        z_loss: lam >= 0 (default 0) adds lam * lse**2 per position (PaLM's z-loss).
        softcap: s > 0 replaces logits by s * tanh(logits / s) first (Gemma 2; default None: off).

    Returns:
        A NumPy scalar in the logits' dtype for "mean" and "sum"; for "none" an array of the
        per-position shape.

    Example:
        >>> import numpy as np, softmaxce
        >>> float(softmaxce.cross_entropy(np.log([[0.1, 0.6, 0.3]]), [1]))  # -ln 0.6
        0.5108256237659907
    """
    return _forward("cross_entropy", logits, target, options, want_grad=False, want_stats=False).loss


def cross_entropy_and_grad(
    logits: npt.ArrayLike,
    target: Target,
    *,
    grad_output: npt.ArrayLike | None = None,
    out: np.ndarray | None = None,
    **options: Unpack[LossOptions],
) -> tuple[np.ndarray | np.generic, np.ndarray]:
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
    r = _forward("cross_entropy_and_grad", logits, target, options, True, False, grad_output, out)
    return r.loss, r.grad_logits


def cross_entropy_with_stats(
    logits: npt.ArrayLike,
    target: Target,
    *,
    compute_grad: bool = False,
    grad_output: npt.ArrayLike | None = None,
    out: np.ndarray | None = None,
    **options: Unpack[LossOptions],
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
    return _forward("cross_entropy_with_stats", logits, target, options, compute_grad, True, grad_output, out)


def _forward(
    function: str, logits, target, options: LossOptions, want_grad: bool, want_stats: bool, grad_output=None, out=None
) -> CrossEntropyResult:
    """The engine's one pass for a public function; its keywords become CEOptions (errors name it)."""
    ce_options = CEOptions.from_keywords(function, options, LossOptions)
    return _engine.forward_logits(
        logits,
        target,
        options.get("weight"),
        ce_options,
        want_grad=want_grad,
        want_stats=want_stats,
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
