"""Row kernels for sparse probability targets: loss and gradient without the dense target row.

Row n's target is y = scatter(v) over its entries (i_k, v_k) (duplicates add, i_k < 0 is padding),
smoothed to t' = (1 - eps) y + eps / C and weighted: beta_c = w_c t'_c. With lse the log-sum-exp of
the (soft-capped) logits z, a = softmax(z), lam = z_loss and coef = dJ/dl_n (docs/SEMANTICS.md):

    loss   = sum_c beta_c (lse - z_c) + lam lse^2 = bsum * lse - bz + lam lse^2
    bsum   = sum_c beta_c     = (1 - eps) sum_k w_{i_k} v_k           + (eps / C) sum_c w_c
    bz     = sum_c beta_c z_c = (1 - eps) sum_k w_{i_k} v_k z_{i_k}   + (eps / C) sum_c w_c z_c
    grad   = coef * ((bsum + 2 lam lse) a - (eps / C) w)  -  scatter(coef (1 - eps) w_{i_k} v_k)

i.e. dL/dz_i = (sum_j y_j) a_i - y_i for the plain target. The K entries are read once before the
row (which the gradient may overwrite in place), the dense part of the gradient is one pass over the
exponentials the softmax left in the gradient row, and the scatter touches K entries. A position
whose entries are all padding is ignored: loss 0, gradient 0, statistics still computed if asked
(lse is NaN otherwise), as `_rows.index_row` does for ignore_index.

Classes absent from the target contribute exactly nothing (no 0 * ln 0 term), so without smoothing
a -inf logit on such a class is fine; the softmax half of a row (`_rows.row_softmax`: softcap, max,
exp, sum, statistics) is shared with the dense kernels.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._bits import JIT
from ._rows import (
    coef_at,
    ignored_row,
    row_flags,
    row_softmax,
    softcap_backward,
    softmax_grad,
    weight_sum,
    weighted_logit_sum,
)

__all__ = ["sparse_row", "sparse_rows"]


@njit(**JIT)
def sparse_row(n, z, indptr, indices, values, weight, wsum, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    """Row n: entries indices/values[indptr[n]:indptr[n + 1]] of the sparse target (see module doc)."""
    want_grad, want_stats, weighted, smooth = row_flags(z, grad, entropy, weight, eps)
    k0, k1 = indptr[n], indptr[n + 1]
    kept = False
    for k in range(k0, k1):
        if indices[k] >= 0:
            kept = True
            break
    if not kept:  # all padding: an ignored position
        ignored_row(z, n, cap, grad, want_grad, want_stats, loss, lse, argmax, entropy)
        return
    # read the target entries' logits before grad[n] (maybe z[n] itself) is overwritten
    row0 = z[n]
    vs = 0.0  # sum_k w_{i_k} v_k
    vz = 0.0  # sum_k w_{i_k} v_k z_{i_k}
    for k in range(k0, k1):
        i = indices[k]
        if i >= 0:
            b = values[k] * (weight[i] if weighted else 1.0)
            vs += b
            vz += b * (cap * math.tanh(row0[i] / cap) if cap > 0.0 else row0[i])
    bsum = (1.0 - eps) * vs
    bz = (1.0 - eps) * vz
    if smooth > 0.0:
        bsum += smooth * wsum
        bz += smooth * weighted_logit_sum(row0, weight, weighted, cap)  # sum_c w_c z_c
    row, m, s = row_softmax(z, n, cap, grad, want_grad, want_stats, lse, argmax, entropy)
    l_se = m + math.log(s)  # NaN for a non-finite row
    loss[n] = bsum * l_se - bz + lam * l_se * l_se  # sum_c beta_c (lse - z_c) + lam lse^2
    if want_grad:
        e = grad[n]  # e_j = exp(z_j - m), left by row_softmax
        if s != s:
            e[:] = np.nan
            return
        kn = coef_at(coef, n)
        # dense part: dz_j = coef * ((bsum + 2 lam lse) a_j - (eps / C) w_j),  a_j = e_j / s
        softmax_grad(e, z.dtype.type(kn * (bsum + 2.0 * lam * l_se) / s), kn, smooth, weight, weighted)
        # sparse part: dz_{i_k} -= coef (1 - eps) w_{i_k} v_k   (duplicates subtract twice)
        for k in range(k0, k1):
            i = indices[k]
            if i >= 0:
                e[i] = z.dtype.type(e[i] - kn * (1.0 - eps) * values[k] * (weight[i] if weighted else 1.0))
        if cap > 0.0:
            softcap_backward(e, row, cap)


def sparse_rows(
    parallel: bool, z, indptr, indices, values, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy
) -> None:
    """Sparse targets over (P, C) logits z: indptr (P + 1,) int64 absolute offsets into indices
    (int64, < C, negative = padding) and values (float64); other arrays as in `_kernels`."""
    run = _sparse_rows if parallel else _sparse_rows_serial
    run(z, indptr, indices, values, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)


@njit(parallel=True, **JIT)
def _sparse_rows(z, indptr, indices, values, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    wsum = weight_sum(weight, z.shape[1])
    for n in prange(z.shape[0]):
        sparse_row(n, z, indptr, indices, values, weight, wsum, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)


@njit(**JIT)
def _sparse_rows_serial(z, indptr, indices, values, weight, eps, lam, cap, coef, grad, loss, lse, argmax, entropy):
    wsum = weight_sum(weight, z.shape[1])
    for n in range(z.shape[0]):
        sparse_row(n, z, indptr, indices, values, weight, wsum, eps, lam, cap, coef, grad, loss, lse, argmax, entropy)
