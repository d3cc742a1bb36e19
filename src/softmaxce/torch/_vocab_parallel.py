"""Engine of the vocabulary-parallel head: per-rank pieces of the row sums, the two all-reduces,
autograd glue. The row math itself (loss, alpha, gradient rows) is `_rowmath.py`'s, given global sums.

Each rank holds rows [vocab_start, vocab_start + Vs) of the classifier weight W (V, D). For every
position n the global quantities are assembled from per-rank pieces (docs/SEMANTICS.md, index targets):

    m_n   = max_r m_rn                                          (all-reduce MAX)
    S_n   = sum_r exp(m_rn - m_n) * sum_{c in r} exp(z_nc - m_rn)  (all-reduce SUM, with the rest)
    lse_n = m_n + ln S_n
    l_n   = (1 - eps) w_y (lse_n - z_ny) + (eps / V) sum_c w_c (lse_n - z_nc) + lam w_y lse_n^2

Every rank first runs over its chunks of positions once, keeping O(N) per-position numbers measured
against its LOCAL max m_rn (so no logit is ever exp()'d raw and no second pass is needed); after the
MAX it rescales them to the global max, and one SUM of a single stacked buffer gives every rank the
same global sums. The backward recomputes each chunk's logits, forms dL/dz from the saved global lse,
and all-reduces only grad_x. The public checks live in `softmaxce.torch.distributed`; a chunk holds
`_chunked.chunk_rows` rows (the `softmaxce._engine.CHUNK_BYTES` budget) unless the caller sets it.

A sparse target (GLOBAL indices (P, K) and values (P, K), the same on every rank) takes the
probability target's sums, assembled from the entries each rank owns (j = i - vocab_start in
[0, Vs); the others are padding on that rank) and the smoothing over its own classes:

    sum_c beta_c           = sum_r (1 - eps) sum_{k owned} w_{i_k} v_k            + (eps / V) sum_{c in r} w_c
    sum_c beta_c (z_c - m) = sum_r (1 - eps) sum_{k owned} w_{i_k} v_k (z_{i_k} - m)
                                   + (eps / V) sum_{c in r} w_c (z_c - m)

A position is kept when any global index is >= 0 (never from a rank's slice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist

from . import _rowmath as rm
from ._chunked import chunks, row_coef

__all__ = ["Plan", "VocabParallelFunction", "collective"]


@dataclass(frozen=True)
class Plan:
    """Everything static about one call, agreed on by every rank before any math."""

    vocab_start: int
    vocab_size: int  # V, the global class count
    shard_size: int  # Vs, this rank's class count
    owner_order: tuple[int, ...]  # group ranks sorted by vocab_start (who owns the smallest classes first)
    rank: int
    world_size: int
    group: Any
    probability: bool
    sparse: bool  # a SparseTarget: values are the target argument, global indices beside them
    reduction: str
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    normalizer: float | torch.Tensor | None
    chunk_size: int  # positions per chunk
    want_stats: bool


def collective(what: str, plan_rank: int, world: int, op: Any) -> Any:
    """Runs one collective; a failure (a dead peer, a timeout) is re-raised with a note saying which."""
    try:
        return op()
    except RuntimeError as err:  # DistBackendError and gloo's errors are RuntimeErrors
        if hasattr(err, "add_note"):
            err.add_note(
                f"softmaxce vocab_parallel_linear_cross_entropy: the {what} failed on rank {plan_rank} of {world}; "
                "a peer process probably died or did not reach the same call within the group's timeout."
            )
        raise


def _logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, cap: float | None) -> torch.Tensor:
    """Local logits of one chunk, soft-capped: z = cap * tanh((x W^T + b) / cap)."""
    z = x @ w.T  # (c, Vs), a fresh tensor: the rest is in place
    if b is not None:
        z.add_(b)
    return z if cap is None else rm.soft_cap_(z, cap)


def _forward(
    plan: Plan,
    x: torch.Tensor,  # (P, D) compute dtype
    w: torch.Tensor,  # (Vs, D) compute dtype
    b: torch.Tensor | None,  # (Vs,)
    target: torch.Tensor,  # (P,) int64, (P, Vs) or sparse values (P, K), compute dtype
    cw: torch.Tensor | None,  # (Vs,) class-weight shard, compute dtype
    indices: torch.Tensor | None = None,  # (P, K) global indices of a sparse target
) -> dict[str, torch.Tensor]:
    P, Vs, V = x.shape[0], plan.shard_size, plan.vocab_size
    dt, dev = x.dtype, x.device
    eps, lam, cap = plan.label_smoothing, plan.z_loss, plan.softcap
    smooth = eps > 0.0 and not plan.probability and not plan.sparse
    dense_sums = plan.probability or plan.sparse  # the probability target's two row sums
    m_l = torch.full((P,), -math.inf, dtype=dt, device=dev)  # local max
    s_l = torch.zeros(P, dtype=dt, device=dev)  # sum_c exp(z_c - m_l)
    t_l = torch.zeros(P, dtype=dt, device=dev)  # sum_c exp(z_c - m_l) (z_c - m_l), for the entropy
    am_l = torch.zeros(P, dtype=torch.int64, device=dev)  # local argmax (local class index)
    if dense_sums:
        pw_l = torch.zeros(P, dtype=dt, device=dev)  # sum_c beta_c,            beta_c = w_c t'_c
        pz_l = torch.zeros(P, dtype=dt, device=dev)  # sum_c beta_c (z_c - m_l)
    if plan.sparse:
        kept = (indices >= 0).any(dim=1)  # from the global target: the same on every rank
        j = indices - plan.vocab_start
        owned = (indices >= 0) & (j >= 0) & (j < Vs)  # (P, K): this rank holds the entry's class
        jc = j.clamp(0, max(Vs - 1, 0))
        b_own = target if cw is None or Vs == 0 else target * cw[jc]  # w_{i_k} v_k
        b_own = torch.where(owned, b_own, 0.0)
        s_eps = eps / V if V > 0 else 0.0
        wsum_l = (cw.sum() if cw is not None else torch.tensor(float(Vs), dtype=dt, device=dev)) if eps else 0.0
    elif not plan.probability:
        valid = target != plan.ignore_index
        j = target - plan.vocab_start
        owned = valid & (j >= 0) & (j < Vs)  # this rank holds the target class
        jc = j.clamp(0, max(Vs - 1, 0))
        zt_l = torch.zeros(P, dtype=dt, device=dev)  # z_{n, y_n} where owned
        zs_l = torch.zeros(P, dtype=dt, device=dev)  # sum_c w_c (z_c - m_l), for the smoothing term
    if Vs > 0:
        for sl in chunks(P, plan.chunk_size):
            z = _logits(x[sl], w, b, cap)  # (c, Vs)
            m, am = z.max(dim=1)
            zm = z - m[:, None]
            e = torch.exp(zm)
            m_l[sl], am_l[sl], s_l[sl] = m, am, e.sum(1)
            if plan.want_stats:
                t_l[sl] = torch.where(e > 0, e * zm, 0.0).sum(1)
            if plan.probability:
                beta = rm.probability_beta(target[sl], cw, eps, V)  # smoothing over the global V
                pw_l[sl] = beta.sum(1)
                pz_l[sl] = (beta * zm).sum(1)
            elif plan.sparse:  # the owned entries (gathers) and this shard's smoothing term
                zj = zm.gather(1, jc[sl])  # z_{i_k} - m_l (c, K)
                bz = torch.where(owned[sl], b_own[sl] * zj, 0.0).sum(1)
                pw_l[sl] = (1.0 - eps) * b_own[sl].sum(1)
                pz_l[sl] = (1.0 - eps) * bz
                if eps:
                    pw_l[sl] += s_eps * wsum_l
                    pz_l[sl] += s_eps * ((zm * cw).sum(1) if cw is not None else zm.sum(1))
            else:
                zt_l[sl] = z.gather(1, jc[sl, None])[:, 0]
                if smooth:
                    zs_l[sl] = (zm * cw).sum(1) if cw is not None else zm.sum(1)

    # ---- collective 1: MAX. With statistics, every rank's local max travels (P, k) so that every
    # rank learns which rank holds the global argmax (the first in vocabulary order among ties).
    if plan.want_stats:
        per_rank = torch.full((P, plan.world_size), -math.inf, dtype=dt, device=dev)
        per_rank[:, plan.rank] = m_l
        collective(
            "all-reduce (MAX)",
            plan.rank,
            plan.world_size,
            lambda: dist.all_reduce(per_rank, op=dist.ReduceOp.MAX, group=plan.group),
        )
        m_g = per_rank.amax(dim=1) if P > 0 else m_l.clone()
    else:
        m_g = m_l.clone()
        collective(
            "all-reduce (MAX)",
            plan.rank,
            plan.world_size,
            lambda: dist.all_reduce(m_g, op=dist.ReduceOp.MAX, group=plan.group),
        )

    # ---- rescale local sums from m_l to the global max m_g (exact identities, no new exp of logits)
    dead = m_l == -math.inf  # empty shard or all local logits -inf: contributes nothing
    shift = torch.where(dead, 0.0, m_l - m_g)  # m_l - m_g <= 0
    f = torch.where(dead, 0.0, torch.exp(shift))
    cols = [s_l * f]
    if plan.want_stats:
        # sum e^(z - m_g) (z - m_g) = f * (T_l + (m_l - m_g) S_l)
        cols.append(torch.where(dead, 0.0, f * (t_l + shift * s_l)))
        first = torch.zeros(P, dtype=torch.bool, device=dev)
        if P > 0:
            # the owner of the global argmax is the first rank in vocabulary order whose local max is m_g
            holds = per_rank[:, list(plan.owner_order)] == m_g[:, None]  # (P, k) in vocabulary order
            first_pos = torch.where(holds.any(1), holds.int().argmax(1), -1)
            first = first_pos == plan.owner_order.index(plan.rank)
        cols.append(torch.where(first, (am_l + plan.vocab_start).to(dt), 0.0))
    if dense_sums:
        cols += [pw_l, torch.where(dead, 0.0, pz_l + shift * pw_l)]
    else:
        cols.append(torch.where(owned, zt_l - m_g, 0.0))  # z_y - m_g, from the one owning rank
        w_y = cw[jc] if cw is not None and Vs > 0 else torch.ones_like(zt_l)
        cols.append(torch.where(owned, w_y, 0.0))  # w_y, from the owning rank
        if smooth:
            wsum_l = cw.sum() if cw is not None else torch.tensor(float(Vs), dtype=dt, device=dev)
            cols.append(torch.where(dead, 0.0, zs_l + shift * wsum_l))
    stacked = torch.cat([torch.stack(cols, 1).reshape(-1), torch.zeros(1, dtype=dt, device=dev)])
    if smooth:
        stacked[-1] = wsum_l  # sum_c w_c over the global vocabulary, in the same buffer

    # ---- collective 2: one SUM of everything else
    collective(
        "all-reduce (SUM)",
        plan.rank,
        plan.world_size,
        lambda: dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=plan.group),
    )
    g = stacked[:-1].reshape(P, len(cols)).unbind(1)
    log_s = torch.log(g[0])
    lse = m_g + log_s
    k = 1
    out: dict[str, torch.Tensor] = {"lse": lse, "m": m_g, "log_s": log_s}
    if plan.want_stats:
        out["entropy"] = log_s - g[1] / g[0]  # H = ln S - sum e (z - m) / S
        out["predicted"] = g[2].round().to(torch.int64)
        k = 3
    # -ln a_c = lse - z_c = ln S - (z_c - m): the row sums below are global, the math is _rowmath's
    if dense_sums:
        pw, pz = g[k], g[k + 1]
        ce = pw * log_s - pz  # -sum_c beta_c ln a_c = (sum_c beta_c) ln S - sum_c beta_c (z_c - m)
        loss, alpha = rm.loss_and_alpha(ce, pw, lse, lam)
        out["weight_sum"] = torch.tensor(float(P), dtype=dt, device=dev)
        if plan.sparse:  # an all-padding position is ignored; "mean" counts the kept ones
            loss = torch.where(kept, loss, 0.0)
            out.update(valid=kept, owned=owned, jc=jc, w_target=b_own)
            out["weight_sum"] = kept.sum().to(dt)
    else:
        ztm, wy = g[k], g[k + 1]  # z_y - m and w_y
        wsum = stacked[-1] if smooth else 0.0  # sum_c w_c
        nll_w = wsum * log_s - g[k + 2] if smooth else None  # -sum_c w_c ln a_c
        ce, beta_sum = rm.index_sums(log_s - ztm, nll_w, wy, wsum, eps, V)
        loss, alpha = rm.loss_and_alpha(ce, beta_sum, lse, lam, omega=wy)
        loss = torch.where(valid, loss, 0.0)
        out.update(valid=valid, owned=owned, jc=jc, w_target=torch.where(owned, wy, 0.0))
        out["weight_sum"] = wy.sum()
    out["loss_rows"], out["alpha"] = loss, alpha
    return out


class VocabParallelFunction(torch.autograd.Function):
    """loss = the vocabulary-parallel cross-entropy of (x, W_shard, b_shard); grads as in the module doc.

    Inputs: x (P, D), w (Vs, D), b (Vs,) or None, target (P,) int64, (P, Vs) float or a sparse
    target's values (P, K), cw (Vs,) or None, plan, and a sparse target's global indices (P, K) or
    None. Outputs: loss (input dtype; (P,) for "none"), lse, predicted, entropy (per position; the last
    two are empty unless plan.want_stats). Only the loss is differentiable.
    """

    @staticmethod
    def forward(ctx, x, w, b, target, cw, plan: Plan, indices=None) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out_dtype = x.dtype
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        xc, wc = x.to(dt), w.to(dt)
        bc = None if b is None else b.to(dt)
        cwc = None if cw is None else cw.to(dt)
        tc = target.to(dt) if plan.probability or plan.sparse else target.to(torch.int64)
        r = _forward(plan, xc, wc, bc, tc, cwc, indices)
        rows = r["loss_rows"]
        if plan.reduction == "none":
            loss, norm = rows, None
        elif plan.reduction == "sum":
            loss, norm = rows.sum(), None
        else:
            norm = r["weight_sum"] if plan.normalizer is None else plan.normalizer
            loss = rows.sum() / norm
        empty = torch.empty(0, dtype=dt, device=x.device)
        lse = r["lse"]
        predicted = r.get("predicted", torch.empty(0, dtype=torch.int64, device=x.device))
        entropy = r.get("entropy", empty)
        ctx.plan, ctx.out_dtype, ctx.norm, ctx.target_dtype = plan, out_dtype, norm, target.dtype
        ctx.extra = {key: r[key] for key in ("alpha", "valid", "jc", "w_target", "owned") if key in r}
        ctx.save_for_backward(xc, wc, bc, tc, cwc, r["m"], r["log_s"])
        ctx.mark_non_differentiable(lse, predicted, entropy)
        return loss.to(out_dtype), lse, predicted, entropy

    @staticmethod
    def backward(ctx, grad_loss, *_ignored) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        plan: Plan = ctx.plan
        x, w, b, target, cw, m, log_s = ctx.saved_tensors
        need_x, need_w, need_b, need_t = ctx.needs_input_grad[:4]
        P, D = x.shape
        Vs, V, dt = plan.shard_size, plan.vocab_size, x.dtype
        eps, cap = plan.label_smoothing, plan.softcap
        r = row_coef(plan.reduction, ctx.norm, grad_loss, P, dt)  # dJ/dl_n: upstream (/ normalizer for "mean")
        e = ctx.extra
        grad_x = torch.zeros(P, D, dtype=dt, device=x.device) if need_x else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros(Vs, dtype=dt, device=x.device) if need_b else None
        grad_t = torch.zeros_like(target) if need_t else None
        sparse_v = plan.sparse and need_t  # this rank's part of dJ/dv (owned entries), summed below
        if Vs > 0:
            for sl in chunks(P, plan.chunk_size):
                xs = x[sl]
                z = _logits(xs, w, b, cap)  # (c, Vs), capped
                log_a = rm.log_probs(z, m[sl], log_s[sl])  # with the global max and sum
                a = torch.exp(log_a)
                if plan.probability:
                    beta = rm.probability_beta(target[sl], cw, eps, V)
                    dz = rm.probability_grad_(a, r[sl], e["alpha"][sl], beta)
                    if need_t:
                        grad_t[sl] = rm.target_grad(log_a, r[sl, None], cw, eps)
                elif plan.sparse:
                    jc = e["jc"][sl]
                    if sparse_v:  # (1 - eps) k w_{i_k} (lse - z_{i_k}) on the rank owning i_k
                        nll = -log_a.gather(1, jc)
                        grad_t[sl] = rm.sparse_values_grad(nll, ~e["owned"][sl], jc, r[sl], cw, eps)
                    dz = rm.index_grad_(a, r[sl], e["alpha"][sl], e["valid"][sl], jc, e["w_target"][sl], cw, eps, V)
                else:  # the target column's weight is subtracted on the rank that holds it
                    dz = rm.index_grad_(
                        a, r[sl], e["alpha"][sl], e["valid"][sl], e["jc"][sl, None], e["w_target"][sl], cw, eps, V
                    )
                if cap is not None:
                    rm.soft_cap_grad_(dz, z, cap)
                if need_x:
                    grad_x[sl] = dz @ w
                if need_w:
                    grad_w.addmm_(dz.T, xs)  # no (Vs, D) temporary per chunk
                if need_b:
                    grad_b += dz.sum(0)
        if need_x or sparse_v:  # the one collective of the backward: grad_x = sum_r dz_r W_r (and dJ/dv)
            parts = [t for t in (grad_x, grad_t if sparse_v else None) if t is not None]
            flat = torch.cat([t.reshape(-1) for t in parts]) if len(parts) > 1 else parts[0]
            collective(
                "all-reduce (SUM) of grad_input",
                plan.rank,
                plan.world_size,
                lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=plan.group),
            )
            if len(parts) > 1:
                grad_x.copy_(flat[: grad_x.numel()].view_as(grad_x))
                grad_t.copy_(flat[grad_x.numel() :].view_as(grad_t))
        od = ctx.out_dtype
        return (
            None if grad_x is None else grad_x.to(od),
            None if grad_w is None else grad_w.to(od),
            None if grad_b is None else grad_b.to(od),
            None if grad_t is None else grad_t.to(ctx.target_dtype),
            None,
            None,
            None,
        )
