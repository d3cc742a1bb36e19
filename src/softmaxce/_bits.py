"""Portable LLVM helpers for the numba kernels: bit casts, addresses, prefetch, and the jit options.

Everything here is target-independent LLVM IR (bitcasts, integer arithmetic, llvm.prefetch), valid on
any CPU numba supports. The x86-only loops are in `_x86.py`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["FASTMATH", "JIT"]

# fastmath without 'nnan'/'ninf': reductions may be reassociated (and so vectorized), while NaN and
# inf keep their IEEE meaning, which the contract relies on (a NaN logit gives a NaN loss).
FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


def _int_type(float_type):
    return ir.IntType(float_type.bitwidth)


@intrinsic
def round_to_k(typingctx, t):
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
def pow2_of_rounded(typingctx, t):
    """2**k for t = k + 1.5 * 2**m, m the mantissa bits (23 for float32: -127 <= k <= 127; 52 for
    float64: -1023 <= k <= 0): the low bits of t shifted into the exponent field.

    bits(t) << m keeps only k's bits (those of 1.5 * 2**m shift out), + bits(1.0) adds the bias;
    k = -127 (-1023) leaves a zero exponent and mantissa, i.e. exactly 0.
    """
    if not isinstance(t, types.Float):
        return None
    mantissa, one = (52, 0x3FF0000000000000) if t.bitwidth == 64 else (23, 0x3F800000)

    def codegen(context, builder, signature, args):
        it = _int_type(t)
        bits = builder.bitcast(args[0], it)
        bits = builder.add(builder.shl(bits, ir.Constant(it, mantissa)), ir.Constant(it, one))
        return builder.bitcast(bits, args[0].type)

    return t(t), codegen


def _float_bits(x, transform):
    """The typing and codegen of an intrinsic float -> same-width signed integer: the float's bits
    `i`, then transform(builder, i, int_type, 0x7f..f)."""
    if not isinstance(x, types.Float):
        return None
    width = x.bitwidth
    sig = types.int32(x) if width == 32 else types.int64(x)

    def codegen(context, builder, signature, args):
        it = ir.IntType(width)
        return transform(builder, builder.bitcast(args[0], it), it, ir.Constant(it, (1 << (width - 1)) - 1))

    return sig, codegen


@intrinsic
def sortable_bits(typingctx, x):
    """The bits of a float as a signed integer that orders like the float: i ^ ((i >> (w-1)) & 0x7f..f).

    For non-NaN x, x < y exactly when sortable(x) < sortable(y) (-0 sorts just below +0), and a NaN with
    the sign bit clear sorts above +inf, so an integer max (vpmaxsd: vectorizable, unlike a NaN-aware
    float max) finds the float max. A NaN with the sign bit set sorts below -inf: callers that must see
    every NaN also track the max of the magnitude bits (`magnitude_bits`).
    """

    def bits(builder, x, it, magnitude):
        sign = builder.ashr(x, ir.Constant(it, it.width - 1))
        return builder.xor(x, builder.and_(sign, magnitude))  # i ^ ((i >> (w-1)) & 0x7f..f)

    return _float_bits(x, bits)


@intrinsic
def magnitude_bits(typingctx, x):
    """The bits of |x| as a signed integer: above those of +inf exactly when x is a NaN."""

    def bits(builder, x, it, magnitude):
        return builder.and_(x, magnitude)  # i & 0x7f..f

    return _float_bits(x, bits)


@intrinsic
def float_from_sortable(typingctx, fl, i):
    """Inverse of `sortable_bits` (the xor is its own inverse); `fl` is a float of the wanted type."""
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
def address(typingctx, a):
    """The address of a[0] (for alignment arithmetic)."""
    sig = types.uintp(a)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(arr.data, context.get_value_type(types.uintp))

    return sig, codegen


@intrinsic
def prefetch(typingctx, a, i):
    """Prefetch the cache line of a.flat[i] into L1 (a C-contiguous; a hint: never faults)."""
    sig = types.void(a, i)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        emit_prefetch(builder, builder.gep(arr.data, [args[1]]))
        return context.get_dummy_value()

    return sig, codegen


def emit_prefetch(builder, ptr):
    """prefetcht0 of the line at ptr: read, locality 3 (keep in all levels), data cache."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = builder.module.declare_intrinsic("llvm.prefetch.p0", fnty=fnty)
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
