"""backend="triton" availability: the errors, the per-call interpreter switch, no environment leak."""

from __future__ import annotations

import os

import pytest
import torch

from softmaxce import CEOptions
from softmaxce.torch import _triton
from softmaxce.torch._triton import _launch


def test_cpu_without_interpreter_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not _triton.available("cpu")
    with pytest.raises(_triton.BackendError, match="CUDA tensors.*TRITON_INTERPRET=1.*got tensors on cpu"):
        _triton.cross_entropy_rows(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), None, CEOptions(), False)


def test_missing_triton_names_the_gpu_extra(monkeypatch):
    monkeypatch.setattr(_launch, "_triton_installed", lambda: False)
    assert not _triton.available("cuda")
    with pytest.raises(_triton.BackendError, match=r"softmaxce\[gpu\]"):
        _triton.check("cuda")


def test_float64_is_refused(device):
    assert _triton.available(device, torch.float32)
    with pytest.raises(_triton.BackendError, match="torch.float64"):
        _triton.check(device, torch.float64)


def test_backend_error_is_a_runtime_error():
    assert issubclass(_triton.BackendError, RuntimeError)


def test_kernel_builds_restore_the_environment(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    interpreted, compiled = _launch._kernels(True), _launch._kernels(False)
    assert "TRITON_INTERPRET" not in os.environ
    assert interpreted is not compiled
    assert type(interpreted._ce_kernel).__name__ == "InterpretedFunction"
    assert type(compiled._ce_kernel).__name__ == "JITFunction"
