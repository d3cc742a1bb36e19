"""Few classes (C <= SMALL_MAX_C; float32 rows the streamed path takes only below STREAMED_FROM_C): many
positions per SIMD vector, for class-index targets.

At C = 10 a row is shorter than one vector, so the row kernels of `_rows.py` spend their time on
per-row overhead. Here the math of `_rows.index_row` (the formulas are in `_rows.py`'s docstring)
runs on a *column block*: R positions laid out class-major, entry (c, r) at z[zo + c * zs + r], so
every loop is over classes outside and positions inside, and LLVM vectorizes across positions:

    m_r    = max_c z_cr                           (a NaN is skipped here and shows up in s_r)
    e_cr   = exp(z_cr - m_r),  s_r = sum_c e_cr   (float32 sum for float32 logits)
    lse_r  = m_r + ln s_r
    loss_r = (1 - eps) w_y (lse_r - z_yr) + (eps / C) sum_c w_c (lse_r - z_cr) + w_y lam lse_r**2
    g_cr   = k_r (alpha_r e_cr / s_r - (eps / C) w_c) - [c == y_r] k_r (1 - eps) w_y
             alpha_r = (1 - eps) w_y + (eps / C) sum_c w_c + 2 lam w_y lse_r

then times 1 - tanh(z / cap)**2 with a softcap. `column_block` is written once and used by two
drivers: `index_rows_small` (row-major (P, C) logits: each block of R rows is transposed into a
class-major scratch, computed there in place, and transposed back into the gradient; for 2 <= C <= 16
both transposes move whole vectors of rows by shuffles (`_transpose`), and the next block's logits,
targets and coefficients are prefetched while a block computes) and
`_axis1.index_axis1` ((N, C, S) logits, where class-major blocks are the input's own layout).

With two classes and neither soft cap nor statistics, `_two_classes` computes a block in one pass
over its positions (the same operations; the general block makes seven passes, each re-reading its
work arrays, and at C = 2 those passes were the whole cost).

Work is split into chunks of thousands of positions whose boundaries depend only on the shape, so
every position is computed by the same instructions whatever the thread count: results are bit for
bit the same on 1 or 2 threads. Probability targets keep the row kernels.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._bits import JIT, address, float_from_sortable, magnitude_bits, prefetch
from ._rows import coef_at, fast_exp, index_alpha, index_loss, weight_sum, weights_nonnegative
from ._transpose import MAX_C as MAX_SHUFFLED_C
from ._transpose import VECTOR_BYTES, columns_to_rows, columns_to_rows_streamed, rows_to_columns
from ._x86 import AVX2_FMA, fma, store_fence, stream_hit, stream_hit_weighted

__all__ = [
    "PARALLEL_MIN_SIZE",
    "SMALL_MAX_C",
    "STREAMED_FROM_C",
    "block_positions",
    "block_task",
    "chunk_logits",
    "column_block",
    "index_rows_small",
    "new_workspace",
    "prefetch_run",
    "small_classes",
]

SMALL_MAX_C = 128  # class counts up to this may take `index_rows_small` (the general row kernel is slower)
# From this many classes, float32 problems that the streamed path takes (`_streamed.streams`) go there:
# its resident kernel is faster (2 threads, 2**25 logits: C = 32: 15 ms against 50; 47: 22 against 24;
# 100: 9.3 against 21; 128: 7.4 against 33); below it the few-class kernel is (C = 31: 23 against 31)
STREAMED_FROM_C = 32
CHUNK_LOGITS = 1 << 16  # about this many logits per chunk (a thread's unit of work) ...
CHUNK_MIN_LOGITS = 1 << 13  # ... or, for problems under 8 chunks of that, an eighth of the problem, down to this
PARALLEL_MIN_SIZE = 1 << 14  # logits from which these kernels use the thread pool (their work per logit is
# several times the streamed kernel's: 4096 x 10 took 81 us on one thread and 65 us on two)
# Row-major gradients of at least this many bytes leave the row driver through non-temporal stores
# (`_transpose.columns_to_rows_streamed`), which spare the read-for-ownership of the gradient's lines
# and keep them from evicting the logits (float32, through the API, 2 threads: 1048576 x 10 5.05-5.34
# -> 4.46-4.56 ms, 262144 x 10 1.01-1.07 -> 0.88-0.96; one thread 9.6 -> 7.9 and 2.08 -> 1.65)
ROWS_STREAM_BYTES = 1 << 23
BLOCK_LOGITS = 16384  # about this many logits per column block (its scratch stays in L2), ...
BLOCK_MAX_R = 2048  # ... and at most this many positions: fewer, longer blocks pay less per-block overhead


def small_classes(dtype: np.dtype, P: int, C: int, streamed: bool = False) -> bool:
    """Whether a class-index problem of (P, C) logits takes `index_rows_small`; `streamed`: whether the
    streamed path would take it (then only below STREAMED_FROM_C classes)."""
    if streamed and C >= STREAMED_FROM_C:
        return False
    return dtype in (np.float32, np.float64) and P > 0 and 0 < C <= SMALL_MAX_C


@njit(inline="always", **JIT)
def chunk_logits(total):
    """About how many logits one chunk of a problem of `total` logits holds (from the shape only, so that
    results do not depend on the thread count): CHUNK_LOGITS, or an eighth of a small problem (at least
    CHUNK_MIN_LOGITS), so that a small problem still gives both threads work."""
    return min(CHUNK_LOGITS, max(CHUNK_MIN_LOGITS, total // 8))


@njit(**JIT)
def block_positions(C):
    """R, the positions of one column block: about BLOCK_LOGITS logits, a multiple of 16 in [16, BLOCK_MAX_R]."""
    return max(16, min(BLOCK_MAX_R, (BLOCK_LOGITS // C) // 16 * 16))


@njit(**JIT)
def new_workspace(C, R, dtype_of):
    """Scratch of one thread for blocks of up to R positions: (T, e, xc, vec, f64, yb, am, bad).

    T holds a transposed block (row driver), e the exponentials, xc the soft-capped logits (all three
    class-major, c * R + r); the rest are per position (vec: m, s, sc, bk, fx in
    the logits' dtype; f64: zy, wy, wz, ez, ls)."""
    dt = dtype_of.dtype
    vec = np.empty((5, R), dt)  # m, s, sc, bk, fx
    f64 = np.empty((6, R))  # zy, wy, wz, ez, ls, (spare)
    return (
        np.empty(C * R, dt),
        np.empty(C * R, dt),
        np.empty(C * R, dt),
        vec,
        f64,
        np.empty(R, np.int32),
        np.empty(R, np.int64),
        np.empty(R, np.bool_),
    )


@njit(**JIT)
def column_block(C, R, z, zo, zs, p0, task, want_grad, grad, go, gs, outs, want_stats, ws, stream):
    """Loss (and gradient, statistics) of R positions p0 .. p0 + R - 1 in class-major layout.

    z and grad are flat arrays: logit (c, r) is z[zo + c * zs + r], its gradient grad[go + c * gs + r]
    (grad may be z itself: every logit of the block is read before any gradient is written).
    task (`block_task`: target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef) and outs (loss,
    lse, argmax, entropy) hold the per-position arrays, indexed by position p0 + r. stream: write the
    gradient with non-temporal stores where it can (`_block_passes`; the caller then fences).
    """
    xc = ws[2]
    cap = task[6]
    if cap > 0.0:  # zc = cap * tanh(z / cap)  (Gemma 2 soft-capping), into xc (class-major, stride R)
        for c in range(C):
            for r in range(R):
                xc[c * R + r] = cap * math.tanh(z[zo + c * zs + r] / cap)
        _block_math(C, R, xc, 0, R, p0, task, want_grad, grad, go, gs, outs, want_stats, ws, stream)
    else:
        _block_math(C, R, z, zo, zs, p0, task, want_grad, grad, go, gs, outs, want_stats, ws, stream)


@njit(inline="always", **JIT)
def block_task(C, target, weight, eps, lam, cap, ignore_index, coef):
    """`column_block`'s task: the targets, options and upstream coefficients of a (P, C) problem, with the
    class weights' sum and sign (`_rows.weight_sum`, `_rows.weights_nonnegative`) worked out once."""
    return (target, weight, weight_sum(weight, C), weights_nonnegative(weight), eps, lam, cap, ignore_index, coef)


@njit(**JIT)
def _block_math(C, R, src, so, ss, p0, task, want_grad, grad, go, gs, outs, want_stats, ws, stream):
    """`column_block` on the (soft-capped) logits src.

    Indices are unsigned (`_u`): numba then emits no negative-index wraparound, and LLVM vectorizes
    every inner loop over positions r with plain vector loads and stores (no gathers, no views, whose
    reference counts would be atomic operations on arrays shared between threads).

    Two copies of the passes (`_block_passes`): a plain one for the common call (no class weights,
    smoothing, z-loss, soft cap or statistics, one upstream coefficient for every position), whose
    constants drop those terms' loads and arithmetic from every loop, and the general one.
    """
    if two_class_pass(C, task, want_stats):
        _two_classes(R, src, so, ss, p0, task, want_grad, grad, go, gs, outs, ws)
        return
    weight, eps, lam, coef = task[1], task[4], task[5], task[8]
    k1 = coef[0] if coef.shape[0] > 0 else 0.0  # the one coefficient (none without a gradient wanted)
    plain = weight.shape[0] != C and eps == lam == task[6] == 0.0 and not want_stats and coef.shape[0] <= 1
    if plain:
        _block_passes(True, C, R, src, so, ss, p0, task, k1, want_grad, grad, go, gs, outs, False, ws, stream)
    else:
        _block_passes(False, C, R, src, so, ss, p0, task, k1, want_grad, grad, go, gs, outs, want_stats, ws, stream)


@njit(inline="always", **JIT)
def _block_passes(plain, C, R, src, so, ss, p0, task, k1, want_grad, grad, go, gs, outs, want_stats, ws, stream):
    """`_block_math`'s passes; plain (a constant): no class weights, eps = lam = cap = 0, every
    position's upstream coefficient k1 (and want_stats False); stream: the gradient rows (without a soft cap)
    leave through non-temporal stores (`_stream_row`)."""
    target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef = task
    loss, lse, argmax, entropy = outs
    _, e, xc, vec, f64, yb, am, bad = ws
    m, s, sc, bk, fx = vec[0], vec[1], vec[2], vec[3], vec[4]
    zy, wy, wz, ez, ls = f64[0], f64[1], f64[2], f64[3], f64[4]
    Cu, Ru, Rn, so, ss, p0, go, gs = _u(C), _u(R), R, _u(so), _u(ss), _u(p0), _u(go), _u(gs)
    dt = src.dtype.type
    weighted = False if plain else weight.shape[0] == C
    eps = 0.0 if plain else eps
    lam = 0.0 if plain else lam
    cap = 0.0 if plain else cap
    smooth = 0.0 if plain else eps / C
    for r in range(Ru):
        y = target[p0 + r]
        yb[r] = y if y != ignore_index else -1  # -1: ignored
        m[r] = -np.inf
        s[r] = 0
        zy[r] = 0.0
        wy[r] = 1.0
        wz[r] = 0.0
    # m_r = max_c z_cr (a vectorized pass), then z_yr and w_y gathered once per position
    for c in range(Cu):
        o = so + c * ss
        for r in range(Ru):
            v = src[o + r]
            m[r] = v if v > m[r] else m[r]
    for r in range(Ru):
        y = yb[r]
        if y >= 0:
            zy[r] = np.float64(src[so + _u(y) * ss + r])
            wy[r] = weight[y] if weighted else 1.0
    # e_cr = exp(z_cr - m_r),  s_r = sum_c e_cr  (NaN for a row holding a NaN, a +inf or only -inf);
    # two classes a sweep, s_r += e_0r + e_1r: each sweep loads and stores s once (8 x 21 x 128 x 128,
    # one thread: 1.13-1.18 ms against 1.23-1.29 a class a sweep; four a sweep were no faster)
    c = _u(0)
    while c + _u(1) < Cu:
        o = so + c * ss
        eo = c * Ru
        for r in range(Ru):
            v0 = fast_exp(src[o + r] - m[r])
            v1 = fast_exp(src[o + ss + r] - m[r])
            e[eo + r] = v0
            e[eo + Ru + r] = v1
            s[r] += v0 + v1
        c += _u(2)
    if c < Cu:  # the last of an odd number of classes
        o = so + c * ss
        eo = c * Ru
        for r in range(Ru):
            v = fast_exp(src[o + r] - m[r])
            e[eo + r] = v
            s[r] += v
    if smooth > 0.0:  # wz_r = sum_c w_c z_cr, for the smoothing term
        for c in range(Cu):
            o = so + c * ss
            wc = weight[c] if weighted else 1.0
            for r in range(Ru):
                wz[r] += wc * src[o + r]
    if want_stats:  # ez_r = sum_c e_cr z_cr (entropy), am_r = first c with z_cr = m_r (argmax)
        for r in range(Ru):
            ez[r] = 0.0
            am[r] = C
        for c in range(Cu):
            o = so + c * ss
            eo = c * Ru
            ci = np.int64(c)
            for r in range(Ru):
                v = src[o + r]
                ev = e[eo + r]
                ez[r] += ev * v if ev > 0 else 0.0
                am[r] = ci if v == m[r] and am[r] == C else am[r]
    # per position: lse and loss (branch-free: it vectorizes); positions with a NaN sum are redone below
    nbad = 0
    for r in range(Ru):
        keep = yb[r] >= 0
        sr = np.float64(s[r])
        isbad = not sr == sr
        bad[r] = isbad
        nbad += isbad
        l_se = np.float64(m[r]) + ln_at_least_1(sr)  # s >= 1: its largest term is exp(0) = 1
        ls[r] = l_se
        lse[p0 + r] = l_se if keep or want_stats else np.nan
        ll = l_se - zy[r] if plain else index_loss(l_se, zy[r], wy[r], wz[r], wsum, wpos, eps, smooth, lam)
        loss[p0 + r] = ll if keep else 0.0
        if plain:  # the gradient's scale, alpha = 1 (see below)
            sc[r] = dt(k1 / sr) if keep else dt(0.0)
    if want_stats:
        for r in range(Ru):
            entropy[p0 + r] = ls[r] - ez[r] / s[r]
            argmax[p0 + r] = am[r]
    if nbad > 0:
        _nan_rows(C, Rn, src, so, ss, p0, target, ignore_index, m, lse, loss, want_stats, argmax, entropy, am, bad)
    if not want_grad:
        return
    # g_cr = sc_r e_cr - bk_r w_c - [c == y_r] fx_r, all 0 for an ignored position
    # (plain: alpha = 1, bk = 0 and fx = k1 at every kept position: no bk or fx loads, an ignored
    # position's yb = -1 matches no class)
    if not plain:
        for r in range(Ru):
            keep = yb[r] >= 0
            k = coef_at(coef, p0 + r) if keep else 0.0
            w_y = wy[r]
            alpha = index_alpha(ls[r], w_y, wsum, eps, smooth, lam)
            sc[r] = dt(k * alpha / s[r])  # alpha a_c = alpha e_c / s
            bk[r] = dt(k * smooth)
            fx[r] = dt(k * (1.0 - eps) * w_y)
    fx1 = dt(k1)
    for c in range(Cu):
        o = go + c * gs
        eo = c * Ru
        ci = np.int32(c)
        wc = dt(weight[c]) if weighted else dt(1.0)
        if cap > 0.0:  # times 1 - tanh(z / cap)^2
            inv = dt(1.0 / cap)
            for r in range(Ru):
                t = xc[eo + r] * inv
                hit = fx[r] if yb[r] == ci else dt(0.0)
                grad[o + r] = (e[eo + r] * sc[r] - bk[r] * wc - hit) * (dt(1.0) - t * t)
        elif plain and stream:
            _stream_row(False, grad, o, e, eo, sc, bk, fx, fx1, yb, ci, wc, Ru)
        elif plain:
            for r in range(Ru):
                hit = fx1 if yb[r] == ci else dt(0.0)
                grad[o + r] = e[eo + r] * sc[r] - hit
        elif stream:
            _stream_row(True, grad, o, e, eo, sc, bk, fx, fx1, yb, ci, wc, Ru)
        else:
            for r in range(Ru):
                hit = fx[r] if yb[r] == ci else dt(0.0)
                grad[o + r] = e[eo + r] * sc[r] - bk[r] * wc - hit
    if nbad > 0:  # positions with a NaN loss have a NaN gradient (ignored ones: 0)
        for r in range(Ru):
            if bad[r]:
                fill = 0.0 if yb[r] < 0 else np.nan
                for c in range(Cu):
                    grad[go + c * gs + r] = fill


@njit(inline="always", **JIT)
def _stream_row(weighted, grad, o, e, eo, sc, bk, fx, fx1, yb, ci, wc, Ru):
    """Class ci's gradient row of a block through non-temporal stores, without a soft cap:
    grad[o + r] = e[eo + r] sc[r] - hit_r (weighted False, a constant: the plain copy, hit_r = fx1
    where yb[r] == ci) or e sc - (bk[r] wc + hit_r) (hit_r = fx[r] there), for r < Ru, as
    fma(e, sc, -hit) or fma(e, sc, -fma(bk, wc, hit)). 32-byte vectors (`_x86.stream_hit`,
    `stream_hit_weighted`) from the first 32-byte aligned entry; the unaligned head and the tail stored
    normally with the same fused multiply-adds (`_x86.fma`), so the bits do not depend on grad's
    alignment. Without AVX2 and FMA every entry is stored normally (`e * sc - ...`)."""
    dt = grad.dtype.type
    isz = _u(grad.itemsize)
    lanes = _u(32) // isz
    r = _u(0)
    if AVX2_FMA:  # a constant: numba prunes the branch, and its x86 code, on other targets
        at = address(grad) + o * isz
        if at % isz == _u(0):
            head = min(Ru, ((_u(32) - at % _u(32)) % _u(32)) // isz)
            for h in range(head):
                grad[o + h] = _entry_fma(weighted, e[eo + h], sc[h], bk, fx, fx1, h, yb[h] == ci, wc, dt(0.0))
            r = head
            while r + lanes <= Ru:
                if weighted:
                    stream_hit_weighted(grad, o + r, e, eo + r, sc, bk, fx, yb, r, ci, wc)
                else:
                    stream_hit(grad, o + r, e, eo + r, sc, yb, r, ci, fx1)
                r += lanes
        for t in range(r, Ru):
            grad[o + t] = _entry_fma(weighted, e[eo + t], sc[t], bk, fx, fx1, t, yb[t] == ci, wc, dt(0.0))
        return
    for t in range(Ru):
        if weighted:
            grad[o + t] = e[eo + t] * sc[t] - bk[t] * wc - (fx[t] if yb[t] == ci else dt(0.0))
        else:
            grad[o + t] = e[eo + t] * sc[t] - (fx1 if yb[t] == ci else dt(0.0))


@njit(inline="always", **JIT)
def _entry_fma(weighted, ev, scale, bk, fx, fx1, i, is_target, wc, zero):
    """Entry i of `_stream_row`'s row, rounded as its vector lanes are: fma(e, sc, -hit) (plain) or
    fma(e, sc, -fma(bk[i], wc, hit)) (weighted); zero: 0 in the gradient's dtype."""
    if weighted:
        return fma(ev, scale, -fma(bk[i], wc, fx[i] if is_target else zero))
    return fma(ev, scale, -(fx1 if is_target else zero))


@njit(inline="always", **JIT)
def two_class_pass(C, task, want_stats):
    """Whether `_block_math` takes `_two_classes`: two classes, no soft cap, no statistics."""
    return C == 2 and task[6] == 0.0 and not want_stats


@njit(**JIT)
def _two_classes(R, src, so, ss, p0, task, want_grad, grad, go, gs, outs, ws):
    """`_block_math` for C = 2 without soft cap or statistics: the same operations in the same order,
    in one pass over the positions instead of seven (at two classes the per-position passes, each
    re-reading its work arrays, were most of the time)."""
    target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef = task
    loss, lse, argmax, entropy = outs
    m, bad = ws[3][0], ws[7]
    if not want_grad:  # the loop always writes a gradient (a branch in it kept LLVM from vectorizing one
        grad, go, gs = ws[1], 0, R  # of its copies): without one wanted, into this thread's scratch
    Ru, so, ss, p0, go, gs = _u(R), _u(so), _u(ss), _u(p0), _u(go), _u(gs)
    # one loop for one upstream coefficient, one for a coefficient per position: a loop choosing
    # between them per position gathered the coefficients (vgatherqpd) instead of loading them; and
    # for one coefficient a copy without class weights, smoothing or z-loss, whose terms it drops
    # (16 x 2 x 256 x 256, one thread: 2.16 ms against 2.96 with the previous single copy). Without a
    # gradient wanted coef is empty: a one-coefficient copy, with k1 = 0, reads none of it.
    weighted = weight.shape[0] == 2
    k1 = coef[0] if coef.shape[0] > 0 else 0.0
    if want_grad and coef.shape[0] != 1:
        nbad = _two_class_loop(
            False, weighted, eps, lam, Ru, src, so, ss, p0, task, k1, grad, go, gs, loss, lse, m, bad
        )
    elif weighted or eps != 0.0 or lam != 0.0:
        nbad = _two_class_loop(True, weighted, eps, lam, Ru, src, so, ss, p0, task, k1, grad, go, gs, loss, lse, m, bad)
    else:
        nbad = _two_class_loop(True, False, 0.0, 0.0, Ru, src, so, ss, p0, task, k1, grad, go, gs, loss, lse, m, bad)
    if nbad > 0:
        _nan_rows(2, R, src, so, ss, p0, target, ignore_index, m, lse, loss, False, argmax, entropy, ws[6], bad)
        if want_grad:  # positions with a NaN loss have a NaN gradient (ignored ones: 0)
            for r in range(Ru):
                if bad[r]:
                    fill = 0.0 if target[p0 + r] == ignore_index else np.nan
                    grad[go + r] = fill
                    grad[go + gs + r] = fill


@njit(inline="always", **JIT)
def _two_class_loop(one_coef, weighted, eps, lam, Ru, src, so, ss, p0, task, k1, grad, go, gs, loss, lse, m, bad):
    """`_two_classes`' loop over the positions (one_coef: every position's coefficient is k1, else the
    task's coef holds one per position; weighted, eps, lam: the task's, or constants for a copy without
    them); returns how many positions have a NaN exp sum."""
    target, weight, wsum, wpos, _, _, cap, ignore_index, coef = task
    dt = src.dtype.type
    w0 = weight[0] if weighted else 1.0
    w1 = weight[1] if weighted else 1.0
    smooth = eps / 2
    nbad = 0
    for r in range(Ru):
        y = target[p0 + r]
        keep = y != ignore_index
        z0, z1 = src[so + r], src[so + ss + r]
        m0 = z0 if z0 > dt(-np.inf) else dt(-np.inf)  # the max as `_block_math` takes it (a NaN skipped)
        mr = z1 if z1 > m0 else m0
        m[r] = mr
        e0, e1 = fast_exp(z0 - mr), fast_exp(z1 - mr)
        sr = dt(0.0) + e0 + e1
        isbad = not sr == sr
        bad[r] = isbad
        nbad += isbad
        one = y == 1
        zy = np.float64(z1 if one else z0) if keep else 0.0
        wy = (w1 if one else w0) if keep and weighted else 1.0
        wz = (0.0 + w0 * z0) + w1 * z1 if smooth > 0.0 else 0.0
        l_se = np.float64(mr) + ln_at_least_1(np.float64(sr))
        lse[p0 + r] = l_se if keep else np.nan
        ll = index_loss(l_se, zy, wy, wz, wsum, wpos, eps, smooth, lam)
        loss[p0 + r] = ll if keep else 0.0
        k = (k1 if one_coef else coef[p0 + r]) if keep else 0.0
        alpha = index_alpha(l_se, wy, wsum, eps, smooth, lam)
        sc = dt(k * alpha / sr)
        bk = dt(k * smooth)
        fx = dt(k * (1.0 - eps) * wy)
        hit0 = fx if keep and not one else dt(0.0)
        hit1 = fx if keep and one else dt(0.0)
        grad[go + r] = e0 * sc - bk * dt(w0) - hit0
        grad[go + gs + r] = e1 * sc - bk * dt(w1) - hit1
    return nbad


@njit(inline="always", **JIT)
def _u(i):
    """An index as uint64 (no wraparound code; every index here is >= 0)."""
    return np.uint64(i)


_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951


@njit(inline="always", **JIT)
def ln_at_least_1(x):
    """ln x for a finite float64 x >= 1, in plain arithmetic and bit casts so that loops vectorize.

    x = 2**k f with f in [sqrt(1/2), sqrt(2)), ln f = 2 atanh(u) = 2 (u + u**3/3 + ... + u**15/15),
    u = (f - 1) / (f + 1), |u| <= 0.172: the first omitted term is below 2e-14 of ln f.
    """
    i = magnitude_bits(x)
    k = (i >> 52) - 1023
    f = float_from_sortable(x, (i & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)  # in [1, 2)
    big = f > _SQRT2
    f = f * 0.5 if big else f
    k = k + 1 if big else k
    u = (f - 1.0) / (f + 1.0)
    u2 = u * u
    q = (((((u2 / 15.0 + 1.0 / 13.0) * u2 + 1.0 / 11.0) * u2 + 1.0 / 9.0) * u2 + 1.0 / 7.0) * u2 + 0.2) * u2 + 1.0 / 3.0
    return k * _LN2 + 2.0 * u * (1.0 + u2 * q)


@njit(**JIT)
def _nan_rows(C, R, src, so, ss, p0, target, ignore_index, m, lse, loss, want_stats, argmax, entropy, am, bad):
    """The positions whose exp sum is NaN (a NaN or +inf logit, or only -inf): loss NaN (0 if ignored);
    lse the NaN-aware max (NaN if any logit is, else +inf or -inf); argmax the first NaN, else the max."""
    for r in range(R):
        if not bad[r]:
            continue
        p = p0 + r
        ignored = target[p] == ignore_index
        first_nan = -1
        for c in range(C):
            v = src[so + c * ss + r]
            if v != v:
                first_nan = c
                break
        lse[p] = np.nan if first_nan >= 0 or (ignored and not want_stats) else m[r]
        loss[p] = 0.0 if ignored else np.nan
        if want_stats:
            entropy[p] = np.nan
            argmax[p] = first_nan if first_nan >= 0 else am[r]


def index_rows_small(
    parallel: bool, z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy
) -> None:
    """`_kernels.index_rows` for (P, C) logits with C <= SMALL_MAX_C, same array contract; on the
    thread pool if `parallel`."""
    run = _index_rows_small if parallel else _index_rows_small_serial
    run(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _rows_chunk(ch, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy):
    """Rows [ch * rows_per_chunk, ...) in blocks of R: transpose in, `column_block` in place, transpose out."""
    P, C = z.shape
    R, rows_per_chunk = _rows_partition(P, C)
    want_grad = grad.shape[0] == P
    want_stats = entropy.shape[0] == P
    task = block_task(C, target, weight, eps, lam, cap, ii, coef)
    outs = (loss, lse, argmax, entropy)
    ws = new_workspace(C, R, z)
    T = ws[0]
    zf = z.reshape(P * C)  # flat views, indexed unsigned (no wraparound code)
    gf = grad.reshape(grad.shape[0] * grad.shape[1])
    Cu = _u(C)
    shuffled = 2 <= C <= MAX_SHUFFLED_C  # whole vectors of rows are transposed by `_transpose`'s shuffles
    two = two_class_pass(C, task, want_stats)
    # a large gradient leaves through non-temporal stores (a block starts at a multiple of 16 rows, so
    # at a whole vector when the gradient's first row does)
    big = want_grad and gf.size * gf.itemsize >= ROWS_STREAM_BYTES
    stream = AVX2_FMA and shuffled and big and address(gf) % _u(VECTOR_BYTES) == _u(0)
    for b0 in range(ch * rows_per_chunk, min(P, (ch + 1) * rows_per_chunk), R):
        nr = min(R, P - b0)
        nu, base = _u(nr), _u(b0) * Cu
        if shuffled and b0 + R < P:  # the next block's targets and coefficients load while this one computes
            nn = min(R, P - b0 - R)
            prefetch_run(target, b0 + R, nn)
            prefetch_run(coef, b0 + R, nn if coef.shape[0] == P else 0)
        # T[c, r] = z[b0 + r, c] (class-major, stride nr): the first `done` rows by shuffles, the rest
        # (and every row when C is 1 or above MAX_SHUFFLED_C) by loops
        if C <= MAX_SHUFFLED_C:
            done = _u(rows_to_columns(zf, base, T, 0, nu, C)) if shuffled else _u(0)
            for c in range(Cu):
                for r in range(done, nu):
                    T[c * nu + r] = zf[base + r * Cu + c]
        else:
            for r in range(nu):
                for c in range(Cu):
                    T[c * nu + r] = zf[base + r * Cu + c]
        # the gradient in place of T, or for the fused two-class pass (which reads and writes each
        # position in one loop: in place, its alias check would fail and it would run scalar) into ws[1]
        G = ws[1] if two else T
        column_block(C, nr, T, 0, nr, b0, task, want_grad, G, 0, nr, outs, want_stats, ws, False)
        if want_grad:  # the first `done` rows by shuffles (none unless shuffled), the rest by a loop
            if stream:
                done = _u(columns_to_rows_streamed(G, 0, gf, base, nu, C))
            else:
                done = _u(columns_to_rows(G, 0, gf, base, nu, C))
            for r in range(done, nu):
                for c in range(Cu):
                    gf[base + r * Cu + c] = G[c * nu + r]
    if AVX2_FMA:  # a constant: the fence, x86 code, is pruned on other targets
        if stream:
            store_fence()  # the non-temporal stores are visible before the chunk counts as done


@njit(inline="always", **JIT)
def prefetch_run(a, start, count):
    """Prefetches the cache lines of a.flat[start : start + count] (a C-contiguous, within bounds)."""
    step = max(1, 64 // a.itemsize)
    for i in range(start, start + count, step):
        prefetch(a, i)


@njit(inline="always", **JIT)
def _rows_partition(P, C):
    """(R, rows per chunk): blocks of R rows, chunks of about `chunk_logits` logits (a whole number of blocks)."""
    R = block_positions(C)
    return R, max(1, chunk_logits(P * C) // (C * R)) * R


@njit(inline="always", **JIT)
def _rows_chunks(P, C):
    """The number of chunks of `_rows_chunk` for (P, C) logits."""
    rows_per_chunk = _rows_partition(P, C)[1]
    return (P + rows_per_chunk - 1) // rows_per_chunk


@njit(parallel=True, **JIT)
def _index_rows_small(z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy):
    for ch in prange(_rows_chunks(z.shape[0], z.shape[1])):
        _rows_chunk(ch, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _index_rows_small_serial(z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy):
    for ch in range(_rows_chunks(z.shape[0], z.shape[1])):
        _rows_chunk(ch, z, target, weight, eps, lam, cap, ii, coef, grad, loss, lse, argmax, entropy)
