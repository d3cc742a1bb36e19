"""The network's parameters: every weight and bias in one flat vector, with per-layer views.

Layout of the flat vector (and of its gradient, which has the same layout):

    [W_0, ..., W_{L-2} (fan_in, fan_out) C order;  W_out as (V, D) C order;  b_0, ..., b_out]

`coefs[i]` and `intercepts[i]` are views into it, `coefs[-1]` the (D, V) transpose view of W_out, so
the fused head reads W_out as (V, D) without a copy, the weights (for the L2 penalty) are the prefix
`params[:n_weights]`, and an optimizer updates everything with a few whole-vector operations.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["NetworkParameters", "hidden_layer_units"]


def hidden_layer_units(hidden_layer_sizes: object) -> tuple[int, ...]:
    """The `hidden_layer_sizes` parameter as a tuple of positive ints (an int n means (n,)).

    Raises ValueError naming the value when it is not an int >= 1 or an iterable of them.

    >>> hidden_layer_units(3), hidden_layer_units([4, 2]), hidden_layer_units(())
    ((3,), (4, 2), ())
    """
    h = hidden_layer_sizes
    if isinstance(h, numbers.Integral) and not isinstance(h, bool):
        h = (h,)
    try:
        h = tuple(h)
    except TypeError:
        raise ValueError(f"hidden_layer_sizes must be a tuple of positive ints, got {h!r}") from None
    if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 1 for u in h):
        raise ValueError(f"hidden_layer_sizes must be a tuple of positive ints, got {hidden_layer_sizes!r}")
    return tuple(int(u) for u in h)


class NetworkParameters:
    """Weights and biases of an MLP in one flat vector of one dtype (see the module docstring).

    Attributes:
        params, grads: the flat (size,) parameter vector and its gradient buffer.
        coefs, intercepts: per-layer views of `params`: (fan_in, fan_out) weights, (fan_out,) biases.
        grad_coefs, grad_intercepts: the same views of `grads`.
        out_weight, grad_out_weight: W_out and its gradient as (V, D) C-ordered views.
        n_weights: the weights' share of the vector, params[:n_weights] (the rest are biases).
    """

    def __init__(self, coefs: Sequence[np.ndarray], intercepts: Sequence[np.ndarray], dtype: npt.DTypeLike) -> None:
        """Copies `coefs` (fan_in, fan_out) and `intercepts` (fan_out,) into a new flat vector of `dtype`."""
        sizes = [c.size for c in coefs] + [b.size for b in intercepts]
        self.params = np.empty(sum(sizes), dtype=dtype)
        self.grads = np.zeros_like(self.params)
        self.coefs, self.grad_coefs, self.intercepts, self.grad_intercepts = [], [], [], []
        pos = 0
        for k, c in enumerate(coefs):
            last = k == len(coefs) - 1
            view, gview = self._views(pos, c.shape[::-1] if last else c.shape)
            if last:  # W_out is stored as (V, D); coefs[-1] is its (D, V) transpose view
                view[...] = c.T
                self.out_weight, self.grad_out_weight = view, gview
                view, gview = view.T, gview.T
            else:
                view[...] = c
            self.coefs.append(view)
            self.grad_coefs.append(gview)
            pos += c.size
        self.n_weights = pos
        for b in intercepts:
            view, gview = self._views(pos, b.shape)
            view[...] = b
            self.intercepts.append(view)
            self.grad_intercepts.append(gview)
            pos += b.size

    def _views(self, pos: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        size = int(np.prod(shape))
        return self.params[pos : pos + size].reshape(shape), self.grads[pos : pos + size].reshape(shape)

    @classmethod
    def glorot_uniform(
        cls, units: Sequence[int], dtype: npt.DTypeLike, rng: np.random.RandomState, *, factor: float
    ) -> NetworkParameters:
        """Weights and biases drawn from U(-b, b), b = sqrt(factor / (fan_in + fan_out)), layer by layer
        (as MLPClassifier: factor 2 for the logistic activation, else 6). `units` are the layer
        widths, inputs first and classes last."""
        coefs, intercepts = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(rng.uniform(-bound, bound, fan_out))
        return cls(coefs, intercepts, dtype)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every parameter."""
        return self.params.dtype

    @property
    def size(self) -> int:
        """The number of parameters."""
        return self.params.size

    @property
    def layer_units(self) -> list[int]:
        """The layer widths: [n_features, hidden sizes ..., n_classes]."""
        return [self.coefs[0].shape[0]] + [c.shape[1] for c in self.coefs]

    @property
    def weights(self) -> np.ndarray:
        """The weights (not the biases) as one flat view, params[:n_weights]."""
        return self.params[: self.n_weights]

    @property
    def grad_weights(self) -> np.ndarray:
        """The gradient of the weights as one flat view, grads[:n_weights]."""
        return self.grads[: self.n_weights]

    def snapshot(self) -> np.ndarray:
        """A copy of the flat parameter vector (for `restore`)."""
        return self.params.copy()

    def restore(self, snapshot: np.ndarray) -> None:
        """Writes a `snapshot()` back into the parameters (the views see it)."""
        self.params[...] = snapshot
