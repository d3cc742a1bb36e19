"""Atomic output files: a file is either the old one or the complete new one, never half written.

`atomic_path` writes one file through a temporary name. Inside `atomic_group()`, the renames of every
`atomic_path` are deferred to the group's end and made together with SIGINT blocked, so a command
that writes several outputs (a model, its metrics, plots) leaves either all of them or none: an
interrupt or an error before the end removes every temporary file.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_group", "atomic_path"]

# (temporary, final) pairs waiting for the innermost open group's commit; None outside a group
_pending: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("pending", default=None)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path in the same directory as `path`; on success it is renamed onto `path`
    (os.replace, atomic on one file system), or inside `atomic_group` when the group ends; on any
    error it is removed.

    The temporary name keeps `path`'s extension, since some writers (np.savez) add one otherwise.
    The file gets the permissions a plain open() would give it (0666 less the umask), not
    mkstemp's private 0600.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        _remove(tmp)
        raise
    pending = _pending.get()
    if pending is None:
        os.replace(tmp, path)
    else:
        pending.append((tmp, path))


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Every `atomic_path` inside lands together at the end, or (on any exception, KeyboardInterrupt
    included) none does."""
    pending: list[tuple[str, str]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            _remove(tmp)
        raise
    finally:
        _pending.reset(token)
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(tmp)
