"""The row math of softmax cross-entropy in torch primitives, written once (docs/SEMANTICS.md).

For one position (a row) with logits z over C classes, soft-capped to s tanh(z / s) when softcap s
is set, a = softmax(z), class weights w (all ones when None), eps = label_smoothing, lam = z_loss
and k = dJ/dl_n, the upstream coefficient of the row:

    lse   = m + ln sum_j exp(z_j - m),  m = max_j z_j,      ln a = (z - m) - ln S
    beta  = (1 - eps) w_y e_y + (eps / C) w,   omega = w_y  (class index y; both 0 when ignored)
    beta  = w * ((1 - eps) t + eps / C),       omega = 1    (probability target t)
    beta  = w * ((1 - eps) scatter(v) + eps / C), omega = 1 (sparse target: entries (i_k, v_k))
    loss  = -sum_j beta_j ln a_j + lam omega lse^2
    alpha = sum_j beta_j + 2 lam omega lse
    G     = dl/dz = k (alpha a - beta),  times 1 - tanh^2(z / s) with softcap s
    dl/dt = -(1 - eps) k w ln a                                (probability target)
    dl/dv_k = (1 - eps) k w_{i_k} (lse - z_{i_k})              (sparse target: dl/dt gathered)

A sparse target never forms beta: its sums over the classes are K gathers plus the dense smoothing
term, and its gradient is the dense part alpha a - (eps / C) w plus a scatter of K entries
(`sparse_sums`, `index_grad_` with K columns; an entry with i_k < 0 is padding, its b_k is 0).

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
    "sparse_entries",
    "sparse_sums",
    "sparse_values_grad",
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


def sparse_entries(
    indices: Tensor, values: Tensor, w: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(kept (n,) bool, pad (n, K) bool, i (n, K) int64 clamped to >= 0, b (n, K)) of a sparse target's
    rows: b_k = w_{i_k} v_k, exactly 0 at padding (i_k < 0); a row is kept when one entry is not padding."""
    pad = indices < 0
    i = indices.clamp(min=0).long()  # padding points at class 0, masked below
    b = values.to(dtype)
    if w is not None:
        b = b * w[i]  # b_k = w_{i_k} v_k
    return ~pad.all(dim=1), pad, i, torch.where(pad, 0.0, b)


def sparse_sums(
    nll: Tensor, pad: Tensor, b: Tensor, nll_w: Tensor | None, w_sum: Tensor | float, eps: float, num_classes: int
) -> tuple[Tensor, Tensor]:
    """(-sum_c beta_c ln a_c, sum_c beta_c) per row for a sparse target, from nll = -ln a gathered at
    the entries (n, K), b from `sparse_entries` and nll_w = -sum_c w_c ln a_c (read only when eps > 0):

        -sum_c beta_c ln a_c = (1 - eps) sum_k b_k (-ln a_{i_k}) + (eps / C) sum_c w_c (-ln a_c)
         sum_c beta_c        = (1 - eps) sum_k b_k              + (eps / C) sum_c w_c
    """
    smooth = eps / num_classes if num_classes > 0 else 0.0
    # padding contributes exactly nothing, even where its clamped column's ln a is -inf
    ce = (1.0 - eps) * torch.where(pad, 0.0, b * nll).sum(dim=1)
    beta_sum = (1.0 - eps) * b.sum(dim=1)
    if smooth:
        ce = ce + smooth * nll_w
        beta_sum = beta_sum + smooth * w_sum
    return ce, beta_sum


def sparse_values_grad(nll: Tensor, pad: Tensor, i: Tensor, k: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """dl/dv_k = (1 - eps) k w_{i_k} (lse - z_{i_k}) = -(1 - eps) k w_{i_k} ln a_{i_k}, 0 at padding;
    nll (n, K) = -ln a at the entries, k (n,) the rows' coefficients."""
    g = nll * ((1.0 - eps) * k).unsqueeze(1)
    if w is not None:
        g = g * w[i]
    return torch.where(pad, 0.0, g)


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
    """a (n, C) <- G = k (alpha a - (1 - eps) sum_k w_yk e_yk - (eps / C) w), in place; ignored rows
    exactly 0.

    y (n, K) are column indices into a and w_y the weights subtracted there, (n,) for K = 1 (a class
    index) or (n, K) (a sparse target: w_{i_k} v_k, 0 at padding; duplicates subtract twice). The
    vocabulary-parallel head passes 0 on the ranks that do not hold the column; w (C,) is a's columns'
    weights.
    """
    smooth = eps / num_classes if num_classes > 0 else 0.0
    a.mul_((alpha * k).unsqueeze(1))  # k alpha a
    if smooth and w is not None:
        a.addr_(k, w, alpha=-smooth)  # - k (eps / C) w
    elif smooth:
        a.sub_(k.unsqueeze(1) * smooth)
    a.scatter_add_(1, y, w_y.reshape(y.shape) * (-(1.0 - eps) * k).unsqueeze(1))  # - k (1 - eps) w_y e_y
    return a.masked_fill_(~kept.unsqueeze(1), 0.0)


def target_grad(log_a: Tensor, k: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """dl/dt = -(1 - eps) k w ln a for a probability target; k is 0-d or (n, 1)."""
    g = log_a * (-(1.0 - eps) * k)
    return g if w is None else g * w
