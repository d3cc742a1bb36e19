"""PyTorch's words for dtypes, so that our error messages are PyTorch's word for word.

PyTorch names a dtype in its messages by its ScalarType ("expected target dtype to be Long or Byte,
but got UInt16"); the legacy tensor type carries the same name: torch.empty(0, dtype=torch.uint16)
.type() == "torch.UInt16Tensor". `_validation.check_layout` takes NumPy's kind letter and that name.
"""

from __future__ import annotations

import torch

__all__ = ["kind", "name"]

# the everyday dtypes, spelled out (the validation of every call reads this table)
_NAMES = {
    torch.float64: "Double",
    torch.float32: "Float",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint64: "UInt64",
    torch.uint32: "UInt32",
    torch.uint16: "UInt16",
    torch.uint8: "Byte",
    torch.bool: "Bool",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def name(dtype: torch.dtype) -> str:
    """PyTorch's ScalarType name of `dtype`: "Long", "UInt16", "Float8_e4m3fn"."""
    known = _NAMES.get(dtype)
    if known is not None:
        return known
    legacy = torch.empty(0, dtype=dtype).type()  # "torch.Float8_e4m3fnTensor", "torch.quantized.QInt8Tensor"
    return legacy.rpartition(".")[2].removesuffix("Tensor")


def kind(dtype: torch.dtype) -> str:
    """NumPy's dtype kind letter for a torch dtype: 'f', 'c', 'b', 'u' or 'i'."""
    if dtype.is_floating_point:
        return "f"
    if dtype.is_complex:
        return "c"
    if dtype == torch.bool:
        return "b"
    return "i" if dtype.is_signed else "u"
