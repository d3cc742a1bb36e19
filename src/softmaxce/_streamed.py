"""The streamed float32 pipeline for class-index targets: the case that decides training speed.

Taken for float32 logits without softcap, statistics or class-weighted label smoothing (`streams`).
It computes what `_rows.index_row` computes (see `_rows.py` for the formulas), but reads each row
from memory once and writes the gradient once. Rows of up to RESIDENT_MAX_C classes stay in L1 with
their gradient, and `_resident_rows` makes three passes over each with ordinary stores; longer rows
go in blocks of about `BLOCK` entries that sit in L1 while they are used, the gradient written with
non-temporal stores where the CPU has AVX2 and FMA (`_x86.py`), one row's during the next row's exp
pass (`_streamed_chunk`). Loss + gradient through `cross_entropy_and_grad` with 2 threads took 81 us
at 1024 x 256, 1.38 ms at 8192 x 1024 and 10-13 ms at 65536 x 1000 with the resident kernel, against
258 us, 1.94 ms and 15.5 ms with the streamed one (on 1 thread 109-117 us against 408-415 at
1024 x 256). It stays ahead up to 2048 classes; from 4096 on the streamed one is faster (a
prototype of the resident kernel took 1.2x the streamed one's time at 1024 x 32768).

The per-row functions are compiled without numba's reference counting (`_nrt=False`: they allocate
nothing, their callers pass the scratch rows). With it, every row view and every array argument
cost an atomic increment and decrement, which also wait for the row's pending stores: 40-70% of the
time at 256-1024 classes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._bits import JIT, address, float_from_sortable, prefetch, sortable_bits
from ._rows import BLOCK, block_exp, coef_at, index_alpha, index_loss, row_max, weight_sum
from ._x86 import AVX2_FMA, LANES, exp16_store, exp16_sum, max16, store_fence, stream_scaled, sum16

__all__ = ["index_rows_streamed", "index_rows_streamed_serial", "streams"]


# The streamed path (class-index targets, no softcap, no statistics, no class-weighted smoothing: the
# case that decides the speed of training) reads each row from memory once, in blocks of about BLOCK
# entries that sit in L1 while they are used, and writes the gradient once with non-temporal stores:
#   pass 1, per block b: m_b = max of the block, e_j = exp(z_j - m_b) into a per-thread scratch row
#           (L2-resident), s_b = sum_j e_j (float32 within the block);
#   then    m = max_b m_b,  s = sum_b s_b exp(m_b - m)  (float64),  lse = m + ln s;
#   pass 2, per block: grad_j = e_j * (exp(m_b - m) * k * alpha / s) - k * eps / C   (streamed out),
#           and the target entry grad_y -= k (1 - eps) w_y.
# Pass 2 of a row runs inside pass 1 of the next one, block by block (block b of the previous row's
# gradient is streamed out of e before the next row's exponentials overwrite e[b]), so the gradient's
# memory writes overlap the exp arithmetic instead of following it; and the exp loop prefetches the
# logits 8 KiB ahead, a cache line per iteration (the portable path: each block's max pass prefetches
# the next block), so the reads overlap it too. The arithmetic is identical either way.
_STREAM_ALIGN = 32


@njit(inline="always", **JIT)
def _block_range(b, C):
    """Block b of a row is [b BLOCK, min((b + 1) BLOCK, C)): a fixed partition, so the float32 block
    sums (and so every result) do not depend on where the arrays happen to sit in memory."""
    return b * BLOCK, min((b + 1) * BLOCK, C)


@njit(inline="always", **JIT)
def _stream_block(e, g, j0, j1, f, beta, streamed, base):
    """g[j0:j1] = e[j0:j1] * f - beta; 8-lane non-temporal stores where g is 32-byte aligned (`base` is
    g's address; the unaligned head and the tail are stored normally)."""
    isz = g.itemsize
    j = j0
    if AVX2_FMA:  # a constant: numba prunes the branch, and its x86 code, on other targets
        if streamed:
            jh = min(j1, j0 + ((_STREAM_ALIGN - (base + j0 * isz) % _STREAM_ALIGN) % _STREAM_ALIGN) // isz)
            for jj in range(j0, jh):
                g[jj] = e[jj] * f - beta
            j = jh
            while j + LANES <= j1:
                stream_scaled(g, j, e, j, f, beta)
                j += LANES
    for jj in range(j, j1):
        g[jj] = e[jj] * f - beta


@njit(_nrt=False, **JIT)
def _row_stream_grad(e, g, bmax, nb, m, scale, beta, streamed):
    """Pass 2 alone (the last row of a run): g_j = e_j * exp(m_b - m) * scale - beta, then a store fence."""
    C = e.shape[0]
    base = address(g)
    for b in range(nb):
        j0, j1 = _block_range(b, C)
        _stream_block(e, g, j0, j1, g.dtype.type(math.exp(bmax[b] - m) * scale), g.dtype.type(beta), streamed, base)
    if AVX2_FMA:
        if streamed:
            store_fence()


@njit(_nrt=False, **JIT)
def _row_exp_blocks(row, e, bmax, bsum, nb, store, z, at, prev, g, pmax, pm, pscale, pbeta, pstreamed):
    """Pass 1 of a row (see above). Returns (m, s): the row max and sum_j exp(z_j - m) in float64. A row
    with a NaN, a +inf, or only -inf logits returns s = NaN (and m = NaN, +inf or -inf where it can tell).

    `at` is the row's offset in z.flat (-1: z is not C-contiguous, no prefetch). If `prev`, block b of
    the previous row's gradient (pass 2 with its pmax, pm, pscale, pbeta, into g) is streamed out of
    e[b] before this row's exponentials overwrite it, and a store fence follows the last block.
    """
    C = row.shape[0]
    lim = z.size
    gbase = address(g)
    m = -np.inf
    bad = 0.0  # finite until a block holds a NaN or +inf
    for b in range(nb):
        j0, j1 = _block_range(b, C)
        # the block max: vmaxps (a NaN entry is skipped: it shows up in the exp sum below), or an
        # integer max on the sortable bits (a NaN wins if its sign bit is clear, else sorts below -inf)
        if AVX2_FMA:
            n16 = (j1 - j0) // 16
            mb = max16(row, j0, n16, row.dtype.type(-np.inf))
            for j in range(j0 + 16 * n16, j1):
                mb = row[j] if row[j] > mb else mb
        else:
            mi = sortable_bits(row[j0])
            for j in range(j0, j1):
                sv = sortable_bits(row[j])
                mi = sv if sv > mi else mi
            mb = float_from_sortable(row[0], mi)
        # bring in the next block while this one is computed (the AVX2_FMA exp loop prefetches as it goes)
        if at >= 0 and not AVX2_FMA:
            for j in range(at + j1, min(at + j1 + (j1 - j0), lim), 16):
                prefetch(z, j)
        if prev:
            f = g.dtype.type(math.exp(pmax[b] - pm) * pscale)
            _stream_block(e, g, j0, j1, f, g.dtype.type(pbeta), pstreamed, gbase)
        if math.isfinite(bad):
            if not math.isfinite(mb):
                if mb == -np.inf:
                    # every entry is -inf (exp gives 0) or a NaN that the max did not pick
                    for j in range(j0, j1):
                        if row[j] != row[j]:
                            bad = np.nan
                            break
                        if store:
                            e[j] = 0
                    bmax[b] = -np.inf
                    bsum[b] = 0.0
                else:
                    bad = float(mb)  # +inf or NaN
            else:
                # the block's exp terms (into e if `store`) and their float32 sum: the table exp over
                # the multiples of 16, `_expf` for the rest (all of it without AVX2_FMA)
                n16 = 0
                sb = row.dtype.type(0)
                if AVX2_FMA:
                    n16 = (j1 - j0) // 16
                    if store:
                        sb = exp16_store(row, e, j0, n16, mb)
                    else:
                        sb = exp16_sum(row, e, j0, n16, mb)
                sb = block_exp(row, mb, e, j0 + 16 * n16, j1, store, sb)
                bsum[b] = sb
                bmax[b] = mb
                m = max(m, float(mb))
    if AVX2_FMA:
        if prev and pstreamed:
            store_fence()
    if not math.isfinite(bad):
        return bad, np.nan
    if m == -np.inf:
        return m, np.nan
    s = 0.0
    for b in range(nb):
        s += bsum[b] * math.exp(bmax[b] - m)  # a NaN block sum (a NaN logit) stays NaN
    return m, s


_STREAM_CHUNK = 1 << 22  # at most this many logits per chunk of rows (a thread's unit of work), streamed path
_MIN_CHUNKS = 32


@njit(**JIT)
def _streamed_chunk(ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse):
    """Rows [ch * rows_per_chunk, ...) of `index_rows` on the streamed path (see above): the scratch rows,
    then `_streamed_rows`."""
    C = z.shape[1]
    nb = (C + BLOCK - 1) // BLOCK
    e = np.empty(C, dtype=z.dtype)
    bmax = np.empty(nb)
    bsum = np.empty(nb)
    pmax = np.empty(nb)
    _streamed_rows(
        ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse, e, bmax, bsum, pmax
    )


@njit(_nrt=False, **JIT)
def _streamed_rows(
    ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse, e, bmax, bsum, pmax
):
    """`_streamed_chunk`'s rows, e (C,) the exp terms of a row, bmax, bsum and pmax (nb,) its block maxima
    and sums and the pending row's block maxima."""
    P, C = z.shape
    want_grad = grad.shape[0] == P
    weighted = weight.shape[0] == C
    smooth = eps / C
    isz = z.itemsize
    contiguous = z.strides[1] == isz and z.strides[0] == C * isz
    nb = (C + BLOCK - 1) // BLOCK
    # the row whose gradient is still pending (streamed out during the next row's pass 1)
    prev, pn, pm, pscale, pbeta, pstreamed, pfix = False, 0, 0.0, 0.0, 0.0, False, z.dtype.type(0)
    for n in range(ch * rows_per_chunk, min(P, (ch + 1) * rows_per_chunk)):
        y = target[n]
        row = z[n]
        if y == ignore_index:
            if prev:
                _row_stream_grad(e, grad[pn], pmax, nb, pm, pscale, pbeta, pstreamed)
                grad[pn, target[pn]] = pfix
                prev = False
            loss[n] = 0.0
            lse[n] = np.nan
            if want_grad:
                grad[n, :] = 0
            continue
        wz = 0.0
        if smooth > 0.0:
            for c in range(C):
                wz += row[c]
        zy = float(row[y])
        g = grad[pn] if prev else row  # (row: unused)
        at = n * C if contiguous else -1
        m, s = _row_exp_blocks(row, e, bmax, bsum, nb, want_grad, z, at, prev, g, pmax, pm, pscale, pbeta, pstreamed)
        if prev:
            # the previous row's target entry, rewritten after the fence (ordered after the streamed stores)
            grad[pn, target[pn]] = pfix
            prev = False
        w_y = weight[y] if weighted else 1.0
        if s != s:
            mx = row_max(row)  # NaN if any entry is; else +inf, or -inf for a row of -inf
            lse[n] = mx if not math.isfinite(mx) else np.nan
            loss[n] = np.nan
            if want_grad:
                grad[n, :] = np.nan
            continue
        l_se = m + math.log(s)
        lse[n] = l_se
        loss[n] = index_loss(l_se, zy, w_y, wz, wsum, True, eps, smooth, lam)  # unweighted when smoothing
        if want_grad:
            k = coef_at(coef, n)
            # dz_j = k * (alpha * a_j - beta_j),  a_j = e_j exp(m_b - m) / s
            alpha = index_alpha(l_se, w_y, wsum, eps, smooth, lam)
            prev, pn, pm = True, n, m
            pscale = k * alpha / s
            pbeta = k * smooth
            # non-temporal stores need element-aligned rows (always so for arrays numpy allocates)
            pstreamed = address(grad[n]) % isz == 0
            for b in range(nb):
                pmax[b] = bmax[b]
            fy = z.dtype.type(math.exp(bmax[y // BLOCK] - m) * pscale)
            pfix = e[y] * fy - z.dtype.type(pbeta) - z.dtype.type(k * (1.0 - eps) * w_y)
    if prev:
        _row_stream_grad(e, grad[pn], pmax, nb, pm, pscale, pbeta, pstreamed)
        grad[pn, target[pn]] = pfix


@njit(_nrt=False, cache=True, nogil=True, error_model="numpy", fastmath=False)  # see the docstring
def _resident_rows(n0, n1, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse, tz, te):
    """Rows [n0, n1) of the streamed path for rows of at most RESIDENT_MAX_C classes, which stay in L1
    with their gradient: three passes over the row with ordinary stores (the max; e_j = exp(z_j - m)
    written into the gradient row, summed in float32 per BLOCK and in float64 across blocks; the
    gradient e_j * scale - beta in place), the formulas of `_streamed_chunk` with one max per row.
    Nothing is written before the max is known to be finite, so out=logits (g is z) is safe. The exp
    terms past a block's last multiple of 16 go through the scratch tz, te (16,), padded with -inf, as
    one more vector of the hand-written exp: a plain loop's sum, written into g, was vectorized or not
    depending on whether g overlapped z (LLVM's runtime alias check) and on the caller it was compiled
    into, and differed in the last bit between out=logits and a new gradient, and between 1 and 2
    threads. For the same reason it is compiled with fastmath=False, said explicitly: numba gives a
    function that does not set fastmath its caller's flags (the drivers' reassoc and contract). With
    them the block sums' order was left to LLVM, and the copy of this function built into a driver
    loaded from the cache summed some rows in another order than the copy compiled in the process:
    where one driver came from the cache and the other was compiled (a cold cache that another
    process had filled), 1 and 2 threads gave lse values 1e-9 apart on 53 rows of 300 and a gradient
    row 1 ulp apart."""
    P, C = z.shape
    want_grad = grad.shape[0] == P
    weighted = weight.shape[0] == C
    smooth = eps / C
    for n in range(n0, n1):
        y = target[n]
        row = z[n]
        if y == ignore_index:
            loss[n] = 0.0
            lse[n] = np.nan
            if want_grad:
                for j in range(C):
                    grad[n, j] = 0
            continue
        zy = float(row[y])
        wz = 0.0
        if smooth > 0.0:
            if AVX2_FMA:
                n16 = C // 16
                wz = sum16(row, 0, n16)
                for j in range(16 * n16, C):
                    wz += row[j]
            else:
                wz = _row_sum(row)
        if AVX2_FMA:  # vmaxps skips a NaN entry, which then shows up in the exp sum
            n16 = C // 16
            m = max16(row, 0, n16, row.dtype.type(-np.inf))
            for j in range(16 * n16, C):
                m = row[j] if row[j] > m else m
        else:
            m = row_max(row)
        s = np.nan
        if math.isfinite(m):
            s = 0.0
            for j0 in range(0, C, BLOCK):
                j1 = min(j0 + BLOCK, C)
                sb = row.dtype.type(0)
                if AVX2_FMA:
                    n16 = (j1 - j0) // 16
                    j = j0 + 16 * n16
                    nt = j1 - j  # the last 0-15 terms: one vector of the scratch, padded with -inf
                    if nt > 0:
                        for q in range(16):
                            tz[q] = row[j + q] if q < nt else -np.inf
                    if want_grad:
                        g = grad[n]
                        sb = exp16_store(row, g, j0, n16, m)
                        if nt > 0:
                            sb += exp16_store(tz, te, 0, 1, m)
                            for q in range(nt):
                                g[j + q] = te[q]
                    else:
                        sb = exp16_sum(row, row, j0, n16, m)
                        if nt > 0:
                            sb += exp16_sum(tz, te, 0, 1, m)
                else:
                    sb = block_exp(row, m, grad[n] if want_grad else row, j0, j1, want_grad, sb)
                s += sb
        if s != s:
            # a NaN or +inf logit, or only -inf: lse is the NaN, +inf or -inf; with a finite max the row
            # held a NaN (and g may already hold its exp terms, over the logits when out=logits)
            lse[n] = row_max(row) if not math.isfinite(m) else np.nan
            loss[n] = np.nan
            if want_grad:
                for j in range(C):
                    grad[n, j] = np.nan
            continue
        l_se = m + math.log(s)
        lse[n] = l_se
        w_y = weight[y] if weighted else 1.0
        loss[n] = index_loss(l_se, zy, w_y, wz, wsum, True, eps, smooth, lam)  # unweighted when smoothing
        if want_grad:
            g = grad[n]
            k = coef_at(coef, n)
            scale = g.dtype.type(k * index_alpha(l_se, w_y, wsum, eps, smooth, lam) / s)
            beta = g.dtype.type(k * smooth)
            gy = g[y] * scale - beta - g.dtype.type(k * (1.0 - eps) * w_y)
            for j in range(C):
                g[j] = g[j] * scale - beta
            g[y] = gy


@njit(inline="always", fastmath=False, error_model="numpy")
def _row_sum(row):
    """sum_c row[c] in float64, in a fixed order (the portable loops; `_x86.sum16` where AVX2 and FMA
    are there): eight running sums (lanes c mod 8), added pairwise, then the tail. Without fast-math a
    single running sum stays scalar, which made rows of 1000 classes with label smoothing 1.7-1.9x slower."""
    C = row.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    for j in range(0, C - 7, 8):
        a0 += row[j]
        a1 += row[j + 1]
        a2 += row[j + 2]
        a3 += row[j + 3]
        a4 += row[j + 4]
        a5 += row[j + 5]
        a6 += row[j + 6]
        a7 += row[j + 7]
    total = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    for j in range(C - C % 8, C):
        total += row[j]
    return total


RESIDENT_MAX_C = 2048  # rows up to this many classes take `_resident_rows` (8 KiB of float32)


@njit(parallel=True, **JIT)
def index_rows_streamed(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):
    """`index_rows` without softcap, statistics or class-weighted smoothing: `_resident_rows` up to
    RESIDENT_MAX_C classes, else two streaming passes."""
    P, C = z.shape
    wsum = weight_sum(weight, C)
    # chunks of at most _STREAM_CHUNK logits and at least _MIN_CHUNKS of them, for balance between the
    # threads (a chunk boundary costs one gradient pass that overlaps nothing)
    rows_per_chunk = max(1, min(_STREAM_CHUNK // C, -(-P // _MIN_CHUNKS)))
    nch = (P + rows_per_chunk - 1) // rows_per_chunk
    # each chunk's own tail scratch, made before the loop (numba hoists an allocation written inside a
    # prange body out of it, where the threads would share it)
    tails = np.empty((nch if C <= RESIDENT_MAX_C else 0, 2, 16), z.dtype)
    for ch in prange(nch):
        if C <= RESIDENT_MAX_C:
            n0 = ch * rows_per_chunk
            n1 = min(P, n0 + rows_per_chunk)
            tz, te = tails[ch, 0], tails[ch, 1]
            _resident_rows(n0, n1, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse, tz, te)
        else:
            _streamed_chunk(ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse)


@njit(**JIT)
def index_rows_streamed_serial(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):
    """Serial `index_rows_streamed`."""
    P, C = z.shape
    wsum = weight_sum(weight, C)
    if C <= RESIDENT_MAX_C:
        tz, te = np.empty(16, z.dtype), np.empty(16, z.dtype)
        _resident_rows(0, P, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse, tz, te)
        return
    rows_per_chunk = max(1, _STREAM_CHUNK // C)
    for ch in range((P + rows_per_chunk - 1) // rows_per_chunk):
        _streamed_chunk(ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse)


def streams(dtype: np.dtype, P: int, C: int, weighted: bool, eps: float, cap: float, want_stats: bool) -> bool:
    """Whether a class-index problem takes the streamed path: float32, no softcap, no statistics and
    no class-weighted label smoothing."""
    return dtype == np.float32 and P > 0 and C > 0 and cap == 0.0 and not want_stats and not (eps > 0.0 and weighted)
