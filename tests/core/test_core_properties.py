"""Property tests (hypothesis) of the NumPy front end: identities that hold for every input."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose

import softmaxce
from reference import reference_cross_entropy
from softmaxce import cross_entropy, cross_entropy_and_grad

# Small problems: N positions x C classes, logits of moderate to large magnitude.
_dims = st.tuples(st.integers(1, 6), st.integers(1, 9))
_dtypes = st.sampled_from([np.float32, np.float64])
_reductions = st.sampled_from(["none", "mean", "sum"])
_smoothing = st.sampled_from([0.0, 0.05, 0.5, 1.0])


@st.composite
def logits_arrays(draw, dims=_dims, dtype=None, bound=60.0):
    n, c = draw(dims)
    dtype = draw(_dtypes) if dtype is None else dtype
    values = st.floats(-bound, bound, allow_nan=False, width=32)
    return draw(hnp.arrays(dtype, (n, c), elements=values))


@st.composite
def index_problems(draw, dtype=None):
    logits = draw(logits_arrays(dtype=dtype))
    n, c = logits.shape
    target = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return logits, target


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)


@given(z=logits_arrays(bound=1e4), shift=st.floats(-1e3, 1e3, allow_nan=False))
def test_softmax_shift_invariance(z, shift):
    """softmax(z + c) = softmax(z): only differences of logits matter."""
    z = z.astype(np.float64)
    assert_allclose(softmaxce.softmax(z + shift), softmaxce.softmax(z), atol=1e-12)
    lhs, rhs = softmaxce.log_softmax(z + shift), softmaxce.log_softmax(z)
    assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9 * (1 + np.abs(shift)))


@given(problem=index_problems(dtype=np.float64), shift=st.floats(-100, 100, allow_nan=False))
def test_loss_and_gradient_shift_invariance(problem, shift):
    """Adding the same constant to every logit of a row changes neither loss nor gradient."""
    logits, target = problem
    shifts = shift * np.arange(logits.shape[0])[:, None] / max(1, logits.shape[0])  # a different shift per row
    l0, g0 = cross_entropy_and_grad(logits, target, reduction="none", label_smoothing=0.1)
    l1, g1 = cross_entropy_and_grad(logits + shifts, target, reduction="none", label_smoothing=0.1)
    assert_allclose(l1, l0, rtol=1e-9, atol=1e-9)
    assert_allclose(g1, g0, atol=1e-12)


@given(
    problem=index_problems(),
    eps=_smoothing,
    weighted=st.booleans(),
    z_loss=st.sampled_from([0.0, 1e-3]),
    data=st.data(),
)
def test_index_loss_is_non_negative(problem, eps, weighted, z_loss, data):
    logits, target = problem
    c = logits.shape[1]
    weight = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0, 10))) if weighted else None
    loss = cross_entropy(logits, target, weight=weight, label_smoothing=eps, z_loss=z_loss, reduction="none")
    assert np.all(loss >= 0)


@given(logits=logits_arrays(), eps=_smoothing, data=st.data())
def test_probability_loss_is_non_negative(logits, eps, data):
    raw = data.draw(hnp.arrays(np.float64, logits.shape, elements=st.floats(0, 1)))
    target = ((raw + 1e-3) / (raw + 1e-3).sum(axis=1, keepdims=True)).astype(logits.dtype)
    loss = cross_entropy(logits, target, label_smoothing=eps, reduction="none")
    assert np.all(loss >= -1e-6 * (1 + np.abs(logits).max()))  # rounding of cross-entropy >= entropy >= 0


@given(
    problem=index_problems(),
    eps=_smoothing,
    reduction=_reductions,
    z_loss=st.sampled_from([0.0, 1e-2]),
    softcap=st.sampled_from([None, 5.0]),
)
def test_index_target_equals_its_one_hot_probability_target(problem, eps, reduction, z_loss, softcap):
    """No weight, no ignored positions: a class index is its one-hot distribution (with smoothing too)."""
    logits, target = problem
    onehot = np.eye(logits.shape[1], dtype=logits.dtype)[target]
    opts = dict(label_smoothing=eps, reduction=reduction, z_loss=z_loss, softcap=softcap)
    li, gi = cross_entropy_and_grad(logits, target, **opts)
    lp, gp = cross_entropy_and_grad(logits, onehot, **opts)
    tol = _tol(logits.dtype)
    assert_allclose(lp, li, rtol=tol["rtol"], atol=tol["atol"] * (1 + np.abs(logits).max()))
    assert_allclose(gp, gi, **tol)


@given(problem=index_problems(), reduction=_reductions, data=st.data())
def test_gradient_rows_sum_to_zero(problem, reduction, data):
    """Unweighted, unsmoothed index target: each gradient row is coef * (a - e_y), which sums to 0."""
    logits, target = problem
    go = 1.0
    if reduction == "none":
        go = data.draw(hnp.arrays(np.float64, (logits.shape[0],), elements=st.floats(-3, 3)))
    _, grad = cross_entropy_and_grad(logits, target, reduction=reduction, grad_output=go)
    scale = np.max(np.abs(go)) + 1e-300
    atol = (1e-14 if logits.dtype == np.float64 else 1e-6) * logits.shape[1] * scale
    # each entry is rounded to the gradient's dtype: no finer than its smallest subnormal (a float32
    # gradient of an upstream gradient of 1.4e-45 is made of 0 and +-1.4e-45)
    atol = max(atol, logits.shape[1] * float(np.finfo(logits.dtype).smallest_subnormal))
    assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=atol)


@given(
    problem=index_problems(),
    eps=_smoothing,
    reduction=_reductions,
    weighted=st.booleans(),
    ignore=st.booleans(),
    data=st.data(),
)
def test_matches_reference_on_random_problems(problem, eps, reduction, weighted, ignore, data):
    logits, target = problem
    c = logits.shape[1]
    weight = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.1, 5))) if weighted else None
    ignore_index = int(target[0]) if ignore else -100
    opts = dict(weight=weight, label_smoothing=eps, reduction=reduction, ignore_index=ignore_index)
    loss, grad = cross_entropy_and_grad(logits, target, **opts)
    ref_loss, ref_grad = reference_cross_entropy(logits, target, **opts)
    tol = _tol(logits.dtype)
    assert_allclose(loss, ref_loss, rtol=tol["rtol"], atol=tol["atol"] * (1 + np.abs(logits).max()), equal_nan=True)
    assert_allclose(grad, ref_grad, **tol)
