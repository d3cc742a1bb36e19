"""softmaxce.torch as a package: importing it without torch, and PyTorch's dtype names in messages."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import softmaxce.torch as sce
from softmaxce.torch import _dtypes


def test_import_without_torch_names_the_extra():
    code = "import sys\nsys.modules['torch'] = None  # as if torch were not installed\nimport softmaxce.torch"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "ImportError: this part of softmaxce needs torch: install it with pip install 'softmaxce[torch]'"
    assert "During handling" not in proc.stderr and "direct cause" not in proc.stderr  # one error, no chain


def _dtypes_torch_can_fill() -> list[torch.dtype]:
    found = []
    for value in vars(torch).values():
        if isinstance(value, torch.dtype) and value not in found and value not in (torch.int64, torch.uint8):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # experimental and deprecated dtypes
                    torch.zeros(4, dtype=value)
            except (RuntimeError, TypeError):
                continue  # quantized and other dtypes without a plain tensor
            found.append(value)
    return found


@pytest.mark.parametrize("dtype", _dtypes_torch_can_fill(), ids=lambda d: str(d).removeprefix("torch."))
def test_dtype_names_are_the_ones_pytorch_prints(dtype):
    z = torch.randn(4, 3)
    with pytest.raises(RuntimeError) as theirs:
        F.cross_entropy(z, torch.zeros(4, dtype=dtype))  # PyTorch wants Long or Byte class indices
    assert str(theirs.value) == f"expected target dtype to be Long or Byte, but got {_dtypes.name(dtype)}"


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.int16], ids=["uint16", "uint32", "int16"])
def test_integer_logits_and_probability_targets_are_refused_as_pytorch_does(dtype):
    z, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    for args in ((z.to(dtype), y), (z, torch.zeros(4, 3, dtype=dtype))):
        with pytest.raises(Exception) as theirs:
            F.cross_entropy(*args)
        with pytest.raises(type(theirs.value)) as ours:
            sce.cross_entropy(*args)
        if args[0].is_floating_point():  # for logits PyTorch names its kernel, we name the dtype
            assert str(ours.value) == str(theirs.value)
        else:
            assert str(ours.value).endswith(_dtypes.name(dtype))


def test_any_integer_dtype_holds_class_indices():
    """A deliberate difference from PyTorch (which wants int64 or uint8): the same loss for every one."""
    z, y = torch.randn(5, 7, dtype=torch.float64), torch.tensor([0, 6, 3, 2, 6])
    expected = F.cross_entropy(z, y)
    for dtype in (torch.uint16, torch.uint32, torch.int32, torch.int16, torch.int8):
        torch.testing.assert_close(sce.cross_entropy(z, y.to(dtype)), expected, rtol=1e-12, atol=0)
