"""Top-k distillation through the fused head: softmaxce with a SparseTarget vs PyTorch with the dense
probability target it stands for, same run.

    python benchmarks/bench_sparse.py            # N=4096 D=1024 V=128256 K=32, float32
    python benchmarks/bench_sparse.py --quick    # N=1024 D=512 V=32768 K=32

Contenders, each forward + backward (loss, grad_x, grad_W) in float32:
    softmaxce      linear_cross_entropy_and_grad(x, W, SparseTarget(top-k indices, probabilities))
    softmaxce_torch  softmaxce.torch.linear_cross_entropy(x, W, SparseTarget(...)).backward() (torch's BLAS)
    torch_dense    F.cross_entropy(F.linear(x, W), y) with y the dense (N, V) probability target
    torch_linear   F.linear_cross_entropy(x, W, y) (PyTorch's chunked head) with the same dense y
For the peers the dense target is built inside the measured call (torch.zeros + scatter_add_ of the
top-k), so its time and memory count: it is what they need to train on a teacher's top-k.

Each contender runs in a fresh subprocess: a tiny warm-up call (numba cache load, torch allocator),
then the inputs, then the RSS high-water mark is reset; extra peak memory is peak RSS minus RSS
before the call minus the outputs (grad_x, grad_W). Time is the best of --repeat calls in that
process. Prints a table with ratios and writes benchmarks/results/sparse.csv (sparse_quick.csv).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# benchmarks/_common.py (this folder is on sys.path)
from _common import backward_step, chosen, head_inputs, measure_call, print_table, run_child, write_csv

RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("softmaxce", "softmaxce_torch", "torch_dense", "torch_linear")


def _inputs(N, D, V, K, seed=0):
    """x (N, D), W (V, D), a teacher's top-K class indices (N, K) and their renormalized probabilities."""
    rng = np.random.default_rng(seed)
    x, W = head_inputs(rng, N, D, V)
    idx = rng.integers(0, V, (N, K))
    teacher = rng.standard_normal((N, K)) * 2
    p = np.exp(teacher - teacher.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)  # top-k probabilities, renormalized
    return x, W, idx, p


def _runner(name, x, W, idx, p, threads):
    """A no-argument function doing loss + grad_x + grad_W with contender `name`."""
    if name == "softmaxce":
        import softmaxce

        softmaxce.set_num_threads(threads)
        target = softmaxce.SparseTarget(idx, p)
        return lambda: softmaxce.linear_cross_entropy_and_grad(x, W, target)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    xt = torch.from_numpy(x).requires_grad_()
    Wt = torch.from_numpy(W).requires_grad_()
    it, pt = torch.from_numpy(idx), torch.from_numpy(p)
    N, V = x.shape[0], W.shape[0]

    def dense_target():
        return torch.zeros(N, V).scatter_add_(1, it, pt)  # y[n, i_k] += p_k

    if name == "softmaxce_torch":  # the same fused head through softmaxce.torch, as a torch user calls it
        import softmaxce
        import softmaxce.torch as sce

        softmaxce.set_num_threads(threads)
        target = softmaxce.SparseTarget(it, pt)
        return backward_step(lambda: sce.linear_cross_entropy(xt, Wt, target), xt, Wt)
    if name == "torch_dense":
        return backward_step(lambda: F.cross_entropy(F.linear(xt, Wt), dense_target()), xt, Wt)
    opts = torch.nn.LinearCrossEntropyOptions()
    return backward_step(lambda: F.linear_cross_entropy(xt, Wt, dense_target(), options=opts), xt, Wt)


def _child(name, N, D, V, K, threads, repeat):
    # warm-up: numba cache (the parallel drivers too: 64 x 2048 logits), torch allocator, BLAS
    _runner(name, *_inputs(64, D, 2048, 4), threads)()
    x, W, idx, p = _inputs(N, D, V, K)
    run = _runner(name, x, W, idx, p, threads)
    best, extra = measure_call(run, outputs=x.nbytes + W.nbytes)  # the first call; outputs: grad_x and grad_W
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"time_s": best, "extra_peak_mb": extra / 2**20}))


def _measure(name, N, D, V, K, threads, repeat):
    """{"time_s", "extra_peak_mb"} of contender `name`, measured in a fresh subprocess (NaN if it fails)."""
    got = run_child(__file__, "--child", name, N, D, V, K, threads, repeat, what=name)
    return got or {"time_s": float("nan"), "extra_peak_mb": float("nan")}


# print_table's header and row format for the rows of bench()
TABLE = (
    f"{'N':>5} {'D':>5} {'V':>7} {'K':>3} {'contender':<15} {'time s':>8} {'extra MB':>9} "
    f"{'time / softmaxce':>16} {'memory / softmaxce':>18}",
    "{N:>5} {D:>5} {V:>7} {K:>3} {contender:<15} {time_s:>8.3f} "
    "{extra_peak_mb:>9.1f} {softmaxce_speedup!s:>15}x {memory_vs_softmaxce!s:>17}x",
)


def bench(N, D, V, K, threads, repeat, contenders=CONTENDERS):
    got = {name: _measure(name, N, D, V, K, threads, repeat) for name in contenders}
    peers = [c for c in contenders if not c.startswith("softmaxce")]
    rows = []
    for name in contenders:
        t, m = got[name]["time_s"], got[name]["extra_peak_mb"]
        rows.append(
            {
                "N": N,
                "D": D,
                "V": V,
                "K": K,
                "threads": threads,
                "contender": name,
                "time_s": round(t, 3),
                "extra_peak_mb": round(m, 1),
                "softmaxce_speedup": round(t / got["softmaxce"]["time_s"], 2) if "softmaxce" in got else "",
                "memory_vs_softmaxce": round(m / max(got["softmaxce"]["extra_peak_mb"], 1e-9), 1)
                if "softmaxce" in got
                else "",
            }
        )
    fastest = min((got[c]["time_s"] for c in peers), default=None)
    smallest = min((got[c]["extra_peak_mb"] for c in peers), default=None)
    for ours in (c for c in contenders if c.startswith("softmaxce")):
        if fastest is None:
            break
        s = got[ours]
        print(
            f"{ours} vs the best peer: {fastest / s['time_s']:.2f}x faster, "
            f"{s['extra_peak_mb'] / smallest:.4f} of the smaller peer's extra peak memory (goal: > 1x, <= 0.1)"
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N=1024 D=512 V=32768 K=32")
    p.add_argument("--shape", help="N,D,V,K (default: 4096,1024,128256,32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated subset of {CONTENDERS}")
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # a measurement subprocess (see run_child)
        name, *nums = a.child
        return _child(name, *map(int, nums))
    shape = (1024, 512, 32768, 32) if a.quick else (4096, 1024, 128256, 32)
    if a.shape:
        shape = tuple(int(v) for v in a.shape.split(","))
    contenders = chosen(p, a.contenders, CONTENDERS, "contenders")
    rows = bench(*shape, a.threads, a.repeat, contenders)
    print_table(rows, *TABLE)
    write_csv(rows, RESULTS / ("sparse_quick.csv" if a.quick else "sparse.csv"))


if __name__ == "__main__":
    main()
