"""Benchmark one training step of a Hugging Face Llama-shaped model: patched vs unpatched vs torch's head.

A random-init LlamaForCausalLM (hidden 1024, 2 layers, vocabulary 128256, untied head; float32 on
CPU by default), batch 1 x sequence 2048, one step = forward with labels + backward + SGD update:
  - hf:         the unpatched model (HF's forward forms the (1, S, V) float32 logits and their gradient);
  - torch-lce:  the same model with a forward whose loss is torch's
                F.linear_cross_entropy(h, lm_head.weight, t, options=LinearCrossEntropyOptions());
  - softmaxce:  softmaxce.transformers.patch(model).
Time is the median of --reps steps after a warm-up step; peak memory is the peak resident set size of
a fresh worker process during those steps, minus its size before them (weights and the warm-up
already paid), read from /proc/self/status after resetting VmHWM through /proc/self/clear_refs.
Each variant runs in its own process. glibc keeps some freed memory mapped (heap chunks below its
mmap threshold, which grows to 32 MiB as large blocks are freed), so that peak also counts memory
no tensor holds any more, and it varied by about 150 MiB between runs. Each variant therefore runs a
second time, for memory only, with MALLOC_MMAP_THRESHOLD_=131072: every block of 128 KiB or more is
then its own mapping, returned when freed, and the peak is that of the live memory ("live" columns;
the step is measured in the first run, under the default allocator). Prints a table with ratios
against hf and writes benchmarks/results/hf.csv (or --out). Goal: softmaxce's peak is lower than hf's by at least the
float32 logits plus their gradient (2 x S x V x 4 bytes), and its step is no slower.

    python benchmarks/bench_hf.py                  # the full size (minutes on 2 cores)
    python benchmarks/bench_hf.py --seq 512        # a quicker run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from _common import peak_rss_bytes, reset_peak_rss, rss_bytes, write_csv  # benchmarks/_common.py

IMPLS = ["hf", "torch-lce", "softmaxce"]
LIVE_MMAP_THRESHOLD = 128 * 1024  # bytes: glibc maps every block this large or larger on its own


def _run_worker(impl: str, env: dict[str, str], *extra: str) -> dict | None:
    """One variant in a fresh process (with `env` added to the environment): its result row, or None."""
    proc = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], *extra, "--worker", impl],
        capture_output=True,
        text=True,
        env=os.environ | env,
    )
    if proc.returncode != 0:
        print(f"{impl} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_lce_forward(model):
    """A forward for `model` whose loss is torch's chunked F.linear_cross_entropy on the hidden states."""
    import types

    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import CausalLMOutputWithPast

    options = torch.nn.LinearCrossEntropyOptions()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, S, D)
        t = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)  # next-token targets (B * S,)
        loss = F.linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.lm_head.weight, t, options=options)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = types.MethodType(forward, model)
    return model


def worker(impl: str, args: argparse.Namespace) -> dict:
    import torch
    import transformers

    import softmaxce.transformers as sce_hf

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config = transformers.LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=args.vocab,
        max_position_embeddings=args.seq,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(dtype).train()
    if impl == "softmaxce":
        sce_hf.patch(model)
    elif impl == "torch-lce":
        _torch_lce_forward(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    labels = ids.clone()
    labels[:, : args.seq // 8] = -100  # a prompt that is not predicted
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    loss = step()  # warm-up (numba compilation, allocator)
    gc.collect()
    base = rss_bytes() // 1024
    reset_peak_rss()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_bytes() // 1024
    return {
        "impl": impl,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": args.vocab,
        "threads": torch.get_num_threads(),
        "time_s": statistics.median(times),
        "peak_mib": (peak - base) / 1024,
        "rss_peak_mib": peak / 1024,
        "loss": loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2048, help="sequence length")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "hf.csv"))
    ap.add_argument("--worker", metavar="IMPL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    rows = []
    for impl in args.impls.split(","):
        row = _run_worker(impl, {})
        live = _run_worker(impl, {"MALLOC_MMAP_THRESHOLD_": str(LIVE_MMAP_THRESHOLD)}, "--reps", "1")
        if row is not None and live is not None:
            rows.append(row | {"live_peak_mib": live["peak_mib"]})
    hf = next((r for r in rows if r["impl"] == "hf"), None)
    for r in rows:
        r["time_vs_hf"] = r["time_s"] / hf["time_s"] if hf else float("nan")
        r["peak_vs_hf"] = r["peak_mib"] / hf["peak_mib"] if hf and hf["peak_mib"] > 0 else float("nan")
        r["saved_mib"] = hf["peak_mib"] - r["peak_mib"] if hf else float("nan")
        r["live_saved_mib"] = hf["live_peak_mib"] - r["live_peak_mib"] if hf else float("nan")
    logits_mib = args.batch * args.seq * args.vocab * 4 / 2**20  # float32 logits; their gradient is as large
    print(
        f"LlamaForCausalLM hidden={args.hidden} layers={args.layers} vocab={args.vocab} batch={args.batch} "
        f"seq={args.seq} {args.dtype} CPU: one training step (forward + backward + SGD), median of {args.reps}"
    )
    print(f"float32 logits: {logits_mib:.0f} MiB; goal: softmaxce saves >= {2 * logits_mib:.0f} MiB and time <= hf")
    print(
        f"{'impl':<10} {'time s':>8} {'x hf':>6} {'peak MiB':>9} {'x hf':>6} {'saved MiB':>10} "
        f"{'live peak':>10} {'live saved':>11} {'loss':>10}"
    )
    for r in rows:
        print(
            f"{r['impl']:<10} {r['time_s']:8.2f} {r['time_vs_hf']:6.2f} {r['peak_mib']:9.0f} {r['peak_vs_hf']:6.2f} "
            f"{r['saved_mib']:10.0f} {r['live_peak_mib']:10.0f} {r['live_saved_mib']:11.0f} {r['loss']:10.6f}"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "impl",
        "dtype",
        "batch",
        "seq",
        "hidden",
        "layers",
        "vocab",
        "threads",
        "time_s",
        "time_vs_hf",
        "peak_mib",
        "peak_vs_hf",
        "saved_mib",
        "live_peak_mib",
        "live_saved_mib",
        "rss_peak_mib",
        "loss",
    ]
    write_csv(rows, out, fields)


if __name__ == "__main__":
    main()
