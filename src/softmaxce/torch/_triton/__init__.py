"""Triton kernels for softmaxce.torch (the `[gpu]` extra): cross-entropy on given logits and the
fused linear head that never writes the logits, with the contract of the chunked torch path.

Importing this package does not import triton; the kernels are built on first use, compiled for
CUDA tensors, or run by Triton's interpreter when TRITON_INTERPRET=1 is set at call time.
"""

from ._launch import BackendError, available, check, cross_entropy_rows, linear_cross_entropy_rows

__all__ = ["BackendError", "available", "check", "cross_entropy_rows", "linear_cross_entropy_rows"]
