"""tests/triton: the Triton kernels run by Triton's interpreter on CPU tensors.

TRITON_INTERPRET=1 is set per test with monkeypatch (restored when the test ends), never at import,
so it cannot leak into other folders' tests run in the same process; the kernels read it at call
time (`softmaxce.torch._triton._launch._kernels`). The interpreter is slow: a representative subset
runs by default, the full option grid is marked `slow` and runs with SOFTMAXCE_SLOW_TESTS=1.
Skipped as a whole when triton is not installed (it is the `[gpu]` extra).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import warnings

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # the [gpu] extra is not installed: nothing to run here
    collect_ignore_glob = ["test_*.py"]

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # for `import _tritoncases`

RUN_SLOW = os.environ.get("SOFTMAXCE_SLOW_TESTS") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the full interpreter grid; runs with SOFTMAXCE_SLOW_TESTS=1")


def pytest_collection_modifyitems(config, items):
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow interpreter test: set SOFTMAXCE_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords and _HERE in str(item.path):
            item.add_marker(skip)


@pytest.fixture
def interpret(monkeypatch):
    """Triton's interpreter on for this test only."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with warnings.catch_warnings():
        # numpy warns on inf * 0 in masked lanes of a tile, which the kernels discard with tl.where
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.fixture(params=[False, True], ids=["atomic", "deterministic"])
def deterministic(request):
    """Runs the test with torch.use_deterministic_algorithms off ("atomic": the fused head's weight
    gradients by atomic adds) and on ("deterministic": by `_lce_backward_cols`); restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)
