"""tests/torch: puts this folder on sys.path so test files can `import _torchref` (the float64 torch
reference) and `_tiny_model`; the folder must not be a package, since it would shadow `torch`.
Also the `path` fixture, which runs a test on both engines of the torch front ends."""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(params=["numpy", "chunked"])
def path(request, monkeypatch):
    """Runs a test on the NumPy-engine path and on the torch chunked path (forced, in float64)."""
    if request.param == "chunked":
        from softmaxce.torch import _ops

        monkeypatch.setattr(_ops, "_numpy_path", lambda t: False)
    return request.param
