"""tests/triton: the Triton kernels, run by Triton's interpreter on CPU tensors and, where a CUDA
device is present, compiled for it.

The `device` fixture runs each kernel test twice: "interpret" (CPU tensors, TRITON_INTERPRET=1 set
per test with monkeypatch and restored when the test ends, never at import, so it cannot leak into
other folders' tests run in the same process; the kernels read it at call time,
`softmaxce.torch._triton._launch._kernels`) and "cuda" (CUDA tensors, the compiled kernels; skipped
without a CUDA device). The interpreter is slow: a representative subset runs by default, the full
option grid is marked `slow` and runs with SOFTMAXCE_SLOW_TESTS=1; on CUDA the full grid always runs.
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
        on_cuda = getattr(item, "callspec", None) is not None and item.callspec.params.get("device") == "cuda"
        if "slow" in item.keywords and _HERE in str(item.path) and not on_cuda:
            item.add_marker(skip)


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["interpret", pytest.param("cuda", marks=NO_CUDA)])
def device(request, monkeypatch):
    """The device the test's tensors live on: "cpu" with Triton's interpreter on for this test only,
    or "cuda" with the compiled kernels (the interpreter off)."""
    if request.param == "cuda":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        yield torch.device("cuda")
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with warnings.catch_warnings():
        # numpy warns on inf * 0 in masked lanes of a tile, which the kernels discard with tl.where
        warnings.simplefilter("ignore", RuntimeWarning)
        yield torch.device("cpu")


@pytest.fixture(params=[False, True], ids=["atomic", "deterministic"])
def deterministic(request):
    """Runs the test with torch.use_deterministic_algorithms off ("atomic": the fused head's weight
    gradients by atomic adds) and on ("deterministic": by `_lce_backward_cols`); restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)
