"""Cross-entropy on a CUDA GPU: softmaxce's Triton kernels vs the peers, same run; the fused linear
head, and cross-entropy on given logits.

    python benchmarks/bench_gpu.py                 # Gemma-2 2B and Llama-3 8B head shapes, bfloat16
    python benchmarks/bench_gpu.py --quick         # a small shape, for a smoke run
    python benchmarks/bench_gpu.py --shapes llama3 --repeat 20
    python benchmarks/bench_gpu.py --part logits   # only cross-entropy on given (N, V) logits

Shapes (tokens N, hidden D, vocabulary V, bfloat16): gemma2 = 8192 x 2304 x 256000 with logit
soft-capping 30 (as Gemma 2), llama3 = 8192 x 4096 x 128256. Every contender computes the mean
cross-entropy of x @ W.T and its gradients with respect to x and W (forward + backward):

    softmaxce_triton   softmaxce.torch._triton.linear_cross_entropy_rows (the kernels, loss + grads)
    softmaxce_torch    softmaxce.torch.linear_cross_entropy (the chunked torch path) + backward
    torch_eager        F.cross_entropy(x @ W.T, y) + backward (materializes the N x V logits)
    torch_compile      the same under torch.compile
    torch_chunked      torch's F.linear_cross_entropy (PyTorch >= 2.13)
    liger              Liger-Kernel's fused linear cross-entropy      (optional: skipped if missing)
    cce                Cut Cross-Entropy, default filter_eps ("auto")  (optional: skipped if missing)
    cce_exact          Cut Cross-Entropy, filter_eps=None (exact gradient)

Logits (--part logits; the same shapes' N x V logits, bfloat16, as a language model's loss takes them):

    softmaxce_triton   softmaxce.torch._triton.cross_entropy_rows (the kernel: loss + gradient)
    softmaxce_torch    softmaxce.torch.cross_entropy + backward (autograd; Triton for CUDA tensors)
    torch_eager        F.cross_entropy(logits.float(), y) + backward (as Hugging Face models call it)
    torch_compile      the same under torch.compile
    copy_floor         torch.empty_like(logits).copy_(logits): one read and one write of the logits

Time: median of --repeat CUDA-event-timed runs after --warmup runs. Memory: peak allocated during
one run minus what was allocated before it (inputs) and minus the gradients' own size (x and W),
i.e. the extra memory the contender needs. A contender that fails or runs out of memory is reported
as such. Prints a table with ratios to softmaxce_triton and writes benchmarks/results/gpu.csv.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from _common import write_csv  # benchmarks/_common.py (this folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {
    "gemma2": {"N": 8192, "D": 2304, "V": 256000, "softcap": 30.0},
    "llama3": {"N": 8192, "D": 4096, "V": 128256, "softcap": None},
    "quick": {"N": 1024, "D": 512, "V": 32000, "softcap": None},
}
CONTENDERS = (
    "softmaxce_triton",
    "softmaxce_torch",
    "torch_eager",
    "torch_compile",
    "torch_chunked",
    "liger",
    "cce",
    "cce_exact",
)


def _capped(z, softcap):
    import torch

    return z if softcap is None else softcap * torch.tanh(z / softcap)


def _make_contender(name: str, softcap: float | None):
    """A function (x, W, y) -> None that runs forward and backward, or None when unavailable."""
    import torch
    import torch.nn.functional as F

    if name == "softmaxce_triton":
        from softmaxce import CEOptions
        from softmaxce.torch import _triton

        opts = CEOptions(softcap=softcap)

        def run(x, W, y):
            _triton.linear_cross_entropy_rows(x, W, y, None, None, opts, (True, True, False))

        return run
    if name == "softmaxce_torch":
        import softmaxce.torch as st

        def run(x, W, y):
            st.linear_cross_entropy(x, W, y, softcap=softcap).backward()

        return run
    if name in ("torch_eager", "torch_compile"):

        def loss(x, W, y):
            return F.cross_entropy(_capped(x @ W.T, softcap).float(), y)

        fn = torch.compile(loss) if name == "torch_compile" else loss

        def run(x, W, y):
            fn(x, W, y).backward()

        return run
    if name == "torch_chunked":
        if not hasattr(F, "linear_cross_entropy") or softcap is not None:
            return None  # no soft-capping in torch's chunked head

        def run(x, W, y):
            F.linear_cross_entropy(x, W, y).backward()

        return run
    if name == "liger":
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError:
            return None

        def run(x, W, y):
            out = liger_fused_linear_cross_entropy(x, W, y, softcap=softcap)
            (out[0] if isinstance(out, tuple) else out).backward()

        return run
    if name in ("cce", "cce_exact"):
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError:
            return None
        extra = {"filter_eps": None} if name == "cce_exact" else {}

        def run(x, W, y):
            linear_cross_entropy(x, W, y, softcap=softcap, **extra).backward()

        return run
    raise ValueError(f"unknown contender {name!r}")


LOGIT_CONTENDERS = ("softmaxce_triton", "softmaxce_torch", "torch_eager", "torch_compile", "copy_floor")


def _make_logits_contender(name: str, softcap: float | None):
    """A function (z, y) -> None that computes the loss and dL/dz of given logits z (N, V)."""
    import torch
    import torch.nn.functional as F

    if name == "softmaxce_triton":
        from softmaxce import CEOptions
        from softmaxce.torch import _triton

        opts = CEOptions(softcap=softcap)

        def run(z, y):
            _triton.cross_entropy_rows(z, y, None, opts, True)

        return run
    if name == "softmaxce_torch":
        import softmaxce.torch as st

        def run(z, y):
            st.cross_entropy(z, y, softcap=softcap).backward()

        return run
    if name in ("torch_eager", "torch_compile"):

        def loss(z, y):
            return F.cross_entropy(_capped(z.float(), softcap), y)

        fn = torch.compile(loss) if name == "torch_compile" else loss

        def run(z, y):
            fn(z, y).backward()

        return run
    if name == "copy_floor":

        def run(z, y):
            torch.empty_like(z).copy_(z)

        return run
    raise ValueError(f"unknown contender {name!r}")


def _measure(run, N, D, V, dtype, warmup: int, repeat: int) -> dict:
    """A fused-head contender: x (N, D), W (V, D) leaves, gradients of both."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N, D, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    W = (torch.randn(V, D, device="cuda", dtype=dtype, generator=gen) / D**0.5).requires_grad_()
    y = torch.randint(0, V, (N,), device="cuda", generator=gen)
    return _timed(lambda: run(x, W, y), (x, W), (N * D + V * D) * x.element_size(), warmup, repeat)


def _measure_logits(run, N, V, dtype, warmup: int, repeat: int) -> dict:
    """A logits contender: z (N, V) leaf (random logits of scale 4), the gradient dL/dz."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    z = (4.0 * torch.randn(N, V, device="cuda", generator=gen)).to(dtype).requires_grad_()
    y = torch.randint(0, V, (N,), device="cuda", generator=gen)
    return _timed(lambda: run(z, y), (z,), N * V * z.element_size(), warmup, repeat)


def _timed(call, leaves, grads: int, warmup: int, repeat: int) -> dict:
    """Median CUDA-event time of call() and its peak memory beyond what was allocated before it and
    the leaves' gradients (`grads` bytes)."""
    import torch

    def clear():
        for leaf in leaves:
            leaf.grad = None

    for _ in range(warmup):
        clear()
        call()
    clear()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - grads
    times = []
    for _ in range(repeat):
        clear()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {"time_s": statistics.median(times), "extra_peak_mb": max(extra, 0) / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["gemma2", "llama3"])
    parser.add_argument("--quick", action="store_true", help="only the small 'quick' shape")
    parser.add_argument("--part", choices=["head", "logits", "both"], default="both")
    parser.add_argument("--contenders", nargs="+", choices=sorted(set(CONTENDERS + LOGIT_CONTENDERS)))
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--csv", type=Path, default=RESULTS / "gpu.csv")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_gpu.py needs PyTorch with CUDA: pip install 'softmaxce[torch,gpu]'", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device; none is available here (torch.cuda.is_available() is False).",
              file=sys.stderr)  # fmt: skip
        return 2
    dtype = getattr(torch, args.dtype)
    shapes = ["quick"] if args.quick else args.shapes
    rows = []
    parts = ["head", "logits"] if args.part == "both" else [args.part]
    for part, shape in ((p, s) for p in parts for s in shapes):
        N, D, V, softcap = (SHAPES[shape][k] for k in ("N", "D", "V", "softcap"))
        names = CONTENDERS if part == "head" else LOGIT_CONTENDERS
        results = {}
        for name in (n for n in names if args.contenders is None or n in args.contenders):
            if part == "head":
                run = _make_contender(name, softcap)
            else:
                run = _make_logits_contender(name, softcap)
            if run is None:
                print(f"{part} {shape}: {name} skipped (not installed or no softcap support)")
                continue
            try:
                if part == "head":
                    results[name] = _measure(run, N, D, V, dtype, args.warmup, args.repeat)
                else:
                    results[name] = _measure_logits(run, N, V, dtype, args.warmup, args.repeat)
            except torch.cuda.OutOfMemoryError:
                results[name] = {"time_s": float("nan"), "extra_peak_mb": float("nan"), "note": "out of memory"}
            except Exception as exc:  # a peer's failure is a result, not a crash of the benchmark
                results[name] = {"time_s": float("nan"), "extra_peak_mb": float("nan"), "note": repr(exc)[:80]}
            finally:
                torch.cuda.empty_cache()
        ours = results.get("softmaxce_triton", {}).get("time_s", float("nan"))
        dims = f"N={N} D={D} V={V}" if part == "head" else f"logits N={N} V={V}"
        print(f"\n{part} {shape}: {dims} {args.dtype} softcap={softcap}", flush=True)
        print(f"{'contender':<18}{'time ms':>10}{'vs ours':>9}{'extra MiB':>11}  note")
        for name, r in results.items():
            ratio = r["time_s"] / ours if ours == ours else float("nan")
            print(f"{name:<18}{r['time_s'] * 1e3:>10.2f}{ratio:>9.2f}{r['extra_peak_mb']:>11.0f}  {r.get('note', '')}")
            rows.append({"part": part, "shape": shape, "N": N, "D": D if part == "head" else "", "V": V,
                         "dtype": args.dtype, "softcap": softcap, "contender": name,
                         "time_s": round(r["time_s"], 6), "vs_softmaxce_triton": round(ratio, 3),
                         "extra_peak_mb": round(r["extra_peak_mb"], 1), "note": r.get("note", "")})  # fmt: skip
    if rows:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
