"""NetworkParameters: one flat vector with per-layer views, its layout, Glorot initialization."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxce.classifier._network import NetworkParameters, hidden_layer_units


def _layers(units, seed=0):
    rng = np.random.default_rng(seed)
    coefs = [rng.standard_normal((a, b)) for a, b in zip(units[:-1], units[1:], strict=True)]
    intercepts = [rng.standard_normal(b) for b in units[1:]]
    return coefs, intercepts


@pytest.mark.parametrize("units", [[3, 5], [4, 7, 2], [5, 3, 6, 11]], ids=["no-hidden", "one-hidden", "two-hidden"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_views_hold_the_given_values_in_the_documented_layout(units, dtype):
    coefs, intercepts = _layers(units)
    net = NetworkParameters(coefs, intercepts, dtype)
    assert net.dtype == dtype and net.layer_units == units
    for view, c in zip(net.coefs, coefs, strict=True):
        np.testing.assert_array_equal(view, c.astype(dtype))
        assert np.shares_memory(view, net.params)
    for view, b in zip(net.intercepts, intercepts, strict=True):
        np.testing.assert_array_equal(view, b.astype(dtype))
    # [W_0 ... W_{L-2} C order, W_out as (V, D) C order, b_0 ... b_out]
    expected = np.concatenate([c.ravel() for c in coefs[:-1]] + [coefs[-1].T.ravel()] + [b for b in intercepts]).astype(
        dtype
    )
    np.testing.assert_array_equal(net.params, expected)
    assert net.size == expected.size and net.n_weights == sum(c.size for c in coefs)
    np.testing.assert_array_equal(net.weights, expected[: net.n_weights])
    assert net.out_weight.shape == (units[-1], units[-2]) and net.out_weight.flags.c_contiguous
    np.testing.assert_array_equal(net.out_weight.T, net.coefs[-1])


def test_gradient_views_match_the_parameter_views():
    net = NetworkParameters(*_layers([4, 6, 3]), np.float64)
    net.grads[...] = np.arange(net.size)
    np.testing.assert_array_equal(np.concatenate([g.ravel() for g in net.grad_coefs[:-1]]), np.arange(24))
    np.testing.assert_array_equal(net.grad_out_weight.ravel(), np.arange(24, 42))
    np.testing.assert_array_equal(net.grad_coefs[-1], net.grad_out_weight.T)
    np.testing.assert_array_equal(net.grad_intercepts[1], np.arange(48, 51))
    np.testing.assert_array_equal(net.grad_weights, np.arange(42))


def test_the_caller_arrays_are_copied_not_modified():
    coefs, intercepts = _layers([3, 4, 2])
    copies = [c.copy() for c in coefs]
    net = NetworkParameters(coefs, intercepts, np.float64)
    net.params[...] = 0.0
    for c, copy in zip(coefs, copies, strict=True):
        np.testing.assert_array_equal(c, copy)


def test_snapshot_and_restore():
    net = NetworkParameters(*_layers([3, 4, 2]), np.float64)
    saved = net.snapshot()
    net.params *= 2.0
    assert not np.array_equal(net.coefs[0], saved[:12].reshape(3, 4))
    net.restore(saved)
    np.testing.assert_array_equal(net.params, saved)
    np.testing.assert_array_equal(net.coefs[0], saved[:12].reshape(3, 4))  # the views see it


@pytest.mark.parametrize("factor", [2.0, 6.0])
def test_glorot_uniform_bounds_and_seed(factor):
    units = [20, 30, 10]
    a = NetworkParameters.glorot_uniform(units, np.float64, np.random.RandomState(0), factor=factor)
    b = NetworkParameters.glorot_uniform(units, np.float64, np.random.RandomState(0), factor=factor)
    np.testing.assert_array_equal(a.params, b.params)
    for (fan_in, fan_out), c, bias in zip(zip(units[:-1], units[1:], strict=True), a.coefs, a.intercepts, strict=True):
        bound = np.sqrt(factor / (fan_in + fan_out))
        assert np.abs(c).max() <= bound and np.abs(bias).max() <= bound
        assert np.abs(c).max() > 0.8 * bound  # spread over the whole interval


def test_hidden_layer_units():
    assert hidden_layer_units(5) == (5,)
    assert hidden_layer_units(np.int64(5)) == (5,)
    assert hidden_layer_units([3, 2]) == (3, 2)
    assert hidden_layer_units(()) == ()
    for bad in [(0,), (2, -1), (True,), (1.5,), "ab", None]:
        with pytest.raises(ValueError, match="hidden_layer_sizes must be a tuple of positive ints"):
            hidden_layer_units(bad)
