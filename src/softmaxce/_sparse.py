"""Sparse probability targets: `SparseTarget(indices, values)` and the row form the kernels read.

A `SparseTarget` with indices (..., K) and values (..., K) stands for the dense target

    y[n, indices[n, k]] += values[n, k]        (duplicates add; a negative index is padding)

and a position whose K entries are all padding is ignored: no loss, no gradient, not counted by
"mean" (docs/SEMANTICS.md, "Sparse targets"). A scipy.sparse (P, C) matrix is the same thing with one row
per position; a row with no stored entries is an ignored position.

`sparse_rows` turns either into `SparseRows`, the CSR-like form the numba kernels take (row n's
entries are indices[indptr[n]:indptr[n + 1]], values likewise), checking every index against C.
Neither ever forms the dense (P, C) target.

Note for the PyTorch front end: the dataclass has exactly two fields, (indices, values), so it
flattens to two leaves. `register_torch_pytree()` registers it with torch.utils._pytree; it runs on
import of this module when torch is already imported, and `softmaxce.torch` should call it on its
own import (idempotent) so that a later `import torch` is covered too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import TargetDtypeError, TargetOutOfBoundsError, TargetShapeError

__all__ = ["SparseRows", "SparseTarget", "is_sparse_target", "register_torch_pytree", "sparse_rows"]


def _is_torch_tensor(a) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def _kind(a) -> str:
    """NumPy's dtype kind letter ('f', 'i', 'u', 'b', 'c') of a NumPy array or torch tensor."""
    if _is_torch_tensor(a):
        d = a.dtype
        if d.is_complex:
            return "c"
        if d.is_floating_point:
            return "f"
        if d == sys.modules["torch"].bool:
            return "b"
        return "u" if str(d).startswith("torch.uint") else "i"
    return a.dtype.kind


@dataclass(frozen=True)
class SparseTarget:
    """A probability target given by its K nonzero entries per position.

    Stands for the dense target y (the logits' shape) with y[n, indices[n, k]] += values[n, k]:
    duplicate indices add up, and a negative index is padding that contributes nothing. A position
    whose entries are all padding is ignored (no loss, no gradient, not counted by "mean").

    Attributes:
        indices: (..., K) integer class indices; the leading shape is that of the positions
            (the logits' shape without the class axis; for the fused head, x's leading shape).
        values: (..., K) floating target values, the same shape as `indices`.

    Both are NumPy arrays (anything array-like is converted) or both torch tensors on one device.

    Example:
        >>> import numpy as np, softmaxce
        >>> t = softmaxce.SparseTarget(np.array([[1, -1]]), np.array([[1.0, 0.0]]))  # class 1, padding
        >>> round(float(softmaxce.cross_entropy(np.log([[0.1, 0.6, 0.3]]), t)), 6)  # -ln 0.6
        0.510826
    """

    indices: Any
    values: Any

    def __post_init__(self) -> None:
        ti, tv = _is_torch_tensor(self.indices), _is_torch_tensor(self.values)
        if ti != tv:
            raise TypeError(
                "SparseTarget's indices and values must both be NumPy arrays or both torch tensors, got "
                f"{type(self.indices).__name__} and {type(self.values).__name__}"
            )
        if ti:
            if self.indices.device != self.values.device:
                raise ValueError(
                    f"SparseTarget's indices are on {self.indices.device} but its values on {self.values.device}"
                )
        else:
            object.__setattr__(self, "indices", np.asarray(self.indices))
            object.__setattr__(self, "values", np.asarray(self.values))
        ishape, vshape = tuple(self.indices.shape), tuple(self.values.shape)
        if ishape != vshape:
            raise TargetShapeError(
                f"SparseTarget's indices and values must have the same shape, got {list(ishape)} and {list(vshape)}"
            )
        if len(ishape) == 0:
            raise TargetShapeError("SparseTarget's indices and values must have a last axis of K entries, got 0-d")
        if _kind(self.indices) not in ("i", "u"):
            raise TargetDtypeError(f"SparseTarget's indices must be integers, got dtype {self.indices.dtype}")
        if _kind(self.values) != "f":
            raise TargetDtypeError(
                "Expected floating point type for target with class probabilities, got "
                f"{self.values.dtype} (SparseTarget's values)"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """The positions' shape: indices.shape without the last (K) axis."""
        return tuple(int(d) for d in self.indices.shape[:-1])

    @property
    def k(self) -> int:
        """Entries per position (K), padding included."""
        return int(self.indices.shape[-1])


def is_sparse_target(target) -> bool:
    """Whether `target` is a SparseTarget or a scipy.sparse matrix / array."""
    if isinstance(target, SparseTarget):
        return True
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and sp.issparse(target)


@dataclass(frozen=True)
class SparseRows:
    """The kernels' form of a sparse target over P positions (CSR-like, no dense row ever).

    Row n's entries are indices[indptr[n]:indptr[n + 1]] (int64; negative = padding) and the values
    at the same places (float64). `kept` (P,) bool marks the positions with at least one entry that
    is not padding. Slicing rows (`rows[a:b]`) keeps indptr's absolute offsets: no copy of entries.
    """

    indptr: np.ndarray  # (P + 1,) int64, absolute offsets into indices / values
    indices: np.ndarray  # (nnz,) int64
    values: np.ndarray  # (nnz,) float64
    kept: np.ndarray  # (P,) bool

    def __len__(self) -> int:
        return self.kept.shape[0]

    def __getitem__(self, rows: slice) -> SparseRows:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("SparseRows can only be sliced with step 1")
        stop = max(start, stop)
        return SparseRows(self.indptr[start : stop + 1], self.indices, self.values, self.kept[start:stop])

    @property
    def num_kept(self) -> int:
        return int(np.count_nonzero(self.kept))


def _numpy(a) -> np.ndarray:
    if _is_torch_tensor(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _writeable(a: np.ndarray, dtype) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def sparse_rows(target, positions_shape: tuple[int, ...], num_classes: int) -> SparseRows:
    """A SparseTarget or scipy.sparse matrix as SparseRows over the positions, every index checked
    against C. The shapes are `_validation.check_sparse_layout`'s to check, before this.

    Raises:
        TargetOutOfBoundsError: an index >= C, naming it, its position and entry.
    """
    positions_shape = tuple(int(d) for d in positions_shape)
    P, C = int(np.prod(positions_shape, dtype=np.int64)), int(num_classes)
    if not isinstance(target, SparseTarget):  # scipy.sparse (P, C): rows are positions, in C order
        if target.dtype.kind != "f":
            raise TargetDtypeError(
                f"Expected floating point type for target with class probabilities, got {target.dtype}"
            )
        csr = target.tocsr()  # no copy for CSR input; never dense
        indptr = _writeable(csr.indptr, np.int64)
        return SparseRows(
            indptr, _writeable(csr.indices, np.int64), _writeable(csr.data, np.float64), np.diff(indptr) > 0
        )
    K = target.k
    idx = _numpy(target.indices).reshape(P, K)
    if idx.dtype.kind == "u" and idx.size and idx.max() >= C:
        # checked before the cast to int64, which would wrap uint64 values above 2**63
        bad = int(np.argmax(idx >= C))
        raise TargetOutOfBoundsError(_out_of_bounds(int(idx.flat[bad]), bad, positions_shape, K, C))
    idx = _writeable(idx, np.int64)
    too_big = idx >= C
    if too_big.any():
        bad = int(np.argmax(too_big))
        raise TargetOutOfBoundsError(_out_of_bounds(int(idx.flat[bad]), bad, positions_shape, K, C))
    values = _writeable(_numpy(target.values).reshape(P * K), np.float64)
    indptr = np.arange(0, (P + 1) * K, K, dtype=np.int64) if K else np.zeros(P + 1, np.int64)
    kept = (idx >= 0).any(axis=1) if K else np.zeros(P, bool)
    return SparseRows(indptr, idx.reshape(P * K), values, kept)


def _out_of_bounds(value: int, flat: int, positions_shape, K: int, C: int) -> str:
    position = tuple(int(i) for i in np.unravel_index(flat // K, positions_shape)) if positions_shape else ()
    return (
        f"Target {value} is out of bounds. (SparseTarget index at position {position}, entry {flat % K}; classes: {C})"
    )


_REGISTERED = False


def _unflatten(leaves, _context) -> SparseTarget:
    # no validation: transforms (vmap, tree_map) may rebuild it from leaves that are not arrays
    t = object.__new__(SparseTarget)
    object.__setattr__(t, "indices", leaves[0])
    object.__setattr__(t, "values", leaves[1])
    return t


def register_torch_pytree() -> None:
    """Registers SparseTarget as a torch pytree node (leaves: indices, values). Idempotent."""
    global _REGISTERED
    if _REGISTERED:
        return
    from torch.utils import _pytree

    _pytree.register_pytree_node(
        SparseTarget,
        lambda t: ((t.indices, t.values), None),
        _unflatten,
        serialized_type_name="softmaxce.SparseTarget",
    )
    _REGISTERED = True


if sys.modules.get("torch") is not None:  # registered here when torch came first; softmaxce.torch covers the rest
    register_torch_pytree()
