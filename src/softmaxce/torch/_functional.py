"""Drop-in replacements for torch.nn.functional.cross_entropy and linear_cross_entropy.

Same signatures as PyTorch 2.13 plus the keyword-only extensions z_loss and softcap; same results,
gradients and errors (exception type and message) wherever PyTorch defines them. The functions
validate on metadata only, reshape to row form (class axis last) and call the custom ops in `_ops.py`.
Both take a sparse target too (`softmaxce.SparseTarget`, a torch sparse CSR or scipy.sparse matrix;
`_sparse_targets.py`), handed to the ops as (P, K) indices and values, never as a dense target.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._options import CEOptions, OptionError
from .._sparse import SparseTarget
from .._validation import BatchSizeError, Layout, check_layout
from . import _dtypes, _linear_ops, _ops, _sparse_targets, _triton

if TYPE_CHECKING:  # an annotation only: the chunked path is always used, whatever `options` holds
    from torch.nn import LinearCrossEntropyOptions

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _options(ignore_index: int, reduction: str, label_smoothing: float, z_loss: float, softcap: float | None):
    """CEOptions, raising PyTorch's message for label_smoothing > 1 (C++ prints 2.0 as "2"). Options of
    plain int, float, str and None are memoized (CEOptions is immutable; validating anew took about 4 us
    of every call); a bad value raises every time, as nothing is memoized for it."""
    args = (ignore_index, reduction, label_smoothing, z_loss, softcap)
    if all(type(a) in _PLAIN for a in args):
        return _memo_options(*args)
    return _new_options(*args)


_PLAIN = (int, float, str, type(None))  # exact types: a bool, a tensor or a NumPy scalar is not memoized


@functools.lru_cache(maxsize=64, typed=True)
def _memo_options(ignore_index, reduction, label_smoothing, z_loss, softcap) -> CEOptions:
    return _new_options(ignore_index, reduction, label_smoothing, z_loss, softcap)


def _new_options(ignore_index, reduction, label_smoothing, z_loss, softcap) -> CEOptions:
    if isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool) and label_smoothing > 1.0:
        if isinstance(reduction, str) and reduction in ("none", "mean", "sum"):  # torch checks reduction first
            raise OptionError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}")
    return CEOptions(
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap
    )


def _validate(
    logits_shape, logits_dtype: torch.dtype, target: Tensor, weight: Tensor | None, options: CEOptions
) -> Layout:
    """`check_layout`, after PyTorch's first shape check: the batch sizes of logits (N, C, ...) and a
    target that is not a probability target must agree (nll_loss_nd checks it before the target rank)."""
    shape, t_shape = tuple(logits_shape), tuple(target.shape)
    if logits_dtype.is_floating_point and len(shape) >= 2 and t_shape != shape and t_shape and t_shape[0] != shape[0]:
        raise BatchSizeError(f"Expected input batch_size ({shape[0]}) to match target batch_size ({t_shape[0]}).")
    return _check_layout(
        logits_shape,
        _dtypes.kind(logits_dtype),
        _dtypes.name(logits_dtype),
        tuple(target.shape),
        _dtypes.kind(target.dtype),
        _dtypes.name(target.dtype),
        None if weight is None else tuple(weight.shape),
        options,
    )


# `check_layout` memoized: its arguments are shapes, dtype names and the options, and its Layout is
# immutable (a training loop's calls repeat a few shapes; the checks took about 3 us of every call). A
# bad layout raises every time, as nothing is memoized for it.
_check_layout = functools.lru_cache(maxsize=256)(check_layout)

BACKENDS = (None, "triton", "torch")


def _check_backend(backend: str | None, t: Tensor) -> None:
    """A valid backend; for "triton", one that can run t (else a clear error now, at call time)."""
    if backend not in BACKENDS:
        raise ValueError(f"{backend!r} is not a valid backend: use 'triton', 'torch' or None")
    if backend == "triton":
        _triton.check(t.device, t.dtype)


def _autocast_on(t: Tensor) -> bool:
    """torch.autocast is enabled for t's device type."""
    device = t.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _float32(t):
    """Autocast's float32 policy: floating tensors (a sparse target's values) other than float64 become float32."""
    if isinstance(t, SparseTarget):
        return SparseTarget(t.indices, _float32(t.values))
    if t is None or not isinstance(t, Tensor) or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.float()


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    backend: str | None = None,
    inplace_backward: bool = False,
) -> Tensor:
    """`torch.nn.functional.cross_entropy`, computed by softmaxce, plus z_loss and softcap.

    For logits z (class axis 1, or 0 for 1-D input), a = softmax(z) and the smoothed, class-weighted
    target y, a position's loss is -sum_i y_i ln a_i and its gradient a - y (no weights or
    smoothing); see docs/SEMANTICS.md. Gradients flow to `input` and to a probability `target`
    (dL/dt = -(1 - eps) w ln a) when they require grad.

    Args:
        input: (C), (N, C) or (N, C, d1, ..., dk) logits; any float dtype, any device.
        target: class indices ((), (N) or (N, d1, ..., dk), integer), class probabilities
            (input's shape, floating), or a sparse probability target: `softmaxce.SparseTarget`
            (indices, values), each (*positions, K) (positions: (), (N) or (N, d1, ..., dk)), or a
            torch sparse CSR / scipy.sparse (positions, C) matrix (docs/SEMANTICS.md, "Sparse targets";
            never densified; gradients flow to its values).
        weight: optional (C,) class weights.
        size_average, reduce: deprecated, as in PyTorch (they override `reduction`).
        ignore_index: class index whose positions are skipped (class-index targets).
        reduction: "mean", "sum" or "none".
        label_smoothing: eps in [0, 1].
        z_loss: lam >= 0 adds lam * lse**2 per position (PaLM's z-loss), weighted like the position.
        softcap: s > 0 replaces logits by s * tanh(logits / s) first (Gemma 2).
        backend: "triton" (the Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1),
            "torch" (the chunked torch path), or None: Triton for CUDA tensors where it is installed,
            the NumPy engine for float32/float64 CPU tensors, the torch path otherwise.
        inplace_backward: write the gradient over `input` (flash-attn's option), for training loops
            that do not use the logits after the loss: no gradient-sized buffer is allocated, and
            afterwards `input` holds dL/dinput (2-D float32/float64 CPU input, reduction "mean" or
            "sum"). Under torch.no_grad, or for input that does not require grad, only the loss is
            computed and input is left alone. It raises with create_graph=True, under torch.func and
            under torch.compile.

    Returns:
        A 0-d tensor in input's dtype, or for reduction="none" the per-position losses.

    Example:
        >>> import torch, softmaxce.torch as sce
        >>> z = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
        >>> round(float(sce.cross_entropy(z, torch.tensor([1]))), 4)  # -ln 0.6
        0.5108
    """
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction

        reduction = _reduction.legacy_get_string(size_average, reduce)
    options = _options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    return _cross_entropy(input, target, weight, options, backend, inplace_backward)


def _cross_entropy(
    input: Tensor, target, weight: Tensor | None, options: CEOptions, backend: str | None, inplace_backward: bool
) -> Tensor:
    """`cross_entropy` once its options are checked."""
    if _autocast_on(input):  # as torch: cross_entropy is on autocast's float32 list
        with torch.autocast(input.device.type, enabled=False):
            return _cross_entropy(
                _float32(input), _float32(target), _float32(weight), options, backend, inplace_backward
            )
    if _sparse_targets.is_sparse(target):
        return _sparse_cross_entropy(input, target, weight, options, backend, inplace_backward)
    layout = _validate(tuple(input.shape), input.dtype, target, weight, options)
    _check_backend(backend, input)
    if inplace_backward:
        return _ops.cross_entropy_inplace_backward(input, target, weight, options)
    if _ops.axis1_applies(input, target, weight, backend):
        return _ops.cross_entropy_axis1(input, target, weight, options)  # read in place, no moved copy
    C = layout.num_classes
    if input.dim() == 1:
        z = input.unsqueeze(0)
        t = target.unsqueeze(0) if layout.probability else target.reshape(1)
    elif input.dim() == 2:
        z, t = input, target
    else:  # (N, C, d1..dk) -> (P, C) rows, class axis last
        z = input.movedim(1, -1).reshape(-1, C)
        t = target.movedim(1, -1).reshape(-1, C) if layout.probability else target.reshape(-1)
    loss = _ops.cross_entropy_rows(z, t, weight, options, backend)
    if options.reduction == "none":
        loss = loss.reshape(layout.positions_shape)
    return loss


def _sparse_cross_entropy(
    input: Tensor, target, weight: Tensor | None, options: CEOptions, backend: str | None, inplace_backward: bool
) -> Tensor:
    """`cross_entropy` with a sparse target: (*positions, K) indices and values become (P, K) rows."""
    indices, values, layout = _sparse_targets.prepare(
        target, tuple(input.shape), input.dtype, input.device, weight, options
    )
    _check_backend(backend, input)
    C, K = layout.num_classes, indices.shape[-1]
    z = input.unsqueeze(0) if input.dim() == 1 else input
    if input.dim() > 2:  # (N, C, d1..dk) -> (P, C) rows, class axis last
        z = input.movedim(1, -1).reshape(-1, C)
    P = layout.num_positions
    idx, val = indices.reshape(P, K), values.reshape(P, K)
    if inplace_backward:
        return _ops.cross_entropy_inplace_backward(z, SparseTarget(idx, val), weight, options)
    loss = _ops.cross_entropy_rows(z, idx, weight, options, backend, values=val)
    if options.reduction == "none":
        loss = loss.reshape(layout.positions_shape)
    return loss


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: LinearCrossEntropyOptions | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    backend: str | None = None,
) -> Tensor:
    """`torch.nn.functional.linear_cross_entropy`: cross_entropy(linear(input, W, b), target, ...)
    computed over chunks of rows without ever holding the N x C logits, plus z_loss and softcap.

    Per chunk the logits z = x W^T + b are formed, turned into G = dL/dz, and the gradients come from
    three products: grad_x = G W, grad_W += G^T x, grad_b += sum_rows G. Every option (weights,
    ignore_index, label smoothing, probability targets, z_loss, softcap, every reduction) stays on
    the chunked path. Gradients flow to input, linear_weight, linear_bias and a probability target.

    Args:
        input: (D) or (N, D) features.
        linear_weight: (C, D), or (C, d1, ..., dk, D) for a K-dimensional loss (computed, as in
            PyTorch, by forming the logits and calling `cross_entropy`).
        target: class indices (N) / () or class probabilities (N, C) / (C), or a sparse target
            (a `softmaxce.SparseTarget` with input's leading shape, or a (N, C) torch sparse CSR /
            scipy.sparse matrix; as in `cross_entropy`). With a sparse target ignore_index must be
            None, as for class probabilities.
        linear_bias: optional (C,) (or (C, d1, ..., dk)) bias.
        weight: optional (C,) class weights.
        reduction: "mean", "sum" or "none".
        ignore_index: class index to skip; None means -100 (and is required for probability targets).
        label_smoothing: eps in [0, 1].
        options: a torch.nn.LinearCrossEntropyOptions or None; the chunked path is always used, and
            its batch_chunk_size, when set, is the number of rows per chunk.
        z_loss, softcap: as in `cross_entropy`.
        backend: as in `cross_entropy`, except that None never picks the Triton kernels: CUDA tensors
            take the chunked torch path (cuBLAS products), as the fused Triton head is not yet faster
            on a GPU (README, "GPU"); backend="triton" still runs it.

    Example:
        >>> import torch, softmaxce.torch as sce
        >>> x, W = torch.eye(2), torch.log(torch.tensor([[0.1, 0.5], [0.6, 0.2], [0.3, 0.3]]))
        >>> round(float(sce.linear_cross_entropy(x, W, torch.tensor([1, 0]))), 4)  # (-ln .6 - ln .5) / 2
        0.602
    """
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    num_batches = tuple(input.shape[:-1])
    in_features = input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise RuntimeError(
            "expected equal input and linear_weight last dimensions (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively"
        )
    num_classes = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(num_classes, *out_features)}, got {tuple(linear_bias.shape)}")
    if out_features and not num_batches:
        raise RuntimeError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} requires"
            f" batched input, (N, {in_features}), got unbatched input with shape {tuple(input.shape)}"
        )
    logits_shape = (*num_batches, num_classes, *out_features)
    sparse = _sparse_targets.is_sparse(target)
    if (sparse or tuple(target.shape) == logits_shape) and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    ce_options = _options(ignore_index, reduction, label_smoothing, z_loss, softcap)
    autocast = _autocast_on(input)
    if out_features or (autocast and options is None):
        # K-dimensional loss: each position has its own slice of the weight, so there is no shared
        # row of features to chunk over; form the logits as PyTorch does and use cross_entropy.
        # Under autocast with options=None, PyTorch's reference path runs: linear in the autocast
        # dtype, cross_entropy in float32; forming the logits the same way gives its very values.
        rows = math.prod(out_features, start=num_classes)
        logits = torch.nn.functional.linear(
            input,
            linear_weight.reshape(rows, in_features),
            None if linear_bias is None else linear_bias.reshape(rows),
        ).reshape(logits_shape)
        return _cross_entropy(logits, target, weight, ce_options, backend, inplace_backward=False)
    _check_backend(backend, input)
    logits_dtype = torch.promote_types(input.dtype, linear_weight.dtype)
    x = input.unsqueeze(0) if input.dim() == 1 else input
    values = None
    if sparse:  # (*positions, K) indices and values -> (P, K) rows
        indices, values, layout = _sparse_targets.prepare(
            target, logits_shape, logits_dtype, input.device, weight, ce_options
        )
        P, K = layout.num_positions, indices.shape[-1]
        t, values = indices.reshape(P, K), values.reshape(P, K)
    else:
        layout = _validate(logits_shape, logits_dtype, target, weight, ce_options)
        t = target
        if input.dim() == 1:
            t = target.unsqueeze(0) if layout.probability else target.reshape(1)
    chunk_size = getattr(options, "batch_chunk_size", None)
    # With options set, PyTorch's chunked path ignores autocast and computes in the inputs' dtypes.
    with torch.autocast(input.device.type, enabled=False) if autocast else contextlib.nullcontext():
        loss = _linear_ops.linear_cross_entropy_rows(
            x, linear_weight, t, linear_bias, weight, ce_options, chunk_size, backend, values=values
        )
    if reduction == "none":
        loss = loss.reshape(layout.positions_shape)
    return loss
