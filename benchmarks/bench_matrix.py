"""The issue's matrix: softmaxce against PyTorch eager, torch.compile and JAX, cell by cell.

For each cell (float32 unless named f64; class-index targets, reduction "mean", loss + gradient):
  - memcpy:                np.copyto into a preallocated array (the floor: read the logits once, write once);
  - softmaxce:             softmaxce.cross_entropy_and_grad(logits, target) (the public NumPy API);
  - softmaxce-new-kernel:  the few-classes (`_small`) / class-axis-1 (`_axis1`) kernels called directly
                           with the engine's arrays (coef, loss, lse) until the engine is wired to them;
  - torch-eager:           F.cross_entropy(x, t) forward + backward on a leaf tensor;
  - torch-compile:         the same function under torch.compile (inductor), compiled fresh per cell;
  - jax:                   jit(value_and_grad(optax.softmax_cross_entropy_with_integer_labels(...).mean()))
                           (class axis 1 moved last inside the jitted function).
Every contender runs in this one process, on 2 threads (torch.set_num_threads, XLA's intra-op
flag, softmaxce.set_num_threads), best of --repeat after a warm-up call. "err" is the largest
absolute gradient error against a float64 computation. A thread-scaling section times the new
kernel on 1 and 2 threads for the cells with C <= 100 or class axis 1.

    python benchmarks/bench_matrix.py                   # every cell, writes benchmarks/results/matrix.csv
    python benchmarks/bench_matrix.py --quick           # small shapes (smoke run)
    python benchmarks/bench_matrix.py --cells 1048576x10,8x21x128x128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_csv  # noqa: E402

THREADS = 2
RESULTS = Path(__file__).resolve().parent / "results" / "matrix.csv"
# (name, shape, dtype): shape (N, C) or (N, C, d1, d2) with the class axis 1
FULL = [
    ("1048576x10", (1048576, 10), "float32"),
    ("262144x100", (262144, 100), "float32"),
    ("65536x1000", (65536, 1000), "float32"),
    ("8192x32768", (8192, 32768), "float32"),
    ("1024x262144", (1024, 262144), "float32"),
    ("16x2x256x256", (16, 2, 256, 256), "float32"),
    ("8x21x128x128", (8, 21, 128, 128), "float32"),
    ("f64-8192x4096", (8192, 4096), "float64"),
]
QUICK = [
    ("16384x10", (16384, 10), "float32"),
    ("4096x100", (4096, 100), "float32"),
    ("4x2x64x64", (4, 2, 64, 64), "float32"),
    ("2x21x32x32", (2, 21, 32, 32), "float32"),
    ("f64-512x4096", (512, 4096), "float64"),
]
CONTENDERS = ["memcpy", "softmaxce", "softmaxce-new-kernel", "torch-eager", "torch-compile", "jax"]


def problem(shape, dtype):
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal(shape)).astype(dtype)
    target = rng.integers(0, shape[1], (shape[0],) + tuple(shape[2:]))
    return logits, target


def reference_grad(logits, target) -> np.ndarray:
    """float64 gradient of the mean loss, in chunks of rows (class axis moved last)."""
    C = logits.shape[1]
    rows = np.moveaxis(logits, 1, -1).reshape(-1, C) if logits.ndim > 2 else logits
    t = target.reshape(-1)
    P = rows.shape[0]
    out = np.empty((P, C), np.float64)
    step = max(1, (1 << 24) // C)
    for i in range(0, P, step):
        z = rows[i : i + step].astype(np.float64)
        a = np.exp(z - z.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        a[np.arange(len(z)), t[i : i + step]] -= 1.0
        out[i : i + step] = a / P
    if logits.ndim > 2:
        return np.moveaxis(out.reshape((logits.shape[0],) + logits.shape[2:] + (C,)), -1, 1)
    return out.reshape(logits.shape)


def best(fn, repeat: int) -> float:
    fn()  # warm-up: compilation, page faults
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def new_kernel(logits, target):
    """The new kernels with the engine's arrays ("mean": coef = 1 / P), or None where neither applies."""
    from softmaxce import _axis1, _small, _threads

    C = logits.shape[1]
    P = target.size
    t = target.reshape(P).astype(np.int64)
    E0, E1, w = np.empty(0, np.int64), np.empty(0), np.empty(0)
    grad = np.empty_like(logits)
    if logits.ndim > 2:
        S = P // logits.shape[0]
        if not _axis1.axis1_applies(logits.dtype, logits.shape[0], C, S):
            return None
        z, g, kernel = logits.reshape(-1, C, S), grad.reshape(-1, C, S), _axis1.index_axis1
    else:
        if not _small.small_classes(logits.dtype, P, C):
            return None
        z, g, kernel = logits, grad, _small.index_rows_small

    def run():
        coef = np.full(P, 1.0 / P)
        loss, lse = np.empty(P), np.empty(P)
        with _threads.kernel_region(True):
            kernel(True, z, t, w, 0.0, 0.0, 0.0, -100, coef, g, loss, lse, E0, E1)
        return loss.sum() / P, grad

    return run


def runners(logits, target):
    """name -> zero-argument callable returning (loss, grad as NumPy)."""
    import softmaxce

    out = {}
    dst = np.empty_like(logits)
    out["memcpy"] = lambda: (None, np.copyto(dst, logits))
    out["softmaxce"] = lambda: tuple(softmaxce.cross_entropy_and_grad(logits, target))
    nk = new_kernel(logits, target)
    if nk is not None:
        out["softmaxce-new-kernel"] = nk
    try:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(logits)
        y = torch.from_numpy(target)

        def step(x, y):
            return F.cross_entropy(x, y)

        def torch_run(f):
            def run():
                xl = x.detach().requires_grad_(True)
                loss = f(xl, y)
                loss.backward()
                return loss.item(), xl.grad.numpy()

            return run

        out["torch-eager"] = torch_run(step)
        torch._dynamo.reset()
        out["torch-compile"] = torch_run(torch.compile(step, backend="inductor"))
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp
        import optax

        jax.config.update("jax_enable_x64", logits.dtype == np.float64)

        def loss_fn(z, t):
            if z.ndim > 2:
                z = jnp.moveaxis(z, 1, -1)
            return optax.softmax_cross_entropy_with_integer_labels(z, t).mean()

        vg = jax.jit(jax.value_and_grad(loss_fn))
        zj, tj = jnp.asarray(logits), jnp.asarray(target.astype(np.int32))

        def jax_run():
            loss, g = vg(zj, tj)
            g.block_until_ready()
            return float(loss), g

        out["jax"] = jax_run
    except ImportError:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--csv", default=str(RESULTS))
    args = parser.parse_args()

    import softmaxce

    softmaxce.set_num_threads(THREADS)
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    cells = QUICK if args.quick else FULL
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [c for c in FULL + QUICK if c[0] in wanted]
    rows = []
    for name, shape, dtype in cells:
        logits, target = problem(shape, dtype)
        ref = reference_grad(logits, target)
        times = {}
        for who, fn in runners(logits, target).items():
            ms = best(fn, args.repeat) * 1e3
            _, g = fn()
            err = float(np.max(np.abs(np.asarray(g if who != "memcpy" else ref, np.float64) - ref)))
            times[who] = ms
            rows.append(
                {
                    "cell": name,
                    "dtype": dtype,
                    "contender": who,
                    "threads": THREADS,
                    "ms": round(ms, 3),
                    "max_grad_err": f"{err:.2e}" if who != "memcpy" else "",
                }
            )
        peers = [times[p] for p in ("torch-eager", "torch-compile", "jax") if p in times]
        fastest_peer = min(peers) if peers else float("nan")
        for r in rows:
            if r["cell"] == name:
                r["x_fastest_peer"] = round(fastest_peer / r["ms"], 2)
                r["x_memcpy"] = round(r["ms"] / times["memcpy"], 2)
        print(f"\n{name} ({dtype}); fastest peer {fastest_peer:.2f} ms")
        print(f"  {'contender':22s} {'ms':>9s} {'peer/ms':>8s} {'ms/memcpy':>9s} {'max grad err':>12s}")
        for r in rows:
            if r["cell"] == name:
                print(
                    f"  {r['contender']:22s} {r['ms']:9.2f} {r['x_fastest_peer']:8.2f} "
                    f"{r['x_memcpy']:9.2f} {r['max_grad_err']:>12s}"
                )
        # thread scaling of the new kernel (C <= 100 or class axis 1)
        nk = new_kernel(logits, target)
        if nk is not None and (shape[1] <= 100 or len(shape) > 2):
            t = {}
            for n in (1, THREADS):
                softmaxce.set_num_threads(n)
                t[n] = best(nk, args.repeat) * 1e3
            softmaxce.set_num_threads(THREADS)
            print(
                f"  thread scaling (new kernel): 1 thread {t[1]:.2f} ms, "
                f"{THREADS} threads {t[THREADS]:.2f} ms, x{t[1] / t[THREADS]:.2f}"
            )
            rows.append(
                {
                    "cell": name,
                    "dtype": dtype,
                    "contender": "softmaxce-new-kernel",
                    "threads": 1,
                    "ms": round(t[1], 3),
                    "max_grad_err": "",
                    "x_fastest_peer": round(fastest_peer / t[1], 2),
                    "x_memcpy": round(t[1] / times["memcpy"], 2),
                }
            )
        del logits, target, ref
    fields = ["cell", "dtype", "contender", "threads", "ms", "x_fastest_peer", "x_memcpy", "max_grad_err"]
    write_csv(rows, args.csv, fields)


if __name__ == "__main__":
    main()
