"""Speed of softmaxce's loss + gradient against one memcpy of the logits, PyTorch eager and scikit-learn.

For float32 logits of shape (N, C) and class-index targets, one run times (best of k):
  - memcpy:    np.copyto(dst, logits) into a preallocated array (read the logits once, write once:
               the physical floor for a kernel that must produce a gradient the size of the logits);
  - softmaxce: cross_entropy_and_grad(logits, target, out=grad) with a preallocated gradient;
  - torch:     F.cross_entropy(x, t) forward + backward, eager, torch.set_num_threads(threads);
  - sklearn:   HalfMultinomialLoss().loss_gradient(..., n_threads=threads) with preallocated outputs.
memcpy and softmaxce are timed in one subprocess, alternating call by call (best of k each), so that
their ratio compares the two under the same machine load (this machine is shared: timed in separate
processes a few seconds apart, the same kernel's ratio ranged from 0.99 to 1.81); PyTorch and
scikit-learn each run in their own subprocess (no cross-talk between thread pools).
Extra peak memory is measured in a fresh subprocess per case: the growth of the RSS high-water mark
(resource.getrusage ru_maxrss) over two calls, after inputs and outputs are allocated and touched (an
upper bound: it includes loading the implementation's code, e.g. numba's cached machine code).
First-call time (numba cache load, or compile on a cold cache) is measured in a fresh subprocess.

    python benchmarks/bench_core.py            # full table, writes benchmarks/results/core.csv
    python benchmarks/bench_core.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import best_time, write_csv  # benchmarks/_common.py (this folder is on sys.path)

FULL = [(1 << 18, 128), (1 << 15, 1024), (8192, 32768), (1024, 262144)]
QUICK = [(4096, 128), (512, 1024), (64, 32768)]
RESULTS = Path(__file__).resolve().parent / "results" / "core.csv"


def _problem(N: int, C: int):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, C), dtype=np.float32)
    logits *= 3.0
    target = rng.integers(0, C, N)
    return logits, target


def _runner(name: str, logits: np.ndarray, target: np.ndarray, threads: int):
    """A zero-argument callable doing one loss + gradient with `name`'s implementation."""
    if name == "memcpy":
        dst = np.full_like(logits, 0.0)  # touched: its pages count as input/output, not extra
        return lambda: np.copyto(dst, logits)
    if name == "softmaxce":
        import softmaxce

        softmaxce.set_num_threads(threads)
        grad = np.full_like(logits, 0.0)  # touched: its pages count as input/output, not extra
        return lambda: softmaxce.cross_entropy_and_grad(logits, target, out=grad)
    if name == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        x = torch.from_numpy(logits).requires_grad_(True)
        t = torch.from_numpy(target)

        def run():
            x.grad = None
            F.cross_entropy(x, t).backward()

        return run
    if name == "sklearn":
        from sklearn._loss.loss import HalfMultinomialLoss

        N, C = logits.shape
        loss_fn = HalfMultinomialLoss(n_classes=C)
        y = target.astype(np.float32)
        loss_out = np.empty(N, dtype=np.float32)
        grad_out = np.full_like(logits, 0.0)  # touched: its pages count as input/output, not extra
        return lambda: loss_fn.loss_gradient(y, logits, loss_out=loss_out, gradient_out=grad_out, n_threads=threads)
    raise ValueError(name)


def _child(args) -> None:
    """Runs in a subprocess: times one implementation, or measures its extra peak memory."""
    import resource

    N, C, threads, name, k = args.child
    N, C, threads, k = int(N), int(C), int(threads), int(k)
    logits, target = _problem(N, C)
    out = {}
    if args.child_mode == "pair":  # name is "a+b": both timed, alternating call by call
        fns = {n: _runner(n, logits, target, threads) for n in name.split("+")}
        best = dict.fromkeys(fns, float("inf"))
        for f in fns.values():
            f()  # warm-up
        for _ in range(k):
            for n, f in fns.items():
                t0 = time.perf_counter()
                f()
                best[n] = min(best[n], time.perf_counter() - t0)
        print(json.dumps({"time_s": best}))
        return
    fn = _runner(name, logits, target, threads)
    if args.child_mode == "first":
        t0 = time.perf_counter()
        fn()
        out["first_s"] = time.perf_counter() - t0
    elif args.child_mode == "memory":
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["extra_mb"] = (after - before) / 1024.0
    else:
        out["time_s"] = best_time(fn, k)
    print(json.dumps(out))


def _in_subprocess(N, C, threads, name, k, mode) -> dict:
    cmd = [sys.executable, __file__, "--child", str(N), str(C), str(threads), name, str(k), "--child-mode", mode]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="threads for every implementation (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (best is kept)")
    parser.add_argument("--csv", type=Path, default=RESULTS, help=f"CSV output (default {RESULTS})")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    cases = QUICK if args.quick else FULL
    k = args.repeat or (3 if args.quick else 5)
    names = ["memcpy", "softmaxce", "torch", "sklearn"]
    first = _in_subprocess(64, 1024, args.threads, "softmaxce", 1, "first")["first_s"]
    print(f"softmaxce first call in a fresh process (numba cache load or compile): {first:.2f} s")
    print(f"float32, loss + gradient, {args.threads} threads, best of {k}; extra = RSS high-water growth, 2 calls")
    header = f"{'N':>8} {'C':>7} {'impl':>10} {'time ms':>9} {'x memcpy':>9} {'speedup':>8} {'extra MB':>9}"
    print(header)
    rows = []
    for N, C in cases:
        times = {}
        extra = {}
        times.update(_in_subprocess(N, C, args.threads, "memcpy+softmaxce", k, "pair")["time_s"])
        for name in names:
            if name not in times:  # its own process: a clean heap, no cross-talk between thread pools
                times[name] = _in_subprocess(N, C, args.threads, name, k, "time")["time_s"]
            extra[name] = _in_subprocess(N, C, args.threads, name, 1, "memory")["extra_mb"]
        for name in names:
            t = times[name]
            speedup = t / times["softmaxce"]
            row = dict(
                N=N,
                C=C,
                impl=name,
                threads=args.threads,
                time_ms=round(t * 1e3, 3),
                ratio_memcpy=round(t / times["memcpy"], 3),
                softmaxce_speedup=round(speedup, 2),
                extra_peak_mb=round(extra[name], 1),
                first_call_s=round(first, 3) if name == "softmaxce" else "",
            )
            rows.append(row)
            print(
                f"{N:>8} {C:>7} {name:>10} {t * 1e3:>9.1f} {row['ratio_memcpy']:>9.2f} "
                f"{speedup:>7.1f}x {extra[name]:>9.1f}"
            )
    write_csv(rows, args.csv)
    print("('speedup' = time / softmaxce time: how much faster softmaxce is)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
