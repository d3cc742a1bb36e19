"""x86 vector loops (AVX2 + FMA) for the streamed float32 path, written as LLVM IR with llvmlite.

numba's auto-vectorizer cannot emit these: the exp reads a table with a register permute (vpermps),
the max is a plain vmaxps, and the gradient leaves through non-temporal stores (vmovntps) ordered by
an sfence. They are used only where `AVX2_FMA` is true: an x86-64 target whose CPU has AVX2 and FMA,
decided from the target triple and the CPU's features (`avx2_fma`), and off whenever NUMBA_CPU_NAME
fixes a target. The callers test `AVX2_FMA` in a plain `if`, which numba prunes at compile time, and
every intrinsic here refuses to type when it is off, so no x86-only instruction is ever generated
for another target. Elsewhere the portable loops of `_rows.py` / `streamed.py` compute the same values
(the exp to within its error bound).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._bits import emit_prefetch
from ._rows import EXP_LO, LN2, ROUND_MAGIC

__all__ = [
    "AVX2_FMA",
    "LANES",
    "avx2_fma",
    "exp16_store",
    "exp16_sum",
    "fma",
    "max16",
    "store_fence",
    "stream_hit",
    "stream_hit_weighted",
    "stream_scaled",
    "sum16",
]


def avx2_fma(triple: str, features: dict, cpu_name: str | None) -> bool:
    """Whether the x86 loops may be generated for this target: an x86-64 triple, a CPU with both AVX2
    and FMA, and no fixed NUMBA_CPU_NAME (a fixed, e.g. "generic", target makes no assumption).

    >>> avx2_fma("aarch64-unknown-linux-gnu", {"avx2": True, "fma": True}, None)
    False
    >>> avx2_fma("x86_64-unknown-linux-gnu", {"avx2": True, "fma": True}, None)
    True
    """
    if cpu_name:
        return False
    arch = triple.split("-", 1)[0].lower()
    if arch not in ("x86_64", "amd64"):
        return False
    return bool(features.get("avx2")) and bool(features.get("fma"))


def _host_avx2_fma() -> bool:
    triple = llvm_binding.get_process_triple()
    try:
        features = llvm_binding.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read this host's features
        features = {}
    return avx2_fma(triple, features, numba.config.CPU_NAME)


AVX2_FMA = _host_avx2_fma()


LANES = 8


def _load_vector(context, builder, arr_t, arr, idx, vec):
    """The vector `vec` at arr.flat[idx] (element alignment only)."""
    a = context.make_array(arr_t)(context, builder, arr)
    return builder.load(builder.bitcast(builder.gep(a.data, [idx]), vec.as_pointer()), align=arr_t.dtype.bitwidth // 8)


def _vector_fma(builder, a, b, c):
    """a * b + c, lane by lane, with one rounding (llvm.fma on a's vector type)."""
    vec = a.type
    name = f"llvm.fma.v{vec.count}f{32 if isinstance(vec.element, ir.FloatType) else 64}"
    fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(vec, [vec] * 3))
    return builder.call(fn, [a, b, c])


def _stream_store(context, builder, dst_t, dst, j, value) -> None:
    """A non-temporal store of the vector `value` at dst.flat[j] (32-byte aligned)."""
    a = context.make_array(dst_t)(context, builder, dst)
    store = builder.store(value, builder.bitcast(builder.gep(a.data, [j]), value.type.as_pointer()), align=32)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


@intrinsic
def stream_scaled(typingctx, dst, j, src, i, f, b):
    """dst[j:j+8] = src[i:i+8] * f - b (one fused multiply-add) with one non-temporal 8-lane store (vmovntps).

    The gradient is written once and not read again by the kernel, so it bypasses the cache: no
    read-for-ownership of the destination lines, which makes the kernel's memory traffic that of a copy.
    dst + j must be 32-byte aligned (the caller stores the unaligned entries normally); src needs no alignment.
    """
    if not AVX2_FMA:
        return None
    sig = types.void(dst, j, src, i, f, b)

    def codegen(context, builder, signature, args):
        dst_t, _, src_t, _, f_t, b_t = signature.args
        vec = ir.VectorType(context.get_value_type(dst_t.dtype), LANES)
        v = _load_vector(context, builder, src_t, args[2], args[3], vec)
        fs = _splat(builder, context.cast(builder, args[4], f_t, dst_t.dtype), vec)
        bs = _splat(builder, context.cast(builder, args[5], b_t, dst_t.dtype), vec)
        out = _vector_fma(builder, v, fs, builder.fneg(bs))  # one rounding, as the scalar head and tail
        _stream_store(context, builder, dst_t, args[0], args[1], out)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma), in a's float type: the scalar heads and tails of the
    vector stores here round as their lanes do (plain scalar code need not be contracted)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        t = context.get_value_type(signature.return_type)
        name = "llvm.fma.f32" if signature.return_type.bitwidth == 32 else "llvm.fma.f64"
        fn = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(t, [t] * 3))
        return builder.call(fn, list(args))

    return sig, codegen


def _hit_row_codegen(weighted: bool):
    """The code generator of `stream_hit` (weighted False: args dst, j, src, i, scale, yb, r, c, fx) and
    `stream_hit_weighted` (args dst, j, src, i, scale, bk, fx, yb, r, c, wc): one 32-byte vector of a
    class-major block's gradient row, stored non-temporally."""

    def codegen(context, builder, signature, args):
        types_ = signature.args
        if weighted:
            dst, j, src, i, scale, bk, fx, yb, r, c, wc = range(11)
        else:
            dst, j, src, i, scale, yb, r, c, fx = range(9)
        dst_t, yb_t = types_[dst], types_[yb]
        vec = ir.VectorType(context.get_value_type(dst_t.dtype), 32 // (dst_t.dtype.bitwidth // 8))
        ivec = ir.VectorType(context.get_value_type(yb_t.dtype), vec.count)

        def load(k, vtype):  # the vector of argument k at index r (src: at index i)
            return _load_vector(context, builder, types_[k], args[k], args[i if k == src else r], vtype)

        def scalar(k, to):  # argument k cast to `to`
            return context.cast(builder, args[k], types_[k], to)

        target = builder.icmp_signed("==", load(yb, ivec), _splat(builder, scalar(c, yb_t.dtype), ivec))
        if weighted:
            hit = builder.select(target, load(fx, vec), ir.Constant(vec, None))
            back = _vector_fma(builder, load(bk, vec), _splat(builder, scalar(wc, dst_t.dtype), vec), hit)
        else:
            back = builder.select(target, _splat(builder, scalar(fx, dst_t.dtype), vec), ir.Constant(vec, None))
        out = _vector_fma(builder, load(src, vec), load(scale, vec), builder.fneg(back))
        _stream_store(context, builder, dst_t, args[dst], args[j], out)
        return context.get_dummy_value()

    return codegen


@intrinsic
def stream_hit(typingctx, dst, j, src, i, scale, yb, r, c, fx):
    """dst[j:j+n] = src[i:i+n] * scale[r:r+n] - (yb[r:r+n] == c ? fx : 0) for the n = 32 / itemsize
    entries of one 32-byte vector (8 float32, 4 float64; one fused multiply-add per lane), with one
    non-temporal store (vmovntps/vmovntpd): a class-major block's gradient row (`_small`: class c,
    positions r.., targets yb) written past the cache, as `stream_scaled` writes a row's.
    dst + j must be 32-byte aligned; src, scale and yb (int32) need no alignment."""
    if not AVX2_FMA:
        return None
    return types.void(dst, j, src, i, scale, yb, r, c, fx), _hit_row_codegen(False)


@intrinsic
def stream_hit_weighted(typingctx, dst, j, src, i, scale, bk, fx, yb, r, c, wc):
    """`stream_hit` with class weights, smoothing or z-loss (`_small`'s general block):
    dst[j:j+n] = src[i:i+n] * scale[r:r+n] - (bk[r:r+n] * wc + (yb[r:r+n] == c ? fx[r:r+n] : 0)), as
    fma(src, scale, -fma(bk, wc, hit)), with one non-temporal store. dst + j must be 32-byte aligned."""
    if not AVX2_FMA:
        return None
    return types.void(dst, j, src, i, scale, bk, fx, yb, r, c, wc), _hit_row_codegen(True)


@intrinsic
def store_fence(typingctx):
    """sfence: orders the preceding non-temporal stores before any later store."""
    if not AVX2_FMA:
        return None
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


# exp(x) = 2**(k/8) exp(r): k = round(8 x / ln 2), r = x - k ln2/8 in [-ln2/16, ln2/16]; 2**(k/8) is
# 2**floor(k/8) (added to the exponent field) times 2**((k mod 8)/8) from an 8-entry table; exp(r) - 1
# ~ r (P1 + r (P2 + r P3)), a minimax fit on that interval. Measured over [-87, 0] in float32: at most
# 1.4e-7 relative error on [-10, 0] and 3.6e-7 down to -87 (float32 ln2/8, as in `_expf`).
EXP_TABLE = [float(np.float32(2.0 ** (j / 8))) for j in range(8)]
_PREFETCH_AHEAD = 2048  # logits (8 KiB) between the exp loop's reads and its prefetches
P1, P2, P3 = 1.0000001192092896, 0.5000782012939453, 0.1666317731142044


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


def _sum_lanes(builder, a0, a1):
    """The sum of two 8-lane accumulators in a fixed order (lane by lane, then halves, quarters, the
    last two lanes), so that it does not depend on the caller or its optimization."""
    i32 = ir.IntType(32)
    acc = builder.fadd(a0, a1)
    s4 = builder.fadd(_lanes(builder, acc, [0, 1, 2, 3]), _lanes(builder, acc, [4, 5, 6, 7]))
    s2 = builder.fadd(_lanes(builder, s4, [0, 1]), _lanes(builder, s4, [2, 3]))
    lane0, lane1 = (builder.extract_element(s2, ir.Constant(i32, k)) for k in (0, 1))
    return builder.fadd(lane0, lane1)


def _make_exp16(store):
    @intrinsic
    def exp16(typingctx, row, e, j0, n16, mb):
        """sum over j in [j0, j0 + 16 n16) of exp(row[j] - mb) in float32 (two 8-lane accumulators, added
        in a fixed order), each term also stored into e[j] if `store`. mb must be finite."""
        if not (AVX2_FMA and isinstance(row, types.Array) and row.dtype == types.float32):
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
            table = ir.Constant(v8f, EXP_TABLE)

            def exp8(z):
                x = builder.fsub(z, mv)
                lo = c(float(EXP_LO))
                x = builder.select(builder.fcmp_unordered(">=", x, lo), x, lo)  # max(x, -88), a NaN kept
                # t = k + 1.5 * 2**23 with k = round(8 x / ln 2) in its low mantissa bits; t - 1.5 * 2**23 = k
                # exactly (no fast-math flags here, so LLVM does not fold it back to 8 x / ln 2)
                t = builder.call(fma, [x, c(float(np.float32(8 * 1.4426950408889634))), c(float(ROUND_MAGIC))])
                tbits = builder.bitcast(t, v8i)
                r = builder.call(fma, [builder.fsub(t, c(float(ROUND_MAGIC))), c(-float(LN2 / np.float32(8))), x])
                p = builder.call(fma, [c(P3), r, c(P2)])
                p = builder.fmul(builder.call(fma, [p, r, c(P1)]), r)
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
                emit_prefetch(builder, builder.gep(zdata, [builder.add(j, ir.Constant(i64, _PREFETCH_AHEAD))]))
                for h in range(2):
                    jh = builder.add(j, ir.Constant(i64, 8 * h))
                    v = exp8(builder.load(builder.bitcast(builder.gep(zdata, [jh]), v8f.as_pointer()), align=4))
                    if store:
                        builder.store(v, builder.bitcast(builder.gep(edata, [jh]), v8f.as_pointer()), align=4)
                    out.append(builder.fadd(accs[h], v))
                return out

            a0, a1 = _vector_loop(builder, start, count, 2, ir.Constant(v8f, [0.0] * 8), body)
            return _sum_lanes(builder, a0, a1)

        return sig, codegen

    return exp16


exp16_store = _make_exp16(True)
exp16_sum = _make_exp16(False)


@intrinsic
def sum16(typingctx, row, j0, n16):
    """sum of row[j0 : j0 + 16 n16] in float64: two 8-lane float64 accumulators (each 8 entries widened),
    added by `_sum_lanes`."""
    if not (AVX2_FMA and isinstance(row, types.Array) and row.dtype == types.float32):
        return None
    sig = types.float64(row, j0, n16)

    def codegen(context, builder, signature, args):
        f32, f64 = ir.FloatType(), ir.DoubleType()
        v8f, v8d = ir.VectorType(f32, 8), ir.VectorType(f64, 8)
        zdata = context.make_array(signature.args[0])(context, builder, args[0]).data
        start = context.cast(builder, args[1], signature.args[1], types.int64)
        count = context.cast(builder, args[2], signature.args[2], types.int64)

        def body(j, accs):
            out = []
            for h in range(2):
                jh = builder.add(j, ir.Constant(ir.IntType(64), 8 * h))
                z = builder.load(builder.bitcast(builder.gep(zdata, [jh]), v8f.as_pointer()), align=4)
                out.append(builder.fadd(accs[h], builder.fpext(z, v8d)))
            return out

        a0, a1 = _vector_loop(builder, start, count, 2, ir.Constant(v8d, [0.0] * 8), body)
        return _sum_lanes(builder, a0, a1)

    return sig, codegen


@intrinsic
def max16(typingctx, row, j0, n16, init):
    """max(init, row[j0 : j0 + 16 n16]) with vmaxps, which returns its second operand (the running max)
    when the first is a NaN: a NaN entry is skipped (callers see it in the exp sum)."""
    if not (AVX2_FMA and isinstance(row, types.Array) and row.dtype == types.float32):
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
