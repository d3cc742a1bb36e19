"""The chunked softmax cross-entropy algorithm in torch operations (any device, any float dtype).

This is the path for float16/bfloat16 CPU tensors and for tensors on any non-CPU device; float32
and float64 CPU tensors go to the NumPy engine instead (`_ops.py` dispatches). It is the same
algorithm as the numba row kernels, written with torch primitives over chunks of rows, with the
arithmetic in float32 (float64 for float64 input). For one row with (soft-capped) logits z, the
smoothed class-weighted target beta and the upstream coefficient k = dJ/dl_n:

    lse    = m + ln sum_j exp(z_j - m),  m = max_j z_j,   ln a = z - lse
    loss   = -sum_j beta_j ln a_j + omega * lam * lse**2
    grad_j = k * (alpha * a_j - beta_j),  alpha = sum_j beta_j + 2 * lam * omega * lse

with beta = (1 - eps) w_y e_y + (eps / C) w and omega = w_y for a class index y, and
beta = w * ((1 - eps) t + eps / C), omega = 1 for a probability target t.

Nothing here reads a tensor value on the host (no .item(), nonzero() or branching on data), except
the out-of-bounds target check on CPU tensors (on other devices it is an asynchronous device assert).
"""

from __future__ import annotations

import torch

__all__ = ["ce_rows", "linear_ce_rows", "normalizer", "row_coef", "acc_dtype", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 2**22  # logits entries per chunk (16 MiB in float32)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 computes in float64; every other float dtype in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(P: int, C: int, chunk_size: int | None = None) -> int:
    if chunk_size is not None:
        return max(1, min(int(chunk_size), max(P, 1)))
    return max(1, min(CHUNK_ELEMENTS // max(C, 1), max(P, 1)))


def check_targets(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """IndexError "Target 3 is out of bounds." as PyTorch; a device assert off the CPU (no sync)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if target.device.type == "cpu":
        if bool(bad.any()):
            value = int(target[bad][0])
            raise IndexError(f"Target {value} is out of bounds.")
    else:
        torch._assert_async(~bad.any(), "Target is out of bounds.")


def normalizer(
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    probability: bool,
    num_classes: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """What "mean" divides by, as a 0-d tensor: sum of w[y_n] over kept positions (their count
    without weights); the number of positions for probability targets."""
    if probability:
        return torch.full((), target.shape[0], dtype=dtype, device=target.device)
    kept = target != ignore_index
    if weight is None:
        return kept.sum().to(dtype)
    y = torch.where(kept, target, 0).long()
    return torch.where(kept, weight.to(dtype)[y], 0).sum()


def row_coef(
    reduction: str,
    norm: torch.Tensor,
    grad_output: torch.Tensor | None,
    P: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """k_n = dJ/dl_n, shape (P,): grad_output / norm ("mean"), grad_output ("sum") or the
    per-position upstream gradient ("none"); grad_output None means 1."""
    if grad_output is None:
        go = torch.ones((), dtype=dtype, device=device)
    else:
        go = grad_output.to(dtype)
    if reduction == "mean":
        go = go / norm
    return go.expand(P) if go.dim() == 0 else go.reshape(P)


def _chunk(
    z: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor | None,
    probability: bool,
    ignore_index: int,
    eps: float,
    lam: float,
    cap: float,
    coef: torch.Tensor | None,
    acc: torch.dtype,
):
    """One chunk of rows: (loss (n,), grad (n, C) in acc dtype or None, lse (n,)).

    Works in place on its own temporaries (never on z), so a chunk costs about three (n, C) buffers.
    """
    n, C = z.shape
    z = z.to(acc)
    if cap > 0.0:
        zc = torch.tanh(z / cap).mul_(cap)  # Gemma 2 soft-capping
    else:
        zc = z  # maybe the caller's tensor: read only
    m = zc.amax(dim=1, keepdim=True) if C > 0 else zc.new_zeros((n, 1))
    log_a = zc - m  # NaN for a row whose max is +inf, -inf or NaN (as torch.log_softmax)
    e = torch.exp(log_a)
    log_s = torch.log(e.sum(dim=1, keepdim=True))
    log_a.sub_(log_s)  # ln a = z - lse
    lse = (m + log_s).squeeze(1)
    w = None if weight is None else weight.to(acc)
    smooth = eps / C if C > 0 else 0.0
    if probability:
        beta = t.to(acc) * (1.0 - eps) + smooth  # t' = (1 - eps) t + eps / C
        if w is not None:
            beta.mul_(w)  # beta = w t'
        loss = -(beta * log_a).sum(dim=1)
        alpha = beta.sum(dim=1)
        if lam:
            loss = loss + lam * lse * lse
            alpha = alpha + 2.0 * lam * lse
    else:
        kept = t != ignore_index
        y = torch.where(kept, t, 0).long().unsqueeze(1)
        w_y = torch.ones(n, dtype=acc, device=z.device) if w is None else w[y.squeeze(1)]
        w_y = torch.where(kept, w_y, 0.0)
        nll = -log_a.gather(1, y).squeeze(1)
        loss = (1.0 - eps) * w_y * nll
        alpha = (1.0 - eps) * w_y
        if smooth:
            # (eps / C) sum_c w_c (-ln a_c): a matrix-vector product with weights
            loss = loss - smooth * (log_a.sum(dim=1) if w is None else log_a @ w)
            alpha = alpha + smooth * (float(C) if w is None else w.sum())
        if lam:
            loss = loss + w_y * lam * lse * lse
            alpha = alpha + 2.0 * lam * w_y * lse
        loss = torch.where(kept, loss, 0.0)
    del log_a
    grad = None
    if coef is not None:
        k = coef.to(acc)
        grad = e.div_(e.sum(dim=1, keepdim=True))  # a = softmax(z), in place of e
        grad.mul_((alpha * k).unsqueeze(1))  # k alpha a
        if probability:
            grad.addcmul_(beta, k.unsqueeze(1), value=-1.0)  # - k beta
        else:
            if smooth and w is not None:
                grad.addr_(k, w, alpha=-smooth)  # - k (eps / C) w
            elif smooth:
                grad.sub_(k.unsqueeze(1) * smooth)
            grad.scatter_add_(1, y, (-(1.0 - eps) * w_y * k).unsqueeze(1))  # - k (1 - eps) w_y e_y
            grad.masked_fill_(~kept.unsqueeze(1), 0.0)  # ignored rows: exactly 0
        if cap > 0.0:
            dcap = (zc / cap).square_().neg_().add_(1.0)  # d(cap tanh(z / cap))/dz = 1 - tanh^2
            grad.mul_(dcap)
    return loss, grad, lse


def ce_rows(
    z: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    probability: bool,
    ignore_index: int,
    eps: float,
    lam: float,
    cap: float,
    coef: torch.Tensor | None,
    chunk_size: int | None = None,
):
    """Row form (P, C): per-position loss (P,) and lse (P,) in the accumulation dtype, and the
    gradient (P, C) in z's dtype when `coef` (P,) is given (else None)."""
    P, C = z.shape
    acc = acc_dtype(z.dtype)
    loss = torch.empty(P, dtype=acc, device=z.device)
    lse = torch.empty(P, dtype=acc, device=z.device)
    grad = torch.empty_like(z, memory_format=torch.contiguous_format) if coef is not None else None
    step = chunk_rows(P, C, chunk_size)
    for s0 in range(0, P, step):
        s1 = min(s0 + step, P)
        lc, gc, sc = _chunk(
            z[s0:s1],
            target[s0:s1],
            weight,
            probability,
            ignore_index,
            eps,
            lam,
            cap,
            None if coef is None else coef[s0:s1],
            acc,
        )
        loss[s0:s1] = lc
        lse[s0:s1] = sc
        if grad is not None:
            grad[s0:s1] = gc
    return loss, grad, lse


def linear_ce_rows(
    x: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    probability: bool,
    ignore_index: int,
    eps: float,
    lam: float,
    cap: float,
    coef: torch.Tensor | None,
    want: tuple[bool, bool, bool],
    chunk_size: int | None = None,
):
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
    step = chunk_rows(P, V, chunk_size)
    for s0 in range(0, P, step):
        s1 = min(s0 + step, P)
        xc = x[s0:s1].to(acc) if upcast else x[s0:s1]
        z = xc @ Wm.T if bm is None else torch.addmm(bm, xc, Wm.T)  # (n, V)
        lc, g, sc = _chunk(
            z,
            target[s0:s1],
            weight,
            probability,
            ignore_index,
            eps,
            lam,
            cap,
            None if coef is None else coef[s0:s1],
            acc,
        )
        del z
        loss[s0:s1] = lc
        lse[s0:s1] = sc
        if g is None:
            continue
        if gx is not None:
            gx[s0:s1] = g @ Wm if upcast else g.to(W.dtype) @ W  # (n, D)
        if gw is not None:
            gw.addmm_(g.T, xc.to(acc))  # (V, D) accumulated in place
        if gb is not None:
            gb += g.sum(dim=0)
    return (loss, lse, gx, None if gw is None else gw.to(W.dtype), None if gb is None else gb.to(bias.dtype))
