"""The fused head's pipeline: cross_entropy(x @ W.T + b, y) over chunks of rows, never all logits.

For each chunk of positions the logits (n, V) are formed in one reusable buffer, the row kernel
turns them into their gradient G = coef * (alpha a - beta) in place, and three matrix products
(on one BLAS: scipy's, or the caller's `products`) finish the chunk:

    grad_x[chunk] = G @ W          (n, D)
    grad_W       += G.T @ x[chunk] (V, D)   BLAS gemm with beta=1: accumulated in place, fixed order
                                            (the first chunk writes it: beta=0, no zero-filled start)
    grad_b       += sum_rows G     (V,)

Extra memory is the chunk buffer, `CHUNK_BYTES` unless `chunk_size` sets its rows, independent of N.
Positions whose class-index target is ignore_index (a masked prompt) contribute nothing, so without
statistics the chunks run over the kept positions only (each chunk gathers their rows of x and
scatters their rows of grad_x): their share of the three products is not spent.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas

from . import _resources
from ._engine import CHUNK_BYTES, check_arrays, compute_dtype, prepare_targets, reduce_loss, row_coefficients, run_rows
from ._options import CEOptions
from ._results import LinearCrossEntropyResult
from ._sparse import SparseTarget, is_sparse_target
from ._validation import LogitsDtypeError, TargetShapeError

__all__ = ["ScipyProducts", "forward_linear"]


def _float(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise LogitsDtypeError(f"linear_cross_entropy is not implemented for {name} of dtype {a.dtype}")
    return a


class ScipyProducts:
    """The three matrix products of a chunk on scipy's BLAS, on Fortran views of the C arrays (no
    copies). All three on one BLAS: handing work back and forth between two OpenBLAS pools (numpy's
    and scipy's) costs their idle threads' spinning. A front end that has its own BLAS pool (torch)
    passes an object with the same three methods instead."""

    def __init__(self, dtype: np.dtype) -> None:
        self.gemm = blas.dgemm if dtype == np.float64 else blas.sgemm

    def logits(self, xc: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
        """out (n, V) = xc (n, D) @ W (V, D)^T."""
        self.gemm(1.0, W.T, xc.T, trans_a=1, beta=0.0, c=out.T, overwrite_c=1)

    def grad_x(self, G: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
        """out (n, D) = G (n, V) @ W (V, D)."""
        self.gemm(1.0, W.T, G.T, beta=0.0, c=out.T, overwrite_c=1)

    def grad_weight(self, G: np.ndarray, xc: np.ndarray, gW: np.ndarray, accumulate: bool) -> None:
        """gW (V, D) (+)= G (n, V)^T @ xc (n, D): gW^T (D, V, Fortran order) (+)= xc^T G, BLAS beta = 1
        when accumulating, else 0 (gW is only written: it may be uninitialized)."""
        self.gemm(1.0, xc.T, G.T, beta=float(accumulate), c=gW.T, trans_b=1, overwrite_c=1)


def forward_linear(
    x, W, target, bias, weight, options: CEOptions, chunk_size, *, want_grad, want_stats, grad_output, products=None
) -> LinearCrossEntropyResult:
    """The fused head on NumPy arrays: validate, then chunk by chunk form the logits, run the row kernel
    (the gradient in place) and the three products. The front ends (`_linear.py`, softmaxce.torch) call this."""
    x = _float("x", x)
    W = _float("linear_weight", W)
    sparse = is_sparse_target(target)
    if not sparse:
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
    dtype = compute_dtype(out_dtype)
    positions = x.shape[:-1]
    P = int(np.prod(positions, dtype=np.int64))
    # The logits are (P, V) with classes last; validate as cross_entropy would on them.
    if sparse:
        # a SparseTarget's leading shape is x's; the engine sees it as the (P, V) logits' positions
        logits_shape = (V,) if x.ndim == 1 else (P, V)
        target_view = target
        if isinstance(target, SparseTarget):
            if target.shape != positions:
                raise TargetShapeError(
                    f"Expected SparseTarget of shape {list(positions) + ['K']} (x's leading shape, then K "
                    f"entries), got leading shape {list(target.shape)}"
                )
            if x.ndim > 2:
                target_view = SparseTarget(target.indices.reshape(P, target.k), target.values.reshape(P, target.k))
    elif x.ndim == 1:
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
    layout = check_arrays(logits_shape, dtype, target_view, weight, options)
    target_rows, w, normalizer = prepare_targets(layout, target_view, weight, options, dtype)
    if options.reduction != "mean":
        normalizer = 1.0
    out_positions = layout.positions_shape if x.ndim == 1 else positions

    # A position whose class index is ignore_index adds nothing (loss 0, gradient 0, docs/SEMANTICS.md),
    # so without statistics the chunks run over the kept positions only: each chunk gathers its rows of
    # x and scatters its rows of grad_x (masked prompt tokens then cost none of the three products).
    kept = None
    if not (want_stats or layout.probability or layout.sparse):
        keep = target_rows != options.ignore_index
        if not keep.all():
            kept = np.flatnonzero(keep)
    Pa = P if kept is None else kept.size  # the positions the chunks run over

    # what this call allocates beyond the caller's arrays (copies, one chunk of logits, the gradients),
    # checked before any of it is made
    rows = _chunk_rows(chunk_size, Pa, V, dtype)
    itemsize = np.dtype(dtype).itemsize
    copies = sum(a.size for a in (x, W) if not (a.dtype == dtype and a.flags.c_contiguous)) * itemsize
    copies += 0 if kept is None else 2 * rows * D * itemsize  # a chunk's gathered x and grad_x rows
    grads = (P * D + V * D + V) * itemsize if want_grad else 0
    _resources.check_memory(copies + rows * V * itemsize + grads + 40 * P, "linear_cross_entropy")
    x2 = np.ascontiguousarray(x.reshape(P, D) if x.ndim > 1 else x.reshape(1, D), dtype=dtype)
    W2 = np.ascontiguousarray(W, dtype=dtype)
    b2 = None if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    coef = None
    if want_grad:
        coef = row_coefficients(options.reduction, normalizer, grad_output, out_positions, P)

    buf = _resources.aligned_array((rows, V), dtype)  # the only logits-sized memory: one chunk
    loss = np.zeros(P)  # an ignored position's loss is 0
    lse = np.full(P, np.nan)  # and its lse NaN, as the row kernel gives them
    predicted = np.empty(P if want_stats else 0, dtype=np.int64)
    entropy = np.empty(P if want_stats else 0)
    gx = gW = gb = None
    if want_grad:
        gx = _resources.aligned_array((P, D), dtype, zero=kept is not None)
        # written by the first chunk's product (not accumulated into zeros: the first touch of fresh zero
        # pages by a beta = 1 product cost 0.7-1 s for a 128256 x 1024 gW), zeroed only if no chunk runs
        gW = _resources.aligned_array((V, D), dtype, zero=Pa == 0)
        gb = np.zeros(V, dtype=dtype) if b2 is not None else None
    gx_rows = None if kept is None or not want_grad else _resources.aligned_array((rows, D), dtype)
    products = products or ScipyProducts(dtype)
    for start in range(0, Pa, rows):
        stop = min(start + rows, Pa)
        at = slice(start, stop) if kept is None else kept[start:stop]  # the chunk's positions
        xc = x2[at]  # a view, or the gathered kept rows
        z = buf[: stop - start]
        products.logits(xc, W2, z)  # z (n, V) = x_c W^T
        if b2 is not None:
            z += b2
        r = run_rows(
            z,
            target_rows[at],
            layout.probability,
            w,
            options,
            (coef[at] if coef.shape[0] != 1 else coef) if want_grad else None,
            z if want_grad else None,
            want_stats,
            keep=False,  # loss and lse are copied out just below
        )
        loss[at] = r.loss
        lse[at] = r.lse
        if want_stats:
            predicted[start:stop] = r.argmax
            entropy[start:stop] = r.entropy
        if want_grad:  # z now holds G = dL/dlogits for the chunk
            if kept is None:
                products.grad_x(z, W2, gx[start:stop])  # grad_x (n, D) = G W
            else:
                products.grad_x(z, W2, gx_rows[: stop - start])
                gx[at] = gx_rows[: stop - start]
            products.grad_weight(z, xc, gW, start > 0)  # grad_W (V, D) += G^T x_c, in place
            if gb is not None:
                gb += z.sum(axis=0)

    loss_out = reduce_loss(loss, options.reduction, normalizer, out_positions, out_dtype)
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
