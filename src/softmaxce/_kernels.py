"""The kernel drivers the engine calls: rows spread over threads, or serial for small problems.

Each kernel comes as a parallel driver (rows spread over threads with `prange`) and a serial one
for small problems, where waking the thread pool costs more than the work. `index_rows` and
`probability_rows` pick the driver; the per-row work is written once: `_rows.index_row` /
`_rows.probability_row` (any option) and `_streamed` (float32 class indices, the training case).
All arrays are as the engine prepares them: z (P, C) C-contiguous logits; target (P,) int64 class
indices, or (P, C) probabilities; weight (C,) float64 or empty (= all ones); coef (P,) float64, the
upstream gradient divided by the normalizer, or (1,): one for every position (`_rows.coef_at`);
grad (P, C), written only if it has P rows (it may be z itself: each entry is read before it is
written); loss and lse (P,) float64, always written; argmax and entropy (P,), only if they have P
entries. Class indices must be in [0, C) or equal ignore_index (the engine checks).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._bits import JIT
from ._rows import index_row, probability_row, weight_sum, weights_nonnegative
from ._small import index_rows_small, small_classes
from ._streamed import index_rows_streamed, index_rows_streamed_serial, streams

__all__ = ["check_targets", "index_kernel", "index_rows", "probability_rows"]


def index_kernel(dtype, P: int, C: int, weighted: bool, eps: float, cap: float, want_stats: bool) -> str:
    """Which kernel `index_rows` runs for (P, C) class-index rows: "small" (the few-classes kernel,
    `_small`, C <= 128; below 32 classes where the streamed path applies), "streamed" (where
    `_streamed.streams` applies) or "general" (the row kernel)."""
    streamed = streams(dtype, P, C, weighted, eps, cap, want_stats)
    if small_classes(dtype, P, C, streamed):  # a few classes: rows across the vector lanes
        return "small"
    return "streamed" if streamed else "general"


def index_rows(
    parallel: bool, z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy
) -> None:
    """Class-index targets: the kernel `index_kernel` names, on the thread pool if `parallel`."""
    P, C = z.shape
    ii = ignore_index
    kind = index_kernel(z.dtype, P, C, weight.shape[0] == C, eps, cap, entropy.shape[0] == P)
    if kind == "small":
        index_rows_small(parallel, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy)
        return
    if kind == "streamed":
        run = index_rows_streamed if parallel else index_rows_streamed_serial
        run(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse)
        return
    run = _index_rows if parallel else _index_rows_serial
    run(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy)


def probability_rows(parallel: bool, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy) -> None:
    """Probability targets t (P, C), smoothed to t' = (1 - eps) t + eps / C:
    l_n = sum_c w_c t'_c (lse - z_c) + lam lse^2 (targets are not validated)."""
    run = _probability_rows if parallel else _probability_rows_serial
    run(z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)


@njit(parallel=True, **JIT)
def _index_rows(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    wsum, wpos = weight_sum(weight, z.shape[1]), weights_nonnegative(weight)
    for n in prange(z.shape[0]):
        index_row(n, z, target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _index_rows_serial(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    wsum, wpos = weight_sum(weight, z.shape[1]), weights_nonnegative(weight)
    for n in range(z.shape[0]):
        index_row(n, z, target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy)


@njit(parallel=True, **JIT)
def _probability_rows(z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    for n in prange(z.shape[0]):
        probability_row(n, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _probability_rows_serial(z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    for n in range(z.shape[0]):
        probability_row(n, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)


TARGET_CHUNK = 1 << 16  # class indices per chunk of `check_targets` (chunk sums are added in order)


def check_targets(parallel: bool, target, C: int, ignore_index: int, weight) -> tuple[int, int, int, float]:
    """One pass over (P,) int64 class indices: (the first position whose index is neither in [0, C) nor
    ignore_index, or -1; the number of kept positions; how many of them have a nonzero weight; the sum
    of their weights (weight (C,) float64, or empty: all ones)). On the thread pool if `parallel`; the
    sum is added chunk by chunk in order, so it does not depend on the thread count."""
    run = _check_targets if parallel else _check_targets_serial
    first, kept, nonzero, wsum = run(target, C, ignore_index, weight)
    return int(first), int(kept), int(nonzero), float(wsum)


@njit(**JIT)
def _target_chunk(ch, target, C, ii, weight, first, kept, nonzero, wsum):
    lo, hi = ch * TARGET_CHUNK, min(target.shape[0], (ch + 1) * TARGET_CHUNK)
    weighted = weight.shape[0] == C
    if not weighted:  # a branch-free count (it vectorizes: 2**20 targets took 0.53 ms, scalar, before);
        k = nout = 0  # the loop below runs only to find the first bad index
        for p in range(np.uint64(lo), np.uint64(hi)):  # unsigned: no wraparound code in the loop
            y = target[p]
            keep = np.int64(y != ii)
            k += keep
            nout += keep & np.int64(np.uint64(y) >= np.uint64(C))  # a negative index wraps to a huge one
        if nout == 0:
            first[ch], kept[ch], nonzero[ch], wsum[ch] = -1, k, k, float(k)
            return
    n = k = 0
    s = 0.0
    bad = -1
    for p in range(lo, hi):
        y = target[p]
        if y == ii:
            continue
        if y < 0 or y >= C:
            if bad < 0:
                bad = p
            continue
        k += 1
        if weighted:
            w = weight[y]
            s += w
            n += w != 0.0
    first[ch], kept[ch], nonzero[ch], wsum[ch] = bad, k, n if weighted else k, s if weighted else float(k)


@njit(**JIT)
def _target_chunks(P):
    """Per-chunk outputs of `_target_chunk`: (first bad, kept, nonzero, weight sum)."""
    nch = (P + TARGET_CHUNK - 1) // TARGET_CHUNK
    return np.empty(nch, np.int64), np.empty(nch, np.int64), np.empty(nch, np.int64), np.empty(nch)


@njit(**JIT)
def _combine_targets(first, kept, nonzero, wsum):
    bad = -1
    for f in first:
        if f >= 0:
            bad = f
            break
    s = 0.0
    for v in wsum:
        s += v
    return bad, kept.sum(), nonzero.sum(), s


@njit(parallel=True, **JIT)
def _check_targets(target, C, ii, weight):
    first, kept, nonzero, wsum = _target_chunks(target.shape[0])
    nch = first.shape[0]
    for ch in prange(nch):
        _target_chunk(ch, target, C, ii, weight, first, kept, nonzero, wsum)
    return _combine_targets(first, kept, nonzero, wsum)


@njit(**JIT)
def _check_targets_serial(target, C, ii, weight):
    first, kept, nonzero, wsum = _target_chunks(target.shape[0])
    nch = first.shape[0]
    for ch in range(nch):
        _target_chunk(ch, target, C, ii, weight, first, kept, nonzero, wsum)
    return _combine_targets(first, kept, nonzero, wsum)
