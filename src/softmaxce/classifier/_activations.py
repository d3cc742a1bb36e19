"""Hidden-layer activations and their derivatives, as tables keyed by the `activation` parameter.

    identity(u) = u                      identity' = 1
    logistic(u) = 1 / (1 + exp(-u))      logistic' = h (1 - h)
    tanh(u)                              tanh'     = 1 - h^2
    relu(u)     = max(u, 0)              relu'     = 1 where h > 0, else 0

Each derivative is written with the activation's output h = act(u), which back-propagation has at
hand, so the pre-activation u need not be kept. Both tables work in place (as scikit-learn's
`sklearn/neural_network/_base.py`): `ACTIVATIONS[name](h)` turns u into act(u), and
`DERIVATIVES[name](h, delta)` multiplies delta by act'(u).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import expit

__all__ = ["ACTIVATIONS", "DERIVATIVES"]


def _identity(h: np.ndarray) -> None:
    """h <- h."""


def _logistic(h: np.ndarray) -> None:
    expit(h, out=h)  # h <- 1 / (1 + exp(-h))


def _tanh(h: np.ndarray) -> None:
    np.tanh(h, out=h)


def _relu(h: np.ndarray) -> None:
    np.maximum(h, 0, out=h)  # h <- max(h, 0)


def _identity_derivative(h: np.ndarray, delta: np.ndarray) -> None:
    """delta <- delta * 1."""


def _logistic_derivative(h: np.ndarray, delta: np.ndarray) -> None:
    delta *= h * (1 - h)  # sigma' = sigma (1 - sigma)


def _tanh_derivative(h: np.ndarray, delta: np.ndarray) -> None:
    delta *= 1 - h * h  # tanh' = 1 - tanh^2


def _relu_derivative(h: np.ndarray, delta: np.ndarray) -> None:
    delta *= h > 0  # relu'(u) = 1 for u > 0, where h = u > 0


ACTIVATIONS: dict[str, Callable[[np.ndarray], None]] = {
    "identity": _identity,
    "logistic": _logistic,
    "tanh": _tanh,
    "relu": _relu,
}

DERIVATIVES: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "identity": _identity_derivative,
    "logistic": _logistic_derivative,
    "tanh": _tanh_derivative,
    "relu": _relu_derivative,
}
