"""Helpers shared by the benchmark scripts: timing, peak-memory readings (Linux), measurements in a fresh
subprocess, the inputs of a fused linear head, option parsing, tables and CSV output."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

__all__ = [
    "backward_step",
    "best_time",
    "chosen",
    "head_inputs",
    "measure_call",
    "peak_rss_bytes",
    "print_table",
    "reset_peak_rss",
    "rss_bytes",
    "run_child",
    "write_csv",
]


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


def measure_call(run, outputs: int) -> tuple[float, int]:
    """(seconds, extra peak bytes) of one call run(): the peak RSS during the call minus the RSS before it
    (the high-water mark is reset first, so that making the inputs does not count; Linux), minus `outputs`
    bytes of results that are not working memory (gradients)."""
    reset_peak_rss()
    base = rss_bytes()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    return seconds, max(0, peak_rss_bytes() - base - outputs)


def run_child(script: str | os.PathLike, *args, what: str) -> dict | None:
    """Runs `python script *args` in a fresh process (a measurement whose memory must start clean) and
    returns the JSON object on the last line of its output; None, having printed "(`what` failed: the
    last line of its stderr)", where the process fails."""
    cmd = [sys.executable, str(script), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print(f"  ({what} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]})", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def head_inputs(rng: np.random.Generator, N: int, D: int, V: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of a fused linear head, float32: x (N, D) standard normal, W (V, D) scaled by 1 / sqrt(D),
    so that the logits x W^T have unit scale."""
    x = rng.standard_normal((N, D), dtype=np.float32)
    W = (rng.standard_normal((V, D), dtype=np.float32) / np.sqrt(D)).astype(np.float32)
    return x, W


def backward_step(loss, *leaves):
    """A no-argument function doing one training step of the torch tensors `leaves`: clears their .grad,
    runs loss().backward(), and returns the new gradients (a tuple, one per leaf)."""

    def run():
        for leaf in leaves:
            leaf.grad = None
        loss().backward()
        return tuple(leaf.grad for leaf in leaves)

    return run


def chosen(parser, text: str, choices: tuple[str, ...], what: str) -> tuple[str, ...]:
    """The names in the comma-separated `text`, in its order; a parser error naming those not in `choices`
    (`what` names the option's items, e.g. "contenders")."""
    names = tuple(c for c in text.split(",") if c)
    unknown = set(names) - set(choices)
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; choose from {choices}")
    return names


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
