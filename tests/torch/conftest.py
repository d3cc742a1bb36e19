"""tests/torch: puts this folder on sys.path so test files can `import _torchref` (the float64 torch
reference); the folder must not be a package, since it would shadow `torch`."""

from __future__ import annotations

import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
