"""Benchmark the PyTorch front end's fused head against PyTorch, forward + backward.

Compares, in one run, for float32 and bfloat16:
  - torch-eager:   F.cross_entropy(F.linear(x, W), t) and backward (holds the N x V logits);
  - torch-chunked: F.linear_cross_entropy(x, W, t, options=torch.nn.LinearCrossEntropyOptions());
  - softmaxce:     softmaxce.torch.linear_cross_entropy(x, W, t).
Time is the median of --reps runs after a warm-up; peak memory is the extra memory over the inputs
during one forward + backward: on CPU the peak resident set size of a fresh worker process (reset
through /proc/self/clear_refs after the warm-up), on CUDA torch.cuda.max_memory_allocated.
Each (implementation, dtype) runs in its own process. Prints a table with ratios against
torch-eager and writes benchmarks/results/torch.csv (or --out).

    python benchmarks/bench_torch.py                       # CPU
    python benchmarks/bench_torch.py --device cuda --n 8192 --d 4096 --v 128256
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from _common import (  # benchmarks/_common.py (this folder is on sys.path)
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    write_csv,
)

IMPLS = ["torch-eager", "torch-chunked", "softmaxce"]
DTYPES = ["float32", "bfloat16"]


def worker(impl: str, dtype_name: str, n: int, d: int, v: int, reps: int, device: str, threads: int | None) -> dict:
    import torch
    import torch.nn.functional as F

    import softmaxce.torch as sce

    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    W = (torch.randn(v, d, generator=gen) / d**0.5).to(device=device, dtype=dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen).to(device)
    options = torch.nn.LinearCrossEntropyOptions()

    def step():
        if impl == "torch-eager":
            loss = F.cross_entropy(F.linear(x, W), t)
        elif impl == "torch-chunked":
            loss = F.linear_cross_entropy(x, W, t, options=options)
        else:
            loss = sce.linear_cross_entropy(x, W, t)
        gx, gw = torch.autograd.grad(loss, (x, W))
        return loss

    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    loss = step()  # warm-up (numba compilation, allocator)
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        import gc

        gc.collect()
        base = rss_bytes()
        reset_peak_rss()
        step()
        peak = peak_rss_bytes() - base
    return {
        "impl": impl,
        "dtype": dtype_name,
        "device": device,
        "n": n,
        "d": d,
        "v": v,
        "time_s": statistics.median(times),
        "peak_mib": peak / 2**20,
        "loss": float(loss.detach().float()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=2048, help="positions (rows)")
    ap.add_argument("--d", type=int, default=512, help="hidden size")
    ap.add_argument("--v", type=int, default=16384, help="vocabulary size")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "torch.csv"))
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.n, args.d, args.v, args.reps, args.device, args.threads)))
        return
    rows = []
    for dtype in args.dtypes.split(","):
        for impl in IMPLS:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                impl,
                dtype,
                "--n",
                str(args.n),
                "--d",
                str(args.d),
                "--v",
                str(args.v),
                "--reps",
                str(args.reps),
                "--device",
                args.device,
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                print(f"{impl} {dtype} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    eager = {r["dtype"]: r for r in rows if r["impl"] == "torch-eager"}
    for r in rows:
        e = eager.get(r["dtype"])
        r["time_vs_eager"] = r["time_s"] / e["time_s"] if e else float("nan")
        r["peak_vs_eager"] = r["peak_mib"] / e["peak_mib"] if e and e["peak_mib"] > 0 else float("nan")
    print(f"device={args.device} N={args.n} D={args.d} V={args.v} (forward + backward, median of {args.reps})")
    print(f"{'dtype':<9} {'impl':<14} {'time s':>8} {'x eager':>8} {'peak MiB':>9} {'x eager':>8} {'loss':>9}")
    for r in rows:
        print(
            f"{r['dtype']:<9} {r['impl']:<14} {r['time_s']:8.3f} {r['time_vs_eager']:8.2f} {r['peak_mib']:9.1f} "
            f"{r['peak_vs_eager']:8.2f} {r['loss']:9.5f}"
        )
    fields = ["device", "dtype", "impl", "n", "d", "v", "time_s", "time_vs_eager", "peak_mib", "peak_vs_eager", "loss"]
    write_csv(rows, args.out, fields)


if __name__ == "__main__":
    main()
