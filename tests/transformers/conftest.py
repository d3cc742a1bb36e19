"""tests/transformers: puts this folder on sys.path so test files can `import _tiny_models`; the
folder must not be a package, since it would shadow `transformers`. Every file here needs the
`[transformers]` extra (transformers and accelerate); without it none of them is collected."""

from __future__ import annotations

import pathlib
import sys

try:
    # A submodule, not "transformers": with tests/ on sys.path and transformers not installed, this
    # folder itself would import as an empty namespace package named transformers.
    import accelerate  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
except ImportError:
    collect_ignore_glob = ["*.py"]

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
