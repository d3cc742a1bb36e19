"""The chunked softmax cross-entropy algorithm in torch operations (any device, any float dtype).

This is the path for float16/bfloat16 CPU tensors and for tensors on any non-CPU device; float32
and float64 CPU tensors go to the NumPy engine instead (`_ops.py` dispatches). It is the same
algorithm as the numba row kernels, over chunks of rows, with the arithmetic in float32 (float64
for float64 input). For one row with (soft-capped) logits z, the smoothed class-weighted target
beta and the upstream coefficient k = dJ/dl_n (the formulas, and their code, are in `_rowmath.py`):

    lse    = m + ln sum_j exp(z_j - m),  m = max_j z_j,   ln a = z - lse
    loss   = -sum_j beta_j ln a_j + omega * lam * lse**2
    grad_j = k * (alpha * a_j - beta_j),  alpha = sum_j beta_j + 2 * lam * omega * lse

`row_losses` forms the loss (and the gradient rule) from ln a and lse; the composite path
(`_composite.py`) computes its differentiable loss with it too.

A sparse target (a `SparseTarget` of (P, K) rows: indices, values) never becomes a dense (n, C)
target: per chunk, its K entries' -ln a are gathered, the smoothing term is one dense pass, and the
gradient's target part is a scatter_add of K entries per row (`_rowmath.sparse_sums`, `index_grad_`).

A chunk holds as many rows as fit `softmaxce._engine.CHUNK_BYTES` of logits in the accumulation
dtype (the one memory budget of the package), unless the caller sets the rows per chunk.

Nothing here reads a tensor value on the host (no .item(), nonzero() or branching on data), except
the out-of-bounds target check on CPU tensors (on other devices it is an asynchronous device assert).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from .. import _engine
from .._options import CEOptions
from .._sparse import SparseTarget
from .._validation import TargetOutOfBoundsError
from . import _rowmath as rm

__all__ = [
    "acc_dtype",
    "ce_rows",
    "check_sparse_indices",
    "chunk_rows",
    "chunks",
    "linear_ce_rows",
    "prepare",
    "Problem",
    "reduce",
    "row_losses",
    "rows",
    "sparse_values_grad",
]

Target = torch.Tensor | SparseTarget  # (P,) class indices, (P, C) probabilities, or (P, K) sparse rows


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 computes in float64; every other float dtype in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(P: int, C: int, acc: torch.dtype, chunk_size: int | None = None, budget: int | None = None) -> int:
    """Rows per chunk: `chunk_size`, else as many (n, C) rows in dtype `acc` as fit `budget` bytes
    (default: CHUNK_BYTES)."""
    if chunk_size is None:
        chunk_size = (_engine.CHUNK_BYTES if budget is None else budget) // (max(C, 1) * acc.itemsize)
    return max(1, min(int(chunk_size), max(P, 1)))


def chunks(P: int, rows: int) -> Iterator[slice]:
    """The row slices [0, rows), [rows, 2 rows), ... covering P rows."""
    for start in range(0, P, rows):
        yield slice(start, min(start + rows, P))


def check_targets(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """IndexError "Target 3 is out of bounds." as PyTorch; a device assert off the CPU (no sync)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if target.device.type == "cpu":
        if bool(bad.any()):
            value = int(target[bad][0])
            raise IndexError(f"Target {value} is out of bounds.")
    else:
        torch._assert_async(~bad.any(), "Target is out of bounds.")


def check_sparse_indices(
    indices: torch.Tensor, num_classes: int, positions_shape: tuple[int, ...] | None = None
) -> None:
    """IndexError naming the first index >= C of a sparse target, its position and entry (docs/SEMANTICS.md);
    positions_shape (default: rows, indices (P, K)) names the position. A device assert off the CPU."""
    bad = indices >= num_classes
    if indices.device.type != "cpu":
        torch._assert_async(~bad.any(), "SparseTarget index is out of bounds.")
        return
    if not bool(bad.any()):
        return
    K = indices.shape[-1]
    flat = int(bad.reshape(-1).int().argmax())
    shape = tuple(indices.shape[:-1]) if positions_shape is None else tuple(positions_shape)
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat // K), shape)) if shape else ()
    value = int(indices.reshape(-1)[flat])
    raise TargetOutOfBoundsError(
        f"Target {value} is out of bounds. (SparseTarget index at position {position}, entry {flat % K}; "
        f"classes: {num_classes})"
    )


def rows(target: Target, s: slice) -> Target:
    """Rows s of a target: a tensor's, or a sparse target's indices and values."""
    if isinstance(target, SparseTarget):
        return SparseTarget(target.indices[s], target.values[s])
    return target[s]


class Problem(NamedTuple):
    """What rows of logits are scored against: the target (P,) class indices, (P, C) probabilities or
    a `SparseTarget` of (P, K) rows; the class weight (C,) or None; the options."""

    target: Target
    weight: torch.Tensor | None
    options: CEOptions

    def rows(self, s: slice) -> Problem:
        """The problem of rows s: the target's rows s, the same weight and options."""
        return Problem(rows(self.target, s), self.weight, self.options)


def normalizer(
    target: Target, weight: torch.Tensor | None, ignore_index: int, probability: bool, dtype: torch.dtype
) -> torch.Tensor:
    """What "mean" divides by, as a 0-d tensor: sum of w[y_n] over kept positions (their count
    without weights); the number of positions for probability targets; the number of positions with
    an entry that is not padding for a sparse target."""
    if isinstance(target, SparseTarget):
        return (target.indices >= 0).any(dim=1).sum().to(dtype)
    if probability:
        return torch.full((), target.shape[0], dtype=dtype, device=target.device)
    kept = target != ignore_index
    if weight is None:
        return kept.sum().to(dtype)
    y = torch.where(kept, target, 0).long()
    return torch.where(kept, weight.to(dtype)[y], 0).sum()


def row_coef(
    reduction: str, norm: torch.Tensor | float, grad_output: torch.Tensor | None, P: int, dtype: torch.dtype
) -> torch.Tensor:
    """k_n = dJ/dl_n, shape (P,): grad_output / norm ("mean"), grad_output ("sum") or the
    per-position upstream gradient ("none"); grad_output None means 1."""
    if grad_output is None:
        go = torch.ones((), dtype=dtype, device=norm.device)  # only the torch path calls without one
    else:
        go = grad_output.to(dtype)
    if reduction == "mean":
        go = go / norm
    return go.expand(P) if go.dim() == 0 else go.reshape(P)


def prepare(
    target: Target,
    weight: torch.Tensor | None,
    options: CEOptions,
    num_classes: int,
    acc: torch.dtype,
    want_grad: bool,
    grad_output: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Checks class indices and returns ("mean"'s normalizer, the row coefficients k (P,) or None)."""
    sparse = isinstance(target, SparseTarget)
    probability = sparse or target.dim() == 2
    if sparse:
        check_sparse_indices(target.indices, num_classes)
    elif not probability:
        check_targets(target, num_classes, options.ignore_index)
    norm = normalizer(target, weight, options.ignore_index, probability, acc)
    P = target.indices.shape[0] if sparse else target.shape[0]
    coef = row_coef(options.reduction, norm, grad_output, P, acc) if want_grad else None
    return norm, coef


def reduce(loss: torch.Tensor, reduction: str, norm: torch.Tensor) -> torch.Tensor:
    """The (P,) per-position losses reduced: their sum, the sum / norm ("mean"), or as they are."""
    if reduction == "none":
        return loss
    return loss.sum() / norm if reduction == "mean" else loss.sum()


def row_losses(
    log_a: torch.Tensor, lse: torch.Tensor, problem: Problem
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """(loss (n,), omega (n,), grad_) of rows with log-probabilities log_a (n, C) and lse (n,), both in
    the accumulation dtype, scored against `problem` (its rows n):

    - loss = -sum_j beta_j ln a_j + omega lam lse^2, 0 at an ignored position;
    - omega, the position's share of "mean"'s normalizer: w[y] (0 when ignored) for class indices,
      1 for probabilities, 1 for a sparse target's position with an entry that is not padding (else 0);
    - grad_(a, k) writes G = k (alpha a - beta) (n, C) over a = softmax(z), for the rows'
      coefficients k (n,), and returns it (before the soft cap's chain rule).

    All but grad_ is out of place, so differentiable to any order: the chunked path and the composite
    path (`_composite.py`) both compute the loss here.
    """
    C = log_a.shape[1]
    acc = log_a.dtype
    eps, lam = problem.options.label_smoothing, problem.options.z_loss
    t = problem.target
    w = None if problem.weight is None else problem.weight.to(acc)
    if not isinstance(t, SparseTarget) and t.dim() == 2:  # probability target
        beta = rm.probability_beta(t.to(acc), w, eps, C)  # w ((1 - eps) t + eps / C)
        ce = -(beta * log_a).sum(dim=1)  # -sum_j beta_j ln a_j
        loss, alpha = rm.loss_and_alpha(ce, beta.sum(dim=1), lse, lam)
        return loss, torch.ones_like(lse), lambda a, k: rm.probability_grad_(a, k, alpha, beta)
    nll_w = -(log_a.sum(dim=1) if w is None else log_a @ w) if eps else None  # -sum_c w_c ln a_c
    w_sum = float(C) if w is None else w.sum()
    if isinstance(t, SparseTarget):  # sums over the K entries (gathers) and the dense smoothing term
        kept, pad, i, b = rm.sparse_entries(t.indices, t.values, w, acc)
        nll = -log_a.gather(1, i)  # -ln a_{i_k} (n, K)
        ce, beta_sum = rm.sparse_sums(nll, pad, b, nll_w, w_sum, eps, C)
        loss, alpha = rm.loss_and_alpha(ce, beta_sum, lse, lam)
        omega, y, w_y = kept.to(acc), i, b  # the gradient subtracts b_k at each entry i_k
    else:
        kept, y, w_y = rm.index_target(t, problem.options.ignore_index, w, acc)
        nll_y = -log_a.gather(1, y).squeeze(1)  # -ln a_y
        ce, beta_sum = rm.index_sums(nll_y, nll_w, w_y, w_sum, eps, C)
        loss, alpha = rm.loss_and_alpha(ce, beta_sum, lse, lam, omega=w_y)
        omega = w_y
    # G = k (alpha a - (1 - eps) sum_k w_yk e_yk - (eps / C) w), ignored rows 0
    return torch.where(kept, loss, 0.0), omega, lambda a, k: rm.index_grad_(a, k, alpha, kept, y, w_y, w, eps, C)


def _chunk(
    z: torch.Tensor, problem: Problem, coef: torch.Tensor | None, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One chunk of rows: (loss (n,), grad (n, C) in acc dtype or None, lse (n,)); the gradient for
    the rows' coefficients `coef` (n,), when given.

    Works in place on its own temporaries (never on the caller's z), so a chunk costs about three
    (n, C) buffers.
    """
    cap = problem.options.softcap
    z = z.to(acc, copy=cap is not None)  # without softcap maybe the caller's tensor: read only
    if cap is not None:
        rm.soft_cap_(z, cap)  # Gemma 2 soft-capping, on our copy
    log_a, e, lse = rm.log_softmax(z)
    loss, _, grad_ = row_losses(log_a, lse, problem)
    del log_a
    grad = None
    if coef is not None:
        a = e.div_(e.sum(dim=1, keepdim=True))  # a = softmax(z), in place of e
        grad = grad_(a, coef.to(acc))
        if cap is not None:
            rm.soft_cap_grad_(grad, z, cap)
    return loss, grad, lse


def ce_rows(
    z: torch.Tensor, problem: Problem, coef: torch.Tensor | None, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Row form (P, C), the problem's target (P,) class indices, (P, C) probabilities or a
    `SparseTarget` of (P, K) rows: per-position loss (P,) and lse (P,) in the accumulation dtype, and
    the gradient (P, C) in z's dtype when `coef` (P,) is given (else None). Returns (loss, grad, lse)."""
    P, C = z.shape
    acc = acc_dtype(z.dtype)
    loss = torch.empty(P, dtype=acc, device=z.device)
    lse = torch.empty(P, dtype=acc, device=z.device)
    grad = torch.empty_like(z, memory_format=torch.contiguous_format) if coef is not None else None
    for s in chunks(P, chunk_rows(P, C, acc, chunk_size)):
        loss[s], gc, lse[s] = _chunk(z[s], problem.rows(s), None if coef is None else coef[s], acc)
        if grad is not None:
            grad[s] = gc
    return loss, grad, lse


def linear_ce_rows(
    x: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    problem: Problem,
    coef: torch.Tensor | None,
    want: tuple[bool, bool, bool],
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The fused head on rows: x (P, D), W (V, D), bias (V,). Per chunk of rows the logits
    z = x W^T + b (n, V) are formed, turned into G = dL/dz, and three products finish the chunk:
    grad_x[chunk] = G W, grad_W += G^T x[chunk], grad_b += sum_rows G. The full (P, V) logits never exist.

    Returns (loss (P,), lse (P,), grad_x, grad_W, grad_b); the gradients are None unless `coef` is
    given and `want` = (grad_x, grad_W, grad_b) asks for them. grad_W and grad_b accumulate in
    float32 (float64 for float64 input) and come back in W's dtype.
    """
    P, D = x.shape
    V = W.shape[0]
    acc = acc_dtype(x.dtype)
    loss = torch.empty(P, dtype=acc, device=x.device)
    lse = torch.empty(P, dtype=acc, device=x.device)
    need = coef is not None
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need and want[0] else None
    gw = torch.zeros(V, D, dtype=acc, device=x.device) if need and want[1] else None
    gb = torch.zeros(V, dtype=acc, device=x.device) if need and want[2] and bias is not None else None
    # On CPU, float16/bfloat16 matrix products are slow (often emulated) and round the logits:
    # there the products run in float32 on a float32 copy of W (V x D). Elsewhere they run in the
    # input dtype, which accumulates in float32 on GPUs anyway.
    upcast = x.device.type == "cpu" and x.dtype != acc
    Wm = W.to(acc) if upcast else W
    bm = None if bias is None else (bias.to(acc) if upcast else bias)
    for s in chunks(P, chunk_rows(P, V, acc, chunk_size)):
        xc = x[s].to(acc) if upcast else x[s]
        z = xc @ Wm.T if bm is None else torch.addmm(bm, xc, Wm.T)  # (n, V)
        loss[s], g, lse[s] = _chunk(z, problem.rows(s), None if coef is None else coef[s], acc)
        del z
        if g is None:
            continue
        if gx is not None:
            gx[s] = g @ Wm if upcast else g.to(W.dtype) @ W  # (n, D)
        if gw is not None:
            gw.addmm_(g.T, xc.to(acc))  # (V, D) accumulated in place
        if gb is not None:
            gb += g.sum(dim=0)
    return (loss, lse, gx, None if gw is None else gw.to(W.dtype), None if gb is None else gb.to(bias.dtype))


def sparse_values_grad(
    z: torch.Tensor, target: SparseTarget, weight: torch.Tensor | None, k: torch.Tensor, eps: float, cap: float | None
) -> torch.Tensor:
    """dJ/dv (n, K) of a sparse target's values for logits z (n, C) (one chunk; the caller's, read
    only): (1 - eps) k_n w_{i_k} (lse - z_{i_k}), 0 at padding, in the values' dtype. k (n,)."""
    acc = acc_dtype(z.dtype)
    z = z.to(acc, copy=cap is not None)
    if cap is not None:
        rm.soft_cap_(z, cap)
    _, pad, i, _ = rm.sparse_entries(target.indices, target.values, None, acc)
    nll = torch.logsumexp(z, dim=1, keepdim=True) - z.gather(1, i)  # lse - z_{i_k}
    w = None if weight is None else weight.to(acc)
    return rm.sparse_values_grad(nll, pad, i, k.to(acc), w, eps).to(target.values.dtype)
