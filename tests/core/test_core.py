"""Tests of the NumPy front end (softmaxce.cross_entropy and friends) against SEMANTICS.md.

Ground truths: the float64 reference in tests/reference.py (written from the math), PyTorch's
`torch.nn.functional.cross_entropy` (loss and autograd gradient), 4th-order central finite
differences, scipy's logsumexp / softmax, and small hand-computed values.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.special
import scipy.stats
from numpy.testing import assert_allclose, assert_array_equal

import softmaxce
from reference import central_difference_grad, reference_cross_entropy, reference_stats
from softmaxce import cross_entropy, cross_entropy_and_grad, cross_entropy_with_stats

# ----------------------------------------------------------------------------------------------
# Problem generator shared by the reference, torch and finite-difference matrices
# ----------------------------------------------------------------------------------------------

SHAPES = {"C": (11,), "NC": (6, 11), "NCd": (3, 11, 4), "NCdd": (2, 11, 3, 2)}
IGNORE = {"ign-default": -100, "ign-in-range": 3, "ign-out-of-range": 16}
REDUCTIONS = ("none", "mean", "sum")
DTYPES = {"f64": np.float64, "f32": np.float32}

# float32 tolerances of issue 2, point 4: loss 1e-6 relative, gradient entries 1e-6 absolute.
TOL = {
    np.float64: dict(loss=dict(rtol=1e-10, atol=1e-12), grad=dict(rtol=1e-10, atol=1e-12)),
    np.float32: dict(loss=dict(rtol=1e-6, atol=0.0), grad=dict(rtol=0.0, atol=1e-6)),
}


def positions_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if len(shape) == 1 else (shape[0],) + shape[2:]


def class_axis(shape: tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def make_problem(rng, shape, kind, weighted, ignore_index, dtype, *, scale=3.0):
    """(logits, target, weight, kwargs) with about a third of the positions ignored (index targets
    of more than one position) and, for probability targets, rows of a random distribution."""
    C = shape[class_axis(shape)]
    logits = (scale * rng.standard_normal(shape)).astype(dtype)
    if kind == "prob":
        t = rng.random(shape)
        target = (t / t.sum(axis=class_axis(shape), keepdims=True)).astype(dtype)
    else:
        pos = positions_shape(shape)
        target = rng.integers(0, C, size=pos)
        flat = target.reshape(-1)
        flat[np.arange(flat.size) % 3 == 1] = ignore_index  # some ignored positions (none when P = 1)
        target = flat.reshape(pos)
    weight = rng.uniform(0.5, 2.0, size=C) if weighted else None
    return logits, target, weight


def make_grad_output(rng, shape, reduction):
    """A non-uniform (and partly negative) per-position upstream gradient for "none", else a scalar."""
    if reduction == "none":
        return rng.uniform(-1.0, 2.0, size=positions_shape(shape))
    return 0.7


def _matrix():
    cases = []
    for (sid, shape), kind, weighted, (iid, ii), eps, red, (did, dtype) in itertools.product(
        SHAPES.items(), ("index", "prob"), (False, True), IGNORE.items(), (0.0, 0.1, 1.0), REDUCTIONS, DTYPES.items()
    ):
        if kind == "prob" and ii != -100:
            continue  # ignore_index >= 0 with a probability target is an error (tested below)
        cid = f"{sid}-{kind}-{'w' if weighted else 'now'}-{iid}-ls{eps}-{red}-{did}"
        cases.append(pytest.param(shape, kind, weighted, ii, eps, red, dtype, id=cid))
    return cases


MATRIX = _matrix()


# ----------------------------------------------------------------------------------------------
# Against the float64 reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, kind, weighted, ignore_index, eps, reduction, dtype", MATRIX)
def test_matches_reference(rng, shape, kind, weighted, ignore_index, eps, reduction, dtype):
    logits, target, weight = make_problem(rng, shape, kind, weighted, ignore_index, dtype)
    go = make_grad_output(rng, shape, reduction)
    opts = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)

    loss, grad = cross_entropy_and_grad(logits, target, grad_output=go, **opts)
    ref_loss, ref_grad = reference_cross_entropy(logits, target, grad_output=go, **opts)

    tol = TOL[dtype]
    assert grad.shape == logits.shape and grad.dtype == dtype
    assert np.shape(loss) == (positions_shape(shape) if reduction == "none" else ())
    assert loss.dtype == dtype
    assert_allclose(loss, ref_loss, **tol["loss"])
    assert_allclose(grad, ref_grad, **tol["grad"])
    # the loss-only function and the statistics pass compute the same loss (to the last bits: the
    # loss-only pass may sum the exponentials in another order); the gradient entries a_j k - beta_j
    # agree to a few ulps of the larger term (an entry that cancels to near 0 may differ by more
    # relative to itself: a fused multiply-add in one loop, a multiply and a subtract in another)
    eps_ = np.finfo(dtype).eps
    same = dict(rtol=8 * eps_, atol=0.0)
    assert_allclose(cross_entropy(logits, target, **opts), loss, **same)
    stats = cross_entropy_with_stats(logits, target, compute_grad=True, grad_output=go, **opts)
    assert_allclose(stats.loss, loss, **same)
    assert_allclose(stats.grad_logits, grad, rtol=8 * eps_, atol=8 * eps_ * float(np.abs(grad).max(initial=0.0)))


EXTENSIONS = {"zloss": dict(z_loss=1e-2), "softcap": dict(softcap=5.0), "zloss+softcap": dict(z_loss=0.05, softcap=2.0)}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("ext", EXTENSIONS.values(), ids=EXTENSIONS.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["ls0", "ls0.1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(6, 11), (2, 11, 3)], ids=["NC", "NCd"])
def test_extensions_match_reference(rng, shape, kind, weighted, eps, reduction, ext, dtype):
    logits, target, weight = make_problem(rng, shape, kind, weighted, -100, dtype, scale=6.0)
    go = make_grad_output(rng, shape, reduction)
    opts = dict(weight=weight, reduction=reduction, label_smoothing=eps, **ext)
    loss, grad = cross_entropy_and_grad(logits, target, grad_output=go, **opts)
    ref_loss, ref_grad = reference_cross_entropy(logits, target, grad_output=go, **opts)
    assert_allclose(loss, ref_loss, **TOL[dtype]["loss"])
    assert_allclose(grad, ref_grad, **TOL[dtype]["grad"])


def test_extensions_change_the_loss(rng):
    """z_loss and softcap are not silently ignored (and 0 / None change nothing)."""
    logits, target, _ = make_problem(rng, (5, 7), "index", False, -100, np.float64, scale=8.0)
    plain = cross_entropy(logits, target)
    assert cross_entropy(logits, target, z_loss=0.0, softcap=None) == plain
    assert cross_entropy(logits, target, z_loss=0.1) > plain
    assert cross_entropy(logits, target, softcap=2.0) != plain


# one problem per kernel family: few classes, class axis 1, the streamed path, the general row kernel
# (float64 and with weights), probability targets, float16 rows
ONE_COEF_CASES = {
    "few": ((300, 10), "index", np.float32),
    "axis1": ((3, 4, 40), "index", np.float32),
    "streamed": ((40, 1000), "index", np.float32),
    "rows-f64": ((40, 1000), "index", np.float64),
    "prob": ((40, 300), "prob", np.float32),
    "half": ((40, 300), "index", np.float16),
}


@pytest.mark.parametrize("case", ONE_COEF_CASES.values(), ids=ONE_COEF_CASES.keys())
def test_one_upstream_coefficient_for_every_position(rng, case):
    """ "sum" and "mean" hand the kernels one coefficient for all positions (`_rows.coef_at`): the same
    gradient as "none" with that coefficient for each position."""
    shape, kind, dtype = case
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    C = shape[1]
    positions = (shape[0],) + shape[2:]
    target = rng.integers(0, C, positions) if kind == "index" else rng.dirichlet(np.ones(C), positions).astype(dtype)
    if kind == "prob" and len(shape) > 2:
        target = np.moveaxis(target, -1, 1)
    weight = rng.uniform(0.5, 2.0, C)
    _, g_sum = cross_entropy_and_grad(logits, target, weight=weight, reduction="sum", grad_output=2.5)
    each = np.full(positions, 2.5)
    _, g_none = cross_entropy_and_grad(logits, target, weight=weight, reduction="none", grad_output=each)
    assert_array_equal(g_sum, g_none)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_float32_accuracy_large_vocabulary(rng, kind):
    """C = 262144 and logits of scale 100, float32 vs the float64 reference (issue 2, point 4)."""
    shape = (3, 262144)
    logits = rng.uniform(-100.0, 100.0, size=shape).astype(np.float32)
    logits[1] = (100.0 * rng.standard_normal(shape[1])).clip(-100, 100)
    logits[2, 12345] = 150.0  # one dominant class
    if kind == "index":
        target = np.array([7, 100000, 12345])
        opts = dict(label_smoothing=0.0)
    else:
        t = rng.random(shape)
        target = (t / t.sum(axis=1, keepdims=True)).astype(np.float32)
        opts = dict(label_smoothing=0.1)
    loss, grad = cross_entropy_and_grad(logits, target, reduction="none", **opts)
    ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="none", **opts)
    assert_allclose(loss, ref_loss, rtol=1e-6, atol=0)
    assert_allclose(grad, ref_grad, rtol=0, atol=1e-6)
    if kind == "index":  # rows of an unweighted, unsmoothed index target sum to 0 within rounding
        assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=1e-6)


def test_kernel_float32_exp_accuracy():
    """The kernels' vectorized float32 exp: its documented error bounds, exp(0) = 1, exactly 0 at -inf
    and below exp(-88), NaN kept (the streamed path relies on a NaN block sum)."""
    from numba import njit

    from softmaxce._bits import FASTMATH
    from softmaxce._rows import fast_exp

    @njit(fastmath=FASTMATH)  # the kernels' flags: 'contract' makes the range reduction one FMA
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = fast_exp(x[i])

    x = np.linspace(-87.0, 0.0, 2_000_001).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    rel_err = np.abs(out / np.exp(x.astype(np.float64)) - 1.0)
    assert rel_err[x >= -10.0].max() <= 1.8e-7
    assert rel_err.max() <= 4e-7
    x = np.array([0.0, -0.0, -88.5, -1e30, -np.inf, np.nan, -np.nan], dtype=np.float32)
    out = np.empty_like(x)
    apply(x, out)
    assert_array_equal(out[:5], [1.0, 1.0, 0.0, 0.0, 0.0])
    assert np.isnan(out[5:]).all()


def test_kernel_float64_exp_accuracy():
    """The kernels' vectorized float64 exp: within 2 ulp of exp for x in [-708, 0], exp(0) = 1, exactly 0
    at -inf and below exp(-708.8) (below the smallest normal float64), NaN kept."""
    from numba import njit

    from softmaxce._bits import FASTMATH
    from softmaxce._rows import fast_exp

    @njit(fastmath=FASTMATH)
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = fast_exp(x[i])

    x = np.concatenate([np.linspace(-708.0, 0.0, 2_000_001), -np.random.default_rng(0).random(1_000_000) * 20])
    out = np.empty_like(x)
    apply(x, out)
    ref = np.exp(x)
    assert (np.abs(out - ref) <= 2 * np.spacing(ref)).all()
    x = np.array([0.0, -0.0, -708.9, -1e300, -np.inf, -1e-300, np.nan, -np.nan])
    out = np.empty_like(x)
    apply(x, out)
    assert_array_equal(out[:6], [1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    assert np.isnan(out[6:]).all()


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_float16_computes_in_float32(rng, kind):
    shape = (4, 1000, 2)
    logits16, target, weight = make_problem(rng, shape, kind, True, -100, np.float16, scale=4.0)
    if kind == "prob":
        target = target.astype(np.float16)
    loss, grad = cross_entropy_and_grad(logits16, target, weight=weight, reduction="none")
    assert loss.dtype == np.float16 and grad.dtype == np.float16 and grad.shape == shape
    ref_loss, ref_grad = reference_cross_entropy(logits16, target, weight=weight, reduction="none")
    assert_allclose(loss, ref_loss, rtol=1e-3)  # only the final rounding to float16
    assert_allclose(grad, ref_grad, rtol=0, atol=1e-3)
    # the same as computing on float32 copies and rounding the results
    loss32, grad32 = cross_entropy_and_grad(logits16.astype(np.float32), target, weight=weight, reduction="none")
    assert_allclose(loss, loss32.astype(np.float16), rtol=1e-3)
    assert_allclose(grad, grad32.astype(np.float16), rtol=0, atol=1e-3)
    mean = cross_entropy(logits16, target, weight=weight)
    assert mean.dtype == np.float16
    assert_allclose(mean, reference_cross_entropy(logits16, target, weight=weight)[0], rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# Against PyTorch
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_cross_entropy(torch, logits, target, weight, grad_output, **opts):
    """PyTorch's loss and autograd gradient (with the same upstream gradient) as NumPy arrays."""
    x = torch.tensor(logits, requires_grad=True)
    t = torch.tensor(target)
    w = None if weight is None else torch.tensor(weight, dtype=x.dtype)
    loss = torch.nn.functional.cross_entropy(x, t, weight=w, **opts)
    loss.backward(torch.as_tensor(grad_output, dtype=x.dtype).expand_as(loss))
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("shape, kind, weighted, ignore_index, eps, reduction, dtype", MATRIX)
def test_matches_torch(torch, rng, shape, kind, weighted, ignore_index, eps, reduction, dtype):
    logits, target, weight = make_problem(rng, shape, kind, weighted, ignore_index, dtype)
    go = make_grad_output(rng, shape, reduction)
    opts = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    loss, grad = cross_entropy_and_grad(logits, target, weight=weight, grad_output=go, **opts)
    t_loss, t_grad = torch_cross_entropy(torch, logits, target, weight, go, **opts)
    if dtype == np.float64:
        assert_allclose(loss, t_loss, rtol=1e-10, atol=1e-12)
        assert_allclose(grad, t_grad, rtol=1e-10, atol=1e-12)
    else:
        assert_allclose(loss, t_loss, rtol=2e-6, atol=1e-6)
        assert_allclose(grad, t_grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Finite differences (float64)
# ----------------------------------------------------------------------------------------------

FD_OPTIONS = {
    "plain": dict(),
    "w+ls": dict(weighted=True, label_smoothing=0.2),
    "zloss": dict(z_loss=0.05),
    "softcap": dict(softcap=2.0),
    "all": dict(weighted=True, label_smoothing=0.3, z_loss=0.02, softcap=3.0),
}


@pytest.mark.parametrize("opt", FD_OPTIONS.values(), ids=FD_OPTIONS.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 5, 2)], ids=["C", "NC", "NCd"])
def test_gradient_matches_finite_differences(rng, shape, kind, reduction, opt):
    opt = dict(opt)
    logits, target, weight = make_problem(rng, shape, kind, opt.pop("weighted", False), -100, np.float64, scale=2.0)
    go = make_grad_output(rng, shape, reduction)
    opts = dict(weight=weight, reduction=reduction, **opt)

    def objective(z):  # J = sum_n go_n l_n ("none") or go * L
        return float(np.sum(np.asarray(go) * cross_entropy(z, target, **opts)))

    _, grad = cross_entropy_and_grad(logits, target, grad_output=go, **opts)
    fd = central_difference_grad(objective, logits, 1e-3)
    assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# Hand-computed values and edge cases of SEMANTICS.md
# ----------------------------------------------------------------------------------------------


def test_seeds_worked_example():
    """y = [0, 1, 0], a = [0.1, 0.6, 0.3]: loss -ln 0.6, gradient a - y."""
    a = np.array([0.1, 0.6, 0.3])
    loss, grad = cross_entropy_and_grad(np.log(a), 1)
    assert_allclose(loss, -np.log(0.6), rtol=1e-15)
    assert_allclose(grad, a - [0, 1, 0], atol=1e-15)
    loss_p, grad_p = cross_entropy_and_grad(np.log(a), np.array([0.0, 1.0, 0.0]))
    assert_allclose(loss_p, -np.log(0.6), rtol=1e-15)
    assert_allclose(grad_p, a - [0, 1, 0], atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3)], ids=["NC", "NCd"])
def test_empty_batch(shape, kind, reduction):
    logits = np.zeros(shape, dtype=np.float32)
    target = np.zeros(shape, np.float32) if kind == "prob" else np.zeros(positions_shape(shape), np.int64)
    loss, grad = cross_entropy_and_grad(logits, target, reduction=reduction)
    assert grad.shape == shape and grad.dtype == np.float32
    if reduction == "none":
        assert loss.shape == positions_shape(shape)
    elif reduction == "sum":
        assert loss == 0
    else:
        assert np.isnan(loss)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("weighted", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["ls0", "ls0.1"])
@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3)], ids=["NC", "NCd"])
def test_all_ignored(rng, shape, eps, weighted, dtype):
    logits = rng.standard_normal(shape).astype(dtype)
    target = np.full(positions_shape(shape), 2)
    opts = dict(ignore_index=2, label_smoothing=eps, weight=rng.random(5) if weighted else None)
    for reduction in REDUCTIONS:
        loss, grad = cross_entropy_and_grad(logits, target, reduction=reduction, **opts)
        assert_array_equal(grad, np.zeros(shape))
        if reduction == "none":
            assert_array_equal(loss, np.zeros(positions_shape(shape)))
        elif reduction == "sum":
            assert loss == 0
        else:
            assert np.isnan(loss)


@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["ls0", "ls0.1"])
@pytest.mark.parametrize(
    "weight, target",
    [
        ([0.0, 1.0, 1.0], [0, 0, 0]),
        ([0.0, 1.0, 1.0], [0, -100, 0]),
        ([1.0, -1.0, 1.0], [0, 1, 2]),
        ([0.0, 2.0, 1.0], [0, 1, 1]),
    ],
    ids=["kept-weights-zero", "kept-weights-zero-some-ignored", "kept-weights-cancel", "normal"],
)
def test_kept_weights_summing_to_zero_match_torch(torch, weight, target, eps):
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [2.0, -1.0, 0.5]])
    weight, target = np.array(weight), np.array(target)
    loss, grad = cross_entropy_and_grad(logits, target, weight=weight, label_smoothing=eps)
    t_loss, t_grad = torch_cross_entropy(torch, logits, target, weight, 1.0, label_smoothing=eps)
    assert_allclose(loss, t_loss, rtol=1e-12, equal_nan=True)
    assert_allclose(grad, t_grad, rtol=1e-12, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_large_finite_logits_are_exact(dtype):
    logits = np.array([[1000.0, 0.0, -1000.0]] * 3, dtype=dtype)
    loss, grad = cross_entropy_and_grad(logits, np.array([0, 1, 2]), reduction="none")
    assert_array_equal(loss, [0.0, 1000.0, 2000.0])
    assert_array_equal(grad, [[0, 0, 0], [1, -1, 0], [1, 0, -1]])


@pytest.mark.parametrize("eps", [0.0, 0.1], ids=["ls0", "ls0.1"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("big", [1e4, 1e9])
def test_extreme_logits_give_finite_gradients(big, dtype, eps):
    logits = np.array([[big, 0.0, -big], [-big, big, 0.0]], dtype=dtype)
    for target in (np.array([0, 1]), np.array([2, 0])):
        loss, grad = cross_entropy_and_grad(logits, target, reduction="sum", label_smoothing=eps)
        ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="sum", label_smoothing=eps)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        assert_allclose(loss, ref_loss, rtol=1e-6)
        assert_allclose(grad, ref_grad, atol=1e-6)
    if eps == 0:
        _, grad = cross_entropy_and_grad(logits, np.array([2, 0]), reduction="sum")
        assert_array_equal(grad, [[1, 0, -1], [-1, 1, 0]])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_nonfinite_logits(dtype):
    inf, nan = np.inf, np.nan
    logits = np.array(
        [
            [inf, 0.0, 1.0],  # +inf logit: NaN
            [-inf, 0.0, 1.0],  # -inf on a non-target class: contributes 0, gradient exactly 0 there
            [-inf, 0.0, 1.0],  # -inf on the target class: +inf
            [nan, 0.0, 1.0],  # NaN logit: NaN for this position only
            [0.5, 0.0, 1.0],  # a normal row
        ],
        dtype=dtype,
    )
    target = np.array([1, 1, 0, 1, 2])
    with np.errstate(invalid="ignore"):
        loss, grad = cross_entropy_and_grad(logits, target, reduction="none")
    assert np.isnan(loss[0]) and np.all(np.isnan(grad[0]))
    expected = np.log(1 + np.e) - 0.0  # -ln softmax([0, 1])[0]
    assert_allclose(loss[1], expected, rtol=1e-6)
    assert grad[1, 0] == 0.0
    assert_allclose(grad[1, 1:], [1 / (1 + np.e) - 1, np.e / (1 + np.e)], atol=1e-7)
    assert loss[2] == np.inf
    assert np.isnan(loss[3]) and np.all(np.isnan(grad[3]))
    ref_loss, ref_grad = reference_cross_entropy(logits[4:], target[4:], reduction="none")
    assert_allclose(loss[4:], ref_loss, rtol=1e-6)
    assert_allclose(grad[4:], ref_grad, atol=1e-7)
    assert np.isnan(cross_entropy(logits, target))  # a NaN position makes the mean NaN: never an error


def test_probability_target_zero_on_minus_inf_logit_is_nan():
    logits = np.array([[-np.inf, 0.0, 1.0], [0.0, 0.0, 1.0]])
    target = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    loss = cross_entropy(logits, target, reduction="none")
    assert np.isnan(loss[0])
    assert_allclose(loss[1], reference_cross_entropy(logits[1:], target[1:], reduction="none")[0])


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_nonfinite_logits_match_torch(torch, dtype):
    logits = np.array([[np.inf, 0, 1], [-np.inf, 0, 1], [-np.inf, 0, 1], [np.nan, 0, 1], [0.5, 0, 1]], dtype=dtype)
    target = np.array([1, 1, 0, 1, 2])
    go = np.array([1.0, 0.5, 0.0, 2.0, -1.0])
    with np.errstate(invalid="ignore"):
        loss, grad = cross_entropy_and_grad(logits, target, reduction="none", grad_output=go)
    t_loss, t_grad = torch_cross_entropy(torch, logits, target, None, go, reduction="none")
    assert_allclose(loss, t_loss, rtol=1e-6, equal_nan=True)
    # row 2 (+inf loss, upstream gradient 0) is NaN in PyTorch (0 * inf): only compare the rest
    rows = [0, 1, 3, 4]
    assert_allclose(grad[rows], t_grad[rows], rtol=1e-6, atol=1e-7, equal_nan=True)


def test_single_class():
    """C = 1: the softmax is 1, the loss 0 and the gradient 0."""
    loss, grad = cross_entropy_and_grad(np.array([[3.0], [-2.0]]), np.array([0, 0]), reduction="none")
    assert_array_equal(loss, [0.0, 0.0])
    assert_array_equal(grad, [[0.0], [0.0]])


@pytest.mark.parametrize("target", [np.int64(1), np.array(1), np.array([1])], ids=["scalar", "0d", "1d"])
def test_one_dimensional_logits_accept_scalar_targets(target):
    z = np.array([0.2, 1.0, -0.5])
    loss, grad = cross_entropy_and_grad(z, target, reduction="none")
    ref_loss, ref_grad = reference_cross_entropy(z, np.array(1), reduction="none")
    assert np.shape(loss) == ()
    assert_allclose(loss, ref_loss)
    assert_allclose(grad, ref_grad, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# Errors (SEMANTICS.md, "Errors"): NumPy-side type AND PyTorch's type, message naming the value
# ----------------------------------------------------------------------------------------------

_Z23 = np.zeros((2, 3))
_I2 = np.zeros(2, dtype=np.int64)

# id: (logits, target, options, NumPy-side type, PyTorch's type, text in the message, same text as torch)
# fmt: off
ERRORS = {
    "target-out-of-bounds": (np.zeros((4, 3)), np.array([0, 1, 3, 0]), {}, IndexError, IndexError,
                             "Target 3 is out of bounds.", True),
    "target-negative": (np.zeros((4, 3)), np.array([0, -1, 2, 0]), {}, IndexError, IndexError,
                        "Target -1 is out of bounds.", True),
    "target-equals-other-ignore": (_Z23, np.array([0, -100]), dict(ignore_index=-1), IndexError, IndexError,
                                   "Target -100 is out of bounds.", True),
    "batch-size": (np.zeros((4, 3)), np.array([0, 1, 2]), {}, ValueError, ValueError,
                   "Expected input batch_size (4) to match target batch_size (3).", True),
    "kdim-target-shape": (np.zeros((2, 3, 5)), np.zeros((2, 4), np.int64), {}, ValueError, RuntimeError,
                          "Expected target size [2, 5], got [2, 4]", True),
    "1d-logits-target-size": (np.zeros(3), np.array([0, 1]), {}, ValueError, ValueError,
                              "For 1D input, 1D target must have size 1, but got target size: 2", True),
    "multi-target": (_Z23, np.zeros((2, 1), np.int64), {}, ValueError, RuntimeError,
                     "0D or 1D target tensor expected, multi-target not supported", True),
    "integer-probability-target": (_Z23, np.zeros((2, 3), np.int64), {}, TypeError, RuntimeError,
                                   "Expected floating point type for target with class probabilities, got int64",
                                   False),
    "float-index-target": (_Z23, np.zeros(2), {}, TypeError, RuntimeError,
                           "expected target dtype to be Long or Byte, but got float64", False),
    "weight-length": (_Z23, _I2, dict(weight=np.ones(4)), ValueError, RuntimeError,
                      "weight tensor should be defined either for all 3 classes or no classes but got weight "
                      "tensor of shape: [4]", True),
    "ignore-index-with-probability-target": (_Z23, np.zeros((2, 3)), dict(ignore_index=0), ValueError, RuntimeError,
                                             "ignore_index is not supported for floating point target", True),
    "label-smoothing-above-1": (_Z23, _I2, dict(label_smoothing=1.5), ValueError, RuntimeError,
                                "label_smoothing must be between 0.0 and 1.0. Got: 1.5", True),
    "bad-reduction": (_Z23, _I2, dict(reduction="avg"), ValueError, ValueError,
                      "avg is not a valid value for reduction", True),
    "integer-logits": (np.zeros((2, 3), np.int64), _I2, {}, TypeError, NotImplementedError, "int64", False),
    "complex-logits": (np.zeros((2, 3), np.complex128), _I2, {}, TypeError, NotImplementedError, "complex128", False),
    "bool-logits": (np.zeros((2, 3), bool), _I2, {}, TypeError, NotImplementedError, "bool", False),
}
# fmt: on


@pytest.mark.parametrize(
    "function",
    [cross_entropy, cross_entropy_and_grad, cross_entropy_with_stats],
    ids=["loss", "loss_and_grad", "with_stats"],
)
@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_errors(case, function):
    logits, target, opts, numpy_type, torch_type, text, _ = case
    with pytest.raises(numpy_type) as info:
        function(logits, target, **opts)
    assert isinstance(info.value, torch_type)
    assert text in str(info.value)


@pytest.mark.parametrize("case", [c for c in ERRORS.values() if c[6]], ids=[k for k, c in ERRORS.items() if c[6]])
def test_error_messages_are_pytorchs(torch, case):
    """Where SEMANTICS.md quotes PyTorch, our message is PyTorch's word for word (and the same type)."""
    logits, target, opts, _, torch_type, text, _ = case
    opts = {k: torch.tensor(v) if k == "weight" else v for k, v in opts.items()}
    with pytest.raises(torch_type) as info:
        torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(target), **opts)
    assert str(info.value) == text


@pytest.mark.parametrize(
    "opts, text",
    [
        (dict(label_smoothing=-0.1), "-0.1"),  # deliberate difference: PyTorch treats it as 0
        (dict(z_loss=-1.0), "-1.0"),
        (dict(softcap=0.0), "0.0"),
        (dict(softcap=-3.0), "-3.0"),
        (dict(label_smoothing=float("nan")), "nan"),
    ],
    ids=["negative-label-smoothing", "negative-z-loss", "zero-softcap", "negative-softcap", "nan-label-smoothing"],
)
def test_bad_extension_options(opts, text):
    with pytest.raises(ValueError, match="Got") as info:
        cross_entropy(_Z23, _I2, **opts)
    assert isinstance(info.value, RuntimeError)
    assert text in str(info.value)


@pytest.mark.parametrize(
    "opts",
    [dict(ignore_index=1.5), dict(ignore_index=True), dict(label_smoothing="0.1")],
    ids=["float-ignore-index", "bool-ignore-index", "string-label-smoothing"],
)
def test_option_types(opts):
    with pytest.raises(TypeError):
        cross_entropy(_Z23, _I2, **opts)


@pytest.mark.parametrize(
    "grad_output, reduction",
    [(np.ones(2), "mean"), (np.ones(3), "none")],
    ids=["array-for-mean", "wrong-shape-for-none"],
)
def test_bad_grad_output(grad_output, reduction):
    with pytest.raises(ValueError, match="grad_output"):
        cross_entropy_and_grad(_Z23, _I2, reduction=reduction, grad_output=grad_output)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32, np.uint64])
def test_any_integer_target_dtype(rng, dtype):
    """Deliberate difference: any integer dtype is a class index (PyTorch wants int64 or uint8)."""
    logits = rng.standard_normal((5, 4, 2))
    target = np.array([[0, 3], [1, 2], [2, 2], [3, 0], [1, 1]])
    expected = cross_entropy_and_grad(logits, target, reduction="none")
    got = cross_entropy_and_grad(logits, target.astype(dtype), reduction="none")
    assert_array_equal(got[0], expected[0])
    assert_array_equal(got[1], expected[1])


def test_huge_unsigned_target_is_out_of_bounds():
    with pytest.raises(IndexError, match=str(2**63 + 5)):
        cross_entropy(_Z23, np.array([0, 2**63 + 5], dtype=np.uint64))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(
    "bad", [[], [(70000, 7), (190000, -1)], [(150001, 9), (3, 11)], [(5, -7)]], ids=["none", "two", "order", "negative"]
)
def test_check_targets_over_chunks(rng, parallel, weighted, bad):
    """`_kernels.check_targets` over several chunks: the first bad position in position order (not chunk
    completion order), ignored positions skipped whatever their value, and the kept count and weight sum
    as NumPy counts them (the unweighted count is a branch-free pass, the weighted one a loop)."""
    from softmaxce import _kernels

    P, C, ii = 3 * _kernels.TARGET_CHUNK + 123, 7, -3
    target = rng.integers(0, C, P)
    target[::11] = ii
    for p, value in bad:  # (position, bad index)
        target[p] = value
    w = rng.uniform(0.0, 2.0, C) if weighted else np.empty(0)
    first, kept, nonzero, wsum = _kernels.check_targets(parallel, target, C, ii, w)
    wrong = np.flatnonzero((target != ii) & ((target < 0) | (target >= C)))
    assert first == (wrong[0] if wrong.size else -1)
    if not wrong.size:
        keep = target != ii
        assert kept == keep.sum()
        ref = w[target[keep]].sum() if weighted else float(keep.sum())
        assert wsum == pytest.approx(ref, rel=1e-12)
        assert nonzero == ((w[target[keep]] != 0).sum() if weighted else keep.sum())


# ----------------------------------------------------------------------------------------------
# Inputs, out= buffers, threads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(6, 11), (2, 11, 3)], ids=["NC", "NCd"])
def test_inputs_are_not_modified(rng, shape, kind):
    logits, target, weight = make_problem(rng, shape, kind, True, -100, np.float32)
    go = make_grad_output(rng, shape, "none")
    inputs = [logits, target, weight, go]
    copies = [a.copy() for a in inputs]
    for a in inputs:
        a.setflags(write=False)  # a write would raise, not just be detected
    opts = dict(weight=weight, label_smoothing=0.1, z_loss=0.01, softcap=4.0)
    cross_entropy(logits, target, **opts)
    cross_entropy_and_grad(logits, target, reduction="none", grad_output=go, **opts)
    cross_entropy_with_stats(logits, target, reduction="none", grad_output=go, compute_grad=True, **opts)
    for a, c in zip(inputs, copies, strict=True):
        assert_array_equal(a, c)
    for a in inputs:  # and writeable arrays are not modified either
        a.setflags(write=True)
    cross_entropy_and_grad(logits, target, reduction="none", grad_output=go, **opts)
    for a, c in zip(inputs, copies, strict=True):
        assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["NC", "NCd", "NC-fortran", "NC-strided"])
def test_out_buffer_is_used_and_returned(rng, layout, dtype):
    shape = (2, 7, 3) if layout == "NCd" else (5, 7)
    logits, target, _ = make_problem(rng, shape, "index", False, -100, dtype)
    expected_loss, expected = cross_entropy_and_grad(logits, target, label_smoothing=0.1)
    if layout == "NC-fortran":
        out = np.full(shape, np.nan, dtype=dtype, order="F")
    elif layout == "NC-strided":
        out = np.full((shape[0], 2 * shape[1]), np.nan, dtype=dtype)[:, ::2]
    else:
        out = np.full(shape, np.nan, dtype=dtype)
    loss, grad = cross_entropy_and_grad(logits, target, label_smoothing=0.1, out=out)
    assert grad is out
    assert_array_equal(out, expected)
    assert loss == expected_loss


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(5, 7), (2, 7, 3), (7,)], ids=["NC", "NCd", "C"])
def test_out_is_logits_computes_in_place(rng, shape, dtype):
    logits, target, weight = make_problem(rng, shape, "index", True, -100, dtype)
    opts = dict(weight=weight, label_smoothing=0.1, z_loss=0.01, softcap=5.0)
    expected_loss, expected = cross_entropy_and_grad(logits, target, **opts)
    loss, grad = cross_entropy_and_grad(logits, target, out=logits, **opts)
    assert grad is logits
    assert_array_equal(logits, expected)
    assert loss == expected_loss


def test_out_partially_overlapping_logits(rng):
    """out shares memory with the logits but starts one row later: still the right answer."""
    buf = rng.standard_normal((6, 7))
    logits, out = buf[:-1], buf[1:]
    target = np.array([0, 1, 2, 3, 4])
    expected_loss, expected = cross_entropy_and_grad(logits.copy(), target)
    loss, grad = cross_entropy_and_grad(logits, target, out=out)
    assert grad is out
    assert_array_equal(out, expected)
    assert loss == expected_loss


@pytest.mark.parametrize(
    "out, error",
    [
        (np.empty((5, 8)), ValueError),
        (np.empty((7, 5)), ValueError),
        (np.empty((5, 7), np.float32), ValueError),
        ([[0.0] * 7] * 5, TypeError),
    ],
    ids=["wrong-shape", "transposed", "wrong-dtype", "list"],
)
def test_bad_out(out, error):
    with pytest.raises(error, match="out"):
        cross_entropy_and_grad(np.zeros((5, 7)), np.zeros(5, np.int64), out=out)


def test_read_only_out():
    out = np.empty((5, 7))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        cross_entropy_and_grad(np.zeros((5, 7)), np.zeros(5, np.int64), out=out)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_one_and_two_threads_agree(rng, kind):
    logits, target, weight = make_problem(rng, (64, 300), kind, True, -100, np.float32)
    opts = dict(weight=weight, label_smoothing=0.1, reduction="none")
    before = softmaxce.get_num_threads()
    try:
        softmaxce.set_num_threads(1)
        assert softmaxce.get_num_threads() == 1
        one = cross_entropy_with_stats(logits, target, compute_grad=True, **opts)
        softmaxce.set_num_threads(min(2, before))
        two = cross_entropy_with_stats(logits, target, compute_grad=True, **opts)
    finally:
        softmaxce.set_num_threads(before)
    for name in ("loss", "grad_logits", "lse", "predicted", "entropy"):
        assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


@pytest.mark.parametrize("n", [0, -1, 10**6, 1.5, True])
def test_set_num_threads_rejects_bad_counts(n):
    with pytest.raises(ValueError):
        softmaxce.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("softcap", [None, 3.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(7,), (6, 9), (2, 9, 3)], ids=["C", "NC", "NCd"])
def test_statistics(rng, shape, kind, softcap, dtype):
    ignore_index = 4 if kind == "index" else -100  # statistics are computed for ignored positions too
    logits, target, _ = make_problem(rng, shape, kind, False, ignore_index, dtype)
    r = cross_entropy_with_stats(logits, target, ignore_index=ignore_index, softcap=softcap, reduction="none")
    assert r.grad_logits is None
    lse, predicted, entropy = reference_stats(logits, softcap=softcap)
    z = np.asarray(logits, dtype=np.float64)
    if softcap is not None:
        z = softcap * np.tanh(z / softcap)
    axis = class_axis(shape)
    assert r.lse.shape == r.predicted.shape == r.entropy.shape == positions_shape(shape)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-6)
    assert_allclose(r.lse, scipy.special.logsumexp(z, axis=axis), **tol)
    assert_allclose(r.lse, lse, **tol)
    assert_array_equal(r.predicted, np.argmax(z, axis=axis))
    assert_array_equal(r.predicted, predicted)
    assert r.predicted.dtype == np.int64
    assert_allclose(r.entropy, entropy, **tol)
    assert_allclose(r.entropy, scipy.stats.entropy(scipy.special.softmax(z, axis=axis), axis=axis), **tol)
    # the loss of the same pass equals the loss-only function's
    assert_array_equal(
        r.loss, cross_entropy(logits, target, ignore_index=ignore_index, softcap=softcap, reduction="none")
    )


def test_statistics_argmax_ties_and_extremes():
    logits = np.array([[1.0, 3.0, 3.0], [-np.inf, -np.inf, 0.0], [1000.0, 0.0, -1000.0]])
    r = cross_entropy_with_stats(logits, np.array([0, 2, 1]), reduction="none")
    assert_array_equal(r.predicted, [1, 2, 0])  # first maximum, as numpy and torch
    assert_allclose(r.lse, [3.0 + np.log(2 + np.exp(-2.0)), 0.0, 1000.0], rtol=1e-15)
    assert_allclose(r.entropy[1:], [0.0, 0.0], atol=1e-15)


def test_statistics_with_gradient_match_loss_and_grad(rng):
    logits, target, weight = make_problem(rng, (5, 8), "index", True, -100, np.float64)
    r = cross_entropy_with_stats(logits, target, weight=weight, compute_grad=True, grad_output=2.0)
    loss, grad = cross_entropy_and_grad(logits, target, weight=weight, grad_output=2.0)
    assert r.loss == loss
    assert_array_equal(r.grad_logits, grad)


# ----------------------------------------------------------------------------------------------
# softmax / log_softmax
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_softmax_and_log_softmax_match_scipy(rng, axis, dtype):
    z = (5 * rng.standard_normal((4, 6, 3))).astype(dtype)
    tol = dict(rtol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-7)
    s = softmaxce.softmax(z, axis=axis)
    assert s.dtype == dtype
    assert_allclose(s, scipy.special.softmax(z.astype(np.float64), axis=axis), **tol)
    assert_allclose(
        softmaxce.log_softmax(z, axis=axis), scipy.special.log_softmax(z.astype(np.float64), axis=axis), **tol
    )


def test_softmax_is_stable_for_extreme_logits():
    z = np.array([1000.0, 0.0, -1000.0, -np.inf])
    assert_array_equal(softmaxce.softmax(z), [1.0, 0.0, 0.0, 0.0])
    assert_array_equal(softmaxce.log_softmax(z), [0.0, -1000.0, -2000.0, -np.inf])
    assert_allclose(softmaxce.softmax(np.array([1e9, 1e9])), [0.5, 0.5])
    assert_array_equal(softmaxce.softmax([1, 1]), [0.5, 0.5])  # integers compute in float64


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed-view", "list"])
def test_any_memory_layout_and_array_likes(rng, layout, kind):
    """Non-contiguous logits and targets, nested lists and a float64 target for float32 logits."""
    logits, target, weight = make_problem(rng, (6, 9), kind, True, -100, np.float32)
    if kind == "prob":
        target = target.astype(np.float64)
    expected_loss, expected_grad = cross_entropy_and_grad(logits, target, weight=weight, reduction="none")
    if layout == "fortran":
        args = np.asfortranarray(logits), np.asfortranarray(target), weight
    elif layout == "strided":
        wide = np.zeros((6, 18), np.float32)
        wide[:, ::2] = logits
        args = wide[:, ::2], target, weight[::-1].copy()[::-1]
    elif layout == "transposed-view":
        args = np.ascontiguousarray(logits.T).T, target.T.copy().T, weight
    else:
        args = logits.tolist(), target.tolist(), weight.tolist()
    loss, grad = cross_entropy_and_grad(args[0], args[1], weight=args[2], reduction="none")
    if layout == "list":  # nested lists of Python floats are float64 logits
        assert grad.dtype == np.float64
        assert_allclose(loss, expected_loss, rtol=1e-6)
        assert_allclose(grad, expected_grad, atol=1e-6)
    else:
        assert grad.dtype == np.float32 and grad.flags.c_contiguous
        assert_array_equal(loss, expected_loss)
        assert_array_equal(grad, expected_grad)
