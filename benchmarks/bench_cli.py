"""`softmaxce train` on a large CSV against pandas' pyarrow reader: wall time and peak memory.

The data: --rows x --features standard normal features (4 decimals, as a CSV of measurements
reads) and an integer `label` column of 10 classes (the argmax of a noisy random linear map),
written once with pyarrow. Every contender runs in a fresh child process, --repeats times,
interleaved, so that they share the machine's load; wall time is the child's (start-up and imports
included), peak memory is the child's peak RSS (os.wait4's ru_maxrss). Contenders:

- baseline: ``python -c "import softmaxce, numpy"``, the memory floor of any softmaxce command;
- pandas:   ``pandas.read_csv(path, engine="pyarrow").to_numpy("float64")`` of the same file
            (the child also reports the time of those two calls alone, without start-up and
            ``import pandas``: a stricter yardstick, also printed);
- train:    ``softmaxce train t.csv --target label --epochs 1 --quiet --out m.npz``.

Targets (issue "one layered package"): train takes at most 2.5x the wall time of pandas, and its
peak RSS beyond the baseline's is at most 3x the float64 feature matrix (rows * features * 8 bytes).
One more train run without --quiet gives the split of its time (reading the file, the epoch).

Prints a table and writes benchmarks/results/cli.csv. pandas is a benchmark-only dependency.
Usage: python benchmarks/bench_cli.py [--rows 300000] [--features 64] [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write_csv  # benchmarks/_common.py (this folder is on sys.path)

RESULTS = Path(__file__).parent / "results" / "cli.csv"
TIME_TARGET = 2.5  # train wall time / pandas wall time
MEMORY_TARGET = 3.0  # (train peak RSS - baseline peak RSS) / feature matrix bytes

PANDAS = """
import sys, time
t = time.perf_counter()
import pandas as pd
t_import = time.perf_counter()
X = pd.read_csv(sys.argv[1], engine="pyarrow").to_numpy("float64")
print(time.perf_counter() - t_import, t_import - t)
"""


def make_csv(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """Standard normal features rounded to 4 decimals and a 10-class integer label, as CSV."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    X = np.round(rng.standard_normal((rows, features)), 4)
    W = rng.standard_normal((features, 10))
    label = np.argmax(X @ W + rng.standard_normal((rows, 10)), axis=1)
    columns = {f"x{j}": X[:, j] for j in range(features)}
    columns["label"] = label
    pacsv.write_csv(pa.table(columns), str(path))


def measure(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """Runs argv in a fresh child: (wall seconds, peak RSS in MiB, stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        child = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({child.returncode}):\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="keep the CSV here (default: a temporary folder)")
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_cli_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"t_{args.rows}x{args.features}.csv"
    if not data.exists():
        make_csv(data, args.rows, args.features)
    exe = shutil.which("softmaxce")  # the console script, as users run it
    softmaxce = [exe] if exe else [sys.executable, "-m", "softmaxce"]
    train = [*softmaxce, "train", str(data), "--target", "label", "--epochs", "1"]
    cases = {
        "baseline": [sys.executable, "-c", "import softmaxce, numpy"],
        "pandas": [sys.executable, "-c", PANDAS, str(data)],
        "train": [*train, "--quiet", "--out", str(work / "m.npz")],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    pandas_calls = []
    for _ in range(args.repeats):
        for name, argv in cases.items():
            wall, rss, out = measure(argv, work)
            runs[name].append((wall, rss))
            if name == "pandas":
                pandas_calls.append(float(out.split()[0]))
    loud_wall, _, loud = measure([*train, "--out", str(work / "m2.npz")], work)
    read_s = float(re.search(r"from .* in ([\d.]+) s", loud).group(1))
    epoch_s = float(re.search(r"trained 1 epochs in ([\d.]+) s", loud).group(1))

    x_mib = args.rows * args.features * 8 / 2**20
    best = {name: min(w for w, _ in r) for name, r in runs.items()}
    peak = {name: max(m for _, m in r) for name, r in runs.items()}
    rows = []
    for name in cases:
        extra = peak[name] - peak["baseline"]
        rows.append(
            {
                "case": name,
                "rows": args.rows,
                "features": args.features,
                "wall_s_best": round(best[name], 3),
                "wall_s_median": round(statistics.median(w for w, _ in runs[name]), 3),
                "wall_vs_pandas": round(best[name] / best["pandas"], 3),
                "wall_vs_pandas_calls": round(best[name] / min(pandas_calls), 3),
                "peak_rss_mib": round(peak[name], 1),
                "extra_rss_mib": round(extra, 1),
                "extra_rss_vs_X": round(extra / x_mib, 3),
            }
        )
    size = data.stat().st_size / 2**20
    print(f"{args.rows:,} x {args.features} CSV ({size:.0f} MiB), feature matrix X = {x_mib:.0f} MiB; fresh child")
    print(f"processes, wall time best of {args.repeats}, peak RSS the largest of {args.repeats}")
    print(f"{'case':<10}{'wall s':>9}{'median':>9}{'vs pandas':>11}{'peak RSS MiB':>14}{'beyond base':>13}{'/ X':>7}")
    for r in rows:
        print(
            f"{r['case']:<10}{r['wall_s_best']:>9.2f}{r['wall_s_median']:>9.2f}{r['wall_vs_pandas']:>10.2f}x"
            f"{r['peak_rss_mib']:>14.0f}{r['extra_rss_mib']:>13.0f}{r['extra_rss_vs_X']:>6.2f}x"
        )
    t_ratio, m_ratio = rows[2]["wall_vs_pandas"], rows[2]["extra_rss_vs_X"]
    calls_ratio = rows[2]["wall_vs_pandas_calls"]
    print(f"pandas read_csv + to_numpy alone (no start-up, no import): best {min(pandas_calls):.2f} s;")
    print(f"the whole train process / those two calls alone = {calls_ratio:.2f}x")
    rest = loud_wall - read_s - epoch_s
    print(f"train without --quiet: {loud_wall:.1f} s = reading {read_s:.1f} s + the epoch {epoch_s:.1f} s")
    print(f"                       + the rest (start-up, imports, split, standardizing, saving) {rest:.1f} s")
    checks = [
        ("time:   train / pandas", t_ratio, TIME_TARGET),
        ("memory: train beyond base / X", m_ratio, MEMORY_TARGET),
    ]
    for what, ratio, target in checks:
        print(f"{what} = {ratio:.2f}x  (target <= {target}x: {'met' if ratio <= target else 'MISSED'})")
    write_csv(rows, RESULTS)
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
