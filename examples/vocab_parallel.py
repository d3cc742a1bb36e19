"""Vocabulary-parallel LM head: each rank holds 1/k of the classifier weight, the loss is exact.

    torchrun --nproc-per-node 4 examples/vocab_parallel.py            # gloo on CPU, NCCL on GPUs
    torchrun --nproc-per-node 1 examples/vocab_parallel.py            # the same loss, all of W on one rank

Every rank builds only its own rows of W (V, D) (the full W is a fixed function of the row index,
so any k gives the same model), runs forward and backward, and reports its weight memory and its
peak memory. The weight (and its gradient) per rank falls as 1/k; the loss is the same on every
rank and for every k. With --check, rank 0 also builds the full W and compares with
torch.nn.functional.cross_entropy(x @ W.T, y).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from torch import distributed as dist

from softmaxce.torch.distributed import vocab_parallel_linear_cross_entropy

BLOCK = 1024  # W is generated in blocks of rows, each from its own seed


def weight_rows(start: int, stop: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows [start, stop) of the model's W: the same numbers whichever rank (and k) builds them."""
    out = torch.empty(stop - start, dim, dtype=dtype)
    for block in range(start // BLOCK, (stop + BLOCK - 1) // BLOCK):
        g = torch.Generator().manual_seed(1_000_003 + block)
        rows = torch.randn(BLOCK, dim, generator=g, dtype=torch.float32) / dim**0.5
        lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
        out[lo - start : hi - start] = rows[lo - block * BLOCK : hi - block * BLOCK]
    return out


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50_257)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--z-loss", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank on CPU")
    p.add_argument("--check", action="store_true", help="rank 0 compares with the single-process loss")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.set_num_threads(args.threads)
    rank, k = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = getattr(torch, args.dtype)

    # this rank's classes: k nearly equal slices (the head accepts any tiling, uneven included)
    bounds = [args.vocab * r // k for r in range(k + 1)]
    start, stop = bounds[rank], bounds[rank + 1]
    g = torch.Generator().manual_seed(0)  # the same input and target on every rank
    x = torch.randn(args.tokens, args.dim, generator=g).to(device, dtype).requires_grad_()
    y = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(device)

    reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = peak_rss_mib()
    w_shard = weight_rows(start, stop, args.dim, dtype).to(device).requires_grad_()
    t0 = time.perf_counter()
    loss = vocab_parallel_linear_cross_entropy(
        x, w_shard, y, vocab_start=start, label_smoothing=args.label_smoothing, z_loss=args.z_loss
    )
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    w_mib = (w_shard.numel() * w_shard.element_size()) / 2**20
    row = torch.tensor(
        [
            start,
            stop,
            w_mib,
            2 * w_mib,  # the shard and its gradient
            peak_rss_mib() - base,
            torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
            float(loss.detach()),
            seconds,
        ],
        dtype=torch.float64,
        device=device,
    )
    table = [torch.empty_like(row) for _ in range(k)]
    dist.all_gather(table, row)

    if rank == 0:
        full_mib = args.vocab * args.dim * torch.empty(0, dtype=dtype).element_size() / 2**20
        print(f"V={args.vocab} D={args.dim} tokens={args.tokens} {args.dtype} on {k} rank(s), {device.type}")
        print(f"the whole W is {full_mib:.1f} MiB; each rank holds about 1/{k} of it ({full_mib / k:.1f} MiB)")
        gpu = "  peak GPU MiB" if cuda else ""
        print(f"rank  classes            W shard MiB  W+grad MiB  peak RSS growth MiB{gpu}  loss              s")
        for r, t in enumerate(table):
            s, e, wm, wg, rss, gpu_mib, lo, sec = t.tolist()
            extra = f"  {gpu_mib:13.1f}" if cuda else ""
            print(
                f"{r:4d}  [{int(s):6d}, {int(e):6d})  {wm:11.1f}  {wg:10.1f}  {rss:19.1f}{extra}  {lo:.12f}  {sec:.2f}"
            )
        losses = {t[6].item() for t in table}
        print("loss identical on every rank:", len(losses) == 1)
        if args.check:
            import torch.nn.functional as F

            w_full = weight_rows(0, args.vocab, args.dim, torch.float64).to(device)
            ref = F.cross_entropy(x.detach().double() @ w_full.T, y, label_smoothing=args.label_smoothing)
            lse = torch.logsumexp(x.detach().double() @ w_full.T, 1)
            ref = ref + args.z_loss * (lse * lse).mean()  # z-loss: lam * lse^2 per position
            rel = abs(float(loss.detach()) / float(ref) - 1)
            print(f"single-process float64 loss {float(ref):.12f}, relative difference {rel:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
