"""Benchmark the 16-bit kernels (`softmaxce._half`) against PyTorch: loss + gradient, class-index targets.

For bfloat16 (65536, 1000) and (4096, 32768) and float16 (65536, 1000) logits, reduction "mean":
  - softmaxce-half: `_half.index_rows_half` on `tensor.view(torch.uint16).numpy()` views (the gradient
    written as a new 16-bit tensor in `_half.empty_bits` memory, the loss reduced), as the torch op
    layer would call it; half-empty_like: the same with the gradient from torch.empty_like (the cost
    of first-touch page faults on 4 KiB pages);
  - softmaxce-torch: `softmaxce.torch.cross_entropy` forward + backward today (the chunked torch path);
  - torch-eager: F.cross_entropy forward + backward in the 16-bit dtype;
  - torch-compile: the same under torch.compile (compiled once, outside the timing);
  - copy: one `copy_` of the logits into another tensor (the memory floor: read + write N x C).
The implementations are timed in one process, round-robin (one call of each per round, --repeat
rounds, best of the rounds), so that their ratios are taken under the same machine load; --threads
(default 2) for torch and numba. Each implementation's loss and gradient are also compared with
F.cross_entropy in float64 on the same logits. Prints the errors and a table of times with ratios
against softmaxce-half, and writes benchmarks/results/half.csv.

    python benchmarks/bench_half.py
    python benchmarks/bench_half.py --quick   # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from _common import write_csv  # benchmarks/_common.py (this folder is on sys.path)

CASES = [("bfloat16", 65536, 1000), ("bfloat16", 4096, 32768), ("float16", 65536, 1000)]
QUICK = [("bfloat16", 512, 1000), ("float16", 64, 8192)]
IMPLS = ["softmaxce-half", "half-empty_like", "softmaxce-torch", "torch-eager", "torch-compile", "copy"]


def half_step(z, y_np, kind, huge_pages=True):
    """softmaxce-half: loss ("mean") and the gradient tensor, through uint16 views (no float32 copy); the
    gradient in `_half.empty_bits` memory (huge pages), or in torch.empty_like (4 KiB pages)."""
    import torch

    from softmaxce import _half, _threads

    P, C = z.shape
    grad = torch.from_numpy(_half.empty_bits((P, C))).view(z.dtype) if huge_pages else torch.empty_like(z)
    loss, lse = np.empty(P), np.empty(P)
    coef = np.full(P, 1.0 / P)  # "mean" without ignored rows: dJ/dl_n = 1 / P
    parallel = _threads.parallel_allowed()
    with _threads.kernel_region(parallel):
        _half.index_rows_half(
            parallel,
            kind,
            z.view(torch.uint16).numpy(),
            y_np,
            np.empty(0),
            0.0,
            0.0,
            0.0,
            -100,
            coef,
            grad.view(torch.uint16).numpy(),
            loss,
            lse,
            np.empty(0, np.int64),
            np.empty(0),
        )
    return torch.tensor(loss.sum() / P, dtype=z.dtype), grad


def run_case(kind: str, P: int, C: int, repeat: int, impls: list[str]) -> list[dict]:
    import torch
    import torch.nn.functional as F

    import softmaxce.torch as sce

    dtype = getattr(torch, kind)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(P, C, generator=gen)).to(dtype)
    y = torch.randint(0, C, (P,), generator=gen)
    y_np = y.numpy()
    compiled = torch.compile(lambda z, t: F.cross_entropy(z, t))
    out = torch.empty_like(logits)

    def autograd(fn):
        def step():
            z = logits.detach().requires_grad_()
            loss = fn(z, y)
            loss.backward()
            return loss.detach(), z.grad

        return step

    steps = {
        "softmaxce-half": lambda: half_step(logits, y_np, kind),
        "half-empty_like": lambda: half_step(logits, y_np, kind, huge_pages=False),
        "softmaxce-torch": autograd(sce.cross_entropy),
        "torch-eager": autograd(F.cross_entropy),
        "torch-compile": autograd(compiled),
        "copy": lambda: (None, out.copy_(logits)),
    }
    steps = {k: v for k, v in steps.items() if k in impls}
    # warm-up (numba compile / cache load, torch.compile), and each one's error against float64
    z64 = logits.double().requires_grad_()
    ref_loss = F.cross_entropy(z64, y)
    ref_loss.backward()
    ref_grad, ref_loss = z64.grad, float(ref_loss)
    errors = {}
    for name, step in steps.items():
        loss, grad = step()
        if loss is not None:
            errors[name] = (
                abs(float(loss) - ref_loss),
                float((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()),
            )
    del z64, ref_grad
    times = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(ts) * 1e3 for name, ts in times.items()}
    ours = best.get("softmaxce-half")
    return [
        dict(
            dtype=kind,
            N=P,
            C=C,
            impl=name,
            threads=torch.get_num_threads(),
            best_ms=round(ms, 3),
            vs_softmaxce_half=round(ms / ours, 3) if ours else "",
            loss_abs_err=f"{errors[name][0]:.2e}" if name in errors else "",
            grad_max_err_rel=f"{errors[name][1]:.2e}" if name in errors else "",
        )
        for name, ms in best.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/half.csv)")
    args = parser.parse_args()

    import torch

    import softmaxce

    torch.set_num_threads(args.threads)
    softmaxce.set_num_threads(args.threads)
    impls = args.impls.split(",")
    rows = []
    for kind, P, C in QUICK if args.quick else CASES:
        rows += run_case(kind, P, C, args.repeat, impls)
    print("\nerrors against float64 (loss: absolute; gradient: max |error| / max |gradient|)")
    for r in rows:
        if r["loss_abs_err"]:
            case = f"{r['dtype']:9} {r['N']:>6} {r['C']:>6}  {r['impl']:16}"
            print(f"{case} {r['loss_abs_err']:>9} {r['grad_max_err_rel']:>9}")
    head = f"{args.threads} threads, best of {args.repeat} (ms; ratio: x softmaxce-half)"
    print(f"\nloss + gradient, reduction mean, {head}")
    print(f"{'dtype':9} {'N':>6} {'C':>6}  " + "  ".join(f"{name:>19}" for name in impls))
    for kind, P, C in QUICK if args.quick else CASES:
        cells = {r["impl"]: r for r in rows if (r["dtype"], r["N"], r["C"]) == (kind, P, C)}
        line = "  ".join(f"{cells[n]['best_ms']:>9.1f} ({cells[n]['vs_softmaxce_half']:>5.2f}x)" for n in impls)
        print(f"{kind:9} {P:>6} {C:>6}  {line}")
    default = "results/half_quick.csv" if args.quick else "results/half.csv"
    write_csv(rows, args.out or pathlib.Path(__file__).parent / default)


if __name__ == "__main__":
    main()
