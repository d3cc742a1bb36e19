"""The NumPy engine: validate and normalize inputs, run the row kernels, reduce.

Front ends call `prepare` (once per call) and then `run` on the whole problem or, for the fused
head, on chunks of rows. Everything about normalizers, reductions and layouts lives here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _axis1, _half, _kernels, _resources, _small, _sparse_rows, _threads
from ._options import CEOptions
from ._results import CrossEntropyResult
from ._sparse import SparseRows, SparseTarget, is_sparse_target, sparse_rows
from ._validation import (
    Layout,
    LogitsDtypeError,
    TargetOutOfBoundsError,
    check_layout,
    check_sparse_layout,
    out_of_bounds_message,
)

__all__ = [
    "CHUNK_BYTES",
    "RowOutputs",
    "compute_dtype",
    "forward_logits",
    "prepare_targets",
    "reduce_loss",
    "row_coefficients",
    "run_rows",
]


PARALLEL_MIN_SIZE = 1 << 16  # logits below which the kernels run on the calling thread only
# The memory budget of one chunk of logits, in bytes: the fused head's buffer (384 rows at V = 32768,
# float32) and the torch chunked path's working set. The kernels' own work unit is separate. A 48 MiB
# chunk took the time of a 96 MiB one (D = 1024; N = 4096, V = 32768 and N = 2048, V = 128256);
# 32 MiB was 1.2x slower at V = 128256, and bigger chunks are faster there (benchmarks/README.md).
CHUNK_BYTES = 48 * 2**20


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; float32 and narrower floats compute in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


@dataclass
class RowOutputs:
    loss: np.ndarray  # (P,) float64, per-position loss before reduction
    lse: np.ndarray  # (P,) float64
    argmax: np.ndarray  # (P,) int64, or empty
    entropy: np.ndarray  # (P,) float64, or empty


def check_arrays(logits_shape, logits_dtype, target, weight, options: CEOptions) -> Layout:
    """The layout of a problem, validated: target is an array, a SparseTarget or a sparse matrix."""
    weight_shape = None if weight is None else np.shape(weight)
    kind = np.dtype(logits_dtype).kind
    if is_sparse_target(target):
        matrix = not isinstance(target, SparseTarget)
        return check_sparse_layout(
            logits_shape, kind, str(np.dtype(logits_dtype)), target.shape, weight_shape, options, matrix=matrix
        )
    return check_layout(
        logits_shape,
        kind,
        str(np.dtype(logits_dtype)),
        target.shape,
        target.dtype.kind,
        str(target.dtype),
        weight_shape,
        options,
    )


def prepare_targets(
    layout: Layout, target, weight, options: CEOptions, dtype: np.dtype
) -> tuple[np.ndarray | SparseRows, np.ndarray, float]:
    """Targets in row form and the class weight; checks class indices against [0, C).

    Returns (target_rows, weight (C,) float64 or empty, normalizer for "mean"). A sparse target's
    rows are `SparseRows`, and its normalizer the number of positions that are not all padding.
    """
    C = layout.num_classes
    P = layout.num_positions
    w = np.empty(0) if weight is None else kernel_array(weight, np.float64).reshape(C)
    if layout.sparse:
        rows = sparse_rows(target, layout.positions_shape, C)
        return rows, w, float(rows.num_kept)
    if layout.probability:
        if layout.class_axis == 1 and target.ndim > 2:
            rows = np.moveaxis(target, 1, -1).reshape(P, C)
        else:
            rows = target.reshape(P, C)
        rows = kernel_array(rows, dtype)
        return rows, w, float(P)
    rows = target.reshape(P)
    if rows.dtype != np.int64:
        if rows.dtype.kind == "u" and rows.dtype.itemsize == 8 and rows.size and rows.max() > np.iinfo(np.int64).max:
            bad = rows[rows > np.iinfo(np.int64).max][0]
            raise TargetOutOfBoundsError(out_of_bounds_message(int(bad)))
        rows = rows.astype(np.int64)
    rows = kernel_array(rows, np.int64)
    parallel = P >= PARALLEL_MIN_SIZE and _threads.parallel_allowed()
    with _threads.kernel_region(parallel):
        first_bad, kept, nonzero, normalizer = _kernels.check_targets(parallel, rows, C, options.ignore_index, w)
    if first_bad >= 0:
        raise TargetOutOfBoundsError(out_of_bounds_message(int(rows[first_bad])))
    if w.size and kept and not nonzero:
        # every kept position weighs 0: PyTorch's mean is 0 / 0 = NaN, label smoothing or not
        normalizer = float("nan")
    return rows, w, normalizer


def kernel_array(a, dtype) -> np.ndarray:
    """`a` as a C-contiguous, writeable array of `dtype`: a view when it already is one, else a copy.

    The kernels are compiled for writeable arrays: a read-only caller's array (np.broadcast_to, a
    memory map opened "r", setflags(write=False)) would otherwise need its own numba specialization,
    which fails to type. The kernels never write to these inputs (except logits passed as `out`).
    """
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def logits_rows(logits: np.ndarray, layout: Layout, dtype: np.dtype) -> np.ndarray:
    """(P, C) C-contiguous logits in the compute dtype; a view (no copy) for contiguous 2-D input."""
    C, P = layout.num_classes, layout.num_positions
    if logits.ndim > 2:
        logits = np.moveaxis(logits, 1, -1)
    return kernel_array(logits.reshape(P, C), dtype)


def row_coefficients(problem_reduction: str, normalizer: float, grad_output, positions_shape, P: int) -> np.ndarray:
    """coef_n = dL_total/dl_n: grad_output / normalizer for "mean", grad_output for "sum", and the
    per-position upstream gradient for "none". float64, (P,), or (1,) when it is one number for every
    position (the kernels read it through `_rows.coef_at`)."""
    if grad_output is None:
        go = np.ones(P) if problem_reduction == "none" else 1.0
    else:
        go_arr = np.asarray(grad_output, dtype=np.float64)
        if problem_reduction == "none":
            try:
                go = np.broadcast_to(go_arr, positions_shape).reshape(P)
            except ValueError:
                raise ValueError(
                    f"grad_output of shape {go_arr.shape} does not broadcast to the per-position loss "
                    f"shape {tuple(positions_shape)}"
                ) from None
        else:
            if go_arr.size != 1:
                raise ValueError(
                    f"grad_output must be a scalar for reduction={problem_reduction!r}, got shape {go_arr.shape}"
                )
            go = float(go_arr.reshape(()))
    if problem_reduction == "mean":  # go is a float: x / nan, x / inf and overflow give IEEE results
        go = go / float(normalizer) if normalizer != 0 else go * math.inf
    if np.ndim(go) == 0:  # one coefficient for every position (`_rows.coef_at`)
        return np.full(1, go, np.float64)
    return kernel_array(go, np.float64)


def run_rows(
    logits: np.ndarray,
    target: np.ndarray | SparseRows,
    probability: bool,
    weight: np.ndarray,
    options: CEOptions,
    coef: np.ndarray | None,
    grad: np.ndarray | None,
    want_stats: bool,
    half: str | None = None,
    keep: bool = True,
) -> RowOutputs:
    """Runs the row kernel on (P, C) logits, or on (N, C, S) class-axis-1 logits read in place (P = N S,
    class-index targets); writes the gradient, in the logits' layout, into `grad` (may be `logits`).
    With `half` ("bfloat16" or "float16") the logits and the gradient are (P, C) 16-bit patterns
    (uint16 or float16 arrays), read and written as such by `_half`'s kernels, computed in float32.
    keep=False: the caller reads the per-position loss and lse before its next engine call and keeps
    neither, so they are this thread's scratch arrays (`_resources.scratch`)."""
    axis1 = logits.ndim == 3
    P = logits.shape[0] * logits.shape[2] if axis1 else logits.shape[0]
    loss = np.empty(P) if keep else _resources.scratch("loss", P)
    lse = np.empty(P) if keep else _resources.scratch("lse", P)
    argmax = np.empty(P if want_stats else 0, dtype=np.int64)
    entropy = np.empty(P if want_stats else 0)
    g = grad if grad is not None else np.empty((0,) + logits.shape[1:], dtype=logits.dtype)
    k = coef if coef is not None else np.empty(0)
    cap = options.softcap or 0.0
    eps, lam = options.label_smoothing, options.z_loss
    # Small problems run serially: waking the thread pool costs more than their work (which per logit
    # is larger for the few-class and class-axis-1 kernels: they go parallel sooner)
    few = not probability and half is None and not isinstance(target, SparseRows)
    if few and not axis1:  # the kernel `_kernels.index_rows` will pick
        C = logits.shape[1]
        few = _kernels.index_kernel(logits.dtype, P, C, weight.shape[0] == C, eps, cap, want_stats) == "small"
    parallel = logits.size >= (_small.PARALLEL_MIN_SIZE if few else PARALLEL_MIN_SIZE) and _threads.parallel_allowed()
    with _threads.kernel_region(parallel):
        if half is not None:
            bits, gbits = logits.view(np.uint16), g.view(np.uint16)
            if probability:
                run = _half.probability_rows_half
                run(parallel, half, bits, target, weight, eps, lam, cap, k, gbits, loss, lse, argmax, entropy)
            else:
                ii = options.ignore_index
                run = _half.index_rows_half
                run(parallel, half, bits, target, weight, eps, lam, cap, ii, k, gbits, loss, lse, argmax, entropy)
        elif isinstance(target, SparseRows):
            t = target
            _sparse_rows.sparse_rows(
                parallel, logits, t.indptr, t.indices, t.values, weight, eps, lam, cap, k, g, loss, lse, argmax, entropy
            )
        elif probability:
            _kernels.probability_rows(parallel, logits, target, weight, eps, lam, cap, k, g, loss, lse, argmax, entropy)
        else:
            ii = options.ignore_index
            run = _axis1.index_axis1 if axis1 else _kernels.index_rows
            run(parallel, logits, target, weight, eps, lam, cap, ii, k, g, loss, lse, argmax, entropy)
    return RowOutputs(loss, lse, argmax, entropy)


def reduce_loss(
    loss_rows: np.ndarray, reduction: str, normalizer: float, positions_shape, dtype: np.dtype
) -> np.ndarray | np.generic:
    """The reduced loss in the caller's dtype: a NumPy scalar for "mean"/"sum", an array for "none"."""
    if reduction == "none":
        return loss_rows.reshape(positions_shape).astype(dtype)  # a copy: loss_rows may be scratch
    total = loss_rows.sum()
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            # as PyTorch: 0 / 0 (all ignored, empty) is NaN, x / 0 (kept weights summing to 0) is +-inf
            total = np.float64(total) / np.float64(normalizer)
    return np.asarray(total, dtype=dtype)[()]


def forward_logits(
    logits, target, weight, options: CEOptions, *, want_grad, want_stats, grad_output, out
) -> CrossEntropyResult:
    """The whole NumPy pipeline for given logits: validate, run the row kernels, reduce, lay the
    gradient out in the logits' shape (into `out` when given)."""
    logits = np.asarray(logits)
    if not is_sparse_target(target):
        target = np.asarray(target)
    if logits.dtype.kind == "f" and logits.dtype.itemsize < 4 and logits.dtype != np.float16:
        raise LogitsDtypeError(f"cross_entropy is not implemented for logits of dtype {logits.dtype}")
    layout = check_arrays(logits.shape, logits.dtype, target, weight, options)
    dtype = compute_dtype(logits.dtype)
    target_rows, w, normalizer = prepare_targets(layout, target, weight, options, dtype)
    if options.reduction != "mean":
        normalizer = 1.0
    P, C = layout.num_positions, layout.num_classes
    # (N, C, d1..dk) class-index logits are read in place as (N, C, S) where the axis-1 kernel applies;
    # otherwise the class axis is moved last (a copy)
    N = logits.shape[0] if logits.ndim > 2 else 0
    axis1 = N > 0 and not layout.probability and not layout.sparse and _axis1.axis1_applies(dtype, N, C, P // N)
    in_place = logits.ndim <= 2 or axis1
    # float16 rows are read and their gradient written in float16 by the 16-bit kernels (no float32 copy)
    half = logits.dtype == np.float16 and logits.ndim <= 2 and not layout.sparse
    store = np.dtype(np.float16) if half else dtype  # what the kernel reads and writes
    # what this call allocates beyond the caller's arrays, checked before any work
    itemsize = store.itemsize
    copies = 0 if logits.dtype == store and logits.flags.c_contiguous and in_place else P * C * itemsize
    _resources.check_memory(copies + (P * C * itemsize if want_grad and out is None else 0) + 40 * P, "cross_entropy")
    if axis1:
        rows = kernel_array(logits.reshape(N, C, P // N), dtype)  # (N, C, S): a view when contiguous
    else:
        rows = logits_rows(logits, layout, store)  # (P, C): a view when logits are contiguous
    coef = grad_rows = None
    direct = False  # the kernel writes the gradient straight into `out`
    if want_grad:
        coef = row_coefficients(options.reduction, normalizer, grad_output, layout.positions_shape, P)
        if out is not None:
            _check_out(out, logits)
            direct = in_place and out.dtype == store and out.flags.c_contiguous
        if direct:
            grad_rows = out.reshape(rows.shape)
            if np.shares_memory(grad_rows, rows) and grad_rows.ctypes.data != rows.ctypes.data:
                rows = rows.copy()  # partial overlap: only an exact alias is safe for the kernel
        else:
            grad_rows = _resources.gradient_array(rows.shape, store)  # aligned, reused memory when freed
    # the per-position losses are reduced (or copied by reduce_loss) and lse is returned only with stats
    half_name = "float16" if half else None
    result = run_rows(
        rows, target_rows, layout.probability, w, options, coef, grad_rows, want_stats, half_name, keep=want_stats
    )
    loss = reduce_loss(result.loss, options.reduction, normalizer, layout.positions_shape, logits.dtype)
    grad = None
    if direct:
        grad = out
    elif want_grad:
        if not in_place:  # rows are (N, d1..dk, C): move the class axis back to 1
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
        lse=result.lse.reshape(shape) if want_stats else np.empty(0),
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
