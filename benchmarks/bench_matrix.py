"""The issue's matrix: softmaxce's three front doors against their peers, cell by cell, in one table.

Sections (class-index targets, reduction "mean", loss + gradient; 2 threads for everyone:
torch.set_num_threads, XLA's intra-op flag, softmaxce.set_num_threads):

  numpy  softmaxce.cross_entropy_and_grad(logits, target) (the public NumPy API) against
         torch-eager (F.cross_entropy forward + backward on a leaf tensor), torch-compile (the same
         function under torch.compile, inductor, compiled fresh per cell) and jax
         (jit(value_and_grad(optax.softmax_cross_entropy_with_integer_labels(...).mean())), class
         axis 1 moved last inside the jitted function). Floor: np.copyto into a preallocated array
         (read the logits once, write once). A thread-scaling row times softmaxce on 1 thread for
         the cells with C <= 100 or class axis 1 and at least 4Mi logits.
  torch  the drop-in softmaxce.torch.cross_entropy(x, t) the way a training loop calls it: x a leaf
         tensor with requires_grad, x.grad = None, loss = f(x, t), loss.backward(), against
         torch-eager F.cross_entropy and torch-compile (inductor, fresh per cell), same steps.
         Floor: torch.empty_like(logits).copy_(logits) (allocation, first touch, one read, one
         write). Short calls (small batches) are timed as loops of 10 calls, best of 20 loops.
  fused  softmaxce.torch.linear_cross_entropy(x, W, t) forward + backward (x, W leaf tensors).
         Floor: the three bare GEMMs the math needs, torch.mm into preallocated outputs:
         logits = x @ W.T, grad_x = G @ W, grad_W = G.T @ x (G a preallocated (N, V) tensor).
         No peer here (bench_linear.py has PyTorch's own heads). "extra MiB" is measured in a
         fresh subprocess: peak RSS minus the RSS with the inputs made, minus the gradients
         (x.grad, W.grad), after a tiny warm-up call (--no-memory skips it).

Every contender of a cell runs in this one process, best of --repeat (--fused-repeat for the
fused section) after a warm-up call. Columns: ms per call; peer/ms = the fastest peer's time over
this one (above 1: faster than every peer); ms/floor; "max grad err" = the largest absolute
gradient error against a float64 computation of the same (16-bit-rounded, for bfloat16) inputs
(fused: over grad_x and grad_W).

    python benchmarks/bench_matrix.py                          # every cell, writes results/matrix.csv
    python benchmarks/bench_matrix.py --quick                  # small shapes in every section
    python benchmarks/bench_matrix.py --sections torch,fused   # some sections
    python benchmarks/bench_matrix.py --cells 1048576x10,8x21x128x128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    backward_step,
    best_time,
    chosen,
    head_inputs,
    measure_call,
    print_table,
    run_child,
    write_csv,
)

THREADS = 2
RESULTS = Path(__file__).resolve().parent / "results" / "matrix.csv"
SECTIONS = ("numpy", "torch", "fused")
PEERS = ("torch-eager", "torch-compile", "jax")
FLOORS = {"numpy": "memcpy", "torch": "empty_like+copy_", "fused": "torch.mm x3"}
SCALING_MIN_LOGITS = 1 << 22  # thread-scaling rows for cells at least this large (full runs)


@dataclass(frozen=True)
class Cell:
    """One benchmark cell. shape: (N, C) or (N, C, d1, d2) with the class axis 1; fused: (N, D, V)."""

    section: str
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    calls: int = 1  # calls per timed loop, for calls too short to time one by one
    min_repeat: int = 1  # at least this many timed loops, whatever --repeat says


DTYPE_PREFIXES = {"f64": "float64", "bf16": "bfloat16"}  # cell name prefix -> dtype (none: float32)


def _cells(section, names, **timing):
    """Cells named by their shape, "NxC" or "NxCxd1xd2" (fused: "NxDxV"), with the dtype as an optional
    prefix ("f64-8192x4096"); `timing`: calls and min_repeat (for short calls)."""
    cells = []
    for name in names.split():
        prefix, _, dims = name.rpartition("-")
        dtype = DTYPE_PREFIXES[prefix] if prefix else "float32"
        cells.append(Cell(section, name, tuple(int(d) for d in dims.split("x")), dtype, **timing))
    return cells


def _short(section, names):
    """Cells of calls too short to time one by one: loops of 10 calls, best of at least 20 loops."""
    return _cells(section, names, calls=10, min_repeat=20)


FULL = [
    *_cells("numpy", "1048576x10 262144x100 65536x1000 8192x32768 1024x262144 16x2x256x256 8x21x128x128"),
    *_cells("numpy", "f64-8192x4096"),
    *_cells("torch", "262144x10 65536x1000 8192x32768 16x2x256x256 8x21x128x128 bf16-65536x1000 bf16-4096x32768"),
    *_short("torch", "256x1024 4096x10"),
    *_cells("fused", "4096x1024x32768 4096x1024x128256"),
]
QUICK = [
    *_cells("numpy", "16384x10 4096x100 4x2x64x64 2x21x32x32 f64-512x4096"),
    *_cells("torch", "4096x100 4x2x64x64 2x21x32x32 bf16-1024x1000"),
    *_short("torch", "256x1024 4096x10"),
    *_cells("fused", "512x256x8192"),
]


# ---------------------------------------------------------------------------------------------
# inputs and float64 references


def problem(shape, dtype):
    """Logits (NumPy; bfloat16 cells get float32 values already rounded to bfloat16) and targets."""
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal(shape)).astype("float32" if dtype == "bfloat16" else dtype)
    if dtype == "bfloat16":
        import torch

        logits = torch.from_numpy(logits).bfloat16().float().numpy()
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
        a /= a.sum(axis=1, keepdims=True)  # p = softmax(z)
        a[np.arange(len(z)), t[i : i + step]] -= 1.0  # dL/dz = (p - onehot(t)) / P
        out[i : i + step] = a / P
    if logits.ndim > 2:
        return np.moveaxis(out.reshape((logits.shape[0],) + logits.shape[2:] + (C,)), -1, 1)
    return out.reshape(logits.shape)


def fused_problem(N, D, V):
    rng = np.random.default_rng(0)
    x, W = head_inputs(rng, N, D, V)
    return x, W, rng.integers(0, V, N)


def fused_reference(x, W, t) -> tuple[np.ndarray, np.ndarray]:
    """float64 (grad_x, grad_W) of mean cross_entropy(x @ W.T, t), in chunks of rows (torch float64 GEMMs)."""
    import torch

    x64, W64, tt = torch.from_numpy(x).double(), torch.from_numpy(W).double(), torch.from_numpy(t)
    N, V = x.shape[0], W.shape[0]
    gx, gW = torch.empty_like(x64), torch.zeros_like(W64)
    step = max(1, (1 << 25) // V)
    for i in range(0, N, step):
        G = torch.softmax(x64[i : i + step] @ W64.T, dim=1)  # (n, V) p = softmax(x W^T)
        G[torch.arange(len(G)), tt[i : i + step]] -= 1.0  # G = (p - onehot(t)) / N
        G /= N
        gx[i : i + step] = G @ W64  # grad_x = G W
        gW += G.T @ x64[i : i + step]  # grad_W = G^T x
    return gx.numpy(), gW.numpy()


def _flat64(a, i, j):
    """Elements i:j of a flattened NumPy / JAX / torch array, as float64 NumPy."""
    if hasattr(a, "detach"):
        return a.detach().reshape(-1)[i:j].double().numpy()
    return np.asarray(np.asarray(a).reshape(-1)[i:j], np.float64)


def grad_error(got, ref) -> float:
    """max |got - ref| over matching arrays (tuples for several gradients), in chunks (no full copies)."""
    if isinstance(ref, tuple):
        return max(grad_error(g, r) for g, r in zip(got, ref, strict=True))
    flat = ref.reshape(-1)
    step = 1 << 22
    return max(
        (float(np.max(np.abs(_flat64(got, i, i + step) - flat[i : i + step]))) for i in range(0, flat.size, step)),
        default=0.0,
    )


# ---------------------------------------------------------------------------------------------
# contenders: name -> builder; a builder returns a zero-argument callable that does one loss +
# gradient and returns the gradient(s) (None for a floor). Built one at a time, so that one
# contender's buffers are gone before the next is timed.


def numpy_contenders(logits, target):
    import softmaxce

    def memcpy():
        dst = np.empty_like(logits)
        return lambda: np.copyto(dst, logits)

    def ours():
        return lambda: softmaxce.cross_entropy_and_grad(logits, target)[1]

    out = {"memcpy": memcpy, "softmaxce": ours}
    try:
        import torch
        import torch.nn.functional as F

        x, y = torch.from_numpy(logits), torch.from_numpy(target)

        def step(x, y):
            return F.cross_entropy(x, y)

        def torch_run(compiled):
            def build():
                f = step
                if compiled:
                    torch._dynamo.reset()
                    f = torch.compile(step, backend="inductor")

                def run():
                    xl = x.detach().requires_grad_(True)
                    f(xl, y).backward()
                    return xl.grad

                return run

            return build

        out["torch-eager"] = torch_run(False)
        out["torch-compile"] = torch_run(True)
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp
        import optax

        def jax_build():
            jax.config.update("jax_enable_x64", logits.dtype == np.float64)

            def loss_fn(z, t):
                if z.ndim > 2:
                    z = jnp.moveaxis(z, 1, -1)
                return optax.softmax_cross_entropy_with_integer_labels(z, t).mean()

            vg = jax.jit(jax.value_and_grad(loss_fn))
            zj, tj = jnp.asarray(logits), jnp.asarray(target.astype(np.int32))
            return lambda: vg(zj, tj)[1].block_until_ready()

        out["jax"] = jax_build
    except ImportError:
        pass
    return out


def torch_contenders(logits, target, *, bfloat16=False):
    import torch
    import torch.nn.functional as F

    import softmaxce.torch as sce

    z = torch.from_numpy(logits)
    z = z.bfloat16() if bfloat16 else z
    y = torch.from_numpy(target)
    x = z.clone().requires_grad_(True)  # the leaf a training loop would own

    def floor():
        def run():
            torch.empty_like(z).copy_(z)  # a fresh buffer: allocation, first touch, one read, one write

        return run

    def training_step(loss_fn):
        def run():
            x.grad = None
            loss = loss_fn(x, y)
            loss.backward()
            return x.grad

        return run

    def step(x, y):
        return F.cross_entropy(x, y)

    def compiled():
        torch._dynamo.reset()
        return training_step(torch.compile(step, backend="inductor"))

    return {
        "empty_like+copy_": floor,
        "softmaxce": lambda: training_step(sce.cross_entropy),
        "torch-eager": lambda: training_step(step),
        "torch-compile": compiled,
    }


def fused_contenders(x_np, W_np, t_np):
    import torch

    import softmaxce.torch as sce

    x, W, t = torch.from_numpy(x_np), torch.from_numpy(W_np), torch.from_numpy(t_np)
    N, V = x.shape[0], W.shape[0]

    def gemm3():
        z = torch.empty(N, V)  # (N, V) logits
        G = torch.full((N, V), 1.0 / V)  # (N, V) stands in for dL/dz
        gx, gW = torch.empty_like(x), torch.empty_like(W)

        def run():
            torch.mm(x, W.T, out=z)  # logits = x W^T
            torch.mm(G, W, out=gx)  # grad_x = G W
            torch.mm(G.T, x, out=gW)  # grad_W = G^T x

        return run

    def ours():
        xl, Wl = x.clone().requires_grad_(True), W.clone().requires_grad_(True)
        return backward_step(lambda: sce.linear_cross_entropy(xl, Wl, t), xl, Wl)  # returns (x.grad, W.grad)

    return {"torch.mm x3": gemm3, "softmaxce": ours}


def fused_extra_peak_child(N, D, V) -> None:
    """Runs in a fresh subprocess: prints the extra peak RSS (MiB) of one softmaxce fused call."""
    import torch

    import softmaxce

    torch.set_num_threads(THREADS)
    softmaxce.set_num_threads(THREADS)
    fused_contenders(*fused_problem(8, D, 64))["softmaxce"]()()  # code loads, allocator, BLAS buffers
    run = fused_contenders(*fused_problem(N, D, V))["softmaxce"]()
    _, extra = measure_call(run, outputs=(N * D + V * D) * 4)  # x.grad and W.grad are not working memory
    print(json.dumps({"extra_mib": extra / 2**20}))


def fused_extra_peak(N, D, V) -> float:
    got = run_child(__file__, "--peak-child", f"{N},{D},{V}", what="memory subprocess")
    return float("nan") if got is None else got["extra_mib"]


# ---------------------------------------------------------------------------------------------
# the run


def time_cell(cell, builders, ref, repeat):
    """Times every contender of a cell; returns {name: (ms, max grad err or None)}."""
    results = {}
    for who, build in builders.items():
        fn = build()
        ms = best_time(fn, max(repeat, cell.min_repeat), cell.calls) * 1e3
        g = fn()
        results[who] = (ms, None if g is None else grad_error(g, ref))
        print(f"  {cell.section} {cell.name} {who}: {ms:.3f} ms", file=sys.stderr, flush=True)
        del fn, g
    return results


def run_cell(cell, args, min_scaling_logits):
    """Rows (dicts) for one cell."""
    import softmaxce

    extra = {}
    if cell.section == "fused":
        x, W, t = fused_problem(*cell.shape)
        ref = fused_reference(x, W, t)
        results = time_cell(cell, fused_contenders(x, W, t), ref, args.fused_repeat)
        if args.memory:
            extra["softmaxce"] = fused_extra_peak(*cell.shape)
    else:
        logits, target = problem(cell.shape, cell.dtype)
        ref = reference_grad(logits, target)
        if cell.section == "numpy":
            builders = numpy_contenders(logits, target)
        else:
            builders = torch_contenders(logits, target, bfloat16=cell.dtype == "bfloat16")
        results = time_cell(cell, builders, ref, args.repeat)
    scaling = None
    if (
        cell.section == "numpy"
        and (cell.shape[1] <= 100 or len(cell.shape) > 2)
        and int(np.prod(cell.shape)) >= min_scaling_logits
    ):
        softmaxce.set_num_threads(1)
        fn = numpy_contenders(logits, target)["softmaxce"]()
        scaling = best_time(fn, args.repeat) * 1e3
        softmaxce.set_num_threads(THREADS)
    peers = [results[p][0] for p in PEERS if p in results]
    fastest_peer = min(peers) if peers else None
    floor = results[FLOORS[cell.section]][0]
    entries = [(who, THREADS, ms, err) for who, (ms, err) in results.items()]
    if scaling is not None:
        entries.append(("softmaxce", 1, scaling, None))
    return [
        {
            "section": cell.section,
            "cell": cell.name,
            "dtype": cell.dtype,
            "contender": who,
            "threads": threads,
            "ms": round(ms, 4),
            "x_fastest_peer": round(fastest_peer / ms, 2) if fastest_peer else "",
            "x_floor": round(ms / floor, 2),
            "max_grad_err": "" if err is None else f"{err:.2e}",
            "extra_peak_mib": round(extra[who], 1) if who in extra and threads == THREADS else "",
        }
        for who, threads, ms, err in entries
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes in every section")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many timed calls (default 5)")
    parser.add_argument("--fused-repeat", type=int, default=3, help="the same for the fused section (default 3)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the fused peak-RSS runs")
    parser.add_argument("--csv", default=str(RESULTS))
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        fused_extra_peak_child(*map(int, args.peak_child.split(",")))
        return
    sections = chosen(parser, args.sections, SECTIONS, "sections")

    import softmaxce

    softmaxce.set_num_threads(THREADS)
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        if set(sections) - {"numpy"}:
            parser.error("the torch and fused sections need PyTorch")
    cells = QUICK if args.quick else FULL
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [c for c in FULL + QUICK if c.name in wanted]
        missing = wanted - {c.name for c in cells}
        if missing:
            parser.error(f"unknown cells {sorted(missing)}")
    cells = [c for c in cells if c.section in sections]
    rows = []
    t0 = time.perf_counter()
    for cell in cells:
        rows += run_cell(cell, args, 0 if args.quick else SCALING_MIN_LOGITS)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\n{len(cells)} cells in {time.perf_counter() - t0:.0f} s, {THREADS} threads, {os.cpu_count()} CPUs, "
        f"load average at the end {load}; peer/ms above 1: faster than the fastest peer\n"
    )
    print_table(
        rows,
        f"{'section':7} {'cell':18} {'dtype':8} {'contender':17} {'thr':>3} {'ms':>10} {'peer/ms':>7} "
        f"{'ms/floor':>8} {'max grad err':>12} {'extra MiB':>9}",
        "{section:7} {cell:18} {dtype:8} {contender:17} {threads:>3} {ms:>10.3f} {x_fastest_peer!s:>7} "
        "{x_floor:>8.2f} {max_grad_err:>12} {extra_peak_mib!s:>9}",
    )
    fields = list(rows[0])
    write_csv(rows, args.csv, fields)


if __name__ == "__main__":
    main()
