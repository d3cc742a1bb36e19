"""Threads of the numba kernels: how many, and when the parallel drivers may run.

The engine asks `parallel_allowed()` before a large kernel call and runs the call inside
`kernel_region(parallel)`. Three rules live here, once:

- Count. `set_num_threads(n)` sets the count for the whole process (every core numba found by
  default). numba's own count is per Python thread, so the region applies the count on the calling
  thread; `torch_threads()` caps it, for the calls made inside, at torch's intra-op thread count, so
  that a torch step and softmaxce's kernels use one pool's worth of threads.
- Fork. numba's GNU OpenMP layer terminates a child forked after the parent started its pool as soon
  as the child enters a parallel region. A fork handler marks such a child, and there every call runs
  the serial drivers: the same results bit for bit, since each row is reduced by one thread in the
  same order whatever the thread count. A child whose parent never started the pool (spawn,
  forkserver, a fork before the first large call) and a child of a TBB-layer parent keep their threads.
- Concurrency. numba's workqueue layer aborts when two threads enter parallel regions at once: there,
  and until the first parallel call has told which layer numba picked, parallel regions are serialized
  by one lock. The OpenMP and TBB layers run concurrent regions as they are.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import numba

__all__ = [
    "get_num_threads",
    "kernel_region",
    "parallel_allowed",
    "set_num_threads",
    "torch_threads",
]

_FORK_SAFE_LAYERS = frozenset({"tbb"})  # layers whose pool works in a forked child

_count: int | None = None  # set_num_threads' process-wide count; None: every core numba found
_local = threading.local()  # .cap: torch_threads' cap on this thread
_serial_only = False  # True in a child forked after the parent started a fork-unsafe pool
_region_lock = threading.Lock()  # serializes parallel regions on the workqueue layer
_lock_regions: bool | None = None  # whether regions need the lock; None until the layer is known


def set_num_threads(n: int) -> None:
    """Sets how many threads the kernels use, in every thread of the process (1 .. the number of cores
    numba found)."""
    global _count
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"num_threads must be an int in [1, {limit}], got {n!r}")
    _count = n


def get_num_threads() -> int:
    """The number of threads a kernel call made now, on this thread, uses (1 where only the serial
    drivers may run)."""
    if _serial_only:
        return 1
    n = numba.config.NUMBA_NUM_THREADS if _count is None else _count
    cap = getattr(_local, "cap", None)
    return n if cap is None else min(n, cap)


def parallel_allowed() -> bool:
    """Whether the engine may run the parallel kernel drivers now (else the serial ones)."""
    return get_num_threads() > 1


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Caps the kernels' threads at torch.get_num_threads() for the calls made inside, on this thread.

    softmaxce.torch wraps each NumPy-engine call in it: a training loop then uses as many threads as
    torch's intra-op pool, whatever `set_num_threads` says (the smaller of the two wins).
    """
    import torch

    previous = getattr(_local, "cap", None)
    _local.cap = max(1, torch.get_num_threads())
    try:
        yield
    finally:
        _local.cap = previous


def kernel_region(parallel: bool) -> contextlib.AbstractContextManager:
    """The context a kernel call runs in (parallel: whether it uses the thread pool).

    A parallel call gets numba's per-thread count set to `get_num_threads()` and, on the workqueue
    layer (or before the layer is known), the region lock. A serial call gets nothing.
    """
    if not parallel:
        return contextlib.nullcontext()
    n = get_num_threads()
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return _region_lock if _needs_lock() else contextlib.nullcontext()


def _needs_lock() -> bool:
    global _lock_regions
    if _lock_regions is None:
        layer = _layer()
        if layer is None:
            return True  # this call picks the layer: serialize until it is known
        _lock_regions = layer == "workqueue"
    return _lock_regions


def _layer() -> str | None:
    """The threading layer numba launched in this process, or None before the first parallel call."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _after_fork_in_child() -> None:
    global _serial_only, _region_lock
    _region_lock = threading.Lock()  # a lock held by another thread at fork stays held in the child
    layer = _layer()
    if layer is not None and layer not in _FORK_SAFE_LAYERS:
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
