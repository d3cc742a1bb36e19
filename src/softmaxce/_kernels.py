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

numba on this platform has no SVML, so `math.exp` stays scalar. `_expf` is a float32 exp (one-FMA
range reduction + degree-5 minimax polynomial, at most 1.8e-7 relative error for x in [-10, 0] and
4e-7 down to -87, where the float32 ln 2 in the reduction dominates; tested) written with plain
arithmetic and integer/float bitcasts, which LLVM vectorizes. float64 logits use `math.exp`.
On CPUs with AVX2 and FMA (`SIMD`), the streamed float32 path's block max and block exp are
hand-written LLVM vector loops instead (`_max16`, `_exp16_store` / `_exp16_sum`): a table of 2**(j/8)
read with vpermps and a degree-3 polynomial (6 instead of 8 multiply/FMA operations per 8 values; at
most 1.4e-7 relative error on [-10, 0], 3.6e-7 down to -87; tested).

Each kernel comes as a parallel driver (rows spread over threads with `prange`) and a serial one
(`*_serial`) for small problems, where waking the thread pool costs more than the work; the engine
picks. The per-row work is written once, in `_index_row` / `_probability_row` / `_streamed_chunk`.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# fastmath without 'nnan'/'ninf': reductions may be reassociated (and so vectorized), while NaN and
# inf keep their IEEE meaning, which the contract relies on (a NaN logit gives a NaN loss).
FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
_JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
_LN2 = _F32(0.6931471805599453)  # float32(ln 2) differs from ln 2 by 2e-9: |k| * 2e-9 <= 3e-7 in r
_ROUND_MAGIC = _F32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer held in the low mantissa bits
_EXP_LO = _F32(-88.0)  # k = round(-88 / ln 2) = -127 builds 2**k with a zero exponent field: exactly 0
_ONE = _F32(1.0)
# exp(r) ~ 1 + r (C1 + r (C2 + r (C3 + r (C4 + r C5)))) on [-ln2/2, ln2/2]: a degree-5 minimax fit of the
# relative error with exp(0) = 1 exactly; 9e-8 in exact arithmetic, at most 1.8e-7 (about 3 ulp) in float32
# for x in [-10, 0], growing to 4e-7 at x = -87 with the |k| * 2e-9 error of float32 ln 2 (see _LN2).
_C1 = _F32(0.9999997019767761)
_C2 = _F32(0.4999915063381195)
_C3 = _F32(0.1666763573884964)
_C4 = _F32(0.04189793020486832)
_C5 = _F32(0.008290315046906471)


def _int_type(float_type):
    return ir.IntType(float_type.bitwidth)


@intrinsic
def _round_to_k(typingctx, t):
    """k = t - 1.5 * 2**23 for t = u + 1.5 * 2**23 (u rounded by that addition), read from t's bits.

    Going through the bits keeps fastmath from folding (u + M) - M back into u: the integer sits in the
    low mantissa bits, so k = bits(t) - bits(1.5 * 2**23), converted to float (vpsubd + vcvtdq2ps).
    """
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        return builder.sitofp(builder.sub(bits, ir.Constant(i32, 0x4B400000)), ir.FloatType())

    return sig, codegen


@intrinsic
def _pow2_of_rounded(typingctx, t):
    """2**k for t = k + 1.5 * 2**23 (-127 <= k <= 127): the low bits of t shifted into the exponent field.

    bits(t) << 23 keeps only k's bits (those of 1.5 * 2**23 shift out), + bits(1.0) adds the bias;
    k = -127 leaves a zero exponent and mantissa, i.e. exactly 0.
    """
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        bits = builder.add(builder.shl(bits, ir.Constant(i32, 23)), ir.Constant(i32, 0x3F800000))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


@intrinsic
def _sortable_bits(typingctx, x):
    """The bits of a float as a signed integer that orders like the float: i ^ ((i >> (w-1)) & 0x7f..f).

    For non-NaN x, x < y exactly when sortable(x) < sortable(y) (-0 sorts just below +0), and a NaN with
    the sign bit clear sorts above +inf, so an integer max (vpmaxsd: vectorizable, unlike a NaN-aware
    float max) finds the float max. A NaN with the sign bit set sorts below -inf: callers that must see
    every NaN also track the max of the magnitude bits (`_magnitude_bits`).
    """
    if not isinstance(x, types.Float):
        return None
    width = x.bitwidth
    sig = types.int32(x) if width == 32 else types.int64(x)

    def codegen(context, builder, signature, args):
        it = ir.IntType(width)
        bits = builder.bitcast(args[0], it)
        sign = builder.ashr(bits, ir.Constant(it, width - 1))
        return builder.xor(bits, builder.and_(sign, ir.Constant(it, (1 << (width - 1)) - 1)))

    return sig, codegen


@intrinsic
def _magnitude_bits(typingctx, x):
    """The bits of |x| as a signed integer: above those of +inf exactly when x is a NaN."""
    if not isinstance(x, types.Float):
        return None
    width = x.bitwidth
    sig = types.int32(x) if width == 32 else types.int64(x)

    def codegen(context, builder, signature, args):
        it = ir.IntType(width)
        bits = builder.bitcast(args[0], it)
        return builder.and_(bits, ir.Constant(it, (1 << (width - 1)) - 1))

    return sig, codegen


@intrinsic
def _float_from_sortable(typingctx, fl, i):
    """Inverse of `_sortable_bits` (the xor is its own inverse); `fl` is a float of the wanted type."""
    width = fl.bitwidth
    sig = fl(fl, i)

    def codegen(context, builder, signature, args):
        it = ir.IntType(width)
        bits = args[1]
        sign = builder.ashr(bits, ir.Constant(it, width - 1))
        bits = builder.xor(bits, builder.and_(sign, ir.Constant(it, (1 << (width - 1)) - 1)))
        return builder.bitcast(bits, context.get_value_type(fl))

    return sig, codegen


@intrinsic
def _address(typingctx, a):
    """The address of a[0] (for alignment arithmetic)."""
    sig = types.uintp(a)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(arr.data, context.get_value_type(types.uintp))

    return sig, codegen


_LANES = 8


@intrinsic
def _stream_scaled(typingctx, dst, j, src, i, f, b):
    """dst[j:j+8] = src[i:i+8] * f - b (one fused multiply-add) with one non-temporal 8-lane store (vmovntps).

    The gradient is written once and not read again by the kernel, so it bypasses the cache: no
    read-for-ownership of the destination lines, which makes the kernel's memory traffic that of a copy.
    dst + j must be 32-byte aligned (the caller stores the unaligned entries normally); src needs no alignment.
    """
    sig = types.void(dst, j, src, i, f, b)

    def codegen(context, builder, signature, args):
        dst_t, _, src_t, _, f_t, b_t = signature.args
        elt = context.get_value_type(dst_t.dtype)
        vec = ir.VectorType(elt, _LANES)
        dst_a = context.make_array(dst_t)(context, builder, args[0])
        src_a = context.make_array(src_t)(context, builder, args[2])
        sptr = builder.bitcast(builder.gep(src_a.data, [args[3]]), vec.as_pointer())
        dptr = builder.bitcast(builder.gep(dst_a.data, [args[1]]), vec.as_pointer())
        v = builder.load(sptr, align=dst_t.dtype.bitwidth // 8)
        fv = context.cast(builder, args[4], f_t, dst_t.dtype)
        bv = context.cast(builder, args[5], b_t, dst_t.dtype)
        fs, bs = _splat(builder, fv, vec), _splat(builder, bv, vec)
        name = "llvm.fma.v8f32" if isinstance(elt, ir.FloatType) else "llvm.fma.v8f64"
        fma = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(vec, [vec] * 3))
        out = builder.call(fma, [v, fs, builder.fneg(bs)])  # one rounding, as the scalar head and tail
        store = builder.store(out, dptr, align=32)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_fence(typingctx):
    """sfence: orders the preceding non-temporal stores before any later store."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _prefetch(typingctx, a, i):
    """Prefetch the cache line of a.flat[i] into L1 (a C-contiguous; a hint: never faults)."""
    sig = types.void(a, i)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        _emit_prefetch(builder, builder.gep(arr.data, [args[1]]))
        return context.get_dummy_value()

    return sig, codegen


def _emit_prefetch(builder, ptr):
    """prefetcht0 of the line at ptr: read, locality 3 (keep in all levels), data cache."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = builder.module.declare_intrinsic("llvm.prefetch.p0", fnty=fnty)
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


# Hand-written AVX2 loops for the streamed path's two hot loops (the block max and the block exp),
# used where the CPU has AVX2 and FMA (`SIMD`). numba's auto-vectorizer cannot emit them: the exp reads
# a table with a register permute (vpermps), and the max is a plain vmaxps. Elsewhere the portable
# loops below compute the same values (the exp to within its error bound).
def _host_has_simd() -> bool:
    if numba.config.CPU_NAME:  # a fixed (e.g. "generic") target: make no assumption about the CPU
        return False
    features = llvm_binding.get_host_cpu_features()
    return bool(features.get("avx2")) and bool(features.get("fma"))


SIMD = _host_has_simd()

# exp(x) = 2**(k/8) exp(r): k = round(8 x / ln 2), r = x - k ln2/8 in [-ln2/16, ln2/16]; 2**(k/8) is
# 2**floor(k/8) (added to the exponent field) times 2**((k mod 8)/8) from an 8-entry table; exp(r) - 1
# ~ r (P1 + r (P2 + r P3)), a minimax fit on that interval. Measured over [-87, 0] in float32: at most
# 1.4e-7 relative error on [-10, 0] and 3.6e-7 down to -87 (float32 ln2/8, as in `_expf`).
_EXP_TABLE = [float(np.float32(2.0 ** (j / 8))) for j in range(8)]
_PREFETCH_AHEAD = 2048  # logits (8 KiB) between the exp loop's reads and its prefetches
_P1, _P2, _P3 = 1.0000001192092896, 0.5000782012939453, 0.1666317731142044


def _vector_loop(builder, start, count, n_acc, init, body):
    """Emits `for i in range(count)`: accs = body(start + 16 i, accs); returns the final accumulators."""
    i64 = ir.IntType(64)
    entry = builder.block
    head = builder.append_basic_block("vloop.head")
    step = builder.append_basic_block("vloop.body")
    done = builder.append_basic_block("vloop.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(i64)
    accs = [builder.phi(init.type) for _ in range(n_acc)]
    i.add_incoming(ir.Constant(i64, 0), entry)
    for a in accs:
        a.add_incoming(init, entry)
    builder.cbranch(builder.icmp_signed("<", i, count), step, done)
    builder.position_at_end(step)
    new = body(builder.add(start, builder.mul(i, ir.Constant(i64, 16))), accs)
    i.add_incoming(builder.add(i, ir.Constant(i64, 1)), builder.block)
    for a, v in zip(accs, new, strict=True):
        a.add_incoming(v, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return accs


def _splat(builder, value, vec):
    undef = ir.Constant(vec, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), vec.count), [0] * vec.count))


def _lanes(builder, v, idx):
    i32 = ir.IntType(32)
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, len(idx)), idx))


def _make_exp16(store):
    @intrinsic
    def exp16(typingctx, row, e, j0, n16, mb):
        """sum over j in [j0, j0 + 16 n16) of exp(row[j] - mb) in float32 (two 8-lane accumulators, added
        in a fixed order), each term also stored into e[j] if `store`. mb must be finite."""
        if not (isinstance(row, types.Array) and row.dtype == types.float32):
            return None
        sig = types.float32(row, e, j0, n16, types.float32)

        def codegen(context, builder, signature, args):
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            v8f, v8i = ir.VectorType(f32, 8), ir.VectorType(i32, 8)
            zdata = context.make_array(signature.args[0])(context, builder, args[0]).data
            edata = context.make_array(signature.args[1])(context, builder, args[1]).data
            start = context.cast(builder, args[2], signature.args[2], types.int64)
            count = context.cast(builder, args[3], signature.args[3], types.int64)
            fma = builder.module.declare_intrinsic("llvm.fma.v8f32", fnty=ir.FunctionType(v8f, [v8f] * 3))
            perm = builder.module.declare_intrinsic("llvm.x86.avx2.permps", fnty=ir.FunctionType(v8f, [v8f, v8i]))

            def c(x):
                return ir.Constant(v8f, [x] * 8)

            mv = _splat(builder, args[4], v8f)
            table = ir.Constant(v8f, _EXP_TABLE)

            def exp8(z):
                x = builder.fsub(z, mv)
                lo = c(float(_EXP_LO))
                x = builder.select(builder.fcmp_unordered(">=", x, lo), x, lo)  # max(x, -88), a NaN kept
                # t = k + 1.5 * 2**23 with k = round(8 x / ln 2) in its low mantissa bits; t - 1.5 * 2**23 = k
                # exactly (no fast-math flags here, so LLVM does not fold it back to 8 x / ln 2)
                t = builder.call(fma, [x, c(float(np.float32(8 * 1.4426950408889634))), c(float(_ROUND_MAGIC))])
                tbits = builder.bitcast(t, v8i)
                r = builder.call(fma, [builder.fsub(t, c(float(_ROUND_MAGIC))), c(-float(_LN2 / _F32(8))), x])
                p = builder.call(fma, [c(_P3), r, c(_P2)])
                p = builder.fmul(builder.call(fma, [p, r, c(_P1)]), r)
                # 2**((k mod 8) / 8): vpermps reads the low 3 bits of t, which are k's (those of 1.5 * 2**23
                # are 0); 2**floor(k / 8) in the exponent field: (bits(t) << 20) & 0xff800000 = (k >> 3) << 23
                two_j8 = builder.call(perm, [table, tbits])
                scale = builder.and_(builder.shl(tbits, ir.Constant(v8i, [20] * 8)), ir.Constant(v8i, [-(1 << 23)] * 8))
                s = builder.bitcast(builder.add(builder.bitcast(two_j8, v8i), scale), v8f)
                return builder.call(fma, [p, s, s])  # k = -1016 (x = -88) gives s = 0 exactly

            def body(j, accs):
                out = []
                # one cache line of what comes _PREFETCH_AHEAD logits later (the next blocks), one per
                # iteration: spread out, the prefetches do not queue up behind each other (a hint:
                # never faults, also past the end of the array)
                _emit_prefetch(builder, builder.gep(zdata, [builder.add(j, ir.Constant(i64, _PREFETCH_AHEAD))]))
                for h in range(2):
                    jh = builder.add(j, ir.Constant(i64, 8 * h))
                    v = exp8(builder.load(builder.bitcast(builder.gep(zdata, [jh]), v8f.as_pointer()), align=4))
                    if store:
                        builder.store(v, builder.bitcast(builder.gep(edata, [jh]), v8f.as_pointer()), align=4)
                    out.append(builder.fadd(accs[h], v))
                return out

            a0, a1 = _vector_loop(builder, start, count, 2, ir.Constant(v8f, [0.0] * 8), body)
            acc = builder.fadd(a0, a1)
            s4 = builder.fadd(_lanes(builder, acc, [0, 1, 2, 3]), _lanes(builder, acc, [4, 5, 6, 7]))
            s2 = builder.fadd(_lanes(builder, s4, [0, 1]), _lanes(builder, s4, [2, 3]))
            lane0, lane1 = (builder.extract_element(s2, ir.Constant(i32, k)) for k in (0, 1))
            return builder.fadd(lane0, lane1)

        return sig, codegen

    return exp16


_exp16_store = _make_exp16(True)
_exp16_sum = _make_exp16(False)


@intrinsic
def _max16(typingctx, row, j0, n16, init):
    """max(init, row[j0 : j0 + 16 n16]) with vmaxps, which returns its second operand (the running max)
    when the first is a NaN: a NaN entry is skipped (callers see it in the exp sum)."""
    if not (isinstance(row, types.Array) and row.dtype == types.float32):
        return None
    sig = types.float32(row, j0, n16, types.float32)

    def codegen(context, builder, signature, args):
        f32, i32 = ir.FloatType(), ir.IntType(32)
        v8f, v4f = ir.VectorType(f32, 8), ir.VectorType(f32, 4)
        zdata = context.make_array(signature.args[0])(context, builder, args[0]).data
        start = context.cast(builder, args[1], signature.args[1], types.int64)
        count = context.cast(builder, args[2], signature.args[2], types.int64)
        vmax8 = builder.module.declare_intrinsic("llvm.x86.avx.max.ps.256", fnty=ir.FunctionType(v8f, [v8f, v8f]))
        vmax4 = builder.module.declare_intrinsic("llvm.x86.sse.max.ps", fnty=ir.FunctionType(v4f, [v4f, v4f]))

        def body(j, accs):
            out = []
            for h in range(2):
                jh = builder.add(j, ir.Constant(ir.IntType(64), 8 * h))
                z = builder.load(builder.bitcast(builder.gep(zdata, [jh]), v8f.as_pointer()), align=4)
                out.append(builder.call(vmax8, [z, accs[h]]))
            return out

        a0, a1 = _vector_loop(builder, start, count, 2, _splat(builder, args[3], v8f), body)
        acc = builder.call(vmax8, [a0, a1])
        m4 = builder.call(vmax4, [_lanes(builder, acc, [0, 1, 2, 3]), _lanes(builder, acc, [4, 5, 6, 7])])
        m2 = builder.call(vmax4, [m4, _lanes(builder, m4, [2, 3, 0, 1])])
        m1 = builder.call(vmax4, [m2, _lanes(builder, m2, [1, 0, 3, 2])])
        return builder.extract_element(m1, ir.Constant(i32, 0))

    return sig, codegen


@njit(inline="always", **_JIT)
def _expf(x):
    """exp(x) in float32 for x in [-inf, 0] (the only arguments here: z - max z, finite max).

    exp(x) = 2**k * exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2] (one FMA; float32 ln 2
    is within 2e-9 of ln 2). x is clamped at -88 so that -inf and anything below exp(-88) = 6e-39 give
    exactly 0 (k = -127), with no branch. A NaN x stays NaN (the clamp keeps x when unordered).
    All arithmetic is float32 with plain operations and bitcasts, so LLVM vectorizes loops calling it
    (about 15 AVX2 instructions per 8 values).
    """
    xc = max(x, _EXP_LO)
    t = xc * _LOG2E + _ROUND_MAGIC
    k = _round_to_k(t)
    r = xc - k * _LN2
    p = ((((_C5 * r + _C4) * r + _C3) * r + _C2) * r + _C1) * r + _ONE
    return p * _pow2_of_rounded(t)


def fast_exp(x):  # pragma: no cover - replaced by the overload inside numba code
    return math.exp(x)


@overload(fast_exp)
def _fast_exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _expf(x)
    return lambda x: math.exp(x)


@njit(**_JIT)
def _row_max(z):
    """max_j z_j (NaN if any z_j is NaN), as two vectorized integer max reductions over the bits:
    the sortable bits find the max, the magnitude bits reveal any NaN (whatever its sign bit)."""
    m = _sortable_bits(z[0])
    a = _magnitude_bits(z[0])
    for j in range(z.shape[0]):
        v = z[j]
        sv = _sortable_bits(v)
        m = sv if sv > m else m
        av = _magnitude_bits(v)
        a = av if av > a else a
    if a > _magnitude_bits(z.dtype.type(np.inf)):
        return z.dtype.type(np.nan)
    return _float_from_sortable(z[0], m)


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
    # the entropy sum reads the logits before the exp pass may overwrite them (grad may be z itself)
    ez = _row_entropy_sum(row, m) if want_stats else 0.0
    s = _row_exp(row, m, grad[n] if want_grad else np.empty(0, dtype=z.dtype), want_grad)
    l_se = m + math.log(s)
    lse[n] = l_se
    if want_stats:
        entropy[n] = l_se - ez / s
    return row, m, s


# The streamed path (class-index targets, no softcap, no statistics, no class-weighted smoothing: the
# case that decides the speed of training) reads each row from memory once, in blocks of about _BLOCK
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


@njit(inline="always", **_JIT)
def _block_range(b, C):
    """Block b of a row is [b _BLOCK, min((b + 1) _BLOCK, C)): a fixed partition, so the float32 block
    sums (and so every result) do not depend on where the arrays happen to sit in memory."""
    return b * _BLOCK, min((b + 1) * _BLOCK, C)


@njit(inline="always", **_JIT)
def _stream_block(e, g, j0, j1, f, beta, streamed, base):
    """g[j0:j1] = e[j0:j1] * f - beta; 8-lane non-temporal stores where g is 32-byte aligned (`base` is
    g's address; the unaligned head and the tail are stored normally)."""
    isz = g.itemsize
    j = j0
    if streamed:
        jh = min(j1, j0 + ((_STREAM_ALIGN - (base + j0 * isz) % _STREAM_ALIGN) % _STREAM_ALIGN) // isz)
        for jj in range(j0, jh):
            g[jj] = e[jj] * f - beta
        j = jh
        while j + _LANES <= j1:
            _stream_scaled(g, j, e, j, f, beta)
            j += _LANES
    for jj in range(j, j1):
        g[jj] = e[jj] * f - beta


@njit(**_JIT)
def _row_stream_grad(e, g, bmax, nb, m, scale, beta, streamed):
    """Pass 2 alone (the last row of a run): g_j = e_j * exp(m_b - m) * scale - beta, then a store fence."""
    C = e.shape[0]
    base = _address(g)
    for b in range(nb):
        j0, j1 = _block_range(b, C)
        _stream_block(e, g, j0, j1, g.dtype.type(math.exp(bmax[b] - m) * scale), g.dtype.type(beta), streamed, base)
    if streamed:
        _store_fence()


@njit(**_JIT)
def _row_exp_blocks(row, e, bmax, bsum, nb, store, z, at, prev, g, pmax, pm, pscale, pbeta, pstreamed):
    """Pass 1 of a row (see above). Returns (m, s): the row max and sum_j exp(z_j - m) in float64. A row
    with a NaN, a +inf, or only -inf logits returns s = NaN (and m = NaN, +inf or -inf where it can tell).

    `at` is the row's offset in z.flat (-1: z is not C-contiguous, no prefetch). If `prev`, block b of
    the previous row's gradient (pass 2 with its pmax, pm, pscale, pbeta, into g) is streamed out of
    e[b] before this row's exponentials overwrite it, and a store fence follows the last block.
    """
    C = row.shape[0]
    lim = z.size
    gbase = _address(g)
    m = -np.inf
    bad = 0.0  # finite until a block holds a NaN or +inf
    for b in range(nb):
        j0, j1 = _block_range(b, C)
        # the block max: vmaxps (a NaN entry is skipped: it shows up in the exp sum below), or an
        # integer max on the sortable bits (a NaN wins if its sign bit is clear, else sorts below -inf)
        if SIMD:
            n16 = (j1 - j0) // 16
            mb = _max16(row, j0, n16, row.dtype.type(-np.inf))
            for j in range(j0 + 16 * n16, j1):
                mb = row[j] if row[j] > mb else mb
        else:
            mi = _sortable_bits(row[j0])
            for j in range(j0, j1):
                sv = _sortable_bits(row[j])
                mi = sv if sv > mi else mi
            mb = _float_from_sortable(row[0], mi)
        # bring in the next block while this one is computed (the SIMD exp loop prefetches as it goes)
        if at >= 0 and not SIMD:
            for j in range(at + j1, min(at + j1 + (j1 - j0), lim), 16):
                _prefetch(z, j)
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
                # the multiples of 16, `_expf` for the rest (all of it without SIMD)
                n16 = (j1 - j0) // 16 if SIMD else 0
                j = j0 + 16 * n16
                if store:
                    sb = _exp16_store(row, e, j0, n16, mb) if SIMD else row.dtype.type(0)
                    for jj in range(j, j1):
                        v = fast_exp(row[jj] - mb)
                        e[jj] = v
                        sb += v
                else:
                    sb = _exp16_sum(row, e, j0, n16, mb) if SIMD else row.dtype.type(0)
                    for jj in range(j, j1):
                        sb += fast_exp(row[jj] - mb)
                bsum[b] = sb
                bmax[b] = mb
                m = max(m, float(mb))
    if prev and pstreamed:
        _store_fence()
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


@njit(**_JIT)
def _streamed_chunk(ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse):
    """Rows [ch * rows_per_chunk, ...) of `index_rows` on the streamed path (see above)."""
    P, C = z.shape
    want_grad = grad.shape[0] == P
    weighted = weight.shape[0] == C
    smooth = eps / C
    isz = z.itemsize
    contiguous = z.strides[1] == isz and z.strides[0] == C * isz
    nb = (C + _BLOCK - 1) // _BLOCK
    e = np.empty(C, dtype=z.dtype)
    bmax = np.empty(nb)
    bsum = np.empty(nb)
    # the row whose gradient is still pending (streamed out during the next row's pass 1)
    pmax = np.empty(nb)
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
            mx = _row_max(row)  # NaN if any entry is; else +inf, or -inf for a row of -inf
            lse[n] = mx if not math.isfinite(mx) else np.nan
            loss[n] = np.nan
            if want_grad:
                grad[n, :] = np.nan
            continue
        l_se = m + math.log(s)
        lse[n] = l_se
        # l_n = (1 - eps) w_y (lse - z_y) + (eps / C) sum_c (lse - z_c) + w_y lam lse^2
        ll = (1.0 - eps) * w_y * (l_se - zy) + w_y * lam * l_se * l_se
        if smooth > 0.0:  # sum_c (lse - z_c) >= 0: the max removes rounding noise (unweighted here)
            ll += smooth * max(wsum * l_se - wz, 0.0)
        loss[n] = ll
        if want_grad:
            k = coef[n]
            # dz_j = k * (alpha * a_j - beta_j),  a_j = e_j exp(m_b - m) / s
            alpha = (1.0 - eps) * w_y + smooth * wsum + 2.0 * lam * w_y * l_se
            prev, pn, pm = True, n, m
            pscale = k * alpha / s
            pbeta = k * smooth
            # non-temporal stores need element-aligned rows (always so for arrays numpy allocates)
            pstreamed = _address(grad[n]) % isz == 0
            pmax[:] = bmax
            fy = z.dtype.type(math.exp(bmax[y // _BLOCK] - m) * pscale)
            pfix = e[y] * fy - z.dtype.type(pbeta) - z.dtype.type(k * (1.0 - eps) * w_y)
    if prev:
        _row_stream_grad(e, grad[pn], pmax, nb, pm, pscale, pbeta, pstreamed)
        grad[pn, target[pn]] = pfix


@njit(**_JIT)
def _weight_sum(weight, C):
    """sum_c w_c, or C without class weights."""
    if weight.shape[0] != C:
        return float(C)
    wsum = 0.0
    for c in range(C):
        wsum += weight[c]
    return wsum


@njit(**_JIT)
def _weights_nonnegative(weight):
    """Whether no class weight is negative (true without weights)."""
    for c in range(weight.shape[0]):
        if not weight[c] >= 0.0:
            return False
    return True


@njit(parallel=True, **_JIT)
def _index_rows_streamed(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):
    """`index_rows` without softcap, statistics or class-weighted smoothing, in two streaming passes."""
    P, C = z.shape
    wsum = _weight_sum(weight, C)
    # chunks of at most _STREAM_CHUNK logits and at least _MIN_CHUNKS of them, for balance between the
    # threads (a chunk boundary costs one gradient pass that overlaps nothing)
    rows_per_chunk = max(1, min(_STREAM_CHUNK // C, -(-P // _MIN_CHUNKS)))
    for ch in prange((P + rows_per_chunk - 1) // rows_per_chunk):
        _streamed_chunk(ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse)


@njit(**_JIT)
def _index_rows_streamed_serial(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):
    """Serial `_index_rows_streamed`."""
    P, C = z.shape
    wsum = _weight_sum(weight, C)
    rows_per_chunk = max(1, _STREAM_CHUNK // C)
    for ch in range((P + rows_per_chunk - 1) // rows_per_chunk):
        _streamed_chunk(ch, rows_per_chunk, z, target, weight, wsum, eps, lam, ignore_index, coef, grad, loss, lse)


@njit(**_JIT)
def _index_row(n, z, target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    """Row n of `index_rows` (the general path: any option, statistics, float64)."""
    P, C = z.shape
    want_grad = grad.shape[0] == P and P > 0
    want_stats = entropy.shape[0] == P and P > 0
    weighted = weight.shape[0] == C
    smooth = eps / C if C > 0 else 0.0
    y = target[n]
    if y == ignore_index:
        loss[n] = 0.0
        if want_stats:
            _row_softmax(z, n, cap, grad, False, True, lse, argmax, entropy)
        else:
            lse[n] = np.nan
        if want_grad:
            grad[n, :] = 0
        return
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
        term = wsum * l_se - wz  # sum_c w_c (lse - z_c): >= 0 when no weight is negative, up to rounding
        ll += smooth * (max(term, 0.0) if wpos else term)
    loss[n] = ll
    if want_grad:
        e = grad[n]
        k = coef[n]
        if s != s:
            e[:] = np.nan
            return
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


def _streamed(parallel, z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):  # pragma: no cover
    """Runs the streamed path (see the overload)."""
    raise NotImplementedError


@overload(_streamed)
def _streamed_overload(parallel, z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):
    """The streamed path for float32 logits; for any other dtype (which `_streams` never sends) a no-op,
    so that its float32-only vector loops are never compiled for them."""
    if z.dtype != types.float32:
        return lambda parallel, z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse: None

    def run(parallel, z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse):
        if parallel:
            _index_rows_streamed(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse)
        else:
            _index_rows_streamed_serial(z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse)

    return run


@njit(inline="always", **_JIT)
def _streams(z, weight, eps, cap, entropy):
    """Whether `index_rows` takes the streamed path: float32, no softcap, no statistics and no
    class-weighted label smoothing."""
    P, C = z.shape
    weighted = weight.shape[0] == C
    want_stats = entropy.shape[0] == P and P > 0
    return z.itemsize == 4 and P > 0 and C > 0 and cap == 0.0 and not want_stats and not (eps > 0.0 and weighted)


@njit(parallel=True, **_JIT)
def index_rows(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    """Class-index targets. z (P, C); target (P,) int64; weight (C,) float64 or empty (= all ones).

    coef (P,) float64 is the upstream gradient divided by the normalizer; grad (P, C) is written
    only if it has P rows (it may be z itself: each entry is read before it is written); loss and
    lse (P,) float64 are always written; argmax and entropy (P,) only if they have P entries.
    Targets must be in [0, C) or equal ignore_index (the caller checks).
    """
    if _streams(z, weight, eps, cap, entropy):
        _streamed(True, z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse)
        return
    wsum, wpos = _weight_sum(weight, z.shape[1]), _weights_nonnegative(weight)
    for n in prange(z.shape[0]):
        _index_row(
            n, z, target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy
        )


@njit(**_JIT)
def index_rows_serial(z, target, weight, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy):
    """Serial `index_rows` (same arguments and outputs)."""
    if _streams(z, weight, eps, cap, entropy):
        _streamed(False, z, target, weight, eps, lam, ignore_index, coef, grad, loss, lse)
        return
    wsum, wpos = _weight_sum(weight, z.shape[1]), _weights_nonnegative(weight)
    for n in range(z.shape[0]):
        _index_row(
            n, z, target, weight, wsum, wpos, eps, lam, cap, ignore_index, coef, grad, loss, lse, argmax, entropy
        )


@njit(**_JIT)
def _probability_row(n, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    """Row n of `probability_rows`."""
    P, C = z.shape
    want_grad = grad.shape[0] == P and P > 0
    want_stats = entropy.shape[0] == P and P > 0
    weighted = weight.shape[0] == C
    smooth = eps / C if C > 0 else 0.0
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
            return
        k = coef[n]
        scale = k * (bsum + 2.0 * lam * l_se) / s
        for j in range(C):
            b = (1.0 - eps) * t[j] + smooth
            if weighted:
                b *= weight[j]
            e[j] = z.dtype.type(e[j] * scale - k * b)
        if cap > 0.0:
            _softcap_backward(e, row, cap)


@njit(parallel=True, **_JIT)
def probability_rows(z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    """Probability targets t (P, C), smoothed to t' = (1 - eps) t + eps / C; same outputs as
    `index_rows`. l_n = sum_c w_c t'_c (lse - z_c) + lam lse^2 (targets are not validated)."""
    for n in prange(z.shape[0]):
        _probability_row(n, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)


@njit(**_JIT)
def probability_rows_serial(z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    """Serial `probability_rows` (same arguments and outputs)."""
    for n in range(z.shape[0]):
        _probability_row(n, z, target, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)
