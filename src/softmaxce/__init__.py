"""softmaxce: exact, numerically safe, fast softmax cross-entropy (loss and gradient a - y).

NumPy functions (this module), a fused linear + cross-entropy head that never holds the logits,
PyTorch front ends (`softmaxce.torch`), a vocabulary-parallel head, a scikit-learn classifier and
a CLI. Every front end computes the function in SEMANTICS.md.
"""

from ._api import (
    CrossEntropyResult,
    cross_entropy,
    cross_entropy_and_grad,
    cross_entropy_with_stats,
    log_softmax,
    softmax,
)
from ._linear import (
    LinearCrossEntropyResult,
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    linear_cross_entropy_with_stats,
)
from ._options import CEOptions
from ._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "CEOptions",
    "CrossEntropyResult",
    "__version__",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_with_stats",
    "get_num_threads",
    "LinearCrossEntropyResult",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "linear_cross_entropy_with_stats",
    "log_softmax",
    "set_num_threads",
    "softmax",
]
