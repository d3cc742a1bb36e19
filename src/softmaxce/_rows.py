"""Portable row kernels: one pass over each row of logits for loss, gradient and statistics.

For one row (position) with logits z (soft-capped first when `softcap` is set), target y, class
weights w (all ones without weights), eps = label_smoothing, lam = z_loss and m = max z:

    e_j  = exp(z_j - m)                       (written into the gradient row, reused below)
    s    = sum_j e_j                          (accumulated in float64)
    lse  = m + ln s
    a_j  = e_j / s                            (softmax)
    loss = sum_j beta_j * (lse - z_j) + omega * lam * lse**2
    grad_j = coef * (alpha * a_j - beta_j)    alpha = sum_j beta_j + 2 * lam * omega * lse

where beta is the smoothed, class-weighted target: beta = (1 - eps) w_y e_y + (eps / C) w and
omega = w_y for a class index y, and beta = w * ((1 - eps) t + eps / C), omega = 1 for a probability
target t. Without weights and smoothing the gradient is a - y, the worked example's
y = [0, 1, 0], a = [0.1, 0.6, 0.3] -> grad = [0.1, -0.4, 0.3]. coef is dJ/dl_n: the upstream gradient
divided by the normalizer of "mean". The contract is docs/SEMANTICS.md.

`index_row` and `probability_row` compute one row each for any option (softcap, statistics,
float64); the float32 class-index case that decides training speed has its own streamed pipeline
(`streamed.py`), and `_kernels.py` holds the drivers that pick between them.

numba on this platform has no SVML, so `math.exp` stays scalar. `_expf` is a float32 exp (one-FMA
range reduction + degree-5 minimax polynomial, at most 1.8e-7 relative error for x in [-10, 0] and
4e-7 down to -87, where the float32 ln 2 in the reduction dominates; tested) written with plain
arithmetic and integer/float bitcasts, which LLVM vectorizes. `_exp64` is its float64 counterpart
(two-step range reduction + degree-13 Taylor polynomial, within 2 ulp; tested): 8x faster than the
scalar `math.exp` per value, which made float64 logits 3x slower than their float32 counterparts per byte.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._bits import (
    JIT,
    float_from_sortable,
    magnitude_bits,
    pow2_of_rounded,
    round_to_k,
    sortable_bits,
)

__all__ = [
    "BLOCK",
    "block_exp",
    "coef_at",
    "coef_rows",
    "EXP_LO",
    "LN2",
    "ROUND_MAGIC",
    "fast_exp",
    "ignored_row",
    "index_alpha",
    "index_loss",
    "row_flags",
    "row_max",
    "row_softmax",
    "softcap_backward",
    "softmax_grad",
    "weight_sum",
    "weighted_logit_sum",
    "weights_nonnegative",
]


@njit(inline="always", **JIT)
def index_loss(l_se, zy, w_y, wz, wsum, wpos, eps, smooth, lam):
    """A class-index position's loss, lse = l_se, z_y = zy, wz = sum_c w_c z_c, smooth = eps / C:

    l_n = (1 - eps) w_y (lse - z_y) + (eps / C) sum_c w_c (lse - z_c) + w_y lam lse^2

    The smoothing term sum_c w_c (lse - z_c) = wsum lse - wz is >= 0 when no weight is negative
    (wpos); it is clamped at 0 then, so rounding cannot make it negative."""
    ll = (1.0 - eps) * w_y * (l_se - zy) + w_y * lam * l_se * l_se
    if smooth > 0.0:
        term = wsum * l_se - wz
        ll += smooth * (max(term, 0.0) if wpos else term)
    return ll


@njit(inline="always", **JIT)
def index_alpha(l_se, w_y, wsum, eps, smooth, lam):
    """alpha = sum_j beta_j + 2 lam w_y lse = (1 - eps) w_y + (eps / C) sum_c w_c + 2 lam w_y lse, the
    factor of a_j in a class-index position's gradient k (alpha a_j - beta_j)."""
    return (1.0 - eps) * w_y + smooth * wsum + 2.0 * lam * w_y * l_se


@njit(**JIT)
def index_row(n, z, target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    """Row n of `index_rows` (the general path: any option, statistics, float64)."""
    want_grad, want_stats, weighted, smooth = row_flags(z, grad, entropy, weight, eps)
    y = target[n]
    if y == ignore_index:
        ignored_row(z, n, cap, grad, want_grad, want_stats, loss, lse, argmax, entropy)
        return
    # the smoothing term needs sum_c w_c z_c, read before grad[n] (maybe z[n]) is overwritten
    row0 = z[n]
    wz = weighted_logit_sum(row0, weight, weighted, cap) if smooth > 0.0 else 0.0
    zy = cap * math.tanh(row0[y] / cap) if cap > 0.0 else row0[y]
    row, m, s = row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy)
    l_se = m + math.log(s)  # NaN for a non-finite row
    w_y = weight[y] if weighted else 1.0
    loss[n] = index_loss(l_se, zy, w_y, wz, wsum, wpos, eps, smooth, lam)
    if want_grad:
        e = grad[n]
        k = coef_at(coef, n)
        if s != s:
            e[:] = np.nan
            return
        # dz_j = k * (alpha * a_j - beta_j),  a_j = e_j / s
        alpha = index_alpha(l_se, w_y, wsum, eps, smooth, lam)
        softmax_grad(e, z.dtype.type(k * alpha / s), k, smooth, weight, weighted)
        e[y] -= z.dtype.type(k * (1.0 - eps) * w_y)
        if cap > 0.0:
            softcap_backward(e, row, cap)


@njit(**JIT)
def probability_row(n, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    """Row n of `probability_rows`."""
    C = z.shape[1]
    want_grad, want_stats, weighted, smooth = row_flags(z, grad, entropy, weight, eps)
    t = target[n]
    row0 = z[n]
    bsum = 0.0  # sum_c beta_c,        beta_c = w_c t'_c
    bz = 0.0  # sum_c beta_c z_c     (no 0 * log 0 rule: a 0 target on a -inf logit gives NaN)
    for c in range(C):
        b = (1.0 - eps) * t[c] + smooth
        if weighted:
            b *= weight[c]
        bsum += b
        bz += b * (cap * math.tanh(row0[c] / cap) if cap > 0.0 else row0[c])
    row, m, s = row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy)
    l_se = m + math.log(s)
    loss[n] = bsum * l_se - bz + lam * l_se * l_se
    if want_grad:
        e = grad[n]
        if s != s:
            e[:] = np.nan
            return
        k = coef_at(coef, n)
        scale = k * (bsum + 2.0 * lam * l_se) / s
        for j in range(C):
            b = (1.0 - eps) * t[j] + smooth
            if weighted:
                b *= weight[j]
            e[j] = z.dtype.type(e[j] * scale - k * b)
        if cap > 0.0:
            softcap_backward(e, row, cap)


_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
LN2 = _F32(0.6931471805599453)  # float32(ln 2) differs from ln 2 by 2e-9: |k| * 2e-9 <= 3e-7 in r
ROUND_MAGIC = _F32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer held in the low mantissa bits
EXP_LO = _F32(-88.0)  # k = round(-88 / ln 2) = -127 builds 2**k with a zero exponent field: exactly 0
_ONE = _F32(1.0)
# exp(r) ~ 1 + r (C1 + r (C2 + r (C3 + r (C4 + r C5)))) on [-ln2/2, ln2/2]: a degree-5 minimax fit of the
# relative error with exp(0) = 1 exactly; 9e-8 in exact arithmetic, at most 1.8e-7 (about 3 ulp) in float32
# for x in [-10, 0], growing to 4e-7 at x = -87 with the |k| * 2e-9 error of float32 ln 2 (see LN2).
_C1 = _F32(0.9999997019767761)
_C2 = _F32(0.4999915063381195)
_C3 = _F32(0.1666763573884964)
_C4 = _F32(0.04189793020486832)
_C5 = _F32(0.008290315046906471)


@njit(inline="always", **JIT)
def coef_at(coef, n):
    """Position n's upstream coefficient: `coef` holds one per position, or a single one for every
    position (length 1: a "mean" or "sum" loss under a scalar upstream gradient, no (P,) array to read)."""
    return coef[n] if coef.shape[0] != 1 else coef[0]


@njit(inline="always", **JIT)
def coef_rows(coef, rows):
    """The upstream coefficients of the positions in the slice `rows`, as `coef_at` reads them: coef[rows],
    or coef itself when it holds one for every position."""
    return coef[rows] if coef.shape[0] != 1 else coef


@njit(inline="always", **JIT)
def _expf(x):
    """exp(x) in float32 for x in [-inf, 0] (the only arguments here: z - max z, finite max).

    exp(x) = 2**k * exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2] (one FMA; float32 ln 2
    is within 2e-9 of ln 2). x is clamped at -88 so that -inf and anything below exp(-88) = 6e-39 give
    exactly 0 (k = -127), with no branch. A NaN x stays NaN (the clamp keeps x when unordered).
    All arithmetic is float32 with plain operations and bitcasts, so LLVM vectorizes loops calling it
    (about 15 AVX2 instructions per 8 values).
    """
    xc = max(x, EXP_LO)
    t = xc * _LOG2E + ROUND_MAGIC
    k = round_to_k(t)
    r = xc - k * LN2
    p = ((((_C5 * r + _C4) * r + _C3) * r + _C2) * r + _C1) * r + _ONE
    return p * pow2_of_rounded(t)


# float64: exp(x) = 2**k exp(r), k = round(x / ln 2), r = (x - k LN2_HI) - k LN2_LO (Cody-Waite: LN2_HI
# has 32 significant bits, so k LN2_HI is exact for |k| <= 1023), exp(r) by its Taylor series to r**13
# on |r| <= ln2/2 (truncation 4e-18 relative, below the float64 ulp 1.1e-16).
_LOG2E_64 = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 rounded to 32 significant bits
_LN2_LO = 1.9082149292705877e-10  # ln 2 - _LN2_HI
_ROUND_MAGIC_64 = 6755399441055744.0  # 1.5 * 2**52
_EXP_LO_64 = -709.0  # k = round(-709 / ln 2) = -1023: exactly 0 (so below exp(-708.4), 0 and no subnormals)
_INV_FACTORIAL = tuple(1.0 / math.factorial(n) for n in range(14))


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def _exp64(x):
    """exp(x) in float64 for x in [-inf, 0] (z - max z, finite max), vectorizable: within 2 ulp for
    x >= -708, exactly 0 below -708.8 (where exp(x) < 2.2e-308, the smallest normal float64; a
    subnormal would be lost anyway in a sum with the row's largest term, exp(0) = 1), NaN kept.

    Compiled with 'contract' only (not the kernels' 'reassoc'), so that k = t - 1.5 * 2**52 and the
    two-step reduction keep their rounding; LLVM inlines it into the loops that call it.
    """
    xc = max(x, _EXP_LO_64)
    t = xc * _LOG2E_64 + _ROUND_MAGIC_64
    k = t - _ROUND_MAGIC_64
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    c = _INV_FACTORIAL
    p = c[13]
    p = p * r + c[12]
    p = p * r + c[11]
    p = p * r + c[10]
    p = p * r + c[9]
    p = p * r + c[8]
    p = p * r + c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + 1.0
    p = p * r + 1.0
    return p * pow2_of_rounded(t)


def fast_exp(x):  # pragma: no cover - replaced by the overload inside numba code
    return math.exp(x)


@overload(fast_exp)
def _fast_exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _expf(x)
    return lambda x: _exp64(x)


@njit(**JIT)
def row_max(z):
    """max_j z_j (NaN if any z_j is NaN), as two vectorized integer max reductions over the bits:
    the sortable bits find the max, the magnitude bits reveal any NaN (whatever its sign bit)."""
    m = sortable_bits(z[0])
    a = magnitude_bits(z[0])
    for j in range(z.shape[0]):
        v = z[j]
        sv = sortable_bits(v)
        m = sv if sv > m else m
        av = magnitude_bits(v)
        a = av if av > a else a
    if a > magnitude_bits(z.dtype.type(np.inf)):
        return z.dtype.type(np.nan)
    return float_from_sortable(z[0], m)


@njit(**JIT)
def _row_argmax(z, m):
    """First index of the max (of the first NaN in a NaN row), as torch.argmax."""
    if m != m:
        for j in range(z.shape[0]):
            if z[j] != z[j]:
                return j
    for j in range(z.shape[0]):
        if z[j] == m:
            return j
    return 0


# Sums run in the logits' dtype over blocks of BLOCK entries, which keeps the loop vectorized, and
# the block sums add up in float64.
BLOCK = 1024


@njit(**JIT)
def _row_exp(z, m, e, store):
    """e_j = exp(z_j - m) (written into e if `store`); returns s = sum_j e_j in float64."""
    C = z.shape[0]
    s = 0.0
    for j0 in range(0, C, BLOCK):
        s += block_exp(z, m, e, j0, min(j0 + BLOCK, C), store, z.dtype.type(0))
    return s


@njit(inline="always", **JIT)
def block_exp(z, m, e, j0, j1, store, sb):
    """sb + sum_{j0 <= j < j1} exp(z_j - m), summed in z's dtype; each term also written into e[j] if `store`."""
    if store:
        for j in range(j0, j1):
            v = fast_exp(z[j] - m)
            e[j] = v
            sb += v
    else:
        for j in range(j0, j1):
            sb += fast_exp(z[j] - m)
    return sb


@njit(**JIT)
def _row_entropy_sum(z, m):
    """sum_j exp(z_j - m) * z_j in float64 (a -inf logit, whose exp is 0, adds 0)."""
    ez = 0.0
    for j in range(z.shape[0]):
        v = fast_exp(z[j] - m)
        ez += v * z[j] if v > 0 else 0.0
    return ez


@njit(**JIT)
def _softcap_row(z, cap, out):
    """out_j = cap * tanh(z_j / cap)   (Gemma 2 soft-capping, tanh in float64 for accuracy)."""
    for j in range(z.shape[0]):
        out[j] = cap * math.tanh(z[j] / cap)


@njit(**JIT)
def softcap_backward(g, zc, cap):
    """g_j *= d(cap tanh(z_j / cap))/dz_j = 1 - tanh(z_j / cap)**2, zc being the capped logits."""
    for j in range(g.shape[0]):
        t = zc[j] / cap
        g[j] = g[j] * (1.0 - t * t)


@njit(**JIT)
def row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy):
    """The shared first half of a row: optional softcap, max, exp and sum, and the statistics.

    Returns (row, m, s) where row is the (capped) logits, m their max and s = sum exp(row - m);
    e = exp(row - m) is left in grad[n] when want_grad. A row whose max is not finite (a NaN or
    +inf logit, or only -inf logits) returns s = NaN, so its loss and gradient are NaN.
    """
    row = z[n]
    if cap > 0.0:
        capped = np.empty(z.shape[1], dtype=z.dtype)
        _softcap_row(row, cap, capped)
        row = capped
    m = row_max(row)
    if want_stats:
        argmax[n] = _row_argmax(row, m)
    if not math.isfinite(m):
        lse[n] = m  # NaN, +inf, or -inf for a row of -inf logits (as torch.logsumexp)
        if want_stats:
            entropy[n] = np.nan
        return row, m, np.nan
    # the entropy sum reads the logits before the exp pass may overwrite them (grad may be z itself)
    ez = _row_entropy_sum(row, m) if want_stats else 0.0
    s = _row_exp(row, m, grad[n] if want_grad else np.empty(0, dtype=z.dtype), want_grad)
    l_se = m + math.log(s)
    lse[n] = l_se
    if want_stats:
        entropy[n] = l_se - ez / s
    return row, m, s


@njit(**JIT)
def ignored_row(z, n, cap, grad, want_grad, want_stats, loss, lse, argmax, entropy):
    """An ignored position n: loss 0 and gradient 0; its statistics if asked for (lse is NaN otherwise)."""
    loss[n] = 0.0
    if want_stats:
        row_softmax(z, n, cap, grad, False, True, lse, argmax, entropy)
    else:
        lse[n] = np.nan
    if want_grad:
        grad[n, :] = 0


@njit(inline="always", **JIT)
def weighted_logit_sum(row, weight, weighted, cap):
    """sum_c w_c z_c over the (soft-capped) logits of a row (w_c = 1 without class weights)."""
    wz = 0.0
    for c in range(row.shape[0]):
        zc = cap * math.tanh(row[c] / cap) if cap > 0.0 else row[c]
        wz += (weight[c] if weighted else 1.0) * zc
    return wz


@njit(inline="always", **JIT)
def softmax_grad(e, scale, k, smooth, weight, weighted):
    """e_j = e_j * scale - k smooth w_j in place (w_j = 1 without class weights): the dense part of a row's
    gradient, coef * (alpha a_j - (eps / C) w_j) for scale = coef alpha / s, k = coef, smooth = eps / C,
    from the exponentials e_j = exp(z_j - m) that `row_softmax` left in the row."""
    C = e.shape[0]
    if smooth > 0.0 and weighted:
        for j in range(C):
            e[j] = e[j] * scale - e.dtype.type(k * smooth * weight[j])
    elif smooth > 0.0:
        b = e.dtype.type(k * smooth)
        for j in range(C):
            e[j] = e[j] * scale - b
    else:
        for j in range(C):
            e[j] = e[j] * scale


@njit(inline="always", **JIT)
def row_flags(z, grad, entropy, weight, eps):
    """(want_grad, want_stats, weighted, eps / C): which outputs the caller asked for, by their sizes."""
    P, C = z.shape
    return (
        grad.shape[0] == P and P > 0,
        entropy.shape[0] == P and P > 0,
        weight.shape[0] == C,
        eps / C if C > 0 else 0.0,
    )


@njit(**JIT)
def weight_sum(weight, C):
    """sum_c w_c, or C without class weights."""
    if weight.shape[0] != C:
        return float(C)
    wsum = 0.0
    for c in range(C):
        wsum += weight[c]
    return wsum


@njit(**JIT)
def weights_nonnegative(weight):
    """Whether no class weight is negative (true without weights)."""
    for c in range(weight.shape[0]):
        if not weight[c] >= 0.0:
            return False
    return True
