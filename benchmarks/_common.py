"""Helpers shared by the benchmark scripts: timing, peak-memory readings (Linux), tables and CSV output."""

from __future__ import annotations

import contextlib
import csv
import os
import pathlib
import resource
import time

__all__ = ["best_time", "print_table", "reset_peak_rss", "peak_rss_bytes", "rss_bytes", "write_csv"]


def rss_bytes() -> int:
    """The process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), or since the start where it cannot be reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Resets the RSS high-water mark to the current RSS (Linux), so that what came before does not count."""
    with contextlib.suppress(OSError):
        pathlib.Path("/proc/self/clear_refs").write_text("5")


def write_csv(rows: list[dict], path: str | os.PathLike, fields: list[str] | None = None) -> None:
    """Writes rows (dicts) to a CSV file with a header, creating its folder; prints where."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def best_time(fn, repeat: int, number: int = 1) -> float:
    """Seconds per call of fn(): the best of `repeat` timed loops of `number` calls each, divided by
    `number`, after one untimed warm-up call (compilation, numba cache loads, first-touch page faults).
    number > 1 is for calls too short to time one by one."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append(time.perf_counter() - t0)
    return min(times) / number


def print_table(rows: list[dict], header: str, line: str) -> None:
    """Prints a fixed-width table: `header`, a rule as long as it, then `line.format(**row)` for each row."""
    print(header)
    print("-" * len(header))
    for r in rows:
        print(line.format(**r))
