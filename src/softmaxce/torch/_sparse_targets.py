"""Sparse targets at the PyTorch front ends: accept, validate and lay out as (P, K) rows.

A sparse target stands for the dense probability target y with y[n, indices[n, k]] += values[n, k]
(duplicates add, a negative index is padding, an all-padding position is ignored; docs/SEMANTICS.md,
"Sparse targets"). The front ends take it as

- `softmaxce.SparseTarget(indices, values)`: (..., K) integer indices and floating values, leading
  shape the positions' (torch tensors; NumPy arrays are converted onto the logits' device);
- a torch sparse (P, C) tensor (CSR; COO is converted to CSR) or a scipy.sparse (P, C) matrix: one
  row per position, positions in C order, its stored entries the entries. It is laid out as (P, K)
  rows with K = the longest row (one host read of the row lengths) and padding after each row's
  entries; gradients flow to a CSR tensor's values where autograd tracks them.

`prepare` validates on metadata (`_validation.check_sparse_layout`), checks devices, and in eager
mode checks every index against C on CPU tensors, raising the IndexError that names the index, its
position and entry. While compiling (or under a torch.func transform) the ops check instead: the
NumPy engine on CPU, a device assert elsewhere.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from .._options import CEOptions
from .._sparse import SparseTarget
from .._validation import Layout, TargetDtypeError, TargetShapeError, check_sparse_layout
from . import _dtypes
from ._chunked import check_sparse_indices

__all__ = ["TargetDeviceError", "is_sparse", "prepare"]


class TargetDeviceError(ValueError, RuntimeError):
    """A sparse target on another device than the logits (RuntimeError in PyTorch)."""


def is_sparse(target) -> bool:
    """Whether `target` is a SparseTarget, a torch sparse tensor or a scipy.sparse matrix."""
    if isinstance(target, SparseTarget):
        return True
    if isinstance(target, Tensor):
        return target.layout in (torch.sparse_csr, torch.sparse_coo)
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and sp.issparse(target)


def _matrix_rows(target, device: torch.device) -> tuple[Tensor, Tensor]:
    """(indices (P, K), values (P, K)) of a sparse (P, C) matrix: row n's stored entries, then padding."""
    if isinstance(target, Tensor):
        csr = target.to_sparse_csr() if target.layout == torch.sparse_coo else target
        crow, col, val = csr.crow_indices(), csr.col_indices(), csr.values()
    else:  # scipy.sparse: converted to CSR, never densified
        csr = target.tocsr()
        crow, col, val = (torch.from_numpy(a).to(device) for a in (csr.indptr, csr.indices, csr.data))
    if not val.is_floating_point():
        raise TargetDtypeError(
            f"Expected floating point type for target with class probabilities, got {_dtypes.name(val.dtype)}"
        )
    crow, col = crow.long(), col.long()
    P, nnz = crow.numel() - 1, col.numel()
    counts = crow.diff()  # entries per row
    K = int(counts.max()) if nnz else 0  # one host read of the row lengths
    row = torch.repeat_interleave(torch.arange(P, device=crow.device), counts, output_size=nnz)
    slot = torch.arange(nnz, device=crow.device) - crow[row]  # entry k of its row
    indices = torch.full((P, K), -1, dtype=torch.int64, device=crow.device).index_put((row, slot), col)
    values = val.new_zeros((P, K)).index_put((row, slot), val)  # out of place: autograd reaches val
    return indices, values


def prepare(
    target, logits_shape: tuple[int, ...], logits_dtype: torch.dtype, device: torch.device, weight, options: CEOptions
) -> tuple[Tensor, Tensor, Layout]:
    """(indices, values, layout) of a sparse target for logits of this shape (class axis 1): indices
    and values (*positions, K) torch tensors on the logits' device, every index checked against C.

    Raises:
        TargetShapeError, TargetDtypeError, WeightShapeError, OptionError: as `check_sparse_layout`.
        TargetDeviceError: the target is on another device than the logits.
        TargetOutOfBoundsError: an index >= C (naming it, its position and entry).
    """
    matrix = not isinstance(target, SparseTarget)
    if not matrix and not isinstance(target.indices, Tensor):  # NumPy arrays: onto the logits' device
        target = SparseTarget(
            torch.as_tensor(target.indices, device=device), torch.as_tensor(target.values, device=device)
        )
    if isinstance(target, Tensor) and target.dim() != 2:
        raise TargetShapeError(f"a sparse target tensor must be 2-D (positions, classes), got {target.dim()}-D")
    shape = tuple(target.shape)
    layout = check_sparse_layout(
        logits_shape,
        _dtypes.kind(logits_dtype),
        _dtypes.name(logits_dtype),
        shape,
        None if weight is None else tuple(weight.shape),
        options,
        matrix=matrix,
    )
    where = target.device if isinstance(target, Tensor) else (device if matrix else target.indices.device)
    if where != device:
        raise TargetDeviceError(f"Expected the sparse target on the logits' device {device}, but it is on {where}")
    if matrix:
        indices, values = _matrix_rows(target, device)
        K = indices.shape[1]
        indices, values = indices.reshape(*layout.positions_shape, K), values.reshape(*layout.positions_shape, K)
    else:
        indices, values = target.indices, target.values
    eager = not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(indices)
    if eager and indices.device.type == "cpu":
        check_sparse_indices(indices, layout.num_classes, layout.positions_shape)
    return indices, values, layout
