"""The class-axis-1 kernel (`_axis1.index_axis1`): (N, C, d1..dk) logits read and their gradient
written in place, against the float64 reference, with every option, positions not a multiple of a
block, special values, in-place gradient, inputs left alone, and 1 vs 2 threads bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from kernel_calls import kernel_arrays, serial_one_thread_and_parallel
from reference import reference_cross_entropy
from softmaxce import _axis1, _threads

SHAPES = [(3, 1, 5, 7), (2, 2, 17, 3), (2, 3, 40), (4, 7, 9, 5), (2, 10, 33), (1, 17, 300), (2, 21, 13, 11)]
SHAPES += [(300, 3, 8, 8), (40, 7, 5, 9)]  # chunks of several whole images (`_axis1._partition`), the last short
OPTIONS = {
    "plain": {},
    "ignore-weight": {"ignore_index": 255, "weight": "w"},
    "smooth-zloss": {"label_smoothing": 0.1, "z_loss": 1e-3},
    "softcap": {"softcap": 5.0},
    "everything": {"label_smoothing": 0.1, "weight": "w", "ignore_index": 0, "z_loss": 1e-3, "softcap": 4.0},
}


def run_axis1(logits, target, *, parallel=True, inplace=False, **options):
    """The kernel as the engine would call it, reduction="none": returns (loss, grad, lse, argmax, entropy)
    with the loss and statistics in the positions' shape and the gradient in the logits' shape.

    options: weight, ignore_index, label_smoothing, z_loss, softcap, grad_output, stats (`kernel_arrays`)."""
    N, C = logits.shape[:2]
    S = int(np.prod(logits.shape[2:]))
    P = N * S
    (w, eps, lam, cap, ii, coef), outputs = kernel_arrays(P, **options)
    grad = logits if inplace else np.empty_like(logits)
    z3, g3 = logits.reshape(N, C, S), grad.reshape(N, C, S)
    t = np.asarray(target, np.int64).reshape(P)
    with _threads.kernel_region(parallel):
        _axis1.index_axis1(parallel, z3, t, w, eps, lam, cap, ii, coef, g3, *outputs)
    loss, lse, argmax, entropy = outputs
    positions = target.shape
    return loss.reshape(positions), grad, lse.reshape(positions), argmax, entropy


def _problem(rng, shape, dtype, scale=3.0):
    logits = (scale * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    return logits, target


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("coef", ["per-position", "one"])  # "one" and no option: the plain copy
def test_matches_reference(rng, dtype, shape, name, coef):
    logits, target = _problem(rng, shape, dtype)
    opts = dict(OPTIONS[name])
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.5, 2.0, shape[1])
    if "ignore_index" in opts:
        target.reshape(-1)[::6] = opts["ignore_index"]
    go = rng.uniform(-1.0, 2.0, target.shape) if coef == "per-position" else 0.37
    before = logits.copy(), target.copy()
    loss, grad, lse, _, _ = run_axis1(logits, target, grad_output=go, **opts)
    assert_array_equal(logits, before[0])  # inputs are never modified
    assert_array_equal(target, before[1])
    ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="none", grad_output=go, **opts)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    assert_allclose(grad, ref_grad, rtol=0, atol=tol)


def test_special_values(rng):
    logits, target = _problem(rng, (2, 3, 5, 7), np.float32)
    logits[0, :, 0, 0], target[0, 0, 0] = [1000.0, 0.0, -1000.0], 2  # exact: loss 2000
    logits[0, 1, 0, 1] = np.nan
    logits[0, 0, 0, 2] = np.inf
    logits[1, :, 4, 6] = -np.inf
    logits[1, 0, 2, 2], target[1, 2, 2] = -np.inf, 0  # -inf on the target: +inf
    logits[1, 1, 3, 3], target[1, 3, 3] = np.nan, -100  # ignored: 0
    with np.errstate(invalid="ignore"):
        loss, grad, *_ = run_axis1(logits, target)
    assert loss[0, 0, 0] == 2000.0
    assert_array_equal(grad[0, :, 0, 0], [1.0, 0.0, -1.0])
    for pos in [(0, 0, 1), (0, 0, 2), (1, 4, 6)]:
        assert np.isnan(loss[pos]) and np.isnan(grad[pos[0], :, pos[1], pos[2]]).all()
    assert loss[1, 2, 2] == np.inf
    assert loss[1, 3, 3] == 0.0 and not grad[1, :, 3, 3].any()
    finite = np.isfinite(loss)
    ref_loss, _ = reference_cross_entropy(logits, target, reduction="none")
    assert_allclose(loss[finite], ref_loss[finite], rtol=1e-6, atol=1e-6)


def test_same_as_rows_kernel_on_moved_logits(rng):
    """Consistency: axis-1 in place equals the few-classes row kernel on the class-last copy, bit for bit."""
    from softmaxce import _small

    logits, target = _problem(rng, (2, 5, 37, 3), np.float32)
    opts = dict(label_smoothing=0.1, z_loss=1e-3, weight=rng.uniform(0.5, 2.0, 5))
    loss, grad, lse, argmax, entropy = run_axis1(logits, target, stats=True, **opts)
    rows = np.ascontiguousarray(np.moveaxis(logits, 1, -1)).reshape(-1, 5)
    P = rows.shape[0]
    g = np.empty_like(rows)
    l2, lse2, am2, en2 = np.empty(P), np.empty(P), np.empty(P, np.int64), np.empty(P)
    _small.index_rows_small(
        False, rows, target.reshape(P), opts["weight"], 0.1, 1e-3, 0.0, -100, np.ones(P), g, l2, lse2, am2, en2
    )
    assert_allclose(loss.reshape(P), l2, rtol=1e-6, atol=1e-7)  # block boundaries differ: float32 sums may too
    assert_allclose(np.moveaxis(grad, 1, -1).reshape(P, 5), g, rtol=0, atol=1e-7)
    assert_array_equal(argmax, am2)


@pytest.mark.parametrize(
    "shape",
    [(16, 2, 64, 64), (3, 21, 50, 41), (2, 21, 16, 37), (300, 3, 8, 8)],
    ids=["2-class", "21-class", "21-class-small", "small-images"],
)
def test_one_and_two_threads_bit_identical(rng, shape):
    logits, target = _problem(rng, shape, np.float32)
    target.reshape(-1)[::7] = 255
    opts = dict(ignore_index=255, label_smoothing=0.1, softcap=8.0, weight=rng.uniform(0.5, 2.0, shape[1]))
    one, two = serial_one_thread_and_parallel(run_axis1, logits, target, stats=True, **opts)
    for a, b in zip(one, two, strict=True):
        assert_array_equal(a, b)


def test_gradient_in_place(rng):
    logits, target = _problem(rng, (2, 4, 19, 5), np.float32)
    loss, grad, *_ = run_axis1(logits, target, label_smoothing=0.2)
    alias = logits.copy()
    loss2, grad2, *_ = run_axis1(alias, target, label_smoothing=0.2, inplace=True)
    assert grad2 is alias
    assert_array_equal(grad2, grad)
    assert_array_equal(loss2, loss)


def test_applies():
    assert _axis1.axis1_applies(np.dtype(np.float32), 8, 21, 128 * 128)
    assert not _axis1.axis1_applies(np.dtype(np.float32), 8, 21, 1)  # too few positions per image
    assert not _axis1.axis1_applies(np.dtype(np.float32), 8, 7, 16)  # too few logits per image
    assert _axis1.axis1_applies(np.dtype(np.float32), 8, 2, 64)
    assert not _axis1.axis1_applies(np.dtype(np.float16), 8, 21, 256)


@pytest.mark.parametrize(
    "dtype, shape",
    [(np.float32, (2, 7, 389, 397)), (np.float64, (2, 5, 331, 317))],  # S odd: no class row is aligned
    ids=["f32", "f64"],
)
@pytest.mark.parametrize("kind", ["plain", "weighted"])
def test_streamed_gradient(rng, dtype, shape, kind):
    """A gradient of at least AXIS1_STREAM_BYTES leaves through non-temporal stores (`_small._stream_row`,
    for the plain copy and for the general one: an unaligned head, 32-byte vectors,
    a tail): against the float64 reference, itself in place, into buffers at every alignment, 1 vs 2
    threads bit for bit, and (plain) the general copy with class weights of ones."""
    logits, target = _problem(rng, shape, dtype)
    assert logits.nbytes >= _axis1.AXIS1_STREAM_BYTES
    N, C, S = shape[0], shape[1], shape[2] * shape[3]
    target.reshape(-1)[::6] = 255
    logits[0, 1, 0, 1] = np.nan
    logits[1, 0, 2, 2] = np.inf
    logits[1, :, 4, 6] = -np.inf
    logits[1, 2, 5, 5], target[1, 5, 5] = -np.inf, 2  # -inf on the target: loss +inf
    opts = dict(ignore_index=255, grad_output=0.37)
    if kind == "weighted":
        opts.update(weight=rng.uniform(0.5, 2.0, C), label_smoothing=0.1, z_loss=1e-3)
        opts["grad_output"] = rng.uniform(-1.0, 2.0, target.shape)
    before = logits.copy()
    with np.errstate(invalid="ignore"):
        one, two = serial_one_thread_and_parallel(run_axis1, logits, target, **opts)
        alias = logits.copy()
        inplace = run_axis1(alias, target, inplace=True, **opts)
    assert_array_equal(logits, before)
    for a, b, c in zip(one[:3], two[:3], inplace[:3], strict=True):
        assert_array_equal(a, b)
        assert_array_equal(a, c)
    loss, grad = two[0], two[1]
    # into buffers at every element offset from a 32-byte boundary: other heads and tails, the same bits
    (w, eps, lam, cap, ii, coef), outputs = kernel_arrays(N * S, **opts)
    for offset in range(1, 32 // logits.itemsize):
        raw = np.empty(logits.size + 16, dtype)
        start = (-raw.ctypes.data % 32) // logits.itemsize + offset
        g = raw[start : start + logits.size].reshape(N, C, S)
        with _threads.kernel_region(True), np.errstate(invalid="ignore"):
            _axis1.index_axis1(
                True, logits.reshape(N, C, S), target.reshape(-1), w, eps, lam, cap, ii, coef, g, *outputs
            )
        assert_array_equal(g.reshape(shape), grad)
    assert np.isnan(loss[0, 0, 1]) and np.isnan(grad[0, :, 0, 1]).all()
    assert np.isnan(loss[1, 2, 2]) and np.isnan(loss[1, 4, 6]) and loss[1, 5, 5] == np.inf
    kept = target != 255
    assert not grad.transpose(1, 0, 2, 3)[:, ~kept].any()  # ignored positions: 0
    if kind == "plain":
        with np.errstate(invalid="ignore"):
            general = run_axis1(logits, target, weight=np.ones(C), **opts)
        eps = np.finfo(dtype).eps
        for got, ref in ((loss, general[0]), (grad, general[1])):
            assert_array_equal(np.isnan(got), np.isnan(ref))
            finite = np.isfinite(ref)
            assert_array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])
            assert_allclose(got[finite], ref[finite], rtol=0, atol=2 * eps * np.abs(ref[finite]).max())
    finite = np.isfinite(loss)
    ok = np.broadcast_to(finite[:, None], grad.shape)
    ref_loss, ref_grad = reference_cross_entropy(np.where(ok, logits, 0), target, reduction="none", **opts)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert_allclose(loss[finite], ref_loss[finite], rtol=tol, atol=tol)
    assert_allclose(grad[ok], ref_grad[ok], rtol=0, atol=tol)
