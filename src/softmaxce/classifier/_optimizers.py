"""Stochastic optimizers on one flat parameter vector (as scikit-learn's `_stochastic_optimizers.py`).

    sgd:  u <- mu u - lr g;  p <- p + u            (Nesterov: p <- p + mu u - lr g)
    adam: m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
          p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)

Every parameter of the network sits in one flat vector (see `_network.py`), so one update is a few
whole-vector NumPy operations into a scratch buffer, with no per-layer loop. The estimator calls
`update_params` once per mini-batch, `iteration_ends` once per epoch, and `trigger_stopping` when
the epochs stop improving. `get_state` / `set_state` hand the state to persistence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["AdamOptimizer", "BaseOptimizer", "SGDOptimizer", "make_optimizer"]


class BaseOptimizer:
    """What both optimizers share: the step size, the flat vector's size and dtype, the stop rule.

    Attributes:
        solver: the `solver` parameter that selects this optimizer.
        state_arrays: names of the flat arrays in `get_state()` (each of shape (size,)).
    """

    solver = ""
    state_arrays: tuple[str, ...] = ()

    def __init__(self, size: int, dtype: npt.DTypeLike, learning_rate_init: float) -> None:
        self.size, self.dtype = size, np.dtype(dtype)
        self.learning_rate_init = self.learning_rate = float(learning_rate_init)
        self._tmp = np.empty(size, dtype=dtype)

    def update_params(self, params: np.ndarray, grads: np.ndarray) -> None:
        """params <- params + step(grads), in place; both are flat (size,) vectors."""
        raise NotImplementedError

    def iteration_ends(self, time_step: int) -> None:
        """Called after each epoch with the number of samples seen so far."""

    def trigger_stopping(self, msg: str, verbose: bool) -> bool:
        """The epochs stopped improving: returns whether training stops (printing `msg` if verbose)."""
        if verbose:
            print(msg + " Stopping.")
        return True

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(scalars, arrays): the JSON-safe scalars and the flat arrays that resume this optimizer."""
        raise NotImplementedError

    def set_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restores what `get_state` returned (the arrays are copied into this optimizer's dtype)."""
        raise NotImplementedError


class SGDOptimizer(BaseOptimizer):
    """SGD with momentum / Nesterov momentum and a learning-rate schedule, as in MLPClassifier.

    schedule: "constant"; "invscaling": lr = lr_init / (t + 1)**power_t with t the samples seen;
    "adaptive": lr /= 5 each time the epochs stop improving, until lr <= 1e-6.
    """

    solver = "sgd"
    state_arrays = ("velocity",)

    def __init__(
        self,
        size: int,
        dtype: npt.DTypeLike,
        learning_rate_init: float,
        *,
        schedule: str,
        momentum: float,
        nesterov: bool,
        power_t: float,
    ) -> None:
        super().__init__(size, dtype, learning_rate_init)
        self.schedule, self.momentum, self.nesterov, self.power_t = schedule, momentum, nesterov, power_t
        self.velocity = np.zeros(size, dtype=dtype)

    def update_params(self, params: np.ndarray, grads: np.ndarray) -> None:
        """u <- mu u - lr g, then p <- p + u (Nesterov: p <- p + mu u - lr g)."""
        mu, lr, u, tmp = self.momentum, self.learning_rate, self.velocity, self._tmp
        u *= mu
        np.multiply(grads, lr, out=tmp)  # lr g
        u -= tmp
        if self.nesterov:
            params += mu * u
            params -= tmp
        else:
            params += u

    def iteration_ends(self, time_step: int) -> None:
        """ "invscaling": lr = lr_init / (time_step + 1)**power_t."""
        if self.schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg: str, verbose: bool) -> bool:
        """Stops, except with the "adaptive" schedule, which divides lr by 5 until lr <= 1e-6."""
        if self.schedule != "adaptive":
            return super().trigger_stopping(msg, verbose)
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + f" Setting learning rate to {self.learning_rate:f}")
        return False

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """({"learning_rate"}, {"velocity"})."""
        return {"learning_rate": self.learning_rate}, {"velocity": self.velocity}

    def set_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restores the current learning rate and the velocity."""
        self.learning_rate = float(scalars["learning_rate"])
        self.velocity[...] = arrays["velocity"]


class AdamOptimizer(BaseOptimizer):
    """Adam (Kingma & Ba), as in MLPClassifier; `learning_rate` holds the last bias-corrected step size."""

    solver = "adam"
    state_arrays = ("m", "v")

    def __init__(
        self,
        size: int,
        dtype: npt.DTypeLike,
        learning_rate_init: float,
        *,
        beta_1: float,
        beta_2: float,
        epsilon: float,
    ) -> None:
        super().__init__(size, dtype, learning_rate_init)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.m = np.zeros(size, dtype=dtype)
        self.v = np.zeros(size, dtype=dtype)

    def update_params(self, params: np.ndarray, grads: np.ndarray) -> None:
        """One Adam step: m, v, then p <- p - lr_t m / (sqrt(v) + eps)."""
        self.t += 1
        b1, b2, tmp = self.beta_1, self.beta_2, self._tmp
        lr = self.learning_rate_init * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)  # lr_t, bias-corrected
        self.learning_rate = lr
        self.m *= b1
        np.multiply(grads, 1 - b1, out=tmp)
        self.m += tmp  # m <- b1 m + (1 - b1) g
        self.v *= b2
        np.multiply(grads, grads, out=tmp)
        tmp *= 1 - b2
        self.v += tmp  # v <- b2 v + (1 - b2) g^2
        np.sqrt(self.v, out=tmp)
        tmp += self.epsilon
        np.divide(self.m, tmp, out=tmp)
        tmp *= lr
        params -= tmp  # p <- p - lr_t m / (sqrt(v) + eps)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """({"t"}, {"m", "v"})."""
        return {"t": self.t}, {"m": self.m, "v": self.v}

    def set_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restores the step count and both moment vectors."""
        self.t = int(scalars["t"])
        self.m[...] = arrays["m"]
        self.v[...] = arrays["v"]


def make_optimizer(params: Mapping[str, Any], size: int, dtype: npt.DTypeLike) -> BaseOptimizer:
    """The optimizer that `params["solver"]` selects, for a flat vector of `size` parameters.

    Args:
        params: the estimator's parameters (`get_params()`): solver, learning_rate_init, and
            beta_1, beta_2, epsilon (adam) or learning_rate, momentum, nesterovs_momentum, power_t (sgd).
        size, dtype: the flat parameter vector's.
    """
    p, lr = params, params["learning_rate_init"]
    if p["solver"] == "adam":
        return AdamOptimizer(size, dtype, lr, beta_1=p["beta_1"], beta_2=p["beta_2"], epsilon=p["epsilon"])
    sgd = dict(schedule=p["learning_rate"], momentum=p["momentum"], nesterov=p["nesterovs_momentum"])
    return SGDOptimizer(size, dtype, lr, power_t=p["power_t"], **sgd)
