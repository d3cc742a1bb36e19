"""softmaxce: exact, numerically safe, fast softmax cross-entropy (loss and gradient a - y).

NumPy functions (this module), a fused linear + cross-entropy head that never holds the logits,
PyTorch front ends (`softmaxce.torch`), a vocabulary-parallel head, a scikit-learn classifier and
a CLI. Every front end computes the function in docs/SEMANTICS.md.
"""

from ._api import (
    cross_entropy,
    cross_entropy_and_grad,
    cross_entropy_with_stats,
    log_softmax,
    softmax,
)
from ._linear import (
    LinearOptions,
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    linear_cross_entropy_with_stats,
)
from ._options import CEOptions, LossOptions
from ._resources import get_gradient_cache, set_gradient_cache
from ._results import CrossEntropyResult, LinearCrossEntropyResult
from ._sparse import SparseTarget
from ._threads import get_num_threads, set_num_threads
from ._version import __version__

__all__ = [
    "CEOptions",
    "CrossEntropyResult",
    "__version__",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_stats",
    "get_gradient_cache",
    "get_num_threads",
    "LinearCrossEntropyResult",
    "LinearOptions",
    "LossOptions",
    "ModelFileError",
    "SoftmaxClassifier",
    "SparseTarget",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "linear_cross_entropy_with_stats",
    "log_softmax",
    "set_gradient_cache",
    "set_num_threads",
    "softmax",
]


def __getattr__(name: str):
    # The classifier pulls in scikit-learn (about 1.5 s): loaded on first use, not at import.
    if name == "SoftmaxClassifier":
        from .classifier import SoftmaxClassifier

        return SoftmaxClassifier
    if name == "ModelFileError":
        from .classifier import ModelFileError

        return ModelFileError
    raise AttributeError(f"module 'softmaxce' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
