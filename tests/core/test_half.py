"""The 16-bit kernels (`_half`): bfloat16 / float16 logits read and the gradient written as raw bits.

- the bit conversions, exhaustively over all 65536 patterns of each format, against PyTorch's
  bfloat16 and NumPy's float16 (and float32 -> 16 bits, round to nearest even, at every tie);
- the kernels against the float64 reference on the same (exactly representable) logits, with the
  low-precision rule: our error, loss and gradient rounded to the 16-bit dtype, no worse than that of
  PyTorch's same-dtype F.cross_entropy plus a small tolerance; and directly: at most one 16-bit ulp
  (plus float32 noise) from the reference gradient;
- odd class counts, every option, probability targets, statistics, special values, the gradient in
  place of the logits, inputs left alone, 1 vs 2 threads bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import softmaxce
from kernel_calls import kernel_arrays
from option_cases import KERNEL_OPTIONS
from reference import reference_cross_entropy, reference_stats
from softmaxce import _half, _kernels, _resources, _threads

torch = pytest.importorskip("torch")

KINDS = ["bfloat16", "float16"]
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
MANTISSA_BITS = {"bfloat16": 7, "float16": 10}
MIN_EXPONENT = {"bfloat16": -126, "float16": -14}  # of the normal numbers
CLASSES = [1, 2, 3, 7, 17, 1000]
OPTIONS = KERNEL_OPTIONS
TORCH_OPTIONS = ("plain", "ignore-weight", "smooth", "smooth-weight")  # what F.cross_entropy also has


# ----------------------------------------------------------------------------- helpers


def to_bits(x, kind: str) -> np.ndarray:
    """The 16-bit patterns of float32 x rounded by PyTorch (round to nearest even)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(TORCH_DTYPES[kind]).view(torch.int16).numpy().view(np.uint16)


def values(bits, kind: str) -> np.ndarray:
    """The 16-bit patterns' values, as float64 (by PyTorch)."""
    t = torch.from_numpy(np.ascontiguousarray(bits).view(np.int16))
    return t.view(TORCH_DTYPES[kind]).to(torch.float64).numpy()


def ulp(x, kind: str) -> np.ndarray:
    """The spacing of the 16-bit format at |x| (its smallest subnormal spacing near 0)."""
    e = np.floor(np.log2(np.maximum(np.abs(np.asarray(x, np.float64)), 2.0 ** MIN_EXPONENT[kind])))
    return 2.0 ** (e - MANTISSA_BITS[kind])


def _problem(rng, P, C, kind, scale=3.0):
    bits = to_bits(scale * rng.standard_normal((P, C)), kind)
    return bits, rng.integers(0, C, P)


def _options(opts, rng, C):
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.5, 2.0, C)
    return opts


def run_half(bits, target, kind, *, parallel=True, grad="new", **options):
    """The kernel as the engine would call it, reduction "none": (loss, grad bits, lse, argmax, entropy).

    options: weight, ignore_index, label_smoothing, z_loss, softcap, grad_output, stats (`kernel_arrays`)."""
    P, C = bits.shape
    (w, eps, lam, cap, ii, coef), outputs = kernel_arrays(P, **options)
    g = {"new": np.empty_like(bits), "none": np.empty((0, C), np.uint16), "inplace": bits}[grad]
    with _threads.kernel_region(parallel):
        if np.ndim(target) == 2:
            t = np.ascontiguousarray(target, np.float32)
            _half.probability_rows_half(parallel, kind, bits, t, w, eps, lam, cap, coef, g, *outputs)
        else:
            t = np.asarray(target, np.int64)
            _half.index_rows_half(parallel, kind, bits, t, w, eps, lam, cap, ii, coef, g, *outputs)
    loss, lse, argmax, entropy = outputs
    return loss, g, lse, argmax, entropy


def reference(bits, target, kind, grad_output=None, **opts):
    """The float64 reference on the 16-bit logits' exact values: (loss (P,), grad (P, C))."""
    z = values(bits, kind)
    go = None if grad_output is None else np.asarray(grad_output, np.float64)
    return reference_cross_entropy(z, target, reduction="none", grad_output=go, **opts)


def torch_same_dtype(bits, target, kind, grad_output, weight=None, **opts):
    """PyTorch's F.cross_entropy forward + backward in the 16-bit dtype: (loss, grad) as float64."""
    z = torch.from_numpy(bits.view(np.int16)).view(TORCH_DTYPES[kind]).clone().requires_grad_()
    t = torch.from_numpy(np.asarray(target, np.float32 if np.ndim(target) == 2 else np.int64))
    if t.dtype == torch.float32:
        t = t.to(z.dtype)
    w = None if weight is None else torch.tensor(weight, dtype=z.dtype)
    loss = torch.nn.functional.cross_entropy(z, t, weight=w, reduction="none", **opts)
    (loss * torch.from_numpy(grad_output).to(z.dtype)).sum().backward()
    return loss.detach().double().numpy(), z.grad.double().numpy()


def assert_grad_close(ours_bits, ref_grad, kind, grad_output=None, slack=4e-6):
    """Each entry within one 16-bit ulp of the reference, plus float32 noise relative to the row's
    terms (the gradient's largest entry, or the upstream gradient, which scales a and beta)."""
    ours = values(ours_bits, kind)
    go = np.ones(len(ref_grad)) if grad_output is None else np.asarray(grad_output)
    row = np.maximum(np.max(np.abs(ref_grad), axis=1, keepdims=True), 2 * go[:, None])
    bound = ulp(ref_grad, kind) + slack * row
    err = np.abs(ours - ref_grad)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)} at {worst}"


# ----------------------------------------------------------------------------- conversions

ALL_BITS = np.arange(1 << 16, dtype=np.uint16)


@pytest.mark.parametrize("kind", KINDS)
def test_widening_every_pattern(kind):
    out = np.empty(ALL_BITS.size, np.float32)
    _half.float32_from_bits(_half.FORMATS[kind], ALL_BITS, out)
    if kind == "bfloat16":
        expected = torch.from_numpy(ALL_BITS.view(np.int16)).view(torch.bfloat16).float().numpy()
    else:
        expected = ALL_BITS.view(np.float16).astype(np.float32)
    assert_array_equal(out.view(np.uint32), expected.view(np.uint32))  # NaN payloads and -0 included


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_every_pattern(kind):
    fmt = _half.FORMATS[kind]
    wide = np.empty(ALL_BITS.size, np.float32)
    back = np.empty_like(ALL_BITS)
    _half.float32_from_bits(fmt, ALL_BITS, wide)
    _half.bits_from_float32(fmt, wide, back)
    nan = np.isnan(wide)
    assert_array_equal(back[~nan], ALL_BITS[~nan])
    assert np.isnan(values(back[nan], kind)).all()
    assert_array_equal(back[nan] & 0x8000, ALL_BITS[nan] & 0x8000)  # a NaN keeps its sign


def _rounding_cases(kind, rng):
    """float32 values at and around every tie between neighbouring 16-bit values, plus random bits."""
    v = values(ALL_BITS, kind)
    order = np.argsort(v[np.isfinite(v)], kind="stable")
    finite = v[np.isfinite(v)][order]
    mids = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)  # exact in float32 (fewer mantissa bits)
    near = [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))]
    random = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    specials = np.array([np.inf, -np.inf, 0.0, -0.0, 65504.0, 65519.996, 65520.0, 3.4e38, 1e-45], np.float32)
    return np.concatenate([finite.astype(np.float32), *near, random, specials, -specials])


@pytest.mark.parametrize("kind", KINDS)
def test_rounding_to_16_bits(kind, rng):
    x = _rounding_cases(kind, rng)
    out = np.empty(x.size, np.uint16)
    _half.bits_from_float32(_half.FORMATS[kind], x, out)
    if kind == "bfloat16":
        expected = to_bits(x, kind)
    else:
        with np.errstate(over="ignore"):
            expected = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert_array_equal(out[~nan], expected[~nan])
    assert np.isnan(values(out[nan], kind)).all()
    assert_array_equal(out[nan] & 0x8000, (x[nan].view(np.uint32) >> 16).astype(np.uint16) & 0x8000)


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("opt", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("kind", KINDS)
def test_index_targets_against_reference(rng, kind, C, opt):
    P = 150  # more than one chunk of rows at C = 1000, and not a multiple of it
    bits, target = _problem(rng, P, C, kind)
    opts = _options(OPTIONS[opt], rng, C)
    ii = opts.get("ignore_index")
    if ii is not None and ii < C:
        target[::5] = ii
    go = rng.uniform(0.5, 1.5, P)
    loss, grad, *_ = run_half(bits, target, kind, grad_output=go, **opts)
    ref_loss, ref_grad = reference(bits, target, kind, grad_output=go, **opts)
    assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_grad_close(grad, ref_grad, kind, go)
    if opt in TORCH_OPTIONS:
        t_loss, t_grad = torch_same_dtype(bits, target, kind, go, **opts)
        ours_loss = values(to_bits(loss, kind), kind)  # the loss as the engine returns it, in the dtype
        tol = ulp(np.max(np.abs(ref_loss)), kind) + 1e-6
        assert np.max(np.abs(ours_loss - ref_loss)) <= np.max(np.abs(t_loss - ref_loss)) + tol
        tol = ulp(np.max(np.abs(ref_grad)), kind) + 1e-5 * np.max(go)  # + float32 noise on the terms
        assert np.max(np.abs(values(grad, kind) - ref_grad)) <= np.max(np.abs(t_grad - ref_grad)) + tol


PROBABILITY_OPTIONS = {
    "plain": {},
    "weight-smooth": {"label_smoothing": 0.1, "weight": "w"},
    "everything": {"label_smoothing": 0.1, "weight": "w", "z_loss": 1e-3, "softcap": 4.0},
}


@pytest.mark.parametrize("opt", list(PROBABILITY_OPTIONS), ids=list(PROBABILITY_OPTIONS))
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("kind", KINDS)
def test_probability_targets_against_reference(rng, kind, C, opt):
    P = 70
    bits, _ = _problem(rng, P, C, kind)
    target = rng.dirichlet(np.ones(C), P).astype(np.float32)
    opts = _options(PROBABILITY_OPTIONS[opt], rng, C)
    go = rng.uniform(0.5, 1.5, P)
    loss, grad, *_ = run_half(bits, target, kind, grad_output=go, **opts)
    ref_loss, ref_grad = reference(bits, target.astype(np.float64), kind, grad_output=go, **opts)
    assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_grad_close(grad, ref_grad, kind, go)
    if opt != "everything":
        # PyTorch's own 16-bit run sees the target rounded to its dtype: compare both to their references
        t16 = values(to_bits(target, kind), kind)
        t_loss, t_grad = torch_same_dtype(bits, t16, kind, go, **opts)
        t_ref_loss, t_ref_grad = reference(bits, t16, kind, grad_output=go, **opts)
        ours_loss = values(to_bits(loss, kind), kind)
        tol = ulp(np.max(np.abs(ref_loss)), kind) + 1e-6
        assert np.max(np.abs(ours_loss - ref_loss)) <= np.max(np.abs(t_loss - t_ref_loss)) + tol
        tol = ulp(np.max(np.abs(ref_grad)), kind) + 1e-5 * np.max(go)
        assert np.max(np.abs(values(grad, kind) - ref_grad)) <= np.max(np.abs(t_grad - t_ref_grad)) + tol


@pytest.mark.parametrize("softcap", [None, 4.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("kind", KINDS)
def test_statistics(rng, kind, softcap):
    bits, target = _problem(rng, 90, 17, kind)
    loss, grad, lse, argmax, entropy = run_half(bits, target, kind, stats=True, softcap=softcap)
    ref_lse, ref_pred, ref_ent = reference_stats(values(bits, kind), softcap=softcap)
    assert_allclose(lse, ref_lse, rtol=1e-6, atol=1e-6)
    assert_array_equal(argmax, ref_pred)
    assert_allclose(entropy, ref_ent, rtol=1e-5, atol=1e-5)
    # the statistics take the general row kernel: same loss and gradient as without them, within float32
    loss2, grad2, *_ = run_half(bits, target, kind, softcap=softcap)
    assert_allclose(loss2, loss, rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(values(grad2, kind) - values(grad, kind)) <= ulp(values(grad, kind), kind))


def test_long_rows(rng):
    """Several exp blocks per row (C > _rows.BLOCK) with a tail that is not a multiple of 16."""
    for kind in KINDS:
        bits, target = _problem(rng, 9, 3001, kind)
        loss, grad, *_ = run_half(bits, target, kind, label_smoothing=0.1, z_loss=1e-4)
        ref_loss, ref_grad = reference(bits, target, kind, label_smoothing=0.1, z_loss=1e-4)
        assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
        assert_grad_close(grad, ref_grad, kind)


# ----------------------------------------------------------------------------- special values


@pytest.mark.parametrize("stats", [False, True], ids=["fast", "general"])
@pytest.mark.parametrize("kind", KINDS)
def test_special_values(kind, stats):
    """As the float32 kernel on the widened logits: NaN, inf and -inf rows, exact extremes."""
    rows = [
        ([1000.0, 0.0, -1000.0, 0.0, 0.0], 0),  # loss exactly 0
        ([1000.0, 0.0, -1000.0, 0.0, 0.0], 2),  # loss exactly 2000
        ([0.0, np.nan, 1.0, 2.0, 3.0], 0),  # a NaN logit: NaN loss and gradient
        ([0.0, -np.nan, 1.0, 2.0, 3.0], 0),  # a NaN with the sign bit set
        ([0.0, np.inf, 1.0, 2.0, 3.0], 0),  # +inf: NaN
        ([0.0, -np.inf, 1.0, 2.0, 3.0], 0),  # -inf on another class: contributes 0
        ([0.0, -np.inf, 1.0, 2.0, 3.0], 1),  # -inf on the target: loss +inf
        ([-np.inf] * 5, 3),  # only -inf: NaN
        ([60000.0, -60000.0, 3.0, 0.0, 1.0], 1),  # large, finite in both formats
        ([0.0, 1e-7, -1e-7, 6e-8, 0.0], 4),  # float16 subnormals
    ]
    z = np.array([r for r, _ in rows], np.float32)
    target = np.array([t for _, t in rows])
    bits = to_bits(z, kind)
    loss, grad, *_ = run_half(bits, target, kind, stats=stats, label_smoothing=0.0)
    z32 = values(bits, kind).astype(np.float32)
    P = len(rows)
    loss32, lse32, grad32 = np.empty(P), np.empty(P), np.empty_like(z32)
    e, f = np.empty(0, np.int64), np.empty(0)
    _kernels.index_rows(False, z32, target, np.empty(0), 0.0, 0.0, 0.0, -100, np.ones(P), grad32, loss32, lse32, e, f)
    assert_array_equal(np.isnan(loss), np.isnan(loss32))
    assert_allclose(loss, loss32, rtol=1e-6, atol=1e-6)
    assert loss[0] == 0.0 and loss[1] == 2000.0 and loss[6] == np.inf
    g = values(grad, kind)
    assert_array_equal(np.isnan(g), np.isnan(grad32))
    ok = ~np.isnan(grad32)
    assert np.all(np.abs(g[ok] - grad32[ok]) <= ulp(grad32[ok], kind) + 1e-6)
    assert_array_equal(g[1], [1.0, 0.0, -1.0, 0.0, 0.0])


@pytest.mark.parametrize("kind", KINDS)
def test_all_ignored_and_empty(kind, rng):
    bits, target = _problem(rng, 6, 4, kind)
    target[:] = -100
    loss, grad, *_ = run_half(bits, target, kind, label_smoothing=0.1, z_loss=1e-3)
    assert_array_equal(loss, 0.0)
    assert_array_equal(grad, 0)
    for C in (0, 3):
        empty = np.empty((0, C), np.uint16)
        loss, grad, *_ = run_half(empty, np.empty(0, np.int64), kind)
        assert loss.shape == (0,) and grad.shape == (0, C)


# ----------------------------------------------------------------------------- memory and threads


@pytest.mark.parametrize("stats", [False, True], ids=["fast", "general"])
@pytest.mark.parametrize("kind", KINDS)
def test_inputs_untouched_and_in_place(rng, kind, stats):
    bits, target = _problem(rng, 200, 33, kind)
    w, go = rng.uniform(0.5, 2, 33), rng.uniform(0.5, 1.5, 200)
    opts = dict(weight=w, grad_output=go, label_smoothing=0.1, ignore_index=3, stats=stats)
    saved = [a.copy() for a in (bits, target, w, go)]
    loss, grad, lse, *_ = run_half(bits, target, kind, **opts)
    for a, b in zip((bits, target, w, go), saved, strict=True):
        assert_array_equal(a, b)
    alias = bits.copy()
    loss2, grad2, lse2, *_ = run_half(alias, target, kind, grad="inplace", **opts)
    assert grad2 is alias
    assert_array_equal(grad2, grad)
    assert_array_equal(loss2, loss)
    loss3, grad3, lse3, *_ = run_half(bits, target, kind, grad="none", **opts)
    assert_array_equal(loss3, loss)
    assert_array_equal(lse3, lse)


@pytest.mark.parametrize("probability", [False, True], ids=["index", "probability"])
@pytest.mark.parametrize("kind", KINDS)
def test_bit_identical_across_threads(rng, kind, probability):
    bits, target = _problem(rng, 1000, 300, kind)  # several chunks of rows
    if probability:
        target = rng.dirichlet(np.ones(300), 1000)
    opts = dict(label_smoothing=0.1, z_loss=1e-4, weight=rng.uniform(0.5, 2.0, 300), grad_output=rng.random(1000))
    before = softmaxce.get_num_threads()
    results = []
    try:
        for n, parallel in ((1, False), (1, True), (min(2, _threads.numba.config.NUMBA_NUM_THREADS), True)):
            softmaxce.set_num_threads(n)
            for stats in (False, True):
                results.append((stats, run_half(bits, target, kind, stats=stats, parallel=parallel, **opts)))
    finally:
        softmaxce.set_num_threads(before)
    for stats in (False, True):
        first, *rest = [r for s, r in results if s == stats]
        for other in rest:
            for a, b in zip(first, other, strict=True):
                assert_array_equal(a, b)


def test_bad_kind():
    with pytest.raises(ValueError, match="float8"):
        _half.index_rows_half(False, "float8", *([np.empty(0)] * 13))


@pytest.mark.parametrize("shape", [(3, 5), (2048, 1025), (0, 7)])
def test_gradient_bits(rng, shape):
    """The torch front end's 16-bit gradient buffer (`_resources.gradient_array` of uint16, cached from
    4 MiB on): writeable, C-contiguous, usable by the kernel and as a torch tensor of the 16-bit dtype."""
    a = _resources.gradient_array(shape, np.uint16)
    assert a.shape == shape and a.dtype == np.uint16 and a.flags.c_contiguous and a.flags.writeable
    bits, target = _problem(rng, *shape, "bfloat16")
    _, grad, *_ = run_half(bits, target, "bfloat16")
    P = shape[0]
    loss, lse, no_stats = np.empty(P), np.empty(P), np.empty(0)
    t = np.asarray(target, np.int64)
    _half.index_rows_half(
        False, "bfloat16", bits, t, no_stats, 0.0, 0.0, 0.0, -100, np.ones(P), a, loss, lse, t[:0], no_stats
    )
    assert_array_equal(a, grad)
    tensor = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    assert tuple(tensor.shape) == shape and tensor.dtype == torch.bfloat16
