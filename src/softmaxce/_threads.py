"""Thread count of the numba kernels (every core by default)."""

from __future__ import annotations

import numba

__all__ = ["get_num_threads", "set_num_threads"]


def set_num_threads(n: int) -> None:
    """Sets how many threads the kernels use (1 .. the number of cores numba found)."""
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"num_threads must be an int in [1, {limit}], got {n!r}")
    numba.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the kernels use."""
    return numba.get_num_threads()
