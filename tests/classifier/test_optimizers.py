"""sgd and adam on a flat vector against their formulas written out in float64, state round trips."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxce.classifier._optimizers import AdamOptimizer, SGDOptimizer, make_optimizer

_PARAMS = dict(
    solver="adam",
    learning_rate_init=0.1,
    beta_1=0.8,
    beta_2=0.9,
    epsilon=1e-6,
    learning_rate="constant",
    momentum=0.7,
    nesterovs_momentum=True,
    power_t=0.5,
)


def _grads(steps, size=7, seed=0):
    return np.random.default_rng(seed).standard_normal((steps, size))


def test_adam_follows_its_formula():
    grads = _grads(5)
    p0 = np.linspace(-1, 1, 7)
    opt = AdamOptimizer(7, np.float64, 0.1, beta_1=0.8, beta_2=0.9, epsilon=1e-6)
    params = p0.copy()
    p, m, v = p0.copy(), np.zeros(7), np.zeros(7)
    for t, g in enumerate(grads, start=1):
        opt.update_params(params, g)
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g**2
        lr_t = 0.1 * np.sqrt(1 - 0.9**t) / (1 - 0.8**t)
        p = p - lr_t * m / (np.sqrt(v) + 1e-6)
        np.testing.assert_allclose(params, p, rtol=1e-13)
        assert opt.t == t and opt.learning_rate == pytest.approx(lr_t, rel=1e-15)


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_sgd_follows_its_formula(nesterov):
    grads = _grads(4, seed=1)
    opt = SGDOptimizer(7, np.float64, 0.05, schedule="constant", momentum=0.7, nesterov=nesterov, power_t=0.5)
    params = np.ones(7)
    p, u = np.ones(7), np.zeros(7)
    for g in grads:
        opt.update_params(params, g)
        u = 0.7 * u - 0.05 * g
        p = p + (0.7 * u - 0.05 * g if nesterov else u)
        np.testing.assert_allclose(params, p, rtol=1e-14)


def test_invscaling_schedule():
    opt = SGDOptimizer(3, np.float64, 0.5, schedule="invscaling", momentum=0.0, nesterov=False, power_t=0.25)
    opt.iteration_ends(99)
    assert opt.learning_rate == pytest.approx(0.5 / 100**0.25)
    constant = SGDOptimizer(3, np.float64, 0.5, schedule="constant", momentum=0.0, nesterov=False, power_t=0.25)
    constant.iteration_ends(99)
    assert constant.learning_rate == 0.5


def test_adaptive_divides_by_five_then_stops(capsys):
    opt = SGDOptimizer(3, np.float64, 1e-5, schedule="adaptive", momentum=0.0, nesterov=False, power_t=0.5)
    assert opt.trigger_stopping("no progress.", verbose=True) is False
    assert opt.learning_rate == pytest.approx(2e-6)
    assert opt.trigger_stopping("no progress.", verbose=True) is False  # 4e-7
    assert opt.trigger_stopping("no progress.", verbose=True) is True
    out = capsys.readouterr().out
    assert "Setting learning rate to" in out and "Learning rate too small. Stopping." in out


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_other_optimizers_stop_at_once(solver, capsys):
    opt = make_optimizer({**_PARAMS, "solver": solver}, 3, np.float64)
    assert opt.trigger_stopping("no progress.", verbose=True) is True
    assert capsys.readouterr().out == "no progress. Stopping.\n"


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_round_trip_resumes_exactly(solver, dtype):
    grads = _grads(6, seed=2).astype(dtype)
    a = make_optimizer({**_PARAMS, "solver": solver}, 7, dtype)
    assert a.solver == solver and a.dtype == dtype
    pa = np.zeros(7, dtype=dtype)
    for g in grads[:3]:
        a.update_params(pa, g)
    scalars, arrays = a.get_state()
    assert set(arrays) == set(a.state_arrays) and all(x.shape == (7,) for x in arrays.values())
    b = make_optimizer({**_PARAMS, "solver": solver}, 7, dtype)
    b.set_state(scalars, {k: x.copy() for k, x in arrays.items()})
    pb = pa.copy()
    for g in grads[3:]:
        a.update_params(pa, g)
        b.update_params(pb, g)
    np.testing.assert_array_equal(pa, pb)


def test_update_leaves_the_gradient_alone():
    for solver in ("adam", "sgd"):
        opt = make_optimizer({**_PARAMS, "solver": solver}, 7, np.float64)
        g = _grads(1)[0]
        copy = g.copy()
        opt.update_params(np.zeros(7), g)
        np.testing.assert_array_equal(g, copy)
