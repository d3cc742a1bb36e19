"""Small training steps through softmaxce.torch against torch eager, in one process.

One step is the fused head's forward + backward on leaf tensors that require grad:

  - softmaxce:   softmaxce.torch.linear_cross_entropy(x, W, y).backward()
  - torch-eager: F.cross_entropy(x @ W.T, y).backward()  (holds the N x V logits)

Both run in the same process, interleaved step by step, so that they share one torch thread pool and
any thread pool that softmaxce leaves spinning slows torch's next step too (and shows). Prints ms per
step (median of --steps steps after a warm-up) and the ratio softmaxce / torch-eager; writes
benchmarks/results/threads.csv (or --csv).

    python benchmarks/bench_threads.py                    # 256 x 512 -> 4096, 20 steps
    python benchmarks/bench_threads.py --threads 1
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

from _common import write_csv  # benchmarks/_common.py (this folder is on sys.path)

IMPLS = ("softmaxce", "torch-eager")


def _steps(n: int, d: int, v: int, steps: int, threads: int | None) -> dict[str, list[float]]:
    import torch
    import torch.nn.functional as F

    import softmaxce.torch as sct

    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, requires_grad=True)
    W = (0.05 * torch.randn(v, d, generator=gen)).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen)

    def step(impl: str) -> float:
        x.grad = W.grad = None
        t0 = time.perf_counter()
        if impl == "softmaxce":
            sct.linear_cross_entropy(x, W, y).backward()
        else:
            F.cross_entropy(x @ W.T, y).backward()
        return time.perf_counter() - t0

    for impl in IMPLS:  # warm-up: numba cache load, torch's and BLAS's pools started
        for _ in range(3):
            step(impl)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for _ in range(steps):
        for impl in IMPLS:
            times[impl].append(step(impl))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="rows (batch x sequence)")
    parser.add_argument("--d", type=int, default=512, help="hidden size")
    parser.add_argument("--v", type=int, default=4096, help="vocabulary size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--csv", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results" / "threads.csv")
    args = parser.parse_args()

    import torch

    times = _steps(args.n, args.d, args.v, args.steps, args.threads)
    ms = {impl: 1e3 * statistics.median(ts) for impl, ts in times.items()}
    best = {impl: 1e3 * min(ts) for impl, ts in times.items()}
    print(f"fused step {args.n} x {args.d} -> {args.v}, float32, torch threads {torch.get_num_threads()}")
    print(f"{'impl':<12} {'median ms':>10} {'best ms':>9} {'vs torch':>9}")
    rows = []
    for impl in IMPLS:
        ratio = ms[impl] / ms["torch-eager"]
        print(f"{impl:<12} {ms[impl]:>10.2f} {best[impl]:>9.2f} {ratio:>9.2f}")
        rows.append(
            dict(
                impl=impl,
                n=args.n,
                d=args.d,
                v=args.v,
                threads=torch.get_num_threads(),
                median_ms=round(ms[impl], 3),
                best_ms=round(best[impl], 3),
                ratio_vs_torch=round(ratio, 3),
            )
        )
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
