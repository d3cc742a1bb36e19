"""The row math of softmax cross-entropy in torch primitives, written once (SEMANTICS.md).

For one position (a row) with logits z over C classes, soft-capped to s tanh(z / s) when softcap s
is set, a = softmax(z), class weights w (all ones when None), eps = label_smoothing, lam = z_loss
and k = dJ/dl_n, the upstream coefficient of the row:

    lse   = m + ln sum_j exp(z_j - m),  m = max_j z_j,      ln a = (z - m) - ln S
    beta  = (1 - eps) w_y e_y + (eps / C) w,   omega = w_y  (class index y; both 0 when ignored)
    beta  = w * ((1 - eps) t + eps / C),       omega = 1    (probability target t)
    loss  = -sum_j beta_j ln a_j + lam omega lse^2
    alpha = sum_j beta_j + 2 lam omega lse
    G     = dl/dz = k (alpha a - beta),  times 1 - tanh^2(z / s) with softcap s
    dl/dt = -(1 - eps) k w ln a                                (probability target)

The callers differ only in how they get the sums over a row's classes: the chunked path
(`_chunked.py`) holds whole rows and sums them itself; the vocabulary-parallel head
(`_vocab_parallel.py`) assembles them from every rank's shard and passes the global sums in. So the
functions below take per-row sums (shape (n,)) and per-class tensors (shape (n, C)) as arguments,
and none reads a value on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "index_target",
    "index_grad_",
    "index_sums",
    "log_probs",
    "log_softmax",
    "loss_and_alpha",
    "probability_beta",
    "probability_grad_",
    "soft_cap_",
    "soft_cap_grad_",
    "target_grad",
]


def soft_cap_(z: Tensor, cap: float) -> Tensor:
    """z <- cap tanh(z / cap) in place (Gemma 2); the caller owns z."""
    return z.div_(cap).tanh_().mul_(cap)


def soft_cap_grad_(g: Tensor, z_capped: Tensor, cap: float) -> Tensor:
    """g <- g (1 - tanh^2(z / cap)) in place: d(cap tanh(z / cap))/dz, from the capped logits."""
    return g.mul_((z_capped / cap).square_().neg_().add_(1.0))


def log_softmax(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ln a (n, C), exp(z - m) (n, C), lse (n,)) of logits z (n, C), without exp() of a raw logit.

    A row whose max is +inf, -inf or NaN gives NaN, as torch.log_softmax does.
    """
    n, C = z.shape
    m = z.amax(dim=1, keepdim=True) if C > 0 else z.new_zeros((n, 1))  # (n, 1)
    log_a = z - m
    e = torch.exp(log_a)  # exp(z - m) <= 1
    log_s = torch.log(e.sum(dim=1, keepdim=True))  # ln S, S = sum_j exp(z_j - m)
    log_a.sub_(log_s)  # ln a = (z - m) - ln S
    return log_a, e, (m + log_s).squeeze(1)


def log_probs(z: Tensor, m: Tensor, log_s: Tensor) -> Tensor:
    """ln a = (z - m) - ln S (n, C) from a row's max m (n,) and ln S (n,) known already: z - m is
    exact near the max, so this is as accurate as z - lse and never exp()s a raw logit."""
    return (z - m.unsqueeze(1)).sub_(log_s.unsqueeze(1))


def probability_beta(t: Tensor, w: Tensor | None, eps: float, num_classes: int) -> Tensor:
    """beta = w t' with t' = (1 - eps) t + eps / C, a fresh (n, C) tensor."""
    smooth = eps / num_classes if num_classes > 0 else 0.0
    beta = t * (1.0 - eps) + smooth  # t' = (1 - eps) t + eps / C
    return beta if w is None else beta.mul_(w)  # beta = w t'


def index_target(t: Tensor, ignore_index: int, w: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(kept (n,) bool, y (n, 1) int64, w_y (n,)) of class indices t: w_y = w[y], 0 where ignored."""
    kept = t != ignore_index
    y = torch.where(kept, t, 0).long().unsqueeze(1)  # ignored rows point at class 0, masked below
    w_y = torch.ones(t.shape[0], dtype=dtype, device=t.device) if w is None else w[y.squeeze(1)]
    return kept, y, torch.where(kept, w_y, 0.0)


def index_sums(
    nll_y: Tensor, nll_w: Tensor | None, w_y: Tensor, w_sum: Tensor | float, eps: float, num_classes: int
) -> tuple[Tensor, Tensor]:
    """(-sum_j beta_j ln a_j, sum_j beta_j) per row for a class-index target, from
    nll_y = -ln a_y and nll_w = -sum_c w_c ln a_c (read only when eps > 0) and w_sum = sum_c w_c."""
    smooth = eps / num_classes if num_classes > 0 else 0.0
    ce = (1.0 - eps) * w_y * nll_y  # (1 - eps) w_y (-ln a_y)
    beta_sum = (1.0 - eps) * w_y
    if smooth:
        ce = ce + smooth * nll_w  # + (eps / C) sum_c w_c (-ln a_c)
        beta_sum = beta_sum + smooth * w_sum  # sum_j beta_j = (1 - eps) w_y + (eps / C) sum_c w_c
    return ce, beta_sum


def loss_and_alpha(
    ce: Tensor, beta_sum: Tensor, lse: Tensor, lam: float, omega: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(loss, alpha) per row: loss = ce + lam omega lse^2, alpha = sum_j beta_j + 2 lam omega lse,
    with ce = -sum_j beta_j ln a_j; omega None means 1 (probability targets)."""
    if not lam:
        return ce, beta_sum
    if omega is None:
        return ce + lam * lse * lse, beta_sum + 2.0 * lam * lse
    return ce + omega * lam * lse * lse, beta_sum + 2.0 * lam * omega * lse


def probability_grad_(a: Tensor, k: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """a (n, C) <- G = k (alpha a - beta), in place; k and alpha are (n,)."""
    a.mul_((alpha * k).unsqueeze(1))  # k alpha a
    return a.addcmul_(beta, k.unsqueeze(1), value=-1.0)  # - k beta


def index_grad_(
    a: Tensor,
    k: Tensor,
    alpha: Tensor,
    kept: Tensor,
    y: Tensor,
    w_y: Tensor,
    w: Tensor | None,
    eps: float,
    num_classes: int,
) -> Tensor:
    """a (n, C) <- G = k (alpha a - (1 - eps) w_y e_y - (eps / C) w), in place; ignored rows exactly 0.

    y (n, 1) are column indices into a and w_y (n,) the weight subtracted there (the vocabulary-parallel
    head passes 0 on the ranks that do not hold the target class); w (C,) is a's columns' weights.
    """
    smooth = eps / num_classes if num_classes > 0 else 0.0
    a.mul_((alpha * k).unsqueeze(1))  # k alpha a
    if smooth and w is not None:
        a.addr_(k, w, alpha=-smooth)  # - k (eps / C) w
    elif smooth:
        a.sub_(k.unsqueeze(1) * smooth)
    a.scatter_add_(1, y, (-(1.0 - eps) * w_y * k).unsqueeze(1))  # - k (1 - eps) w_y e_y
    return a.masked_fill_(~kept.unsqueeze(1), 0.0)


def target_grad(log_a: Tensor, k: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """dl/dt = -(1 - eps) k w ln a for a probability target; k is 0-d or (n, 1)."""
    g = log_a * (-(1.0 - eps) * k)
    return g if w is None else g * w
