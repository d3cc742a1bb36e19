"""The float64 reference that `gradcheck` and `demo` check softmaxce's gradients against.

The loss is written from the math, independently of the kernels,

    ln a = z - lse(z),    l_n = (1 - eps) (-ln a_{n, y_n}) + (eps / C) sum_c (-ln a_{n, c}),

summed over the N rows (divided by N for reduction "mean"), and its gradient is taken by 4th-order
central finite differences (error O(h^4)):

    df/da_i ~ (-f(a + 2h e_i) + 8 f(a + h e_i) - 8 f(a - h e_i) + f(a - 2h e_i)) / (12 h).

Example: the seeds' worked example, y = [0, 1, 0] and a = [0.1, 0.6, 0.3], has the gradient a - y.

>>> import numpy as np
>>> z = np.log([[0.1, 0.6, 0.3]])
>>> round(reference_loss(z, np.array([1])), 4)  # -ln 0.6
0.5108
>>> np.round(central_difference(lambda zz: reference_loss(zz, np.array([1])), z), 6)
array([[ 0.1, -0.4,  0.3]])
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["central_difference", "fd_entry", "reference_loss"]


def reference_loss(z: np.ndarray, y: np.ndarray, *, reduction: str = "mean", label_smoothing: float = 0.0) -> float:
    """Softmax cross-entropy of logits z (N, C) and class indices y (N,) in float64 NumPy."""
    z = np.asarray(z, dtype=np.float64)  # (N, C)
    m = z.max(axis=1, keepdims=True)
    log_a = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))  # ln a = z - lse(z)
    n, c = z.shape
    eps = label_smoothing
    per_row = -(1 - eps) * log_a[np.arange(n), y] - (eps / c) * log_a.sum(axis=1)  # l_n
    return float(per_row.sum() / (n if reduction == "mean" else 1))


def fd_entry(f: Callable[[np.ndarray], float], a: np.ndarray, idx: tuple[int, ...], h: float = 1e-3) -> float:
    """4th-order central difference of f at a along entry idx, in float64 (error O(h^4)).

    The caller's array is never modified: f is evaluated on a private float64 copy.
    """
    a = np.array(a, dtype=np.float64)  # a private copy
    a0 = a[idx]
    vals = []
    for step in (2 * h, h, -h, -2 * h):
        a[idx] = a0 + step
        vals.append(f(a))
    return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)


def central_difference(f: Callable[[np.ndarray], float], a: np.ndarray) -> np.ndarray:
    """The finite-difference gradient of f at a, every entry (float64, a's shape)."""
    out = np.empty(np.shape(a), dtype=np.float64)
    for idx in np.ndindex(out.shape):
        out[idx] = fd_entry(f, a, idx)
    return out
