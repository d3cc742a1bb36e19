"""The scikit-learn classifier built on softmaxce's exact output delta a - y (needs the `[sklearn]` extra).

`SoftmaxClassifier` (the estimator) and `ModelFileError` (raised by `SoftmaxClassifier.load` for a
file that is not a readable softmaxce model). Without scikit-learn, importing this package raises one
ImportError that names the extra to install.
"""

from .._extras import require

require("sklearn", "sklearn")

from ._estimator import SoftmaxClassifier  # noqa: E402
from ._persistence import ModelFileError  # noqa: E402

__all__ = ["ModelFileError", "SoftmaxClassifier"]
