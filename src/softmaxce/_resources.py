"""Memory: checks made before any work (a request that cannot fit fails at once, naming its size),
cache-line-aligned buffers for the products, the gradient cache, and per-thread scratch arrays for
per-position work.

available = min(MemAvailable of the machine, memory.max - memory.current of the process's cgroup)

read on Linux from /proc/meminfo and the cgroup v2 (or v1) files, elsewhere from
os.sysconf("SC_AVPHYS_PAGES") * page size; unknown means no check. Only requests above
`CHECK_MIN_BYTES` are checked, so that the usual call reads no file at all.
"""

from __future__ import annotations

import math
import os
import threading
import weakref

import numpy as np

__all__ = [
    "ALIGN",
    "CACHE_MIN_BYTES",
    "CHECK_MIN_BYTES",
    "SCRATCH_MAX_BYTES",
    "aligned_array",
    "available_memory",
    "check_memory",
    "get_gradient_cache",
    "gradient_array",
    "scratch",
    "set_gradient_cache",
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


# ----------------------------------------------------------------------------- the gradient cache

CACHE_MIN_BYTES = 4 * 2**20  # smaller gradients come from NumPy's allocator (glibc reuses its heap)
_cache_lock = threading.Lock()
_cache_free: list[np.ndarray] = []  # raw uint8 blocks no array uses, the most recently returned last


def _default_limit() -> int:
    """2 GiB, or an eighth of the machine's memory where that is less."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = 16 * 2**30
    return min(2 * 2**30, physical // 8)


_cache_limit = _default_limit()  # bytes the free blocks may hold


def set_gradient_cache(max_bytes: int) -> None:
    """Sets how many bytes of freed gradient memory softmaxce keeps for its next gradients (default
    2 GiB, or an eighth of the machine's memory where that is less); 0 keeps none and frees what is
    kept now.

    A large gradient is fresh memory, and the operating system zeroes every page of it on first
    touch: at 65536 x 1000 float32 that costs nearly as much as the whole loss and gradient. So the
    memory of a gradient of 4 MiB or more that the caller has let go (the last array or tensor
    viewing it is gone) is kept, up to this many bytes (the most recently freed first), and the next
    gradient that fits takes it (a block at most twice its size): a training loop that drops each
    step's gradient before the next reuses one buffer instead of faulting in a new one. PyTorch's
    CUDA caching allocator does the same on GPUs.
    """
    global _cache_limit
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
    with _cache_lock:
        _cache_limit = max_bytes
        dropped = _trim()
    del dropped  # freed outside the lock


def get_gradient_cache() -> int:
    """The number of bytes of freed gradient memory kept for the next gradients (`set_gradient_cache`)."""
    return _cache_limit


def gradient_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new uninitialized C-contiguous array, 64-byte aligned (`aligned_array`), for a gradient that
    is returned to the caller: from 4 MiB on its memory comes from the gradient cache when a freed
    block fits, and goes back to it when the last array or tensor viewing it is gone
    (`set_gradient_cache`). What it held before is overwritten by the kernels."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < CACHE_MIN_BYTES or _cache_limit == 0:
        return aligned_array(shape, dtype)
    need = nbytes + ALIGN
    with _cache_lock:
        fits = [i for i, b in enumerate(_cache_free) if need <= b.nbytes <= 2 * need]
        raw = _cache_free.pop(min(fits, key=lambda i: _cache_free[i].nbytes)) if fits else None
    if raw is None:
        raw = np.empty(need, np.uint8)
    start = -raw.ctypes.data % ALIGN
    owner = _Lent(raw.ctypes.data + start, nbytes)
    weakref.finalize(owner, _give_back, raw).atexit = False
    return np.asarray(owner).view(dtype).reshape(shape)


class _Lent:
    """The owner of a lent block's memory as NumPy sees it: the `base` of the lent array and of every
    view of it (also through torch.from_numpy), so it dies with the last of them."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, address: int, nbytes: int) -> None:
        self.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False), "version": 3}


def _give_back(raw: np.ndarray) -> None:
    """A lent block's last view is gone: keep it for the next gradient (a weakref callback, so it may
    run inside any code of this thread, also inside `_cache_lock`: then the block is simply freed)."""
    if not _cache_lock.acquire(blocking=False):
        return
    try:
        _cache_free.append(raw)
        dropped = _trim()
    finally:
        _cache_lock.release()
    del dropped


def _trim() -> list[np.ndarray]:
    """Drops the oldest free blocks until they hold at most the limit (under `_cache_lock`); returns
    them, to be freed by the caller after releasing the lock."""
    limit = _cache_limit
    total = 0
    for b in _cache_free:
        total += b.nbytes
    dropped = []
    while _cache_free and total > limit:
        b = _cache_free.pop(0)
        total -= b.nbytes
        dropped.append(b)
    return dropped


def _reset_cache_lock() -> None:
    global _cache_lock
    _cache_lock = threading.Lock()  # a fork while another thread held it must not hang the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_cache_lock)


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
