"""The portable kernels: what runs on CPUs without AVX2 + FMA and on other architectures (the streamed
rows, the general rows, probability targets, the few-class rows and class axis 1).

The suite's other tests run the x86 loops where this CPU has them; here a subprocess fixes numba's
target to "generic" (NUMBA_CPU_NAME, with its own empty cache directory) so the portable loops are
compiled and checked against the float64 reference, and its assembly is searched for x86-only
instructions that must not be generated then.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from softmaxce._x86 import avx2_fma

_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from reference import reference_cross_entropy
import softmaxce
from softmaxce import _streamed, _x86

rng = np.random.default_rng(7)
errors = {}
cases = [
    ("streamed", 1051, {}),
    ("streamed-smoothed-zloss", 1024, {"label_smoothing": 0.1, "z_loss": 1e-3}),
    ("streamed-weighted", 37, {"weight": True}),
    ("general-softcap", 17, {"softcap": 5.0, "label_smoothing": 0.2}),
    ("probability", 10, {"probability": True}),
]
if not _x86.AVX2_FMA:  # the few-class families have no separate x86 loops to look for
    cases += [("few-classes", 10, {}), ("class-axis-1", 5, {"axis1": True})]
for name, C, opts in cases:
    opts = dict(opts)
    shape = (2, C, 5, 7) if opts.pop("axis1", False) else (70, C)
    z = (rng.standard_normal(shape) * 4).astype(np.float32)
    if opts.pop("probability", False):
        y = rng.random((70, C)).astype(np.float32)
    else:
        y = rng.integers(0, C, (shape[0],) + shape[2:])
        y.reshape(-1)[3] = -100
    if opts.pop("weight", False):
        opts["weight"] = rng.random(C)
    loss, grad = softmaxce.cross_entropy_and_grad(z, y, **opts)
    ref_loss, ref_grad = reference_cross_entropy(z.astype(np.float64), y, **opts)
    errors[name] = [abs(float(loss) - float(ref_loss)) / max(1.0, abs(float(ref_loss))),
                    float(np.abs(grad - ref_grad).max() / max(1e-30, np.abs(ref_grad).max()))]
asm = ""
for kernel in (_streamed.index_rows_streamed, _streamed.index_rows_streamed_serial):
    for text in kernel.inspect_asm().values():
        asm += text
x86_only = [op for op in ("sfence", "vpermps", "movntps") if op in asm]
print(json.dumps({"avx2_fma": _x86.AVX2_FMA, "errors": errors, "x86_only": x86_only, "asm_size": len(asm)}))
"""


def _run_script(tmp_path, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_NAME"}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), **env_extra)
    tests_dir = str(pathlib.Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, tests_dir], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["asm_size"] > 0  # a fresh cache: the kernels were compiled, so their assembly is there
    for name, (loss_err, grad_err) in result["errors"].items():
        assert loss_err < 1e-5, (name, loss_err)
        assert grad_err < 1e-5, (name, grad_err)
    return result


def test_portable_kernels_match_the_reference_without_x86_code(tmp_path):
    result = _run_script(tmp_path, NUMBA_CPU_NAME="generic")
    assert result["avx2_fma"] is False
    assert result["x86_only"] == []


def test_x86_loops_are_generated_where_the_flag_is_on(tmp_path):
    """The converse, so that the search above is known to see these instructions when they are there."""
    from softmaxce import _x86

    if not _x86.AVX2_FMA:
        pytest.skip("this CPU has no AVX2/FMA")
    result = _run_script(tmp_path)
    assert result["avx2_fma"] is True
    assert set(result["x86_only"]) == {"sfence", "vpermps", "movntps"}


@pytest.mark.parametrize(
    ("triple", "features", "cpu_name", "expected"),
    [
        ("x86_64-unknown-linux-gnu", {"avx2": True, "fma": True}, None, True),
        ("x86_64-pc-windows-msvc", {"avx2": True, "fma": True}, "", True),
        ("x86_64-unknown-linux-gnu", {"avx2": True, "fma": False}, None, False),
        ("x86_64-unknown-linux-gnu", {"avx2": False, "fma": True}, None, False),
        ("x86_64-unknown-linux-gnu", {"avx2": True, "fma": True}, "generic", False),
        ("aarch64-unknown-linux-gnu", {"avx2": True, "fma": True}, None, False),
        ("arm64-apple-darwin", {"neon": True, "fma": True}, None, False),
        ("i686-pc-linux-gnu", {"avx2": True, "fma": True}, None, False),
        ("powerpc64le-unknown-linux-gnu", {}, None, False),
    ],
    ids=["x86_64", "x86_64-windows", "no-fma", "no-avx2", "fixed-cpu", "aarch64", "apple-arm64", "i686", "ppc64le"],
)
def test_x86_loops_are_chosen_from_triple_and_features(triple, features, cpu_name, expected):
    assert avx2_fma(triple, features, cpu_name) is expected


def test_table_exp_matches_its_float64_model():
    """The IR table exp against a float64 NumPy model of the same algorithm (k = round(8 x / ln 2),
    2**(k/8) from the table, the degree-3 polynomial): within 1 float32 ulp everywhere on [-87, 0]."""
    from softmaxce import _x86
    from softmaxce._rows import LN2, ROUND_MAGIC

    if not _x86.AVX2_FMA:
        pytest.skip("this CPU has no AVX2/FMA: the table exp is not compiled here")
    x = np.linspace(-87.0, 0.0, 160_000, dtype=np.float32)
    x = x[: x.size // 16 * 16]
    e = np.empty_like(x)

    from numba import njit

    @njit
    def run(x, e):
        return _x86.exp16_store(x, e, 0, x.shape[0] // 16, np.float32(0.0))

    run(x, e)
    # the model: the same steps in float64 from the float32 inputs and constants
    x64 = x.astype(np.float64)
    k = np.rint(x64 * np.float64(np.float32(8 * 1.4426950408889634)))
    r = (x64 - k * np.float64(LN2 / np.float32(8))).astype(np.float64)
    p = r * (_x86.P1 + r * (_x86.P2 + r * _x86.P3))
    table = np.array(_x86.EXP_TABLE, dtype=np.float64)
    s = np.ldexp(table[(k.astype(np.int64) % 8)], (k.astype(np.int64) // 8))
    model = s + p * s
    ulp = np.spacing(model.astype(np.float32)).astype(np.float64)
    err_ulps = np.abs(e.astype(np.float64) - model) / ulp
    assert float(err_ulps.max()) <= 1.0, float(err_ulps.max())
    assert ROUND_MAGIC == np.float32(1.5 * 2**23)
