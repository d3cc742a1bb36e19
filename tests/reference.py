"""A float64 NumPy reference of softmax cross-entropy, written from the math in SEMANTICS.md.

It favours reading like the formulas over speed: every front end's tests may compare against it.
For one position with logits z (optionally soft-capped: zc = s tanh(z / s)), log-probabilities
ln a = zc - lse(zc), class weights w (ones when None) and eps = label_smoothing:

    index target y:        l = (1 - eps) w_y (-ln a_y) + (eps / C) sum_c w_c (-ln a_c) + w_y lam lse^2
    probability target t:  l = -sum_c w_c t'_c ln a_c + lam lse^2,      t' = (1 - eps) t + eps / C

and the gradient with respect to zc (then times 1 - tanh^2 for the softcap):

    index target:          (1 - eps) w_y (a - e_y) + (eps / C) ((sum_c w_c) a - w) + 2 lam w_y lse a
    probability target:    (sum_c w_c t'_c) a - w t' + 2 lam lse a
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["central_difference_grad", "reference_cross_entropy", "reference_log_softmax", "reference_stats"]


def _rows(a: np.ndarray) -> np.ndarray:
    """(C) -> (1, C); (N, C, d1..dk) -> (N * d1..dk, C): class axis last, positions flattened."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return a[None, :]
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _unrows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `_rows` for an array of the logits' shape."""
    if len(shape) == 1:
        return rows.reshape(shape)
    moved = (shape[0],) + shape[2:] + (shape[1],)
    return np.moveaxis(rows.reshape(moved), -1, 1)


def _positions_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if len(shape) == 1 else (shape[0],) + shape[2:]


def reference_log_softmax(z_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ln a, lse) for (P, C) float64 rows: lse = m + ln sum_j exp(z_j - m), m = max_j z_j."""
    m = np.max(z_rows, axis=-1) if z_rows.shape[-1] else np.full(z_rows.shape[0], -np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        lse = m_safe + np.log(np.sum(np.exp(z_rows - m_safe[:, None]), axis=-1))
        return z_rows - lse[:, None], lse


def _capped(logits: np.ndarray, softcap: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(zc, dzc/dz) for (P, C) rows: zc = s tanh(z / s) and its derivative 1 - tanh(z / s)^2."""
    if softcap is None:
        return logits, np.ones_like(logits)
    t = np.tanh(logits / softcap)
    return softcap * t, 1.0 - t * t


def reference_cross_entropy(
    logits,
    target,
    *,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(loss, grad_logits) in float64, following SEMANTICS.md (PyTorch's cross_entropy + z_loss/softcap).

    `grad_output` (default 1) is the upstream gradient: a scalar, or per position for "none".
    The loss is a 0-d array for "mean"/"sum" and of the per-position shape for "none"; the gradient
    has the logits' shape. No input validation: feed it valid problems.
    """
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target)
    shape = logits.shape
    positions = _positions_shape(shape)
    C = shape[0] if logits.ndim == 1 else shape[1]
    z, dcap = _capped(_rows(logits), softcap)  # (P, C)
    P = z.shape[0]
    logp, lse = reference_log_softmax(z)  # (P, C), (P,)
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.exp(logp)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    eps, lam = float(label_smoothing), float(z_loss)

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if target.shape == shape:  # probability target
            t = (1.0 - eps) * _rows(target) + eps / C  # t' (P, C)
            beta = w * t
            # l = -sum_c w_c t'_c ln a_c + lam lse^2   (no 0 * log 0 = 0 rule)
            loss_rows = -np.sum(beta * logp, axis=-1) + lam * lse**2
            grad_rows = np.sum(beta, axis=-1, keepdims=True) * a - beta + (2.0 * lam * lse)[:, None] * a
            normalizer = float(P)
            kept = np.ones(P, dtype=bool)
        else:  # class-index target
            y = target.reshape(P).astype(np.int64)
            kept = y != ignore_index
            y_safe = np.where(kept, y, 0)
            w_y = np.where(kept, w[y_safe], 0.0)
            nll = -logp[np.arange(P), y_safe]  # -ln a_y
            smooth = -np.sum(w * logp, axis=-1)  # sum_c w_c (-ln a_c)
            loss_rows = (1.0 - eps) * w_y * nll + w_y * lam * lse**2
            if eps > 0.0:  # (skipped when off: 0 * inf would be NaN for a -inf logit)
                loss_rows = loss_rows + eps / C * smooth
            onehot = np.zeros((P, C))
            onehot[np.arange(P), y_safe] = 1.0
            grad_rows = (
                ((1.0 - eps) * w_y)[:, None] * (a - onehot)
                + eps / C * (np.sum(w) * a - w)
                + (2.0 * lam * w_y * lse)[:, None] * a
            )
            loss_rows = np.where(kept, loss_rows, 0.0)
            grad_rows = np.where(kept[:, None], grad_rows, 0.0)
            normalizer = float(np.sum(w_y))
        grad_rows = grad_rows * dcap  # chain rule through the softcap

        if grad_output is None:
            go = np.ones(P)
        elif reduction == "none":
            go = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), positions).reshape(P)
        else:
            go = np.full(P, float(np.asarray(grad_output).reshape(())))
        if reduction == "none":
            loss = loss_rows.reshape(positions)
            coef = go
        elif reduction == "sum":
            loss = np.asarray(np.sum(loss_rows))
            coef = go
        else:
            # as PyTorch: 0 / 0 (all ignored, empty batch) is NaN, x / 0 (kept weights summing to 0) is +-inf
            loss = np.asarray(np.float64(np.sum(loss_rows)) / np.float64(normalizer))
            coef = go / normalizer
        grad_rows = np.where(kept[:, None], coef[:, None] * grad_rows, 0.0)
    return loss, _unrows(grad_rows, shape)


def reference_stats(logits, *, softcap: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lse, predicted, entropy) per position in float64 for the (soft-capped) logits."""
    logits = np.asarray(logits, dtype=np.float64)
    positions = _positions_shape(logits.shape)
    z, _ = _capped(_rows(logits), softcap)
    logp, lse = reference_log_softmax(z)
    a = np.exp(logp)
    entropy = -np.sum(np.where(a > 0, a * logp, 0.0), axis=-1)  # 0 ln 0 = 0 here
    return lse.reshape(positions), np.argmax(z, axis=-1).reshape(positions), entropy.reshape(positions)


def central_difference_grad(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """4th-order central finite differences of a scalar function f at x (float64), entry by entry:

        df/dx_i ~ (-f(x + 2h e_i) + 8 f(x + h e_i) - 8 f(x - h e_i) + f(x - 2h e_i)) / (12 h)

    with error O(h^4). x is not modified.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        x0 = flat[i]
        vals = []
        for step in (2.0, 1.0, -1.0, -2.0):
            flat[i] = x0 + step * h
            vals.append(float(f(x.copy())))
        flat[i] = x0
        g[i] = (-vals[0] + 8.0 * vals[1] - 8.0 * vals[2] + vals[3]) / (12.0 * h)
    return grad
