"""Fused linear + cross-entropy head: softmaxce vs PyTorch eager, PyTorch's chunked
linear_cross_entropy and the floor (the three bare matrix products the math needs), same run.

    python benchmarks/bench_linear.py            # N=4096 D=1024 V=32768, V=128256, D=4096 (float32)
    python benchmarks/bench_linear.py --quick    # small smoke run
    python benchmarks/bench_linear.py --scale    # also N=8192 D=1024 V=262144, softmaxce only

Times are the best of --repeat runs in this process (loss + every gradient); extra peak memory is
measured in a fresh subprocess per contender as peak RSS minus RSS before the call, minus the outputs
(gradients), with the high-water mark reset after the inputs are made. Prints a table with ratios
and writes benchmarks/results/linear.csv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# benchmarks/_common.py (this folder is on sys.path)
from _common import backward_step, best_time, chosen, head_inputs, measure_call, print_table, run_child, write_csv

RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("matmul3", "softmaxce", "torch_eager", "torch_chunked")


def _inputs(N, D, V, seed=0):
    rng = np.random.default_rng(seed)
    x, W = head_inputs(rng, N, D, V)
    t = rng.integers(0, V, N)
    return x, W, t


def _runner(name, x, W, t, threads):
    """Returns a no-argument function doing loss + all gradients with contender `name`."""
    import torch

    torch.set_num_threads(threads)
    if name == "matmul3":
        N, V = x.shape[0], W.shape[0]
        z = np.empty((N, V), np.float32)
        gx = np.empty_like(x)
        gw = np.empty_like(W)

        def run():
            np.matmul(x, W.T, out=z)  # logits
            np.matmul(z, W, out=gx)  # G W  (z stands in for G)
            np.matmul(z.T, x, out=gw)  # G^T x

        return run
    if name == "softmaxce":
        import softmaxce

        softmaxce.set_num_threads(threads)
        return lambda: softmaxce.linear_cross_entropy_and_grad(x, W, t)
    import torch.nn.functional as F

    xt = torch.from_numpy(x).requires_grad_()
    Wt = torch.from_numpy(W).requires_grad_()
    tt = torch.from_numpy(t)

    if name == "torch_eager":
        return backward_step(lambda: F.cross_entropy(F.linear(xt, Wt), tt), xt, Wt)
    opts = torch.nn.LinearCrossEntropyOptions()
    return backward_step(lambda: F.linear_cross_entropy(xt, Wt, tt, options=opts), xt, Wt)


def _memory_child(name, N, D, V, threads):
    x, W, t = _inputs(N, D, V)
    small = _inputs(8, D, 64)
    _runner(name, *small, threads)()  # numba cache load, torch allocator, BLAS buffers
    run = _runner(name, x, W, t, threads)
    outputs = x.nbytes + W.nbytes  # grad_x and grad_W (matmul3: its G^T x and G W outputs)
    if name == "matmul3":
        outputs += N * V * 4  # its logits buffer is an output of the floor, not working memory
    _, extra = measure_call(run, outputs)
    print(json.dumps({"extra_peak_mb": extra / 2**20}))


def _measure_memory(name, N, D, V, threads):
    """Extra peak MB of one call of contender `name`, measured in a fresh subprocess (NaN if it fails)."""
    got = run_child(__file__, "--child", name, N, D, V, threads, what=f"{name} memory run")
    return float("nan") if got is None else got["extra_peak_mb"]


# print_table's header and row format for the rows of bench()
TABLE = (
    f"{'N':>6} {'D':>5} {'V':>7} {'contender':<14} {'time s':>8} {'x matmul3':>9} "
    f"{'softmaxce faster':>16} {'extra MB':>9}",
    "{N:>6} {D:>5} {V:>7} {contender:<14} {time_s:>8.3f} "
    "{vs_matmul3!s:>9} {softmaxce_speedup!s:>15}x {extra_peak_mb:>9.1f}",
)


def bench(shapes, threads, repeat, contenders=CONTENDERS):
    rows = []
    for N, D, V in shapes:
        x, W, t = _inputs(N, D, V)
        times, mems = {}, {}
        for name in contenders:
            times[name] = best_time(_runner(name, x, W, t, threads), repeat)  # after a warm-up call
            mems[name] = _measure_memory(name, N, D, V, threads)
        for name in contenders:
            rows.append(
                {
                    "N": N,
                    "D": D,
                    "V": V,
                    "threads": threads,
                    "contender": name,
                    "time_s": round(times[name], 4),
                    "vs_matmul3": round(times[name] / times["matmul3"], 3) if "matmul3" in times else "",
                    "softmaxce_speedup": round(times[name] / times["softmaxce"], 3) if "softmaxce" in times else "",
                    "extra_peak_mb": round(mems[name], 1),
                }
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--scale", action="store_true", help="also N=8192 D=1024 V=262144 (softmaxce only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated subset of {CONTENDERS}")
    p.add_argument("--shapes", help="N,D,V triples separated by ';' (default: the issue's three shapes)")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # a measurement subprocess (see run_child)
        name, *nums = a.child
        return _memory_child(name, *map(int, nums))
    shapes = [(512, 256, 8192)] if a.quick else [(4096, 1024, 32768), (4096, 1024, 128256), (4096, 4096, 32768)]
    if a.shapes:
        shapes = [tuple(int(v) for v in triple.split(",")) for triple in a.shapes.split(";")]
    contenders = chosen(p, a.contenders, CONTENDERS, "contenders")
    rows = bench(shapes, a.threads, 1 if a.quick else a.repeat, contenders)
    if a.scale:
        rows += bench([(8192, 1024, 262144)], a.threads, 1, contenders=("softmaxce",))
    print_table(rows, *TABLE)
    write_csv(rows, RESULTS / ("linear_quick.csv" if a.quick else "linear.csv"))


if __name__ == "__main__":
    main()
