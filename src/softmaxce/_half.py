"""16-bit logits (bfloat16, float16): read and the gradient written in their own dtype, computed in float32.

Same outputs as `_kernels.index_rows` / `_kernels.probability_rows` (the formulas are in `_rows.py`),
for logits given as their raw 16-bit patterns (numba has no bfloat16 type, and no float16 on the CPU:
the caller passes uint16 views, e.g. `tensor.view(torch.uint16).numpy()`), with no float32 copy of the
(P, C) logits. Each row is widened into a per-thread float32 scratch row of C entries (in L1/L2),
computed there in place, and its gradient rounded back into the 16-bit gradient row (which may be the
logits row itself):

    bfloat16 -> float32:  bits << 16                    (exact)
    float32 -> bfloat16:  round to nearest even on the upper 16 bits; a NaN stays a NaN (quiet bit set)
    float16 <-> float32:  by the bits: exact one way (normals, subnormals, inf, NaN), round to nearest
                          even the other (overflow to inf from 65520 on)

The row computation: class-index targets without softcap or statistics (the training case) take
`_index_row_fast`: max, exp in place with float32 block sums (the AVX2 loops of `_x86.py` where the
CPU has them), and the gradient rounded straight into the 16-bit row, so that the scratch row is
passed over three times. Everything else (softcap, statistics, probability targets, and a row whose
max is not finite or whose exp sum is NaN) runs the float32 row kernel itself, `_rows.index_row` /
`_rows.probability_row`, on the scratch row as a (1, C) problem: every option is supported, with one
implementation of its math.

Rows are spread over threads in chunks whose boundaries depend only on the shape, and each row is
computed by one thread from its own data by the same instructions, so results are bit for bit the
same on any thread count, and the loss does not depend on whether the gradient is asked for.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._bits import JIT
from ._rows import (
    BLOCK,
    coef_at,
    coef_rows,
    fast_exp,
    index_alpha,
    index_loss,
    index_row,
    probability_row,
    row_max,
    weight_sum,
    weights_nonnegative,
)
from ._x86 import AVX2_FMA, exp16_store, max16

__all__ = [
    "FORMATS",
    "bits_from_float32",
    "float32_from_bits",
    "index_rows_half",
    "probability_rows_half",
]

BFLOAT16, FLOAT16 = 0, 1
FORMATS = {"bfloat16": BFLOAT16, "float16": FLOAT16}  # kind -> the kernels' format code
CHUNK_LOGITS = 1 << 16  # about this many logits per chunk of rows (a thread's unit of work)


# ----------------------------------------------------------------------------- scalar conversions


@njit(inline="always", **JIT)
def bf16_to_f32(h):
    """bfloat16 bits -> float32: the upper half of a float32 (exact for every pattern, NaN payloads kept)."""
    return _f32_from_bits(np.int64(h) << 16)


@njit(inline="always", **JIT)
def f32_to_bf16(x):
    """float32 -> bfloat16 bits, round to nearest even: u + 0x7fff + (bit 16 of u), upper half.

    A NaN keeps its sign and upper payload with the quiet bit set (rounding could carry it into inf)."""
    u = _bits_of_f32(x)  # 0 <= u < 2**32
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x0040)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@njit(inline="always", **JIT)
def f16_to_f32(h):
    """float16 bits -> float32 (exact): rebias the exponent (15 -> 127), or for a zero exponent take the
    subnormal mantissa * 2**-24; inf and NaN (payload, quiet bit included) keep an all-ones exponent."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    e = h & 0x7C00
    if e == 0:
        return _f32_from_bits(_bits_of_f32(np.float32(h & 0x03FF) * _TWO_M24) | sign)
    mag = (h & 0x7FFF) << 13
    return _f32_from_bits((mag + (0x70000000 if e == 0x7C00 else 0x38000000)) | sign)


@njit(inline="always", **JIT)
def f32_to_f16(x):
    """float32 -> float16 bits, round to nearest even (F. Giesen's float_to_half_fast3_rtne):

    |x| >= 65536, inf, NaN: inf (NaN: quiet NaN with the upper payload)
    |x| < 2**-14 (float16 subnormals): the float addition |x| + 0.5 rounds the mantissa into place
    otherwise: rebias the exponent (127 -> 15) and add 0xfff + (bit 13) before dropping 13 bits;
               a carry out of the mantissa gives the next binade, up to inf from 65520 on.
    """
    u = _bits_of_f32(x)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x47800000:
        h = (0x7E00 | ((a >> 13) & 0x03FF)) if a > 0x7F800000 else 0x7C00
    elif a < 0x38800000:
        h = _bits_of_f32(_f32_from_bits(a) + _HALF) - 0x3F000000
    else:
        h = (a - 0x38000000 + 0x0FFF + ((a >> 13) & 1)) >> 13
    return np.uint16(h | sign)


_TWO_M24 = np.float32(2.0**-24)
_HALF = np.float32(0.5)


# ----------------------------------------------------------------------------- rows


@njit(inline="always", **JIT)
def _to_f32(fmt, h):
    """16-bit pattern h in format fmt (BFLOAT16 or FLOAT16) -> float32 (exact)."""
    return bf16_to_f32(h) if fmt == BFLOAT16 else f16_to_f32(h)


@njit(inline="always", **JIT)
def _from_f32(fmt, x):
    """float32 x -> its 16-bit pattern in format fmt, rounded to nearest even."""
    return f32_to_bf16(x) if fmt == BFLOAT16 else f32_to_f16(x)


# `_load_row` and `_store_row` test fmt per element: LLVM hoists the test out of the loop (unswitching), so
# each format gets its own vectorized loop, the code that two hand-written loops give (checked in the IR).
@njit(_nrt=False, **JIT)
def _load_row(fmt, src, dst):
    """dst[j] = float32(src[j]) for 16-bit patterns src (C,) in format fmt."""
    for j in range(src.shape[0]):
        dst[j] = _to_f32(fmt, src[j])


@njit(_nrt=False, **JIT)
def _store_row(fmt, src, dst):
    """dst[j] = the 16-bit pattern of src[j] (float32, rounded to nearest even) in format fmt."""
    for j in range(src.shape[0]):
        dst[j] = _from_f32(fmt, src[j])


@njit(**JIT)
def float32_from_bits(fmt, bits, out):
    """out = float32 values of the 16-bit patterns `bits` (1-D) in format fmt (0 bfloat16, 1 float16)."""
    _load_row(fmt, bits, out)


@njit(**JIT)
def bits_from_float32(fmt, x, out):
    """out = 16-bit patterns of the float32 values x (1-D), rounded to nearest even, in format fmt."""
    _store_row(fmt, x, out)


@njit(**JIT)
def _chunk_rows(C):
    """Rows per chunk: about CHUNK_LOGITS logits (at least one row), from the shape only."""
    return max(1, CHUNK_LOGITS // max(C, 1))


@njit(**JIT)
def _index_chunk(fmt, ch, R, zb, target, weight, eps, lam, cap, ii, coef, gb, loss, lse, am, en):
    """Rows [ch * R, (ch + 1) * R) of class-index targets. Each row is widened into a float32 (1, C) scratch
    row; without softcap and statistics `_index_row_fast` computes it there, else (and for a row with a NaN
    or inf logit, or only -inf) `_rows.index_row` does, the gradient in place of the scratch logits,
    rounded into gb[n] afterwards."""
    P, C = zb.shape
    want_grad, want_stats = gb.shape[0] == P, en.shape[0] == P
    wsum, wpos = weight_sum(weight, C), weights_nonnegative(weight)
    fast = cap == 0.0 and not want_stats
    s = np.empty((1, C), np.float32)
    e = s[0]
    one = np.ones(1)  # the row kernels always compute a gradient (into s), so the loss never depends on want_grad
    n, n1 = ch * R, min(P, (ch + 1) * R)
    while n < n1:
        if fast:  # rows up to the next one the fast path leaves to `_rows.index_row`
            n = _fast_rows(fmt, n, n1, zb, e, target, weight, wsum, wpos, eps, lam, ii, coef, gb, loss, lse)
            if n == n1:
                break
        _load_row(fmt, zb[n], e)
        i = slice(n, n + 1)  # row n of the per-row arrays, as the (1, C) problem's row 0
        r = i if want_stats else slice(0, 0)
        k = coef_rows(coef, i) if want_grad else one
        index_row(0, s, target[i], weight, wsum, wpos, eps, lam, cap, ii, k, s, loss[i], lse[i], am[r], en[r])
        if want_grad:
            _store_row(fmt, e, gb[n])
        n += 1


@njit(_nrt=False, **JIT)
def _fast_rows(fmt, n0, n1, zb, e, target, weight, wsum, wpos, eps, lam, ii, coef, gb, loss, lse):
    """Rows n0 .. n1 - 1 by `_index_row_fast` (ignored rows directly), widened into the scratch row e;
    returns the first row it leaves to the general path (n1 when none). Compiled without numba's
    reference counting: the row views and arguments of every row otherwise cost atomic operations."""
    want_grad = gb.shape[0] == loss.shape[0]
    for n in range(n0, n1):
        if target[n] == ii:
            loss[n] = 0.0
            lse[n] = np.nan
            if want_grad:
                for j in range(gb.shape[1]):
                    gb[n, j] = 0
            continue
        _load_row(fmt, zb[n], e)
        if not _index_row_fast(fmt, n, e, target, weight, wsum, wpos, eps, lam, coef, gb, loss, lse):
            return n
    return n1


@njit(_nrt=False, **JIT)
def _index_row_fast(fmt, n, e, target, weight, wsum, wpos, eps, lam, coef, gb, loss, lse):
    """Row n of a class-index problem without softcap or statistics, its logits widened into e (C,)
    float32, computed as `_rows.index_row` computes it (the formulas are there), in three passes over e
    (max; exp in place with float32 block sums; the gradient rounded into gb[n]). Returns False, having
    written nothing, for a row whose max is not finite or whose exp sum is NaN (the caller then runs
    `_rows.index_row`, which gives such rows their NaN / inf results)."""
    C = e.shape[0]
    want_grad = gb.shape[0] == loss.shape[0]
    weighted = weight.shape[0] == C
    smooth = eps / C
    y = target[n]
    zy = float(e[y])
    wz = 0.0  # sum_c w_c z_c, for the smoothing term
    if smooth > 0.0:
        if weighted:
            for c in range(C):
                wz += weight[c] * e[c]
        else:
            for c in range(C):
                wz += e[c]
    # m = max_j z_j (vmaxps skips a NaN, which then shows up in the exp sum)
    if AVX2_FMA:
        n16 = C // 16
        m = max16(e, 0, n16, e[0])
        for j in range(16 * n16, C):
            m = e[j] if e[j] > m else m
    else:
        m = row_max(e)
    if not math.isfinite(m):
        return False
    # e_j = exp(z_j - m) in place, s = sum_j e_j: float32 sums over blocks of BLOCK, added in float64
    s = 0.0
    for j0 in range(0, C, BLOCK):
        j1 = min(j0 + BLOCK, C)
        sb = np.float32(0.0)
        j = j0
        if AVX2_FMA:
            n16 = (j1 - j0) // 16
            sb = exp16_store(e, e, j0, n16, m)
            j = j0 + 16 * n16
        for jj in range(j, j1):
            v = fast_exp(e[jj] - m)
            e[jj] = v
            sb += v
        s += sb
    if s != s:
        return False
    l_se = m + math.log(s)
    lse[n] = l_se
    w_y = weight[y] if weighted else 1.0
    loss[n] = index_loss(l_se, zy, w_y, wz, wsum, wpos, eps, smooth, lam)
    if want_grad:
        k = coef_at(coef, n)
        # dz_j = k * (alpha * a_j - beta_j),  a_j = e_j / s,  beta_j = (eps / C) w_j + [j == y] (1 - eps) w_y
        alpha = index_alpha(l_se, w_y, wsum, eps, smooth, lam)
        scale = np.float32(k * alpha / s)
        b = k * smooth
        g = gb[n]
        gy = e[y] * scale - np.float32(b * (weight[y] if weighted else 1.0)) - np.float32(k * (1.0 - eps) * w_y)
        # one loop per format written out: LLVM does not hoist the format test of `_from_f32` out of the
        # weighted loop, which then rounds every value both ways (checked in the IR; 1.4x the time for bf16)
        if weighted and smooth > 0.0:
            if fmt == BFLOAT16:
                for j in range(C):
                    g[j] = f32_to_bf16(e[j] * scale - np.float32(b * weight[j]))
            else:
                for j in range(C):
                    g[j] = f32_to_f16(e[j] * scale - np.float32(b * weight[j]))
        else:
            b32 = np.float32(b)
            if fmt == BFLOAT16:
                for j in range(C):
                    g[j] = f32_to_bf16(e[j] * scale - b32)
            else:
                for j in range(C):
                    g[j] = f32_to_f16(e[j] * scale - b32)
        g[y] = _from_f32(fmt, gy)
    return True


@njit(parallel=True, **JIT)
def _index_rows(fmt, zb, target, weight, eps, lam, cap, ii, coef, gb, loss, lse, am, en):
    R = _chunk_rows(zb.shape[1])
    for ch in prange((zb.shape[0] + R - 1) // R):
        _index_chunk(fmt, ch, R, zb, target, weight, eps, lam, cap, ii, coef, gb, loss, lse, am, en)


@njit(**JIT)
def _index_rows_serial(fmt, zb, target, weight, eps, lam, cap, ii, coef, gb, loss, lse, am, en):
    _index_chunk(fmt, 0, zb.shape[0], zb, target, weight, eps, lam, cap, ii, coef, gb, loss, lse, am, en)


@njit(**JIT)
def _probability_chunk(fmt, ch, R, zb, target, weight, eps, lam, cap, coef, gb, loss, lse, am, en):
    """Rows [ch * R, (ch + 1) * R) of probability targets, as `_index_chunk` with `_rows.probability_row`."""
    P, C = zb.shape
    want_grad, want_stats = gb.shape[0] == P, en.shape[0] == P
    s = np.empty((1, C), np.float32)
    one = np.ones(1)
    for n in range(ch * R, min(P, (ch + 1) * R)):
        _load_row(fmt, zb[n], s[0])
        i = slice(n, n + 1)
        r = i if want_stats else slice(0, 0)
        k = coef_rows(coef, i) if want_grad else one
        probability_row(0, s, target[i], weight, eps, lam, cap, k, s, loss[i], lse[i], am[r], en[r])
        if want_grad:
            _store_row(fmt, s[0], gb[n])


@njit(parallel=True, **JIT)
def _probability_rows(fmt, zb, target, weight, eps, lam, cap, coef, gb, loss, lse, am, en):
    R = _chunk_rows(zb.shape[1])
    for ch in prange((zb.shape[0] + R - 1) // R):
        _probability_chunk(fmt, ch, R, zb, target, weight, eps, lam, cap, coef, gb, loss, lse, am, en)


@njit(**JIT)
def _probability_rows_serial(fmt, zb, target, weight, eps, lam, cap, coef, gb, loss, lse, am, en):
    _probability_chunk(fmt, 0, zb.shape[0], zb, target, weight, eps, lam, cap, coef, gb, loss, lse, am, en)


# ----------------------------------------------------------------------------- drivers


def index_rows_half(
    parallel: bool,
    kind: str,
    z_bits,
    target,
    weight,
    eps,
    lam,
    cap,
    ignore_index,
    coef,
    grad_bits,
    loss,
    lse,
    argmax,
    entropy,
) -> None:
    """`_kernels.index_rows` for 16-bit logits: z_bits (P, C) uint16 patterns of `kind` ("bfloat16" or
    "float16"); grad_bits (P, C) uint16 (written, may be z_bits itself) or (0, C) for no gradient.
    The other arrays are as `_kernels` documents (float64 weight/coef/loss/lse, int64 target)."""
    run = _index_rows if parallel else _index_rows_serial
    run(_format(kind), z_bits, target, weight, eps, lam, cap, ignore_index, coef, grad_bits, loss, lse, argmax, entropy)


def probability_rows_half(
    parallel: bool, kind: str, z_bits, target, weight, eps, lam, cap, coef, grad_bits, loss, lse, argmax, entropy
) -> None:
    """`_kernels.probability_rows` for 16-bit logits (as `index_rows_half`); target (P, C) float32."""
    run = _probability_rows if parallel else _probability_rows_serial
    run(_format(kind), z_bits, target, weight, eps, lam, cap, coef, grad_bits, loss, lse, argmax, entropy)


def _format(kind: str) -> int:
    try:
        return FORMATS[kind]
    except KeyError:
        raise ValueError(f"kind must be 'bfloat16' or 'float16', got {kind!r}") from None


# ----------------------------------------------------------------------------- bit casts


@intrinsic
def _f32_from_bits(typingctx, i):
    """The float32 whose bits are the low 32 bits of the integer i."""
    if not isinstance(i, types.Integer):
        return None
    sig = types.float32(i)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = args[0]
        v = builder.trunc(v, i32) if v.type.width > 32 else builder.zext(v, i32) if v.type.width < 32 else v
        return builder.bitcast(v, ir.FloatType())

    return sig, codegen


@intrinsic
def _bits_of_f32(typingctx, x):
    """The bits of the float32 x as a non-negative int64 (0 <= bits < 2**32)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return sig, codegen
