"""First calls: the cold compile of each kernel family and the first call with a warm cache.

Runs one child process with an empty NUMBA_CACHE_DIR (every family compiles, in order), then
`--warm` children with that cache (numba loads the machine code). Each child times `import softmaxce`
and the first `cross_entropy_and_grad` call of each family, in order, and prints one JSON line; this
script prints the table and writes results/first_call.csv.

    python benchmarks/bench_first_call.py [--warm 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (family, logits shape, dtype, options): the order matters, as a family compiles what it needs
# that an earlier one has not compiled yet (the target check comes with the first)
FAMILIES = [
    ("streamed resident, serial driver", (8, 1000), "float32", {}),
    ("streamed resident, parallel driver", (512, 1000), "float32", {}),
    ("streamed long rows, serial", (8, 4096), "float32", {}),
    ("streamed long rows, parallel", (256, 4096), "float32", {}),
    ("few classes, serial", (64, 10), "float32", {}),
    ("few classes, parallel", (65536, 10), "float32", {}),
    ("class axis 1, serial", (2, 3, 4, 16), "float32", {}),
    ("class axis 1, parallel", (8, 3, 64, 64), "float32", {}),
    ("few classes float64", (65536, 10), "float64", {}),
    ("float16 rows", (4096, 1000), "float16", {}),
    ("general rows (softcap)", (512, 1000), "float32", {"softcap": 5.0}),
]


def child() -> None:
    t0 = time.perf_counter()
    import numpy as np

    import softmaxce

    out = {"import softmaxce": time.perf_counter() - t0}
    rng = np.random.default_rng(0)
    for name, shape, dtype, options in FAMILIES:
        z = rng.standard_normal(shape).astype(dtype)
        t = rng.integers(0, shape[1], (shape[0],) + tuple(shape[2:]))
        t1 = time.perf_counter()
        softmaxce.cross_entropy_and_grad(z, t, **options)
        out[name] = time.perf_counter() - t1
    print(json.dumps(out))


def run(cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    proc = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=False, timeout=1800
    )
    if proc.returncode != 0:
        sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=2, help="warm-cache children after the cold one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    with tempfile.TemporaryDirectory() as cache:
        runs = [run(cache) for _ in range(1 + args.warm)]
    names = list(runs[0])
    header = f"{'':40s} {'cold s':>8s} " + " ".join(f"{'warm ' + str(i + 1) + ' s':>9s}" for i in range(args.warm))
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:40s} {runs[0][name]:8.2f} " + " ".join(f"{r[name]:9.3f}" for r in runs[1:]))
    path = Path(__file__).parent / "results" / "first_call.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "cold_s"] + [f"warm{i + 1}_s" for i in range(args.warm)])
        for name in names:
            w.writerow([name, f"{runs[0][name]:.4f}"] + [f"{r[name]:.4f}" for r in runs[1:]])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
