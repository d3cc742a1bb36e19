"""Vocabulary-parallel head with a sparse target: 1, 2 and 3 gloo processes (uneven shards, one
empty) against the single-process float64 reference on the dense scatter-added target.

As tests/torch/test_distributed.py: each group size is launched once (this file run as a script per
rank, loopback only) and runs every case; each rank writes the normwise relative errors of the loss
and of the gradients (input, its weight and bias shards, the target's values) to a JSON file.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.abspath(__file__)
WORLDS = [1, 2, 3]
SHARDS = {1: [(0, 11)], 2: [(5, 6), (0, 5)], 3: [(4, 0), (4, 7), (0, 4)]}  # (vocab_start, size) by rank


def _cases() -> list[dict]:
    cases = []
    for reduction in ("mean", "sum", "none"):
        for weighted, eps, lam, cap in ((False, 0.0, 0.0, None), (True, 0.15, 0.01, 2.5)):
            name = f"{reduction}-{'weighted' if weighted else 'plain'}-eps{eps}"
            cases.append(dict(name=name, reduction=reduction, weighted=weighted, eps=eps, lam=lam, cap=cap,
                              positions=(7,), chunk=3, dtype="float64"))  # fmt: skip
    base = dict(reduction="mean", weighted=True, eps=0.1, lam=0.0, cap=None, chunk=None, dtype="float64")
    cases += [
        dict(base, name="3d-none", positions=(2, 3), reduction="none"),
        dict(base, name="unbatched", positions=()),
        dict(base, name="all-ignored-sum", positions=(4,), reduction="sum", all_ignored=True),
        dict(base, name="bfloat16", positions=(7,), dtype="bfloat16"),
    ]
    return cases


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    cache: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            out_dir = str(tmp_path_factory.mktemp(f"svp{world}"))
            port = _free_port()
            env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
            cmd = [sys.executable, HERE, "", str(world), str(port), out_dir]
            procs = [
                subprocess.Popen(
                    cmd[:2] + [str(r)] + cmd[3:], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )  # fmt: skip
                for r in range(world)
            ]
            deadline = time.monotonic() + 240.0
            logs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in procs]
            results = []
            for r in range(world):
                path = os.path.join(out_dir, f"{r}.json")
                assert os.path.exists(path), f"rank {r} wrote nothing:\n{logs[r][-3000:]}"
                with open(path) as f:
                    results.append(json.load(f))
            cache[world] = results
        return cache[world]

    return get


@pytest.mark.parametrize("case", [c["name"] for c in _cases()])
@pytest.mark.parametrize("world", WORLDS, ids=lambda k: f"{k}proc")
def test_sparse_matches_single_process(groups, world, case):
    ranks = [res["cases"][case] for res in groups(world)]
    for rank, res in enumerate(ranks):
        for what, err in res["errors"].items():
            assert err <= res["tolerance"], f"rank {rank}: {what} relative error {err:.3g} > {res['tolerance']}"
        assert res["untouched"], f"rank {rank}: an input was modified"
    for rank, res in enumerate(ranks[1:], 1):
        assert res["loss"] == ranks[0]["loss"] or all(map(math.isnan, res["loss"])), f"rank {rank}'s loss differs"


def test_out_of_bounds_index_raises_on_every_rank(groups):
    for res in groups(3):
        assert res["out_of_bounds"] == [
            "TargetOutOfBoundsError",
            "Target 11 is out of bounds. (SparseTarget index at position (1,), entry 0; classes: 11)",
        ]


# ----------------------------------------------------------------------------------------- worker


def _rel(a, b, torch) -> float:
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _run_case(case, rank, world, torch, vp, SparseTarget) -> dict:
    import torch.nn.functional as F

    dtype = getattr(torch, case["dtype"])
    g = torch.Generator().manual_seed(sum(map(ord, case["name"])))  # the same on every rank
    positions, V, D, K = tuple(case["positions"]), 11, 5, 3
    P = math.prod(positions)
    x = torch.randn(*positions, D, generator=g, dtype=torch.float64).to(dtype).double()
    W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype).double()
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype).double()
    cw = torch.rand(V, generator=g, dtype=torch.float64) + 0.25 if case["weighted"] else None
    idx = torch.randint(-1, V, (*positions, K), generator=g)
    flat = idx.view(-1, K)
    flat[0, 0] = flat[0, 1] = 4  # a duplicate (class 4 sits on different ranks for different groups)
    if P >= 3:
        flat[2] = -1  # an all-padding position
    if case.get("all_ignored"):
        flat[:] = -1
    val = (torch.rand(*positions, K, generator=g, dtype=torch.float64) + 0.1).to(dtype).double()
    start, size = SHARDS[world][rank]
    rows = slice(start, start + size)
    grad_out = torch.tensor(1.7, dtype=torch.float64)
    if case["reduction"] == "none":
        grad_out = torch.rand(positions, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5

    # reference: F.cross_entropy on the full logits and the dense target, z_loss explicit, ignored rows 0
    leaves = [t.clone().requires_grad_() for t in (x, W, b, val)]
    z = leaves[0].reshape(P, D) @ leaves[1].T + leaves[2]
    if case["cap"] is not None:
        z = case["cap"] * torch.tanh(z / case["cap"])
    i2, v2 = idx.reshape(P, K), leaves[3].reshape(P, K)
    dense = torch.zeros(P, V, dtype=torch.float64).scatter_add(1, i2.clamp(min=0), v2 * (i2 >= 0))
    per = F.cross_entropy(z, dense, weight=cw, reduction="none", label_smoothing=case["eps"])
    per = per + case["lam"] * torch.logsumexp(z, 1) ** 2
    kept = (i2 >= 0).any(1)
    per = torch.where(kept, per, 0.0)
    ref = {"none": per.reshape(positions), "sum": per.sum(), "mean": per.sum() / kept.sum()}[case["reduction"]]
    ref.backward(grad_out)

    xs = x.to(dtype).requires_grad_()
    ws = W[rows].to(dtype).requires_grad_()
    bs = b[rows].to(dtype).requires_grad_()
    vs = val.to(dtype).requires_grad_()
    before = [t.detach().clone() for t in (xs, ws, bs, vs, idx)]
    loss = vp.vocab_parallel_linear_cross_entropy(
        xs, ws, SparseTarget(idx, vs), vocab_start=start, bias_shard=bs, weight=None if cw is None else cw[rows],
        reduction=case["reduction"], label_smoothing=case["eps"], z_loss=case["lam"], softcap=case["cap"],
        chunk_size=case["chunk"],
    )  # fmt: skip
    loss.backward(grad_out.to(dtype))
    untouched = all(torch.equal(u, v.detach()) for u, v in zip(before, (xs, ws, bs, vs, idx), strict=True))
    errors = {
        "loss": _rel(loss, ref, torch),
        "grad_input": _rel(xs.grad, leaves[0].grad, torch),
        "grad_weight_shard": _rel(ws.grad, leaves[1].grad[rows], torch),
        "grad_bias_shard": _rel(bs.grad, leaves[2].grad[rows], torch),
        "grad_values": _rel(vs.grad, leaves[3].grad, torch),
    }
    tolerance = 1e-10 if dtype == torch.float64 else 3e-2
    return dict(
        errors=errors, tolerance=tolerance, untouched=untouched, loss=loss.detach().double().reshape(-1).tolist()
    )


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from datetime import timedelta

    import torch
    from torch import distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # fmt: skip
    from softmaxce import SparseTarget
    from softmaxce.torch import distributed as vp

    res = dict(cases={c["name"]: _run_case(c, rank, world, torch, vp, SparseTarget) for c in _cases()})
    if world == 3:
        start, size = SHARDS[world][rank]
        x, W = torch.randn(3, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
        try:
            idx = torch.tensor([[0, 1], [11, -1], [3, 3]])
            vp.vocab_parallel_linear_cross_entropy(
                x, W[start : start + size], SparseTarget(idx, torch.ones(3, 2, dtype=torch.float64)), vocab_start=start
            )
            res["out_of_bounds"] = ["ok", ""]
        except Exception as err:  # noqa: BLE001 - checked by the parent
            res["out_of_bounds"] = [type(err).__name__, str(err)]
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
