"""The streamed float32 path (class-index targets, no softcap/statistics): rows kept in L1, long rows in
several blocks, the gradient of one row written during the next row's first pass, chunk boundaries,
special rows in the middle of a chunk, unaligned and in-place gradients, and the hand-written AVX2
block loops."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import softmaxce
from reference import reference_cross_entropy
from softmaxce import _small, _streamed, _x86, cross_entropy_and_grad

# C values: rows kept in L1 (`_resident_rows`, from STREAMED_FROM_C = 32 (below it the few-class kernel
# takes float32 rows) up to RESIDENT_MAX_C = 2048: two vectors of 16, a tail of 15, a tail of 4, a tail
# of 1 past 8 vectors, one block exactly, a tail of 16 plus 8 lanes plus 3 scalars, two blocks) and
# streamed rows (just past RESIDENT_MAX_C, several blocks with a tail)
SIZES = [32, 47, 100, 129, 1024, 1051, 2048, 2049, 4099]


def test_sizes_cover_both_kernels():
    assert min(SIZES) == _small.STREAMED_FROM_C and {C <= _streamed.RESIDENT_MAX_C for C in SIZES} == {True, False}
    f32 = np.dtype(np.float32)
    assert _small.small_classes(f32, 10, 31, streamed=True) and not _small.small_classes(f32, 10, 32, streamed=True)
    assert _small.small_classes(f32, 10, 100, streamed=False)  # softcap, statistics: the few-class kernel


def _problem(rng, P, C, scale=4.0):
    logits = (scale * rng.standard_normal((P, C))).astype(np.float32)
    target = rng.integers(0, C, P)
    return logits, target


def _special_rows(logits, target):
    """Rows that leave the pipeline early, in the middle of the batch: returns their indices."""
    P, C = logits.shape
    target[5] = -100  # ignored
    logits[9, C // 2] = np.nan  # a NaN logit (positive sign)
    logits[10, C - 1] = -np.nan  # a NaN logit with the sign bit set
    logits[11, 3] = np.inf  # +inf
    logits[12, : min(1024, C // 2)] = -np.inf  # a whole first block of -inf where C > 1024
    target[12] = C - 1
    logits[13, :] = -np.inf  # only -inf: lse = -inf, loss NaN (as PyTorch)
    logits[14, target[14]] = -np.inf  # -inf on the target: loss +inf
    return {"ignored": [5], "nan": [9, 10, 11, 13], "inf": [14]}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("C", SIZES)
@pytest.mark.parametrize(
    "opts",
    [{}, {"label_smoothing": 0.2}, {"z_loss": 1e-3}, {"weight": "w"}],
    ids=["plain", "smooth", "zloss", "weighted"],
)
def test_streamed_rows_match_reference(rng, threads, C, opts):
    P = 70  # more rows than chunks (_MIN_CHUNKS = 32): chunks of several rows, pipelined
    logits, target = _problem(rng, P, C)
    special = _special_rows(logits, target)
    if opts.get("weight") == "w":
        opts = dict(opts, weight=rng.uniform(0.5, 2.0, C))
    go = rng.uniform(-1.0, 2.0, P)
    before = softmaxce.get_num_threads()
    try:
        softmaxce.set_num_threads(min(threads, before))
        with np.errstate(invalid="ignore"):
            loss, grad = cross_entropy_and_grad(logits, target, reduction="none", grad_output=go, **opts)
    finally:
        softmaxce.set_num_threads(before)
    bad = special["nan"] + special["inf"]
    good = np.setdiff1d(np.arange(P), bad)
    ref_loss, ref_grad = reference_cross_entropy(
        logits[good], target[good], reduction="none", grad_output=go[good], **opts
    )
    assert_allclose(loss[good], ref_loss, rtol=1e-6, atol=0)
    assert_allclose(grad[good], ref_grad, rtol=0, atol=1e-6)
    assert loss[5] == 0.0 and not grad[5].any()
    for n in special["nan"]:
        assert np.isnan(loss[n]) and np.isnan(grad[n]).all()
    assert loss[14] == np.inf
    if "label_smoothing" not in opts:
        assert not grad[12, : min(1024, C // 2)].any()  # exp(-inf) = 0 exactly


@pytest.mark.parametrize("C", SIZES)
def test_streamed_one_and_two_threads_bit_identical(rng, C):
    logits, target = _problem(rng, 300, C)
    before = softmaxce.get_num_threads()
    try:
        softmaxce.set_num_threads(1)
        one = cross_entropy_and_grad(logits, target, reduction="none")
        softmaxce.set_num_threads(min(2, before))
        two = cross_entropy_and_grad(logits, target, reduction="none")
    finally:
        softmaxce.set_num_threads(before)
    assert_array_equal(one[0], two[0])
    assert_array_equal(one[1], two[1])


_CACHE_SCRIPT = r"""
import json, sys
import numpy as np
import softmaxce
from softmaxce import _axis1, _half, _kernels, _small, _sparse_rows, _streamed

# (logits, targets, options, the family's parallel and serial drivers)
rng = np.random.default_rng(20240611)
case = sys.argv[1]
if case == "resident":
    z, y, opts = (4.0 * rng.standard_normal((300, 1051))).astype(np.float32), rng.integers(0, 1051, 300), {}
    drivers = (_streamed.index_rows_streamed, _streamed.index_rows_streamed_serial)
elif case == "few-classes":
    z, y = (4.0 * rng.standard_normal((40000, 10))).astype(np.float32), rng.integers(0, 10, 40000)
    opts, drivers = {"label_smoothing": 0.1}, (_small._index_rows_small, _small._index_rows_small_serial)
elif case == "class-axis-1":
    z, y = (4.0 * rng.standard_normal((16, 21, 32, 32))).astype(np.float32), rng.integers(0, 21, (16, 32, 32))
    opts, drivers = {"label_smoothing": 0.1}, (_axis1._index_axis1, _axis1._index_axis1_serial)
elif case == "two-classes":  # the two-class pass's copy without weights, smoothing or z-loss
    z, y = (4.0 * rng.standard_normal((16, 2, 64, 64))).astype(np.float32), rng.integers(0, 2, (16, 64, 64))
    opts, drivers = {}, (_axis1._index_axis1, _axis1._index_axis1_serial)
elif case == "general-rows":  # float64: the general row kernel
    z, y = 4.0 * rng.standard_normal((600, 300)), rng.integers(0, 300, 600)
    opts, drivers = {"z_loss": 1e-3, "softcap": 5.0}, (_kernels._index_rows, _kernels._index_rows_serial)
elif case == "probability":
    z = (4.0 * rng.standard_normal((600, 300))).astype(np.float32)
    y = rng.dirichlet(np.ones(300), 600).astype(np.float32)
    opts, drivers = {"label_smoothing": 0.1}, (_kernels._probability_rows, _kernels._probability_rows_serial)
elif case == "float16":
    z, y = (4.0 * rng.standard_normal((600, 300))).astype(np.float16), rng.integers(0, 300, 600)
    opts, drivers = {"label_smoothing": 0.1}, (_half._index_rows, _half._index_rows_serial)
else:  # sparse targets
    z = (4.0 * rng.standard_normal((600, 300))).astype(np.float32)
    idx, val = rng.integers(0, 300, (600, 3)), rng.dirichlet(np.ones(3), 600).astype(np.float32)
    y, opts = softmaxce.SparseTarget(idx, val), {}
    drivers = (_sparse_rows._sparse_rows, _sparse_rows._sparse_rows_serial)
out = {}
for n in [int(a) for a in sys.argv[2:]]:
    softmaxce.set_num_threads(n)
    loss, grad = softmaxce.cross_entropy_and_grad(z, y, reduction="none", **opts)
    out[n] = (loss.tobytes() + grad.tobytes()).hex()
hits = [sum(d.stats.cache_hits.values()) for d in drivers]
print(json.dumps({"same": len(set(out.values())) == 1, "hits": hits}))
"""


@pytest.mark.parametrize(
    "case",
    ["resident", "few-classes", "class-axis-1", "two-classes", "general-rows", "probability", "float16", "sparse"],
)
def test_cached_and_freshly_compiled_drivers_agree(tmp_path, case):
    """One process fills an empty cache with a kernel family's parallel driver; a second loads it from
    there and compiles the serial one: 1 and 2 threads still give the same bits. (The resident kernel
    once inherited the drivers' fast-math flags, and its copy in the cached driver summed some rows in
    another order: 1 ulp apart on a row, in a cold-cache run of the whole suite only.)"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_NUM_THREADS": "2"}
    env["PYTHONPATH"] = str(pathlib.Path(softmaxce.__file__).parents[1]) + os.pathsep + env.get("PYTHONPATH", "")

    def run(*threads):
        out = subprocess.run(
            [sys.executable, "-c", _CACHE_SCRIPT, case, *threads], env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    run("2")  # compiles the parallel driver into the empty cache
    second = run("1", "2")
    assert second["hits"] == [1, 0]  # the mixed state: the parallel driver cached, the serial one compiled
    assert second["same"]


@pytest.mark.parametrize("C", SIZES)
def test_streamed_in_place_unaligned_and_strided_agree(rng, C):
    """out=logits, a gradient buffer whose rows are not 32-byte aligned, and logits with a row stride
    (no prefetch) all give the same bits as the plain call."""
    logits, target = _problem(rng, 40, C)
    target[7] = -100
    loss, grad = cross_entropy_and_grad(logits, target, reduction="none")

    buf = np.zeros((40, C + 1), np.float32)
    out = buf[:, 1:]  # rows start 4 bytes past the allocation's alignment
    loss2, grad2 = cross_entropy_and_grad(logits, target, reduction="none", out=out)
    assert grad2 is out and (buf[:, 0] == 0).all()
    assert_array_equal(grad2, grad)
    assert_array_equal(loss2, loss)

    wide = np.zeros((40, C + 5), np.float32)
    wide[:, :C] = logits
    loss3, grad3 = cross_entropy_and_grad(wide[:, :C], target, reduction="none")
    assert_array_equal(grad3, grad)
    assert_array_equal(loss3, loss)

    inplace = logits.copy()
    loss4, grad4 = cross_entropy_and_grad(inplace, target, reduction="none", out=inplace)
    assert grad4 is inplace
    assert_array_equal(grad4, grad)
    assert_array_equal(loss4, loss)


@pytest.mark.skipif(not _x86.AVX2_FMA, reason="this CPU has no AVX2/FMA: the portable loops run")
def test_simd_exp_accuracy():
    """The AVX2 table exp: its documented error bounds, exactly 0 at -inf and at or below -88,
    exp(0) = 1, NaN kept; the loss-only loop sums the same terms."""
    from numba import njit

    @njit
    def exp16(x, e, mb):
        return _x86.exp16_store(x, e, 0, x.shape[0] // 16, mb), _x86.exp16_sum(x, e, 0, x.shape[0] // 16, mb)

    x = np.linspace(-87.0, 0.0, 2_000_000).astype(np.float32)  # a multiple of 16
    e = np.empty_like(x)
    total, total_loss_only = exp16(x, e, np.float32(0.0))
    rel_err = np.abs(e / np.exp(x.astype(np.float64)) - 1.0)
    assert rel_err[x >= -10.0].max() <= 1.5e-7
    assert rel_err.max() <= 3.6e-7
    assert_allclose(total, np.exp(x.astype(np.float64)).sum(), rtol=1e-5)
    assert total_loss_only == total
    special = np.array([0.0, -0.0, -88.0, -88.5, -1e30, -np.inf, np.nan, -np.nan] * 2, dtype=np.float32)
    e = np.empty_like(special)
    exp16(special, e, np.float32(0.0))
    assert_array_equal(e[[0, 1, 8, 9]], 1.0)
    assert_array_equal(e[[2, 3, 4, 5, 10, 11, 12, 13]], 0.0)
    assert np.isnan(e[[6, 7, 14, 15]]).all()
    # the argument is z - mb: a shift by mb gives the same terms
    shifted = np.empty(32, np.float32)
    exp16(x[:32] + np.float32(3.0), shifted, np.float32(3.0))
    assert_allclose(shifted, np.exp(((x[:32] + np.float32(3.0)) - np.float32(3.0)).astype(np.float64)), rtol=3.6e-7)


@pytest.mark.skipif(not _x86.AVX2_FMA, reason="this CPU has no AVX2/FMA: the portable loops run")
@pytest.mark.parametrize("n16", [0, 1, 2, 64])
def test_simd_max(rng, n16):
    from numba import njit

    @njit
    def max16(x, j0, n16, init):
        return _x86.max16(x, j0, n16, init)

    x = (10 * rng.standard_normal(16 * n16 + 7)).astype(np.float32)
    for j0 in (0, 3, 7):  # any offset: the vector loads need no alignment
        part = x[j0 : j0 + 16 * n16]
        init = np.float32(-np.inf)
        assert max16(x, j0, n16, init) == (part.max() if n16 else init)
        assert max16(x, j0, n16, np.float32(100.0)) == 100.0
    if n16:
        x[j0 + 5] = np.nan  # skipped: the exp sum shows it
        assert max16(x, j0, n16, np.float32(-np.inf)) == np.nanmax(x[j0 : j0 + 16 * n16])
