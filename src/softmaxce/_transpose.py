"""Row-major <-> class-major transposes of few-class blocks, as LLVM vector shuffles (portable IR).

The few-class kernel (`_small`) computes on class-major blocks: R rows of C logits go in as C runs of
R values (T[c * R + r] = z[r, c]) and the gradient comes back out the same way. Written as loops,
these transposes are strided loads or stores that LLVM leaves scalar (its cost model rejects
gathers and interleave groups of 9 or more members): at 1048576 x 10 they took half the kernel's time.

Here a group of W rows (W = one 512-bit vector: 16 float32 or 8 float64) is moved as C whole vectors:
the group's W * C logits are C contiguous vector loads, and each class's W values are picked from
them by a chain of two-source shuffles (`shufflevector`; on this Zen 5 LLVM emits mostly `vpermi2ps`),
then stored as one vector; the way out is the mirror image. Going in, each group also prefetches the
lines PREFETCH_AHEAD bytes on: the hardware prefetcher does not run ahead across the arithmetic
between blocks. Shuffles are target-independent IR: on a CPU with narrower vectors LLVM splits them.
The count of rows moved, a multiple of W, is returned (0 for C outside [2, MAX_C]) and the caller
moves the remaining rows itself.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._bits import emit_prefetch

__all__ = ["MAX_C", "VECTOR_BYTES", "columns_to_rows", "columns_to_rows_streamed", "rows_to_columns"]

MAX_C = 16
VECTOR_BYTES = 64
PREFETCH_AHEAD = 8192  # bytes between a group's loads and its prefetches (rows_to_columns)


def _lanes(dtype) -> int:
    return VECTOR_BYTES // (dtype.bitwidth // 8)


def _pick(builder, sources: list, picks: list[tuple[int, int]], W: int):
    """The vector whose lane l is sources[k][j] for (k, j) = picks[l], as a chain of two-source shuffles."""
    i32 = ir.IntType(32)

    def mask(values):
        return ir.Constant(ir.VectorType(i32, W), values)

    order = sorted({k for k, _ in picks})
    first = order[0]
    if len(order) == 1:
        v = sources[first]
        return builder.shuffle_vector(v, v, mask([j for _, j in picks]))
    second = order[1]
    m = [j if k == first else W + j if k == second else 0 for k, j in picks]  # 0: filled later
    acc = builder.shuffle_vector(sources[first], sources[second], mask(m))
    done = {first, second}
    for k in order[2:]:
        done.add(k)
        m = [W + j if kk == k else lane for lane, (kk, j) in enumerate(picks)]  # other lanes: kept
        acc = builder.shuffle_vector(acc, sources[k], mask(m))
    return acc


def _transpose(to_columns: bool, src, so, dst, do, n, C, streamed: bool = False):
    """The signature and code generator of the intrinsics below (streamed: non-temporal stores of whole
    vectors, for a dst + do aligned to VECTOR_BYTES)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.dtype == dst.dtype):
        return None
    if src.dtype not in (types.float32, types.float64):
        return None
    sig = types.int64(src, so, dst, do, n, C)

    def codegen(context, builder, signature, args):
        src_t, so_t, dst_t, do_t, n_t, c_t = signature.args
        i64 = ir.IntType(64)
        elt = context.get_value_type(src_t.dtype)
        W = _lanes(src_t.dtype)
        vec = ir.VectorType(elt, W)
        align = src_t.dtype.bitwidth // 8
        sdata = context.make_array(src_t)(context, builder, args[0]).data
        ddata = context.make_array(dst_t)(context, builder, args[2]).data
        so_v = context.cast(builder, args[1], so_t, types.int64)
        do_v = context.cast(builder, args[3], do_t, types.int64)
        n_v = context.cast(builder, args[4], n_t, types.int64)
        c_v = context.cast(builder, args[5], c_t, types.int64)
        groups = builder.udiv(n_v, ir.Constant(i64, W))
        moved = builder.mul(groups, ir.Constant(i64, W))

        def load(ptr, offset):
            p = builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())
            return builder.load(p, align=align)

        def store(v, ptr, offset):
            p = builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())
            if streamed:
                st = builder.store(v, p, align=VECTOR_BYTES)
                st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            else:
                builder.store(v, p, align=align)

        entry = builder.block
        done = builder.append_basic_block("transpose.done")
        switch = builder.switch(c_v, done)
        heads = []
        for C in range(2, MAX_C + 1):
            case = builder.append_basic_block(f"transpose.c{C}")
            switch.add_case(ir.Constant(i64, C), case)
            builder.position_at_end(case)
            head = builder.append_basic_block(f"transpose.c{C}.head")
            body = builder.append_basic_block(f"transpose.c{C}.body")
            builder.branch(head)
            builder.position_at_end(head)
            heads.append(head)
            g = builder.phi(i64)
            g.add_incoming(ir.Constant(i64, 0), case)
            builder.cbranch(builder.icmp_unsigned("<", g, groups), body, done)
            builder.position_at_end(body)
            r0 = builder.mul(g, ir.Constant(i64, W))
            rows_at = builder.mul(r0, ir.Constant(i64, C))  # offset of the group in the row-major side
            if to_columns:  # src rows (W x C, contiguous) -> dst[c * n + r0 ...]
                base = builder.add(so_v, rows_at)
                ins = [load(sdata, builder.add(base, ir.Constant(i64, k * W))) for k in range(C)]
                for k in range(C):  # the same lines PREFETCH_AHEAD bytes on (a hint: never faults)
                    ahead = builder.add(base, ir.Constant(i64, k * W + PREFETCH_AHEAD * W // VECTOR_BYTES))
                    emit_prefetch(builder, builder.gep(sdata, [ahead]))
                for c in range(C):
                    picks = [divmod(lane * C + c, W) for lane in range(W)]
                    at = builder.add(builder.add(do_v, builder.mul(ir.Constant(i64, c), n_v)), r0)
                    store(_pick(builder, ins, picks, W), ddata, at)
            else:  # src[c * n + r0 ...] -> dst rows (W x C, contiguous)
                base = builder.add(do_v, rows_at)
                cols = []
                for c in range(C):
                    at = builder.add(builder.add(so_v, builder.mul(ir.Constant(i64, c), n_v)), r0)
                    cols.append(load(sdata, at))
                for k in range(C):
                    picks = [((k * W + j) % C, (k * W + j) // C) for j in range(W)]
                    store(_pick(builder, cols, picks, W), ddata, builder.add(base, ir.Constant(i64, k * W)))
            g.add_incoming(builder.add(g, ir.Constant(i64, 1)), builder.block)
            builder.branch(head)
        builder.position_at_end(done)
        handled = builder.phi(i64)
        handled.add_incoming(ir.Constant(i64, 0), entry)
        for head in heads:
            handled.add_incoming(moved, head)
        return handled

    return sig, codegen


@intrinsic
def rows_to_columns(typingctx, src, so, dst, do, n, C):
    """dst[do + c * n + r] = src[so + r * C + c] for r < moved; returns moved, n rounded down to a whole
    number of vectors (0 unless 2 <= C <= MAX_C)."""
    return _transpose(True, src, so, dst, do, n, C)


@intrinsic
def columns_to_rows(typingctx, src, so, dst, do, n, C):
    """dst[do + r * C + c] = src[so + c * n + r] for r < moved; returns moved, n rounded down to a whole
    number of vectors (0 unless 2 <= C <= MAX_C)."""
    return _transpose(False, src, so, dst, do, n, C)


@intrinsic
def columns_to_rows_streamed(typingctx, src, so, dst, do, n, C):
    """`columns_to_rows` with non-temporal stores (the rows do not pass through the cache): dst + do must
    be VECTOR_BYTES-aligned (every group then is), and the caller fences (`_x86.store_fence`)."""
    return _transpose(False, src, so, dst, do, n, C, streamed=True)
