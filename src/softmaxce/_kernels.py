"""numba kernels: one pass over each row of logits for loss, gradient and statistics.

Every kernel works on a (P, C) block of logits, one row (position) at a time, rows spread over
threads with `prange`. A row is read from memory once; the max, exp/sum and gradient passes then run
on it while it sits in cache. For one row with logits z, target y and m = max z:

    e_j  = exp(z_j - m)                       (written into the gradient row, reused below)
    s    = sum_j e_j                          (accumulated in float64)
    lse  = m + ln s
    a_j  = e_j / s                            (softmax)
    loss = sum_j beta_j * (lse - z_j) + omega * lam * lse**2
    grad_j = coef * (alpha * a_j - beta_j)    alpha = sum_j beta_j + 2 * lam * omega * lse

where beta is the smoothed, class-weighted target: beta = (1 - eps) w_y e_y + (eps / C) w for a
class index y, and beta = w * ((1 - eps) t + eps / C) for a probability target t. Without weights
and smoothing this is the seeds' gradient a - y.

numba on this platform has no SVML, so `math.exp` stays scalar. `_expf` is a Cephes-style float32
exp (Cody-Waite reduction + degree-6 polynomial, about 1 ulp) written with plain arithmetic and an
integer-to-float bitcast, which LLVM vectorizes. float64 logits use `math.exp` (exact path).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# fastmath without 'nnan'/'ninf': reductions may be reassociated (and so vectorized), while NaN and
# inf keep their IEEE meaning, which the contract relies on (a NaN logit gives a NaN loss).
FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
_JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_EXP_LO = _F32(-130.0)  # exp(-130) = 3.5e-57 rounds to 0 in float32
_TWO_M64 = _F32(2.0**-64)
_HALF = _F32(0.5)
_ONE = _F32(1.0)
_P0 = _F32(1.9875691500e-4)
_P1 = _F32(1.3981999507e-3)
_P2 = _F32(8.3334519073e-3)
_P3 = _F32(4.1665795894e-2)
_P4 = _F32(1.6666665459e-1)
_P5 = _F32(5.0000001201e-1)


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterprets the bits of an int32 as a float32 (LLVM bitcast: free, and vectorizable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _make_prefetch(rw: int):
    @intrinsic
    def prefetch(typingctx, address):
        """Asks the cache for the line at an integer address (llvm.prefetch: a hint, never a fault)."""
        sig = types.void(types.uintp)

        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(8).as_pointer())
            i32 = ir.IntType(32)
            fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]))
            builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


_prefetch_read = _make_prefetch(0)
_prefetch_write = _make_prefetch(1)


@njit(inline="always", **_JIT)
def _prefetch_range(address, nbytes, write):
    """Prefetches [address, address + nbytes) line by line, for writing if `write`."""
    if write:
        for off in range(0, nbytes, 64):
            _prefetch_write(address + off)
    else:
        for off in range(0, nbytes, 64):
            _prefetch_read(address + off)


@njit(inline="always", **_JIT)
def _expf(x):
    """exp(x) in float32 for x in [-inf, 0] (the only arguments here: z - max z, finite max).

    exp(x) = 2**k * exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2]. The power of two
    is built as 2**(k + 64) from exponent bits and scaled by 2**-64 afterwards, so results below the
    normal range round to subnormals or to exactly 0 (x = -inf gives 0) with no branch or select.
    """
    xc = max(x, _EXP_LO)
    k = np.floor(xc * _LOG2E + _HALF)
    r = xc - k * _LN2_HI - k * _LN2_LO
    r2 = r * r
    p = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * r2 + r + _ONE
    return (p * _int32_bits_as_float32((np.int32(k) + np.int32(127 + 64)) << np.int32(23))) * _TWO_M64


def fast_exp(x):  # pragma: no cover - replaced by the overload inside numba code
    return math.exp(x)


@overload(fast_exp)
def _fast_exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _expf(x)
    return lambda x: math.exp(x)


@njit(**_JIT)
def _nanmax(a, b):
    """max(a, b) where a NaN wins and sticks (as torch.max), so a NaN row is seen by its max."""
    return b if (b > a or b != b) else a


@njit(**_JIT)
def _row_max(z):
    """max_j z_j (NaN if any z_j is NaN), with eight independent running maxima for
    instruction-level parallelism (numba does not vectorize a NaN-aware max reduction)."""
    C = z.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = z[0]
    C8 = C - C % 8
    for j in range(0, C8, 8):
        m0 = _nanmax(m0, z[j])
        m1 = _nanmax(m1, z[j + 1])
        m2 = _nanmax(m2, z[j + 2])
        m3 = _nanmax(m3, z[j + 3])
        m4 = _nanmax(m4, z[j + 4])
        m5 = _nanmax(m5, z[j + 5])
        m6 = _nanmax(m6, z[j + 6])
        m7 = _nanmax(m7, z[j + 7])
    m = _nanmax(_nanmax(_nanmax(m0, m1), _nanmax(m2, m3)), _nanmax(_nanmax(m4, m5), _nanmax(m6, m7)))
    for j in range(C8, C):
        m = _nanmax(m, z[j])
    return m


@njit(**_JIT)
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


# Sums run in the logits' dtype over blocks of _BLOCK entries, which keeps the loop vectorized, and
# the block sums add up in float64.
_BLOCK = 1024


@njit(**_JIT)
def _row_exp(z, m, e, store):
    """e_j = exp(z_j - m) (written into e if `store`); returns s = sum_j e_j in float64."""
    C = z.shape[0]
    s = 0.0
    for j0 in range(0, C, _BLOCK):
        j1 = min(j0 + _BLOCK, C)
        sb = z.dtype.type(0)
        if store:
            for j in range(j0, j1):
                v = fast_exp(z[j] - m)
                e[j] = v
                sb += v
        else:
            for j in range(j0, j1):
                sb += fast_exp(z[j] - m)
        s += sb
    return s


@njit(**_JIT)
def _row_entropy_sum(z, m):
    """sum_j exp(z_j - m) * z_j in float64 (a -inf logit, whose exp is 0, adds 0)."""
    ez = 0.0
    for j in range(z.shape[0]):
        v = fast_exp(z[j] - m)
        ez += v * z[j] if v > 0 else 0.0
    return ez


@njit(**_JIT)
def _softcap_row(z, cap, out):
    """out_j = cap * tanh(z_j / cap)   (Gemma 2 soft-capping, tanh in float64 for accuracy)."""
    for j in range(z.shape[0]):
        out[j] = cap * math.tanh(z[j] / cap)


@njit(**_JIT)
def _softcap_backward(g, zc, cap):
    """g_j *= d(cap tanh(z_j / cap))/dz_j = 1 - tanh(z_j / cap)**2, zc being the capped logits."""
    for j in range(g.shape[0]):
        t = zc[j] / cap
        g[j] = g[j] * (1.0 - t * t)


@njit(**_JIT)
def _row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy):
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
    m = _row_max(row)
    if want_stats:
        argmax[n] = _row_argmax(row, m)
    if not math.isfinite(m):
        lse[n] = m  # NaN, +inf, or -inf for a row of -inf logits (as torch.logsumexp)
        if want_stats:
            entropy[n] = np.nan
        return row, m, np.nan
    s = _row_exp(row, m, grad[n] if want_grad else row, want_grad)
    l_se = m + math.log(s)
    lse[n] = l_se
    if want_stats:
        entropy[n] = l_se - _row_entropy_sum(row, m) / s
    return row, m, s


@njit(parallel=True, **_JIT)
def index_rows(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    """Class-index targets. z (P, C); target (P,) int64; weight (C,) float64 or empty (= all ones).

    coef (P,) float64 is the upstream gradient divided by the normalizer; grad (P, C) is written
    only if it has P rows (it may be z itself: each entry is read before it is written); loss and
    lse (P,) float64 are always written; argmax and entropy (P,) only if they have P entries.
    Targets must be in [0, C) or equal ignore_index (the caller checks).
    """
    P, C = z.shape
    want_grad = grad.shape[0] == P and P > 0
    want_stats = entropy.shape[0] == P and P > 0
    weighted = weight.shape[0] == C
    wsum = float(C)
    if weighted:
        wsum = 0.0
        for c in range(C):
            wsum += weight[c]
    smooth = eps / C if C > 0 else 0.0
    for n in prange(P):
        y = target[n]
        if y == ignore_index:
            loss[n] = 0.0
            if want_stats:
                _row_softmax(z, n, cap, grad, False, True, lse, argmax, entropy)
            else:
                lse[n] = np.nan
            if want_grad:
                grad[n, :] = 0
            continue
        # the smoothing term needs sum_c w_c z_c, read before grad[n] (maybe z[n]) is overwritten
        row0 = z[n]
        wz = 0.0
        if smooth > 0.0:
            for c in range(C):
                zc = cap * math.tanh(row0[c] / cap) if cap > 0.0 else row0[c]
                wz += (weight[c] if weighted else 1.0) * zc
        zy = cap * math.tanh(row0[y] / cap) if cap > 0.0 else row0[y]
        row, m, s = _row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy)
        l_se = m + math.log(s)  # NaN for a non-finite row
        w_y = weight[y] if weighted else 1.0
        # l_n = (1 - eps) w_y (lse - z_y) + (eps / C) sum_c w_c (lse - z_c) + w_y lam lse^2
        ll = (1.0 - eps) * w_y * (l_se - zy) + w_y * lam * l_se * l_se
        if smooth > 0.0:
            ll += smooth * (wsum * l_se - wz)
        loss[n] = ll
        if want_grad:
            e = grad[n]
            k = coef[n]
            if s != s:
                e[:] = np.nan
                continue
            # dz_j = k * (alpha * a_j - beta_j),  a_j = e_j / s
            alpha = (1.0 - eps) * w_y + smooth * wsum + 2.0 * lam * w_y * l_se
            scale = z.dtype.type(k * alpha / s)
            if smooth > 0.0 and weighted:
                for j in range(C):
                    e[j] = e[j] * scale - z.dtype.type(k * smooth * weight[j])
            elif smooth > 0.0:
                b = z.dtype.type(k * smooth)
                for j in range(C):
                    e[j] = e[j] * scale - b
            else:
                for j in range(C):
                    e[j] = e[j] * scale
            e[y] -= z.dtype.type(k * (1.0 - eps) * w_y)
            if cap > 0.0:
                _softcap_backward(e, row, cap)


@njit(parallel=True, **_JIT)
def probability_rows(z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    """Probability targets t (P, C), smoothed to t' = (1 - eps) t + eps / C; same outputs as
    `index_rows`. l_n = sum_c w_c t'_c (lse - z_c) + lam lse^2 (targets are not validated)."""
    P, C = z.shape
    want_grad = grad.shape[0] == P and P > 0
    want_stats = entropy.shape[0] == P and P > 0
    weighted = weight.shape[0] == C
    smooth = eps / C if C > 0 else 0.0
    for n in prange(P):
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
        row, m, s = _row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy)
        l_se = m + math.log(s)
        loss[n] = bsum * l_se - bz + lam * l_se * l_se
        if want_grad:
            e = grad[n]
            if s != s:
                e[:] = np.nan
                continue
            k = coef[n]
            scale = k * (bsum + 2.0 * lam * l_se) / s
            for j in range(C):
                b = (1.0 - eps) * t[j] + smooth
                if weighted:
                    b *= weight[j]
                e[j] = z.dtype.type(e[j] * scale - k * b)
            if cap > 0.0:
                _softcap_backward(e, row, cap)
