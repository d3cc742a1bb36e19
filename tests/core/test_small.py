"""The few-classes kernel (`_small.index_rows_small`): against the float64 reference at odd class
counts and batch sizes (not multiples of a block), every option, special values, statistics, the
gradient written in place of the logits, inputs left alone, and 1 vs 2 threads bit for bit."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from numba import njit
from numpy.testing import assert_allclose, assert_array_equal

from kernel_calls import kernel_arrays, serial_one_thread_and_parallel
from option_cases import KERNEL_OPTIONS
from reference import reference_cross_entropy, reference_stats
from softmaxce import _small, _threads, _transpose

CLASSES = [1, 2, 3, 7, 10, 17, 100, 128]
OPTIONS = KERNEL_OPTIONS
# float32: the row's exp sum is a float32 sum (as in every float32 kernel), about 1e-7 absolute on ln s
TOL = {np.float32: dict(loss=1e-6, grad=1e-6), np.float64: dict(loss=1e-12, grad=1e-13)}


def run_small(logits, target, *, parallel=True, grad="new", **options):
    """The kernel as the engine calls it, for reduction="none": returns (loss, grad, lse, argmax, entropy).

    options: weight, ignore_index, label_smoothing, z_loss, softcap, grad_output, stats (`kernel_arrays`)."""
    P, C = logits.shape
    (w, eps, lam, cap, ii, coef), outputs = kernel_arrays(P, **options)
    g = {"new": np.empty_like(logits), "none": np.empty((0, C), logits.dtype), "inplace": logits}[grad]
    t = np.asarray(target, np.int64)
    with _threads.kernel_region(parallel):
        _small.index_rows_small(parallel, logits, t, w, eps, lam, cap, ii, coef, g, *outputs)
    loss, lse, argmax, entropy = outputs
    return loss, (None if grad == "none" else g), lse, argmax, entropy


def _problem(rng, P, C, dtype, scale=3.0):
    return (scale * rng.standard_normal((P, C))).astype(dtype), rng.integers(0, C, P)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_matches_reference(rng, dtype, C, name):
    P = 301  # not a multiple of any block size
    logits, target = _problem(rng, P, C, dtype)
    opts = dict(OPTIONS[name])
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.5, 2.0, C)
    if "ignore_index" in opts:
        opts["ignore_index"] = min(opts["ignore_index"], C - 1)
        target[::5] = opts["ignore_index"]
    go = rng.uniform(-1.0, 2.0, P)
    before = logits.copy(), target.copy()
    loss, grad, lse, _, _ = run_small(logits, target, grad_output=go, **opts)
    assert_array_equal(logits, before[0])  # inputs are never modified
    assert_array_equal(target, before[1])
    ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="none", grad_output=go, **opts)
    tol = TOL[dtype]
    assert_allclose(loss, ref_loss, rtol=tol["loss"], atol=tol["loss"])
    assert_allclose(grad, ref_grad, rtol=0, atol=tol["grad"])
    kept = target != opts.get("ignore_index", -100)
    ref_lse = reference_stats(logits, softcap=opts.get("softcap"))[0]
    assert_allclose(lse[kept], ref_lse[kept], rtol=tol["loss"], atol=tol["loss"])
    assert np.isnan(lse[~kept]).all()  # as the row kernels: no lse for ignored positions without statistics


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C", range(1, _transpose.MAX_C + 2))
def test_every_transposed_class_count(rng, dtype, C):
    """Every class count the shuffle transposes handle (2 .. MAX_C) and its neighbours, with a last block
    and a last vector of rows that are partial (P = 2 blocks + 37 rows)."""
    P = 2 * _small.block_positions(C) + 37
    logits, target = _problem(rng, P, C, dtype)
    go = rng.uniform(-1.0, 2.0, P)
    loss, grad, *_ = run_small(logits, target, grad_output=go, label_smoothing=0.1)
    ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="none", grad_output=go, label_smoothing=0.1)
    assert_allclose(loss, ref_loss, rtol=TOL[dtype]["loss"], atol=TOL[dtype]["loss"])
    assert_allclose(grad, ref_grad, rtol=0, atol=TOL[dtype]["grad"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C", [2, 5, 10, 16])
def test_transposes_round_trip(rng, dtype, C):
    """rows_to_columns and columns_to_rows move exactly the whole vectors of rows, bit for bit, at offsets."""
    n, so = 53, 7 * C  # 53 rows: 3 vectors of 16 (float32) or 6 of 8 (float64), and a remainder
    src = rng.standard_normal(so + n * C + 5).astype(dtype)
    cols = np.full(3 + C * n, np.nan, dtype)
    back = np.full_like(src, np.nan)
    moved, moved_back = _transpose_pair(src, so, cols, back, n, C)
    W = 64 // np.dtype(dtype).itemsize
    assert moved == moved_back == n // W * W
    rows = src[so : so + n * C].reshape(n, C)
    assert_array_equal(cols[3:].reshape(C, n)[:, :moved], rows[:moved].T)
    assert np.isnan(cols[3:].reshape(C, n)[:, moved:]).all() and np.isnan(cols[:3]).all()
    assert_array_equal(back[so : so + moved * C], src[so : so + moved * C])
    assert np.isnan(back[:so]).all() and np.isnan(back[so + moved * C :]).all()


@njit
def _transpose_pair(src, so, cols, back, n, C):
    return _transpose.rows_to_columns(src, so, cols, 3, n, C), _transpose.columns_to_rows(cols, 3, back, so, n, C)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("coef", ["per-position", "one"])
def test_two_classes_pass_matches_the_general_pass(rng, dtype, name, coef):
    """Two classes without statistics or soft cap take one fused pass (`_two_classes`); asking for
    statistics takes the general pass, whose loss, lse and gradient it must reproduce to the last bit
    (special values too)."""
    opts = dict(OPTIONS[name])
    if opts.get("softcap"):
        pytest.skip("a soft cap takes the general pass either way")
    P = 2 * _small.block_positions(2) + 45
    logits, target = _problem(rng, P, 2, dtype)
    logits[3] = [np.nan, 1.0]
    logits[4] = [np.inf, 0.0]
    logits[5] = [-np.inf, -np.inf]
    logits[6] = [-np.inf, 2.0]
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.5, 2.0, 2)
    if "ignore_index" in opts:
        opts["ignore_index"] = 1
        target[::5] = 1
        target[3] = 1  # an ignored NaN position: loss 0, gradient 0
    go = rng.uniform(-1.0, 2.0, P) if coef == "per-position" else 0.37  # (1,) or (P,) coefficients
    fused = run_small(logits, target, grad_output=go, **opts)
    general = run_small(logits, target, grad_output=go, stats=True, **opts)
    kept = target != opts.get("ignore_index", -100)
    # the same formulas, but LLVM may fuse their multiply-adds differently: equal to the last bit
    for got, ref in ((fused[0], general[0]), (fused[1], general[1]), (fused[2][kept], general[2][kept])):
        assert_array_equal(np.isnan(got), np.isnan(ref))
        finite = np.isfinite(ref)
        assert_array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])  # +-inf
        scale = np.abs(ref[finite]).max()
        assert_allclose(got[finite], ref[finite], rtol=0, atol=2 * np.finfo(got.dtype).eps * scale)
    assert (fused[1][~kept] == 0).all()  # ignored positions: no gradient


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C", [1, 3, 7, 10, 17, 100, 128])
@pytest.mark.parametrize("ignore", [False, True])
def test_plain_copy_matches_the_general_copy(rng, dtype, C, ignore):
    """Without class weights, smoothing, z-loss, soft cap or statistics and with one upstream coefficient, the
    passes run as a plain copy with those terms dropped (`_small._block_passes`); class weights of
    ones take the general copy, whose loss and gradient it must reproduce up to the rounding of a
    fused multiply-add (special values and ignored positions too)."""
    P = 2 * _small.block_positions(C) + 45  # several blocks, the last one partial
    logits, target = _problem(rng, P, C, dtype)
    logits[3, 0] = np.nan
    logits[4, C - 1] = np.inf
    logits[5] = -np.inf
    logits[6, 0], target[6] = -np.inf, 0  # -inf on the target: loss +inf
    if ignore:
        target[::5] = -100
        target[3] = -100  # an ignored NaN position: loss 0, gradient 0
    ones = np.ones(C)
    with np.errstate(invalid="ignore"):
        plain = run_small(logits, target, grad_output=0.37)
        general = run_small(logits, target, grad_output=0.37, weight=ones)
        loss_only = run_small(logits, target, grad_output=0.37, grad="none")
    assert_array_equal(loss_only[0], plain[0])
    kept = target != -100
    for got, ref in ((plain[0], general[0]), (plain[1], general[1]), (plain[2][kept], general[2][kept])):
        assert_array_equal(np.isnan(got), np.isnan(ref))
        special = ~np.isfinite(ref) & ~np.isnan(ref)
        assert_array_equal(got[special], ref[special])  # +-inf
        finite = np.isfinite(ref)
        scale = np.abs(ref[finite]).max()
        assert_allclose(got[finite], ref[finite], rtol=0, atol=2 * np.finfo(got.dtype).eps * scale)
    assert (plain[1][~kept] == 0).all() and np.isnan(plain[1][3]).all() != ignore


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C", [3, 10, 100])
def test_statistics(rng, dtype, C):
    logits, target = _problem(rng, 77, C, dtype)
    target[3] = -100  # statistics are computed for ignored positions too
    logits[5, :] = logits[5, 0]  # ties: argmax is the first
    _, _, lse, argmax, entropy = run_small(logits, target, stats=True, softcap=6.0)
    ref_lse, ref_argmax, ref_entropy = reference_stats(logits, softcap=6.0)
    assert_allclose(lse, ref_lse, rtol=1e-6, atol=1e-6)
    assert_array_equal(argmax, ref_argmax)
    assert_allclose(entropy, ref_entropy, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_special_values(rng, dtype):
    C = 3
    logits, target = _problem(rng, 40, C, dtype)
    logits[0], target[0] = [1000.0, 0.0, -1000.0], 0  # exact: loss 0
    logits[1], target[1] = [1000.0, 0.0, -1000.0], 2  # exact: loss 2000
    logits[2, 1] = np.nan
    logits[3, 2] = -np.nan  # a NaN with the sign bit set
    logits[4, 0] = np.inf  # +inf: NaN
    logits[5, :] = -np.inf  # only -inf: NaN
    logits[6], target[6] = [-np.inf, 1.0, 2.0], 1  # -inf off the target contributes 0
    logits[7], target[7] = [-np.inf, 1.0, 2.0], 0  # -inf on the target: +inf
    logits[8, 0], target[8] = np.nan, -100  # ignored: 0 whatever the logits
    with np.errstate(invalid="ignore"):
        loss, grad, lse, argmax, _ = run_small(logits, target, stats=True)
    assert loss[0] == 0.0 and loss[1] == 2000.0
    assert_array_equal(grad[0], [0.0, 0.0, 0.0])
    assert_array_equal(grad[1], [1.0, 0.0, -1.0])
    for n in (2, 3, 4, 5):
        assert np.isnan(loss[n]) and np.isnan(grad[n]).all()
    assert np.isnan(lse[2]) and np.isnan(lse[3]) and lse[4] == np.inf and lse[5] == -np.inf
    assert argmax[2] == 1 and argmax[3] == 2 and argmax[4] == 0
    ref_loss, ref_grad = reference_cross_entropy(logits[6:7], target[6:7], reduction="none")
    assert_allclose(loss[6], ref_loss[0], rtol=1e-6)
    assert grad[6, 0] == 0.0
    assert_allclose(grad[6], ref_grad[0], rtol=0, atol=1e-6)
    assert loss[7] == np.inf and grad[7, 0] == -1.0
    assert loss[8] == 0.0 and not grad[8].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("C", [2, 10, 100])
@pytest.mark.parametrize("size", ["large", "small"])  # chunks of 65536 logits, or of an eighth of the problem
def test_one_and_two_threads_bit_identical(rng, dtype, C, size):
    logits, target = _problem(rng, (50_000 if size == "large" else 3_000) // C * 3 + 7, C, dtype)
    target[::9] = -100
    opts = dict(label_smoothing=0.1, z_loss=1e-4, weight=rng.uniform(0.5, 2.0, C), grad_output=rng.random(len(target)))
    one, two = serial_one_thread_and_parallel(run_small, logits, target, stats=True, **opts)
    for a, b in zip(one, two, strict=True):
        assert_array_equal(a, b)


@pytest.mark.parametrize("C", [3, 17])
def test_gradient_in_place_and_loss_only(rng, C):
    logits, target = _problem(rng, 333, C, np.float32)
    target[::4] = 1
    opts = dict(ignore_index=1, softcap=3.0, label_smoothing=0.05)
    loss, grad, *_ = run_small(logits, target, **opts)
    alias = logits.copy()
    loss2, grad2, *_ = run_small(alias, target, grad="inplace", **opts)
    assert grad2 is alias
    assert_array_equal(grad2, grad)
    assert_array_equal(loss2, loss)
    loss3, *_ = run_small(logits, target, grad="none", **opts)
    assert_array_equal(loss3, loss)


def test_small_classes_predicate():
    assert _small.small_classes(np.dtype(np.float32), 10, 10)
    assert _small.small_classes(np.dtype(np.float64), 10, _small.SMALL_MAX_C)
    assert not _small.small_classes(np.dtype(np.float32), 10, _small.SMALL_MAX_C + 1)
    assert not _small.small_classes(np.dtype(np.float32), 0, 10)


_BOUNDS_SCRIPT = r"""
import numpy as np, softmaxce
rng = np.random.default_rng(0)
for shape in [(5000, 2), (4, 2, 40, 50)]:  # the two-class pass: rows, and class axis 1
    z = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, 2, (shape[0],) + shape[2:])
    for reduction in ("none", "mean"):
        for opts in ({}, {"weight": np.array([0.5, 2.0]), "label_smoothing": 0.1}):
            softmaxce.cross_entropy(z, t, reduction=reduction, **opts)  # no gradient: no coefficients
            softmaxce.cross_entropy_and_grad(z, t, reduction=reduction, **opts)
print("ok")
"""


def test_two_class_pass_stays_in_bounds(tmp_path):
    """With numba's bounds checks on (a fresh cache: they are compiled in), the two-class pass reads no
    upstream coefficient when none is given (a loss without gradient passes an empty array; it once
    read coef[0], and then coef[p] for every position, past its end)."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env["PYTHONPATH"] = str(pathlib.Path(_small.__file__).parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _BOUNDS_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def _buffer(shape, dtype, offset):
    """An uninitialized C-contiguous array whose first element is `offset` elements past a 64-byte boundary."""
    size = int(np.prod(shape))
    raw = np.empty(size + 64, dtype)
    start = (-raw.ctypes.data % 64) // raw.itemsize + offset
    return raw[start : start + size].reshape(shape)


@pytest.mark.parametrize("dtype, P", [(np.float32, 220_001), (np.float64, 110_001)], ids=["f32", "f64"])
def test_streamed_row_gradient(rng, dtype, P):
    """A row-major gradient of at least ROWS_STREAM_BYTES leaves the row driver through non-temporal
    stores (`_transpose.columns_to_rows_streamed`) when its first row is 64-byte aligned: the same bits
    as through ordinary stores (a buffer one element off), on 1 and 2 threads, and against the reference."""
    C = 10
    logits, target = _problem(rng, P, C, dtype)
    assert logits.nbytes >= _small.ROWS_STREAM_BYTES
    target[::7] = -100
    (w, eps, lam, cap, ii, coef), _ = kernel_arrays(P, grad_output=0.37)
    results = []
    for parallel, offset in ((False, 0), (True, 0), (True, 1)):
        grad = _buffer((P, C), dtype, offset)
        loss, lse = np.empty(P), np.empty(P)
        empty_stats = np.empty(0, np.int64), np.empty(0)
        with _threads.kernel_region(parallel):
            _small.index_rows_small(parallel, logits, target, w, eps, lam, cap, ii, coef, grad, loss, lse, *empty_stats)
        results.append((loss, grad))
    for loss, grad in results[1:]:
        assert_array_equal(loss, results[0][0])
        assert_array_equal(grad, results[0][1])
    ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="none", grad_output=0.37)
    tol = TOL[dtype]
    assert_allclose(results[0][0], ref_loss, rtol=tol["loss"], atol=tol["loss"])
    assert_allclose(results[0][1], ref_grad, rtol=0, atol=tol["grad"])
