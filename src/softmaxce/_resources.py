"""Memory: checks made before any work (a request that cannot fit fails at once, naming its size),
cache-line-aligned buffers for the products, and per-thread scratch arrays for per-position work.

available = min(MemAvailable of the machine, memory.max - memory.current of the process's cgroup)

read on Linux from /proc/meminfo and the cgroup v2 (or v1) files, elsewhere from
os.sysconf("SC_AVPHYS_PAGES") * page size; unknown means no check. Only requests above
`CHECK_MIN_BYTES` are checked, so that the usual call reads no file at all.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

__all__ = [
    "ALIGN",
    "CHECK_MIN_BYTES",
    "SCRATCH_MAX_BYTES",
    "aligned_array",
    "available_memory",
    "check_memory",
    "scratch",
]

ALIGN = 64  # bytes: a cache line
SCRATCH_MAX_BYTES = 32 * 2**20  # the largest array one scratch slot keeps between calls (4M float64)
_scratch = threading.local()  # .slots: {slot name: the array kept for it}

CHECK_MIN_BYTES = 64 * 2**20  # requests at or below this are not checked (reading the files costs ~50 us)
_CGROUP = "/sys/fs/cgroup"


def check_memory(nbytes: int, what: str) -> None:
    """Raises MemoryError naming `nbytes` when `what` would allocate more than the memory available."""
    if nbytes <= CHECK_MIN_BYTES:
        return
    available = available_memory()
    if available is not None and nbytes > available:
        raise MemoryError(
            f"{what} needs {nbytes} bytes ({_gib(nbytes)}) of working memory, but only {available} bytes "
            f"({_gib(available)}) are available; use smaller batches (or a smaller chunk_size)"
        )


def aligned_array(shape: tuple[int, ...], dtype, *, zero: bool = False) -> np.ndarray:
    """A new C-contiguous array (uninitialized, or zeros) whose data starts on an `ALIGN`-byte boundary
    (when it has any).

    NumPy's large allocations start 16 bytes into a page (the allocator's chunk header). As the output
    of a BLAS product such a buffer is slow: the fused head's logits product 784 x 1024 @ 1024 x 128256
    took 1.39 s into a NumPy array and 1.09 s into a 64-byte-aligned one (torch.mm, 2 threads)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def scratch(slot: str, n: int, dtype=np.float64) -> np.ndarray:
    """n uninitialized elements for work that ends before the calling function returns, kept for the
    next call on this thread (one array per slot, up to SCRATCH_MAX_BYTES; larger requests get a new
    array each time). A caller must not return the array, keep it, or use one slot twice at once.

    Why: the per-position arrays of a call (upstream coefficients, losses, lse: 8 MiB each at 1M
    positions) are below glibc's mmap threshold once that has grown, so they come from the heap, which
    glibc trims and grows again call after call; faulting the pages in anew each time made 1048576 x 10
    loss + gradient take 15 ms instead of 11 (2 threads)."""
    dtype = np.dtype(dtype)
    slots = getattr(_scratch, "slots", None)
    if slots is None:
        slots = _scratch.slots = {}
    a = slots.get(slot)
    if a is not None and a.dtype == dtype and a.size >= n:
        return a[:n]
    a = np.empty(n, dtype)
    if n * dtype.itemsize <= SCRATCH_MAX_BYTES:
        slots[slot] = a
    return a


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the machine's and its cgroup's; None if
    neither is known."""
    known = [m for m in (_machine_available(), _cgroup_available()) if m is not None]
    return min(known) if known else None


def _machine_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_available() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2; v1's limit_in_bytes - usage_in_bytes);
    None when there is no limit or no cgroup file."""
    for directory in _cgroup_dirs():
        for limit_file, usage_file in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            limit = _read_int(os.path.join(directory, limit_file))
            if limit is None:
                continue
            usage = _read_int(os.path.join(directory, usage_file)) or 0
            return max(0, limit - usage)
    return None


def _cgroup_dirs() -> list[str]:
    """This process's own cgroup directories (from /proc/self/cgroup), then the mount's root."""
    dirs = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":  # v2 unified hierarchy
                    dirs.append(_CGROUP + path.rstrip("/"))
                elif "memory" in controllers.split(","):  # v1 memory controller
                    dirs.append(os.path.join(_CGROUP, "memory") + path.rstrip("/"))
    except (OSError, ValueError):
        pass
    return dirs + [_CGROUP, os.path.join(_CGROUP, "memory")]


def _read_int(path: str) -> int | None:
    """The integer in a cgroup file; None for "max", a missing file, or v1's "no limit" (~2**63)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return None if value >= 2**60 else value


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"
