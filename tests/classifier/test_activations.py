"""The activation and derivative tables against NumPy formulas and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxce.classifier import SoftmaxClassifier
from softmaxce.classifier._activations import ACTIVATIONS, DERIVATIVES

_REFERENCE = {
    "identity": lambda u: u,
    "logistic": lambda u: 1 / (1 + np.exp(-u)),
    "tanh": np.tanh,
    "relu": lambda u: np.maximum(u, 0),
}


@pytest.mark.parametrize("name", sorted(_REFERENCE))
def test_activation_in_place(name):
    u = np.linspace(-4, 4, 17) + 0.01  # avoid relu's kink at 0
    h = u.copy()
    assert ACTIVATIONS[name](h) is None
    np.testing.assert_allclose(h, _REFERENCE[name](u), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("name", sorted(_REFERENCE))
def test_derivative_from_the_output_is_the_finite_difference(name):
    u = np.linspace(-3, 3, 13) + 0.01
    h = _REFERENCE[name](u)
    delta = np.linspace(0.5, 1.5, 13)
    expected = delta * (_REFERENCE[name](u + 1e-6) - _REFERENCE[name](u - 1e-6)) / 2e-6
    got = delta.copy()
    DERIVATIVES[name](h, got)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_every_tabled_activation_is_accepted_and_nothing_else():
    X, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20) % 2
    for name in ACTIVATIONS:
        SoftmaxClassifier((3,), name, max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="activation"):
        SoftmaxClassifier((3,), "softplus", max_iter=1).fit(X, y)
