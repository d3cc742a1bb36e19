"""Shared test setup: `reference` importable from every test file, seeded generators, hypothesis profile."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Test files import the float64 reference as `from reference import ...` (pytest runs with
# --import-mode=importlib, which does not put tests/ on sys.path by itself).
_TESTS = str(pathlib.Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# numba compiles on first call: hypothesis must not count that against an example's deadline.
settings.register_profile("softmaxce", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("softmaxce")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test, so every test is reproducible on its own."""
    return np.random.default_rng(20240611)
