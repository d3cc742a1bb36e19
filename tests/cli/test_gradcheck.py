"""`softmaxce gradcheck` and the float64 finite-difference reference it shares with `demo`."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _cli_helpers import run

from softmaxce.cli import _gradcheck
from softmaxce.cli._finite_diff import central_difference, fd_entry, reference_loss


def test_gradcheck_passes_and_prints_the_table():
    result = run("gradcheck", "--classes", "7", "--batch", "5", "--features", "3")
    assert result.exit_code == 0, result.output
    for name in ("loss L", "dL/dz", "dL/dW", "dL/db", "dL/dx", "fused dL/dW", "fused dL/dx"):
        assert re.search(rf"^{re.escape(name)} .* ok$", result.stdout, re.M), name
    assert re.search(r"^dL/dW +\(7, 3\) +21 ", result.stdout, re.M)  # shape and entries checked
    worst = float(re.search(r"largest scaled error (\S+)", result.stdout).group(1))
    assert worst < 1e-9  # float64 analytic vs 4th-order finite differences
    r32 = run("gradcheck", "--dtype", "float32", "--reduction", "sum", "--label-smoothing", "0.2", "--seed", "4")
    assert r32.exit_code == 0, r32.output


def test_gradcheck_samples_at_most_max_entries():
    result = run("gradcheck", "--classes", "50", "--batch", "4", "--features", "9", "--max-entries", "30")
    assert result.exit_code == 0, result.output
    assert re.search(r"^dL/dW +\(50, 9\) +30 ", result.stdout, re.M)
    assert re.search(r"^dL/db +\(50,\) +30 ", result.stdout, re.M)


def test_gradcheck_fails_on_a_wrong_gradient(monkeypatch):
    assert run("gradcheck", "--tol", "1e-30", "-q").exit_code == 1  # real errors (~1e-12) exceed a silly tol
    real = _gradcheck.cross_entropy_and_grad

    def off_by_one_percent(*args, **kwargs):
        loss, grad = real(*args, **kwargs)
        return loss, grad * 1.01

    monkeypatch.setattr(_gradcheck, "cross_entropy_and_grad", off_by_one_percent)
    result = run("gradcheck")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "FAILED" in result.stderr


def test_reference_loss_by_hand():
    """Two rows, hand-computed: uniform logits give ln C; label smoothing mixes in the mean of -ln a."""
    z = np.array([[0.0, 0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0, 0.0]])  # row 2: a = [1/2, 1/6, 1/6, 1/6]
    y = np.array([2, 0])
    assert reference_loss(z, y, reduction="sum") == pytest.approx(np.log(4) + np.log(2), rel=1e-15)
    assert reference_loss(z, y) == pytest.approx((np.log(4) + np.log(2)) / 2, rel=1e-15)
    eps = 0.2
    row2 = (1 - eps) * np.log(2) + eps / 4 * (np.log(2) + 3 * np.log(6))
    assert reference_loss(z, y, reduction="sum", label_smoothing=eps) == pytest.approx(np.log(4) + row2, rel=1e-14)


@pytest.mark.parametrize("shift", [0.0, 1e3, -1e3], ids=["plain", "large-positive", "large-negative"])
def test_central_difference_is_a_minus_y_and_leaves_the_input_alone(shift):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 5)) + shift
    y = np.array([4, 0, 2])
    before = z.copy()
    fd = central_difference(lambda zz: reference_loss(zz, y), z)
    a = np.exp(z - z.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fd, (a - np.eye(5)[y]) / 3, atol=1e-9)
    np.testing.assert_array_equal(z, before)  # the caller's array is never modified
    cube = fd_entry(lambda v: float(v[0] ** 3), np.array([2.0]), (0,))
    assert cube == pytest.approx(12.0, rel=1e-12)  # 4th order: exact for a cubic
