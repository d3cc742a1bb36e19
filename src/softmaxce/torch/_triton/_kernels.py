"""Triton kernels of softmax cross-entropy and of the fused linear head (math in `_rowmath.py`).

For one row with (soft-capped) logits z over V classes, class weights w, eps = label_smoothing,
lam = z_loss and k = dJ/dl_n (the row's upstream coefficient, 0 for ignored rows):

    r      = max_j z_j (0 while every logit seen is -inf),  S = sum_j exp(z_j - r),  lse = r + ln S
    dense  = w ((1 - eps) t + eps / V)   (probability target t)   or   (eps / V) w   (class index, smoothing)
    loss   = (1 - eps) w_y (lse - z_y) + sum_j dense_j (lse - z_j) + lam omega lse^2
           = (1 - eps) w_y ((r - z_y) + ln S) + Sd ln S - Sdz + lam omega lse^2,
             Sd = sum_j dense_j,  Sdz = sum_j dense_j (z_j - r)   (shifted by r: exact near the max)
    alpha  = (1 - eps) w_y + Sd + 2 lam omega lse,   omega = w_y (class index) or 1 (probability)
    G_j    = dl/dz_j = k (alpha a_j - dense_j - (1 - eps) w_y [j == y]),  a_j = exp(z_j - lse),
             times 1 - (z_j / s)^2 with softcap s (z already capped)

(the class-index terms are absent for probability targets). A sparse target (IS_SPARSE, with IS_PROB:
indices and values (P, K), negative index = padding) is a probability target whose tile t is formed in
registers from the row's K entries (`_dense_tile`: t_c = sum_k v_k [i_k == c], duplicates adding), so
loss, alpha and G (and in the fused head grad_x, grad_W, grad_b, atomic or deterministic) follow from
the same code; an all-padding row is ignored (kept = False: loss 0, G 0). Every row's sums are accumulated online,
tile by tile over the classes: when the running max r grows by d, S is scaled by exp(-d) and Sdz
loses Sd * d. The one-hot term is gathered as z_y, never multiplied into the other classes, so a
-inf logit on a non-target class contributes 0, as docs/SEMANTICS.md asks.

Kernels (all programs own disjoint outputs except `_lce_backward_rows` with ATOMIC_DW):
- `_ce_kernel`: logits given, BLOCK_P rows per program; pass 1 the sums, pass 2 (when a gradient is
  asked) G written once, possibly over the logits themselves (each tile is read before it is written).
- `_lce_forward`: z = x W^T + b tile by tile with tl.dot, never stored; per row loss, lse, alpha.
- `_lce_backward_rows`: per block of rows, recompute each z tile, form G, grad_x += G W
  (the block's rows are its own: no atomics); with ATOMIC_DW also grad_W += G^T x, grad_b += sum G
  with atomic adds (the launcher asks for them only where one block holds every row).
- `_lce_backward_cols`: per block of classes, recompute z over all rows, grad_W += G^T x and
  grad_b += sum G without atomics (deterministic; the launcher's choice wherever rows span blocks).

Their arguments travel in the named tuples below, which the helpers take whole: the target as a `Target`,
the options read at run time as an `Options`, the compile-time switches as F (`Flags`) and, in the fused
head, its own as H (`Head`). A tile of logits comes from one place, `_logits_tile`: read from the given
logits (H None) or computed from x, W and b; pass 1 (`_row_loss`) and G (`_grad_tile`) do not know which.

The Triton interpreter (TRITON_INTERPRET=1) keeps bfloat16 as raw integers, so with H.UPCAST the
tiles are cast to float32 right after each load (and G is not rounded to the input dtype before
the products, as it is on the GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

try:
    import triton
    from triton import language as tl
except ModuleNotFoundError:  # no [gpu] extra: the module still imports (pytest --doctest-modules imports
    # every module), the decorators do nothing and `_launch.check` refuses to launch anything
    from types import SimpleNamespace

    triton = SimpleNamespace(jit=lambda fn: fn)

if TYPE_CHECKING:
    from torch import Tensor

# ----------------------------------------------------------------------------- kernel arguments


class Target(NamedTuple):
    """The target as the kernels read it (pointers they do not read may be any tensor)."""

    t: Tensor  # class indices (P,), probabilities (P, C) or a sparse target's indices (P, K)
    t_stride: int  # the row stride of t: 1, C or K
    v: Tensor  # a sparse target's values (P, K)
    w: Tensor  # the class weights (C,), read with F.HAS_WEIGHT


class Options(NamedTuple):
    """The values of CEOptions the kernels read at run time (which options are on is compiled in: `Flags`)."""

    ignore_index: int
    eps: float  # label_smoothing
    lam: float  # z_loss
    cap: float  # softcap, read with F.SOFTCAP


class Flags(NamedTuple):
    """Compile-time switches of every kernel (argument F): one build per distinct value."""

    IS_PROB: bool  # probability target (sparse ones included); else class indices
    HAS_WEIGHT: bool
    IS_SPARSE: bool
    DENSE: bool  # dense_j may be nonzero: probability target or label smoothing
    SOFTCAP: bool


class Head(NamedTuple):
    """Compile-time settings of the fused head's tiles (argument H; None where the logits are given)."""

    HAS_BIAS: bool
    UPCAST: bool  # tiles cast to float32 after each load (the interpreter)
    PRECISION: str  # tl.dot's input_precision
    BLOCK_D: int  # the feature tile


# ----------------------------------------------------------------------------- row math (device functions)
# Reductions go through tl.reduce with our own combine functions, not tl.sum / tl.max: those are
# @triton.jit functions of triton.language, built once per process in the mode triton was first
# imported in, so they fail in the interpreter when triton was imported without TRITON_INTERPRET.


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _add)


@triton.jit
def _block(start, n, BLOCK: tl.constexpr):
    """Indices start .. start + BLOCK - 1 along a dimension of size n: (idx, idx < n, idx as int64 for offsets)."""
    idx = start + tl.arange(0, BLOCK)
    return idx, idx < n, idx.to(tl.int64)


@triton.jit
def _soft_cap(z, cap, SOFTCAP: tl.constexpr):
    """z -> cap tanh(z / cap), tanh from exp (no libdevice): tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|)."""
    if SOFTCAP:
        u = z / cap
        e = tl.exp(-2.0 * tl.abs(u))
        th = (1.0 - e) / (1.0 + e)
        z = cap * tl.where(u < 0.0, -th, th)
    return z


@triton.jit
def _row_target(target, rows, rmask, opts, F: tl.constexpr):
    """label = (y, w_y, kept) per row: the class (0 where ignored), w[y] (0 where ignored), y != ignore_index.
    Probability targets: y = -1 (matches no column), w_y = 0, kept = True; sparse targets (IS_PROB
    too) likewise, but kept = some entry is not padding (an all-padding row is ignored)."""
    t_ptr, t_stride, v_ptr, w_ptr = target
    if F.IS_SPARSE:
        y = tl.full(rows.shape, -1, tl.int64)
        w_y = tl.full(rows.shape, 0.0, tl.float32)
        rows64 = rows.to(tl.int64)
        kept = rows < 0  # all False
        for k in range(0, t_stride):
            i = tl.load(t_ptr + rows64 * t_stride + k, mask=rmask, other=-1)
            kept = kept | (i >= 0)
    elif F.IS_PROB:
        y = tl.full(rows.shape, -1, tl.int64)
        w_y = tl.full(rows.shape, 0.0, tl.float32)
        kept = rows >= 0
    else:
        t = tl.load(t_ptr + rows, mask=rmask, other=opts.ignore_index).to(tl.int64)
        kept = t != opts.ignore_index
        y = tl.where(kept, t, 0)
        if F.HAS_WEIGHT:
            w_y = tl.load(w_ptr + y, mask=rmask & kept, other=0.0).to(tl.float32)
        else:
            w_y = tl.where(kept, 1.0, 0.0)
    return y, w_y, kept


@triton.jit
def _row_block(start, P, target, opts, F: tl.constexpr, BLOCK_P: tl.constexpr):
    """The rows start .. start + BLOCK_P - 1 as (rows, rmask, rows64, label), label = `_row_target`'s."""
    rows, rmask, rows64 = _block(start, P, BLOCK_P)
    return rows, rmask, rows64, _row_target(target, rows, rmask, opts, F)


@triton.jit
def _dense_tile(target, rows, cols, rmask, cmask, eps, num_classes, F: tl.constexpr):
    """dense (BLOCK_P, BLOCK_C): w ((1 - eps) t + eps / V) for probability targets, (eps / V) w else.
    A sparse target's tile t is formed from its K entries per row (indices t, values v, both
    (P, K) with K = t_stride): t[p, c] = sum_k v_k [i_k == c], duplicates adding, padding (i_k < 0)
    matching no column. That is K compares per element of the tile: cheap next to the tile's exp (or,
    in the fused head, its D-long dot) for the small K of sparse targets."""
    t_ptr, t_stride, v_ptr, w_ptr = target
    if F.HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.where(cmask, 1.0, 0.0)
    if F.IS_SPARSE:
        t = tl.full((rows.shape[0], cols.shape[0]), 0.0, tl.float32)
        for k in range(0, t_stride):
            i = tl.load(t_ptr + rows * t_stride + k, mask=rmask, other=-1)
            v = tl.load(v_ptr + rows * t_stride + k, mask=rmask & (i >= 0), other=0.0).to(tl.float32)
            t += tl.where(cols[None, :] == i[:, None], v[:, None], 0.0)
        dense = w[None, :] * ((1.0 - eps) * t + eps / num_classes)
    elif F.IS_PROB:
        m2 = rmask[:, None] & cmask[None, :]
        t = tl.load(t_ptr + rows[:, None] * t_stride + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        dense = w[None, :] * ((1.0 - eps) * t + eps / num_classes)  # w t'
    else:
        dense = tl.full((rows.shape[0], cols.shape[0]), 0.0, tl.float32) + (eps / num_classes) * w[None, :]
    return dense


@triton.jit
def _shift(m):
    """The shift r of a row: its running max m, or 0 while every logit seen is -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _online_update(z, cols, cmask, y, dense, sums, F: tl.constexpr):
    """Folds one tile z (BLOCK_P, BLOCK_C) (masked columns -inf) into the running row sums = (m, S, Sd, Sdz, z_y).
    A sparse target's classes without an entry (dense 0 without smoothing) contribute 0 even at a -inf logit."""
    m, s, sd, sdz, zy = sums
    m_new = tl.maximum(m, tl.reduce(z, 1, _maximum))
    r_new = _shift(m_new)
    d = r_new - _shift(m)  # the shift grew by d
    s = s * tl.exp(-d) + _sum(tl.exp(z - r_new[:, None]), axis=1)  # S = sum_j exp(z_j - r)
    if F.DENSE:
        live = cmask[None, :]
        if F.IS_SPARSE:
            live = live & (dense != 0.0)
        sdz = sdz - sd * d + _sum(tl.where(live, dense * (z - r_new[:, None]), 0.0), axis=1)
        sd = sd + _sum(tl.where(cmask[None, :], dense, 0.0), axis=1)  # Sd = sum_j dense_j
    if not F.IS_PROB:
        zy = zy + _sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)  # gathers z_y
    return m_new, s, sd, sdz, zy


@triton.jit
def _finish(sums, label, opts, F: tl.constexpr):
    """(loss, lse, alpha) per row from the sums (module docstring); ignored rows give loss 0."""
    m, s, sd, sdz, zy = sums
    y, w_y, kept = label
    eps = opts.eps
    lam = opts.lam
    r = _shift(m)
    log_s = tl.log(s)
    lse = r + log_s
    if F.IS_PROB:
        omega = tl.full(r.shape, 1.0, tl.float32)
        ce = tl.full(r.shape, 0.0, tl.float32)
        beta_sum = tl.full(r.shape, 0.0, tl.float32)
    else:
        omega = w_y
        ce = (1.0 - eps) * w_y * ((r - zy) + log_s)  # (1 - eps) w_y (lse - z_y)
        beta_sum = (1.0 - eps) * w_y
    if F.DENSE:
        ce = ce + sd * log_s - sdz  # sum_j dense_j (lse - z_j)
        beta_sum = beta_sum + sd
    loss = ce + lam * omega * lse * lse
    alpha = beta_sum + 2.0 * lam * omega * lse
    return tl.where(kept, loss, 0.0), lse, alpha


@triton.jit
def _grad_tile(z, dense, cols, cmask, rmask, label, lse, alpha, k, opts, F: tl.constexpr):
    """G = k (alpha a - dense - (1 - eps) w_y e_y), times 1 - (z / cap)^2 with softcap; 0 outside."""
    y, w_y, kept = label
    a = tl.exp(z - lse[:, None])  # softmax
    g = alpha[:, None] * a
    if F.DENSE:
        g = g - dense
    if not F.IS_PROB:
        g = g - tl.where(cols[None, :] == y[:, None], ((1.0 - opts.eps) * w_y)[:, None], 0.0)
    g = k[:, None] * g
    if F.SOFTCAP:
        zc = z / opts.cap
        g = g * (1.0 - zc * zc)
    return tl.where(kept[:, None] & rmask[:, None] & cmask[None, :], g, 0.0)


# ----------------------------------------------------------------------------- tiles of the logits, pass 1


@triton.jit
def _load_rows(ptr, rows64, ds, rmask, dmask, D, UPCAST: tl.constexpr):
    """The (rows, ds) tile of a row-major (., D) matrix (x or W), cast to float32 with UPCAST."""
    tile = tl.load(ptr + rows64[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _dot_into(acc_ptr, rows64, ds, rmask, dmask, D, a, b, H: tl.constexpr):
    """acc[rows, ds] += a @ b, acc a row-major float32 (., D) matrix whose (rows, ds) tile this program owns.
    Takes the Head H, not its PRECISION string: Triton before 3.9 cannot pass a str to a jit function."""
    ptrs = acc_ptr + rows64[:, None] * D + ds[None, :]
    mask = rmask[:, None] & dmask[None, :]
    acc = tl.load(ptrs, mask=mask, other=0.0)
    acc = tl.dot(a, b, acc, input_precision=H.PRECISION)
    tl.store(ptrs, acc, mask=mask)


@triton.jit
def _logits_tile(src, rows64, cols, rmask, cmask, cap, F: tl.constexpr, H: tl.constexpr):
    """z for the (rows, cols) tile in float32, soft-capped, -inf in masked columns: with H None read from the
    given logits, src = (z_ptr, z_stride); else z = x W^T + b with tl.dot tile by tile over the D features,
    src = (x_ptr, W_ptr, b_ptr, D), x (P, D) and W (V, D) row-major."""
    if H is None:
        z_ptr, z_stride = src
        m2 = rmask[:, None] & cmask[None, :]
        z = tl.load(z_ptr + rows64[:, None] * z_stride + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        x_ptr, W_ptr, b_ptr, D = src
        z = tl.full((rows64.shape[0], cols.shape[0]), 0.0, tl.float32)
        cols64 = cols.to(tl.int64)
        for d0 in range(0, D, H.BLOCK_D):
            ds, dmask, _ = _block(d0, D, H.BLOCK_D)
            xt = _load_rows(x_ptr, rows64, ds, rmask, dmask, D, H.UPCAST)
            wt = _load_rows(W_ptr, cols64, ds, cmask, dmask, D, H.UPCAST)
            z = tl.dot(xt, tl.trans(wt), z, input_precision=H.PRECISION)  # (BLOCK_P, BLOCK_V)
        if H.HAS_BIAS:
            z = z + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return tl.where(cmask[None, :], _soft_cap(z, cap, F.SOFTCAP), float("-inf"))


@triton.jit
def _row_loss(
    src, target, rows64, rmask, label, num_classes, opts, F: tl.constexpr, H: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Pass 1: (loss, lse, alpha) per row from its sums, accumulated online over the class tiles."""
    m = tl.full(rows64.shape, float("-inf"), tl.float32)
    zero = tl.full(rows64.shape, 0.0, tl.float32)
    sums = (m, zero, zero, zero, zero)  # (m, S, Sd, Sdz, z_y)
    y = label[0]
    for c0 in range(0, num_classes, BLOCK_C):
        cols, cmask, _ = _block(c0, num_classes, BLOCK_C)
        z = _logits_tile(src, rows64, cols, rmask, cmask, opts.cap, F, H)
        dense = _dense_tile(target, rows64, cols, rmask, cmask, opts.eps, num_classes, F)
        sums = _online_update(z, cols, cmask, y, dense, sums, F)
    return _finish(sums, label, opts, F)


# ----------------------------------------------------------------------------- cross-entropy on given logits


@triton.jit
def _ce_kernel(
    z_ptr, z_stride, target, k_ptr, k_stride, loss_ptr, g_ptr, g_stride, P, C, opts,
    F: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """loss[rows] for given logits z (P, C) (pass 1, `_row_loss`); with COMPUTE_GRAD, pass 2 writes G = dJ/dz
    into g once per tile (g may be z itself: each tile is read before it is written)."""
    rows, rmask, rows64, label = _row_block(tl.program_id(0) * BLOCK_P, P, target, opts, F, BLOCK_P)
    src = (z_ptr, z_stride)  # the logits are given: H = None below
    loss, lse, alpha = _row_loss(src, target, rows64, rmask, label, C, opts, F, None, BLOCK_C)
    tl.store(loss_ptr + rows, loss, mask=rmask)
    if COMPUTE_GRAD:  # pass 2: G written once (the tile is read before it is written: may alias z)
        k = tl.load(k_ptr + rows64 * k_stride, mask=rmask, other=0.0).to(tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols, cmask, _ = _block(c0, C, BLOCK_C)
            z = _logits_tile(src, rows64, cols, rmask, cmask, opts.cap, F, None)
            dense = _dense_tile(target, rows64, cols, rmask, cmask, opts.eps, C, F)
            g = _grad_tile(z, dense, cols, cmask, rmask, label, lse, alpha, k, opts, F)
            m2 = rmask[:, None] & cmask[None, :]
            tl.store(g_ptr + rows64[:, None] * g_stride + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------- fused linear head


@triton.jit
def _lce_forward(
    x_ptr, W_ptr, b_ptr, target, loss_ptr, lse_ptr, alpha_ptr, P, V, D, opts,
    F: tl.constexpr, H: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """loss, lse and alpha [rows] of z = x W^T + b (pass 1, `_row_loss`), z never stored."""
    rows, rmask, rows64, label = _row_block(tl.program_id(0) * BLOCK_P, P, target, opts, F, BLOCK_P)
    src = (x_ptr, W_ptr, b_ptr, D)  # the logits are computed: x W^T + b
    loss, lse, alpha = _row_loss(src, target, rows64, rmask, label, V, opts, F, H, BLOCK_V)
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)
    tl.store(alpha_ptr + rows, alpha, mask=rmask)


@triton.jit
def _saved_rows(lse_ptr, alpha_ptr, k_ptr, k_stride, rows, rows64, rmask):
    """(lse, alpha, k) per row: lse and alpha as `_lce_forward` wrote them, k = dJ/dl_n the row's coefficient."""
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    alpha = tl.load(alpha_ptr + rows, mask=rmask, other=0.0)
    k = tl.load(k_ptr + rows64 * k_stride, mask=rmask, other=0.0).to(tl.float32)
    return lse, alpha, k


@triton.jit
def _lce_backward_rows(
    x_ptr, W_ptr, b_ptr, target, lse_ptr, alpha_ptr, k_ptr, k_stride, gx_ptr, gw_ptr, gb_ptr, P, V, D, opts,
    F: tl.constexpr, H: tl.constexpr, WANT_DX: tl.constexpr, ATOMIC_DW: tl.constexpr, ATOMIC_DB: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """grad_x[rows] = sum over class tiles of G W (float32 scratch gx, owned by this program);
    with ATOMIC_DW / ATOMIC_DB also grad_W += G^T x, grad_b += sum_rows G by atomic adds."""
    rows, rmask, rows64, label = _row_block(tl.program_id(0) * BLOCK_P, P, target, opts, F, BLOCK_P)
    lse, alpha, k = _saved_rows(lse_ptr, alpha_ptr, k_ptr, k_stride, rows, rows64, rmask)
    src = (x_ptr, W_ptr, b_ptr, D)
    for v0 in range(0, V, BLOCK_V):
        cols, cmask, cols64 = _block(v0, V, BLOCK_V)
        z = _logits_tile(src, rows64, cols, rmask, cmask, opts.cap, F, H)
        dense = _dense_tile(target, rows64, cols, rmask, cmask, opts.eps, V, F)
        g = _grad_tile(z, dense, cols, cmask, rmask, label, lse, alpha, k, opts, F)
        if ATOMIC_DB:
            tl.atomic_add(gb_ptr + cols, _sum(g, axis=0), mask=cmask)
        if not H.UPCAST:
            g = g.to(W_ptr.dtype.element_ty)  # tensor-core products in the input dtype, float32 accumulation
        for d0 in range(0, D, H.BLOCK_D):
            ds, dmask, _ = _block(d0, D, H.BLOCK_D)
            if WANT_DX:
                wt = _load_rows(W_ptr, cols64, ds, cmask, dmask, D, H.UPCAST)
                _dot_into(gx_ptr, rows64, ds, rmask, dmask, D, g, wt, H)  # grad_x += G W   (BLOCK_P, BLOCK_D)
            if ATOMIC_DW:
                xt = _load_rows(x_ptr, rows64, ds, rmask, dmask, D, H.UPCAST)
                part = tl.dot(tl.trans(g), xt, input_precision=H.PRECISION)  # G^T x   (BLOCK_V, BLOCK_D)
                tl.atomic_add(gw_ptr + cols64[:, None] * D + ds[None, :], part, mask=cmask[:, None] & dmask[None, :])


@triton.jit
def _lce_backward_cols(
    x_ptr, W_ptr, b_ptr, target, lse_ptr, alpha_ptr, k_ptr, k_stride, gw_ptr, gb_ptr, P, V, D, opts,
    F: tl.constexpr, H: tl.constexpr, WANT_DW: tl.constexpr, WANT_DB: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """grad_W[cols] = sum over row blocks of G^T x, grad_b[cols] = sum_rows G: this program owns its
    classes, so the sums are taken in a fixed order (deterministic, no atomics)."""
    cols, cmask, cols64 = _block(tl.program_id(0) * BLOCK_V, V, BLOCK_V)
    src = (x_ptr, W_ptr, b_ptr, D)
    gb = tl.full((BLOCK_V,), 0.0, tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rows, rmask, rows64, label = _row_block(p0, P, target, opts, F, BLOCK_P)
        lse, alpha, k = _saved_rows(lse_ptr, alpha_ptr, k_ptr, k_stride, rows, rows64, rmask)
        z = _logits_tile(src, rows64, cols, rmask, cmask, opts.cap, F, H)
        dense = _dense_tile(target, rows64, cols, rmask, cmask, opts.eps, V, F)
        g = _grad_tile(z, dense, cols, cmask, rmask, label, lse, alpha, k, opts, F)
        if WANT_DB:
            gb += _sum(g, axis=0)
        if WANT_DW:
            if not H.UPCAST:
                g = g.to(W_ptr.dtype.element_ty)
            for d0 in range(0, D, H.BLOCK_D):
                ds, dmask, _ = _block(d0, D, H.BLOCK_D)
                xt = _load_rows(x_ptr, rows64, ds, rmask, dmask, D, H.UPCAST)
                _dot_into(gw_ptr, cols64, ds, cmask, dmask, D, tl.trans(g), xt, H)  # grad_W += G^T x
    if WANT_DB:
        tl.store(gb_ptr + cols, gb, mask=cmask)
