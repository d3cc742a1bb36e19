"""Shape, dtype and option checks shared by every front end (docs/SEMANTICS.md, "Errors").

The checks work on metadata only (shapes, dtype kinds and names), so the NumPy and the PyTorch front
ends run the very same rules. Each exception class derives from the Python exception a NumPy user
expects AND from the one PyTorch raises (for example ValueError and RuntimeError), and the messages
are PyTorch's, so code written against torch keeps working and NumPy users get the closest type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._options import CEOptions, OptionError

__all__ = [
    "BatchSizeError",
    "Layout",
    "LogitsDtypeError",
    "OptionError",
    "TargetDtypeError",
    "TargetOutOfBoundsError",
    "TargetShapeError",
    "WeightShapeError",
    "check_layout",
    "check_sparse_layout",
    "out_of_bounds_message",
]


class TargetOutOfBoundsError(IndexError):
    """A class-index target outside [0, C) that is not ignore_index."""


class BatchSizeError(ValueError):
    """Target batch size differs from the logits' batch size."""


class TargetShapeError(ValueError, RuntimeError):
    """Target shape does not fit the logits (RuntimeError in PyTorch)."""


class TargetDtypeError(TypeError, RuntimeError):
    """Integer probability target or non-integer class-index target (RuntimeError in PyTorch)."""


class WeightShapeError(ValueError, RuntimeError):
    """Class weight that is not one value per class (RuntimeError in PyTorch)."""


class LogitsDtypeError(TypeError, NotImplementedError):
    """Integer, boolean or complex logits (NotImplementedError in PyTorch)."""


@dataclass(frozen=True)
class Layout:
    """Where things are: the class count, the class axis and the per-position output shape."""

    num_classes: int
    class_axis: int
    positions_shape: tuple[int, ...]
    probability: bool
    sparse: bool = False  # a SparseTarget or sparse matrix (then probability is True too)

    @property
    def num_positions(self) -> int:
        n = 1
        for d in self.positions_shape:
            n *= d
        return n


def check_layout(
    logits_shape: Sequence[int],
    logits_kind: str,
    logits_dtype: str,
    target_shape: Sequence[int],
    target_kind: str,
    target_dtype: str,
    weight_shape: Sequence[int] | None,
    options: CEOptions,
) -> Layout:
    """Validates shapes and dtypes; returns the layout. Kinds are NumPy's: 'f', 'i', 'u', 'b', 'c'.

    `logits_dtype` and `target_dtype` are the names printed in messages (torch front ends pass
    PyTorch's names, such as "Long", so the messages are PyTorch's word for word).
    """
    logits_shape = tuple(int(d) for d in logits_shape)
    target_shape = tuple(int(d) for d in target_shape)
    if logits_kind != "f":
        raise LogitsDtypeError(f"cross_entropy is not implemented for logits of dtype {logits_dtype}")
    probability = target_shape == logits_shape
    if probability:
        if target_kind != "f":
            raise TargetDtypeError(
                f"Expected floating point type for target with class probabilities, got {target_dtype}"
            )
        if options.ignore_index >= 0:
            raise OptionError("ignore_index is not supported for floating point target")
    if len(logits_shape) == 0:
        raise TargetShapeError("logits must have at least one dimension (the classes), got a 0-d array")
    class_axis = 0 if len(logits_shape) == 1 else 1
    num_classes = logits_shape[class_axis]
    if len(logits_shape) == 1:
        positions: tuple[int, ...] = ()
        if not probability and target_shape not in ((), (1,)):
            size = 1
            for d in target_shape:
                size *= d
            raise TargetShapeError(f"For 1D input, 1D target must have size 1, but got target size: {size}")
    else:
        positions = (logits_shape[0],) + logits_shape[2:]
        if not probability:
            if len(logits_shape) == 2 and len(target_shape) > 1:
                raise TargetShapeError("0D or 1D target tensor expected, multi-target not supported")
            target_batch = target_shape[0] if target_shape else 0
            if target_batch != logits_shape[0]:
                raise BatchSizeError(
                    f"Expected input batch_size ({logits_shape[0]}) to match target batch_size ({target_batch})."
                )
            if target_shape != positions:
                raise TargetShapeError(f"Expected target size {list(positions)}, got {list(target_shape)}")
    if not probability and target_kind not in ("i", "u"):
        # Deliberate difference: any integer dtype is accepted (PyTorch wants int64 or uint8).
        raise TargetDtypeError(f"expected target dtype to be Long or Byte, but got {target_dtype}")
    if weight_shape is not None and tuple(weight_shape) != (num_classes,):
        raise WeightShapeError(
            "weight tensor should be defined either for all "
            f"{num_classes} classes or no classes but got weight tensor of shape: {list(weight_shape)}"
        )
    return Layout(num_classes, class_axis, positions, probability)


def check_sparse_layout(
    logits_shape: Sequence[int],
    logits_kind: str,
    logits_dtype: str,
    target_shape: Sequence[int],
    weight_shape: Sequence[int] | None,
    options: CEOptions,
    *,
    matrix: bool = False,
) -> Layout:
    """`check_layout` for a sparse target (docs/SEMANTICS.md, "Sparse targets"): `target_shape` is a
    SparseTarget's leading shape (indices.shape[:-1]), which must be the positions' shape, or with
    `matrix` a sparse matrix's shape, which must be (number of positions, C). The entries' dtypes
    are SparseTarget's own checks; indices against C are checked where the entries are read."""
    logits_shape = tuple(int(d) for d in logits_shape)
    target_shape = tuple(int(d) for d in target_shape)
    if logits_kind != "f":
        raise LogitsDtypeError(f"cross_entropy is not implemented for logits of dtype {logits_dtype}")
    if len(logits_shape) == 0:
        raise TargetShapeError("logits must have at least one dimension (the classes), got a 0-d array")
    if options.ignore_index >= 0:
        raise OptionError("ignore_index is not supported for floating point target")
    class_axis = 0 if len(logits_shape) == 1 else 1
    num_classes = logits_shape[class_axis]
    positions = () if len(logits_shape) == 1 else (logits_shape[0],) + logits_shape[2:]
    P = 1
    for d in positions:
        P *= d
    if matrix and target_shape != (P, num_classes):
        raise TargetShapeError(
            f"Expected a sparse target matrix of shape {[P, num_classes]} (positions, classes), "
            f"got {list(target_shape)}"
        )
    if not matrix and target_shape != positions:
        raise TargetShapeError(
            f"Expected SparseTarget of shape {list(positions) + ['K']} (the positions, then K entries), "
            f"got leading shape {list(target_shape)}"
        )
    if weight_shape is not None and tuple(weight_shape) != (num_classes,):
        raise WeightShapeError(
            "weight tensor should be defined either for all "
            f"{num_classes} classes or no classes but got weight tensor of shape: {list(weight_shape)}"
        )
    return Layout(num_classes, class_axis, positions, True, sparse=True)


def out_of_bounds_message(value: int) -> str:
    return f"Target {value} is out of bounds."
