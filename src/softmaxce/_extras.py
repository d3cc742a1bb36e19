"""Optional parts of softmaxce and the extra that installs each one's dependencies."""

from __future__ import annotations

import importlib.util

__all__ = ["require"]


def require(extra: str, *modules: str) -> None:
    """Checks that each module is installed (without importing it), or raises one ImportError naming
    the extra that installs it.

    >>> require("core", "numpy")
    """
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise ImportError(
            f"this part of softmaxce needs {', '.join(missing)}: install it with pip install 'softmaxce[{extra}]'"
        )
