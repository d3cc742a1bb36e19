"""The one options object every front end shares.

`CEOptions` carries the scalar options of the softmax cross-entropy contract (docs/SEMANTICS.md). It is
validated once, on construction, so the NumPy functions, the fused head, the PyTorch front ends, the
vocab-parallel head and the classifier cannot drift apart on what an option means or allows.
The class weight travels separately because its array type depends on the front end.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypedDict

import numpy.typing as npt

__all__ = ["CEOptions", "LossKeywords", "LossOptions", "REDUCTIONS"]

REDUCTIONS = ("none", "mean", "sum")


@dataclass(frozen=True)
class CEOptions:
    """Scalar options of softmax cross-entropy; every front end validates through this class.

    Attributes:
        ignore_index: class index whose positions contribute nothing (class-index targets only).
            Any integer; it need not be a valid class. Default -100, as in PyTorch.
        reduction: "mean" (default), "sum" or "none".
        label_smoothing: eps in [0, 1]; the target becomes (1 - eps) * target + eps / C.
        z_loss: lam >= 0; adds lam * lse**2 per position (PaLM's z-loss). 0 means off.
        softcap: s > 0 replaces logits by s * tanh(z / s) (Gemma 2). None means off.
    """

    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, numbers.Integral):
            raise TypeError(
                f"ignore_index must be an int, not {type(self.ignore_index).__name__}: {self.ignore_index!r}"
            )
        object.__setattr__(self, "ignore_index", int(self.ignore_index))
        if not isinstance(self.reduction, str) or self.reduction not in REDUCTIONS:
            raise ValueError(f"{self.reduction} is not a valid value for reduction")
        eps = _real("label_smoothing", self.label_smoothing)
        if eps > 1.0:
            # PyTorch's wording, so code written against torch keeps working.
            raise OptionError(f"label_smoothing must be between 0.0 and 1.0. Got: {eps}")
        if eps < 0.0:
            # Deliberate difference: PyTorch silently treats a negative value as 0.
            raise OptionError(f"label_smoothing must be between 0.0 and 1.0. Got: {eps}")
        object.__setattr__(self, "label_smoothing", eps)
        lam = _real("z_loss", self.z_loss)
        if lam < 0.0:
            raise OptionError(f"z_loss must be >= 0. Got: {lam}")
        object.__setattr__(self, "z_loss", lam)
        if self.softcap is not None:
            s = _real("softcap", self.softcap)
            if not s > 0.0:
                raise OptionError(f"softcap must be > 0 or None. Got: {s}")
            object.__setattr__(self, "softcap", s)

    @classmethod
    def from_keywords(cls, function: str, keywords: Mapping[str, object], accepted: type) -> CEOptions:
        """The options among a front end's `**options` keywords (the others are its own).

        Args:
            function: the front end's name, for the error message.
            keywords: what the caller passed.
            accepted: the TypedDict that declares the front end's keywords (`LossOptions` for the
                NumPy functions).

        Raises:
            TypeError: a keyword `accepted` does not declare, as Python raises it for a signature.
        """
        for name in keywords:
            if name not in accepted.__optional_keys__:
                raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
        return cls(**{f.name: keywords[f.name] for f in fields(cls) if f.name in keywords})


class LossKeywords(TypedDict, total=False):
    """`CEOptions` as keyword arguments: what a front end's `**options: Unpack[...]` accepts.

    Declaring the keywords once here (PEP 692) keeps every front end's list of options the same;
    the defaults and checks are CEOptions'.
    """

    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float | None


class LossOptions(LossKeywords, total=False):
    """The keyword options of the NumPy loss functions: CEOptions' and the (C,) class `weight`."""

    weight: npt.ArrayLike | None


class OptionError(ValueError, RuntimeError):
    """A bad option value (ValueError for NumPy users, RuntimeError as PyTorch raises it)."""


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(f"{name} must be finite. Got: {value}")
    return value
