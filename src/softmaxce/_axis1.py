"""Class axis 1 in place: (N, C, S) logits read and their gradient written in the input's own layout.

For (N, C, d1..dk) logits (segmentation: N x C x H x W) the positions of one image, S = d1*...*dk of
them, already sit class-major: logit (n, c, s) is z[n, c, s], so a block of positions s0 .. s0 + R - 1
of image n is exactly the class-major block `_small.column_block` computes on (stride S between
classes). No class-last copy of the logits is made, and the gradient comes out as (N, C, S) directly.
The math is `_small.column_block`'s (see `_rows.py` for the formulas); position p = n * S + s indexes
the targets (N, S), the upstream coefficients and the per-position outputs, as in the engine's rows.

Chunks (a run of blocks of one image, or several whole small images) have boundaries that depend only
on the shape: results are bit for bit the same on any thread count.
"""

from __future__ import annotations

from numba import njit, prange

from ._bits import JIT
from ._small import block_positions, block_task, chunk_logits, column_block, new_workspace, prefetch_run
from ._x86 import AVX2_FMA, store_fence

__all__ = ["AXIS1_MAX_C", "AXIS1_MIN_LOGITS", "axis1_applies", "index_axis1"]

AXIS1_MAX_C = 1024  # above this a block of 16 positions no longer fits in L1/L2 scratch comfortably
# Images of fewer logits than this move the class axis last: a block of so few positions costs more
# in per-block work than the copy (2**22 float32 logits, 2 threads: C = 2, S = 16 29.7 ms in place
# against 13.8 moved; C = 7, S = 16 9.1 against 7.2; C = 2, S = 64 10.4 against 14.4)
AXIS1_MIN_LOGITS = 128


# Gradients of at least this many bytes leave through non-temporal stores (`_small._stream_row`; no
# soft cap): a block's C gradient rows are written while C logit rows are read, and past the cache
# they no longer evict the logits (8 x 21 x 128 x 128 float32 through the API, the plain copy: one
# thread 1.23-1.34 -> 1.08-1.11 ms; two threads 0.61-0.65 either way in five alternating rounds; with
# class weights, two threads 0.79-0.86 -> 0.72-0.76)
AXIS1_STREAM_BYTES = 1 << 23


def axis1_applies(dtype, N: int, C: int, S: int) -> bool:
    """Whether (N, C, S) class-index logits take `index_axis1` (else: move the class axis last)."""
    ok = dtype in ("float32", "float64") and N * S > 0 and 0 < C <= AXIS1_MAX_C
    return ok and S >= 16 and C * S >= AXIS1_MIN_LOGITS


def index_axis1(
    parallel: bool, z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy
) -> None:
    """`_kernels.index_rows` for logits z (N, C, S), C-contiguous, in place of (N * S, C) rows.

    grad is (N, C, S) (written only if it has N * S * C entries; it may be z itself); target, coef,
    loss, lse, argmax and entropy are (N * S,) in position order p = n * S + s, as for `index_rows`.
    """
    run = _index_axis1 if parallel else _index_axis1_serial
    run(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _partition(N, C, S):
    """(R, blocks per chunk, chunks per image, images per chunk): blocks of up to R positions of one
    image, chunks of about `chunk_logits` logits. An image of fewer logits than a chunk is not split,
    and a chunk then holds whole images (so that many small images do not mean as many chunks, each
    allocating its scratch: 65536 x 7 x 4 x 4 took 34.5 ms so, against 4.7 for its rows); otherwise a
    chunk is a run of blocks of one image."""
    R = block_positions(C)
    nblocks = (S + R - 1) // R
    total = chunk_logits(N * C * S)
    if C * S <= total:
        return R, nblocks, 1, max(1, total // (C * S))
    per_chunk = max(1, total // (C * R))
    return R, per_chunk, (nblocks + per_chunk - 1) // per_chunk, 1


@njit(**JIT)
def _chunks(N, C, S):
    """The number of chunks of `_axis1_chunk` for (N, C, S) logits."""
    _, _, chunks_per_n, images = _partition(N, C, S)
    return (N + images - 1) // images if images > 1 else N * chunks_per_n


@njit(**JIT)
def _axis1_chunk(ch, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy):
    """Chunk ch (`_partition`): images [ch * images, (ch + 1) * images) whole, or, for large images,
    blocks [j * per_chunk, (j + 1) * per_chunk) of image n, for ch = n * chunks_per_n + j."""
    N, C, S = z.shape
    P = N * S
    R, per_chunk, chunks_per_n, images = _partition(N, C, S)
    want_grad = grad.size == P * C and P > 0
    want_stats = entropy.shape[0] == P and P > 0
    stream = AVX2_FMA and want_grad and grad.size * grad.itemsize >= AXIS1_STREAM_BYTES
    task = block_task(C, target, weight, eps, lam, cap, ii, coef)
    outs = (loss, lse, argmax, entropy)
    zf = z.reshape(-1)
    gf = grad.reshape(-1)
    ws = new_workspace(C, R, zf)
    if images > 1:
        n0, n1, b0, b1 = ch * images, min(N, (ch + 1) * images), 0, per_chunk
    else:
        n0, n1 = ch // chunks_per_n, ch // chunks_per_n + 1
        b0, b1 = (ch % chunks_per_n) * per_chunk, (ch % chunks_per_n + 1) * per_chunk
    for n in range(n0, n1):
        for b in range(b0, b1):
            s0 = b * R
            if s0 >= S:
                break
            nr = min(R, S - s0)
            base = n * C * S + s0
            if s0 + R < S:  # the next block's logits, targets and coefficients load while this one computes
                nn = min(R, S - s0 - R)
                for c in range(C):
                    prefetch_run(zf, base + c * S + R, nn)
                prefetch_run(target, n * S + s0 + R, nn)
                prefetch_run(coef, n * S + s0 + R, nn if coef.shape[0] == P else 0)
            column_block(C, nr, zf, base, S, n * S + s0, task, want_grad, gf, base, S, outs, want_stats, ws, stream)
    if AVX2_FMA:  # a constant: the fence, x86 code, is pruned on other targets
        if stream:
            store_fence()  # the non-temporal stores are visible before the chunk counts as done


@njit(parallel=True, **JIT)
def _index_axis1(z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy):
    N, C, S = z.shape
    for ch in prange(_chunks(N, C, S)):
        _axis1_chunk(ch, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _index_axis1_serial(z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy):
    N, C, S = z.shape
    for ch in range(_chunks(N, C, S)):
        _axis1_chunk(ch, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy)
