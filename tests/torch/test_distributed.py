"""Vocabulary-parallel head: 1, 2, 3 (uneven) and 4 gloo processes on CPU against one process.

One test per (option combination, group size), selectable with -k (`-k "2proc and prob"`). Each
group size is launched once per session (this file run as a script per rank, loopback only), on the
first test that needs it, and runs in one go every case that the selected tests need (`_plan`).
Every rank computes the single-process float64 reference
(torch.nn.functional.cross_entropy on the full x @ W.T + b, plus the explicit z_loss / softcap
formula), runs the sharded head on its slice, and writes the normwise relative error of the loss
and of every gradient to a JSON file that the test reads back.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest

HERE = os.path.abspath(__file__)
TOL = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2}
WORLDS = [1, 2, 3, 4]
FAULTS_WORLD, DEAD_WORLD = 3, 2  # the group that runs the input-fault scenarios, the one whose rank 1 dies


# ----------------------------------------------------------------------------------------- cases


def _cases() -> list[dict]:
    """The option combinations (each a test id), every one run on every group size."""
    cases = []
    i = 0
    for dtype in ("float64", "float32"):
        for kind in ("index", "ignore", "prob"):
            for reduction in ("mean", "sum", "none"):
                for weighted in (False, True):
                    for eps in (0.0, 0.15):
                        i += 1
                        cases.append(
                            dict(
                                name=f"{dtype}-{kind}-{reduction}-{'weighted' if weighted else 'unweighted'}-eps{eps}",
                                dtype=dtype,
                                kind=kind,
                                reduction=reduction,
                                weighted=weighted,
                                eps=eps,
                                bias=i % 2 == 0,
                                lam=0.01 if i % 3 == 0 else 0.0,
                                cap=2.5 if i % 4 == 1 else None,
                                chunk=(None, 3, 1)[i % 3],
                                positions=((7,), (2, 3), (), (5,))[i % 4]
                                if kind != "ignore"
                                else ((7,), (2, 3))[i % 2],
                                ignore_index=2 if (kind == "ignore" and i % 2) else -100,
                                V=(11, 13)[i % 2],
                                style=i % 2,
                                stats=i % 3 == 1,
                                seed=i,
                            )
                        )
    base = dict(dtype="float64", kind="index", reduction="mean", weighted=False, eps=0.0, bias=True, lam=0.0, cap=None,
                chunk=None, positions=(6,), ignore_index=-100, V=11, style=1, stats=True)  # fmt: skip
    cases += [
        dict(base, name="all-options", weighted=True, eps=0.2, lam=0.05, cap=4.0, kind="ignore", chunk=2, seed=101),
        dict(base, name="all-options-prob", weighted=True, eps=0.2, lam=0.05, cap=4.0, kind="prob", seed=102),
        dict(base, name="extreme-logits", scale=1000.0, seed=103),
        dict(base, name="extreme-logits-f32-sum", dtype="float32", reduction="sum", scale=1000.0, naive=True, seed=104),
        dict(base, name="empty-batch-mean", positions=(0,), seed=105),
        dict(base, name="empty-batch-sum", positions=(0,), reduction="sum", seed=106),
        dict(base, name="empty-batch-none", positions=(0,), reduction="none", seed=107),
        dict(base, name="all-ignored-mean", kind="all-ignored", seed=108),
        dict(base, name="all-ignored-sum", kind="all-ignored", reduction="sum", seed=109),
        dict(base, name="ties-across-shards", tie=True, seed=110),
        dict(base, name="bfloat16", dtype="bfloat16", weighted=True, eps=0.1, seed=111),
        dict(base, name="3d-none-stats", positions=(2, 2, 3), reduction="none", kind="ignore", eps=0.1, seed=112),
        dict(base, name="big-chunk-none", positions=(9,), reduction="none", chunk=100, seed=113),
    ]
    return cases


MICRO_BATCHES = "micro-batches-normalizer"


# ----------------------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, plan: dict, out_dir: str, timeout: float = 240.0) -> list[dict]:
    """Starts `world` ranks running `plan` (case names, faults, dead); returns each rank's results."""
    port = _free_port()
    plan_path = os.path.join(out_dir, "plan.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, HERE, str(r), str(world), str(port), out_dir, plan_path],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"group of {world} did not finish in {timeout} s")
    results = []
    for r, p in enumerate(procs):
        path = os.path.join(out_dir, f"{world}-{r}.json")
        assert os.path.exists(path), f"rank {r} wrote nothing (exit {p.returncode}):\n{logs[r][-3000:]}"
        with open(path) as f:
            results.append(json.load(f))
    return results


def _plan(session, world: int) -> dict:
    """What the selected tests (after -k) need from the group of `world`: one launch runs all of it."""
    plan = dict(cases=[], faults=False, dead=False)
    for item in session.items:
        if os.path.abspath(item.path) != HERE:
            continue
        name = getattr(item, "originalname", "")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if name == "test_matches_single_process" and params["world"] == world:
            plan["cases"].append(params["case"])
        plan["faults"] |= name == "test_input_faults_are_reported_on_every_rank" and world == FAULTS_WORLD
        plan["dead"] |= name == "test_a_stalled_or_dead_rank_fails_the_others" and world == DEAD_WORLD
    return plan


@pytest.fixture(scope="module")
def groups(request, tmp_path_factory):
    """world -> each rank's results; a group is launched once, on first use, for all selected tests."""
    cache: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = _launch(world, _plan(request.session, world), str(tmp_path_factory.mktemp(f"vp{world}")))
        return cache[world]

    return get


@pytest.mark.parametrize("case", [c["name"] for c in _cases()] + [MICRO_BATCHES])
@pytest.mark.parametrize("world", WORLDS, ids=lambda k: f"{k}proc")
def test_matches_single_process(groups, world, case):
    ranks = [{c["name"]: c for c in res["cases"]}[case] for res in groups(world)]
    for rank, res in enumerate(ranks):
        for what, err in res["errors"].items():
            tol = res.get("tolerance", {}).get(what, TOL[res["dtype"]])
            assert err <= tol, f"rank {rank}: {what} relative error {err:.3g} > {tol}"
        for what in res["exact"]:
            assert what["ok"], f"rank {rank}: {what['what']}"
    for rank, res in enumerate(ranks[1:], 1):  # the loss (and statistics) are bit-for-bit the same on every rank
        assert _same(res["loss"], ranks[0]["loss"]), f"losses differ between rank 0 and rank {rank}"


def test_input_faults_are_reported_on_every_rank(groups):
    faults = [res["faults"] for res in groups(FAULTS_WORLD)]
    by_name = {name: [f[name] for f in faults] for name in faults[0]}
    expected = {"overlap": "[0, 11) exactly (an overlap at [6, 7))", "gap": "[0, 10) exactly (a gap [7, 8))",
                "duplicate": "[0, 12) exactly (an overlap at [0, 4))"}  # fmt: skip
    for name, text in expected.items():
        for kind, msg in by_name[name]:
            assert kind == "ShardLayoutError" and f"do not tile {text}" in msg, (name, kind, msg)
    for kind, msg in by_name["disagree"]:
        assert kind == "ShardLayoutError" and "disagree on reduction: ['mean', 'sum', 'mean']" in msg
    for kind, msg in by_name["disagree_shape"]:
        assert kind == "ShardLayoutError" and "disagree on number of positions" in msg
    (k0, m0), *others = by_name["bad_class_weight"]
    assert k0 == "WeightShapeError" and "shape [4], one per row of weight_shard, but got: [5]" in m0, (k0, m0)
    for kind, msg in others:
        assert kind == "ShardLayoutError" and "rank(s) [0]" in msg, (kind, msg)
    for kind, msg in by_name["out_of_bounds"]:
        assert (kind, msg) == ("TargetOutOfBoundsError", "Target 11 is out of bounds.")
    for kind, msg in by_name["bad_option"]:
        assert kind == "OptionError" and "label_smoothing must be between 0.0 and 1.0. Got: 1.5" in msg
    for kind, msg in by_name["unknown_keyword"]:
        expected = "vocab_parallel_linear_cross_entropy() got an unexpected keyword argument 'label_smothing'"
        assert (kind, msg) == ("TypeError", expected)
    for kind, msg in by_name["normalizer_with_sum"]:
        assert kind == "ValueError" and "normalizer" in msg
    for kind, msg in by_name["uint16_input"]:  # PyTorch's name for the dtype, as F.cross_entropy prints it
        assert kind == "LogitsDtypeError" and msg.endswith("dtype UInt16"), (kind, msg)
    for kind, msg in by_name["uint16_target"]:
        assert kind == "ok", msg
    for kind, msg in by_name["after_faults"]:  # the group still works after all of the above
        assert kind == "ok", msg


@pytest.mark.parametrize("fault", ["stalled", "dead"])
def test_a_stalled_or_dead_rank_fails_the_others(groups, fault):
    # the last phase of the 2-process group: rank 1 first sleeps past a 5 s subgroup timeout, then
    # exits without a word; each time rank 0 calls the head on that subgroup and must get an error
    res = groups(DEAD_WORLD)[0]["faults"][fault]
    assert res["raised"], f"rank 0 returned a result although rank 1 was {fault}"
    assert "RuntimeError" in res["mro"], res
    assert res["elapsed"] < res["timeout"] + 10.0, res
    assert any("vocab_parallel_linear_cross_entropy: the layout all-gather failed" in n for n in res["notes"]), res


def _same(a, b) -> bool:
    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------- worker


def _shards(V: int, k: int, style: int, seed: int):
    """Blocks of [0, V) (uneven, possibly empty for style 1) and the block each rank holds."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if style == 0 or k == 1:
        sizes = [len(c) for c in torch.arange(V).tensor_split(k)]
        perm = list(range(k))
    else:
        cuts = sorted(torch.randint(0, V + 1, (k - 1,), generator=g).tolist())
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, V], strict=True)]
        perm = torch.randperm(k, generator=g).tolist()
    starts = [sum(sizes[:i]) for i in range(k)]
    return [(starts[perm[r]], sizes[perm[r]]) for r in range(k)]


def _positions(kind: str, i: int) -> tuple[int, ...]:
    if kind == "ignore":  # position 1 of every 3 is ignored: keep at least one that is not
        return ((7,), (2, 3))[i % 2]
    return ((7,), (2, 3), (), (5,))[i % 4]  # () is a 1-D input (D,): one position


def _data(case: dict, torch):
    g = torch.Generator().manual_seed(1000 + case["seed"])
    positions, V, D = tuple(case["positions"]), case["V"], 5
    x = torch.randn(*positions, D, generator=g, dtype=torch.float64)
    W = torch.randn(V, D, generator=g, dtype=torch.float64)
    if "scale" in case:  # logits of size ~ +-1000: exact, as in PyTorch
        W = W * case["scale"]
    if case.get("tie"):  # classes 1 and V-2 (on different shards) share the largest logit
        x = x.abs() + 0.5
        W[1] = W[V - 2] = 3.0
    b = torch.randn(V, generator=g, dtype=torch.float64) if case["bias"] else None
    cw = torch.rand(V, generator=g, dtype=torch.float64) + 0.25 if case["weighted"] else None
    if case["kind"] == "prob":
        target = torch.softmax(torch.randn(*positions, V, generator=g, dtype=torch.float64), -1)
    else:
        target = torch.randint(0, V, positions, generator=g)
        flat = target.view(-1)
        if case["kind"] == "ignore":
            flat[1::3] = case["ignore_index"]
        if case["kind"] == "all-ignored":
            flat[:] = case["ignore_index"]
    return x, W, b, cw, target


def _reference(x, W, b, cw, target, case, torch):
    """float64 single process: F.cross_entropy on the full logits, plus the explicit z_loss/softcap formula."""
    import torch.nn.functional as F

    positions, D, V = tuple(x.shape[:-1]), x.shape[-1], W.shape[0]
    P = math.prod(positions)
    prob = case["kind"] == "prob"
    z = x.reshape(P, D) @ W.T + (b if b is not None else 0.0)
    if case["cap"] is not None:
        z = case["cap"] * torch.tanh(z / case["cap"])  # softcap replaces the logits
    t = target.reshape(P, V) if prob else target.reshape(P)
    ii, eps, lam = case["ignore_index"], case["eps"], case["lam"]
    ce = F.cross_entropy(z, t, weight=cw, ignore_index=ii, reduction="none", label_smoothing=eps)
    lse = torch.logsumexp(z, 1)
    if prob:
        wy = torch.ones(P, dtype=z.dtype)
    else:
        valid = t != ii
        wy = torch.where(valid, cw[t.clamp(0, V - 1)] if cw is not None else 1.0, 0.0).to(z.dtype)
    rows = ce + lam * wy * lse * lse  # z-loss weighted like the position's CE term
    if case["reduction"] == "none":
        loss = rows.reshape(positions)
    elif case["reduction"] == "sum":
        loss = rows.sum()
    else:
        loss = rows.sum() / (wy.sum() if not prob else float(P))
    formula_error = None
    if lam == 0.0 and P > 0:
        # PyTorch's own reduction where it exists (it also defines the gradient of an all-ignored "mean": 0);
        # the explicit formula above must agree with it
        direct = F.cross_entropy(z, t, weight=cw, ignore_index=ii, reduction=case["reduction"], label_smoothing=eps)
        direct = direct.reshape(positions) if case["reduction"] == "none" else direct
        formula_error = _rel(loss, direct, torch)
        loss = direct
    stats = (lse, z.argmax(1), -(torch.softmax(z, 1) * torch.log_softmax(z, 1)).sum(1))
    return loss, formula_error, stats


def _rel(a, b, torch) -> float:
    """Normwise relative error ||a - b||_inf / ||b||_inf; NaNs must sit at the same places."""
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    if a.shape != b.shape:
        return math.inf
    nan = torch.isnan(b)
    if not torch.equal(torch.isnan(a), nan):
        return math.inf
    a, b = a[~nan], b[~nan]
    if a.numel() == 0:
        return 0.0
    inf = torch.isinf(b)
    if not torch.equal(a[inf], b[inf]):
        return math.inf
    a, b = a[~inf], b[~inf]
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _run_case(case, rank, world, torch, vp) -> dict:
    dtype = getattr(torch, case["dtype"])
    x, W, b, cw, target = _data(case, torch)
    x, W = x.to(dtype).double(), W.to(dtype).double()  # the reference sees what the ranks see
    b = None if b is None else b.to(dtype).double()
    prob = case["kind"] == "prob"
    if prob:
        target = target.to(dtype).double()
    start, size = _shards(case["V"], world, case["style"], case["seed"])[rank]
    rows = slice(start, start + size)
    positions = tuple(x.shape[:-1])
    grad_out = torch.randn(positions, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    if case["reduction"] != "none":
        grad_out = torch.tensor(1.7, dtype=torch.float64)

    leaves = [x.clone().requires_grad_(), W.clone().requires_grad_()]
    leaves.append(None if b is None else b.clone().requires_grad_())
    leaves.append(target.clone().requires_grad_() if prob else target)
    rloss, formula_error, (rlse, rarg, rent) = _reference(*leaves[:3], cw, leaves[3], case, torch)
    rloss.backward(grad_out)

    xs = x.to(dtype).requires_grad_()
    ws = W[rows].to(dtype).requires_grad_()
    bs = None if b is None else b[rows].to(dtype).requires_grad_()
    ts = target[..., rows].to(dtype).requires_grad_() if prob else target.clone()
    cws = None if cw is None else cw[rows].clone()
    before = [t.detach().clone() for t in (xs, ws, bs, ts, cws) if t is not None]
    fn = vp.vocab_parallel_linear_cross_entropy_with_stats if case["stats"] else vp.vocab_parallel_linear_cross_entropy
    out = fn(xs, ws, ts, vocab_start=start, bias_shard=bs, weight=cws, ignore_index=case["ignore_index"],
             reduction=case["reduction"], label_smoothing=case["eps"], z_loss=case["lam"], softcap=case["cap"],
             chunk_size=case["chunk"])  # fmt: skip
    loss = out.loss if case["stats"] else out
    loss.backward(grad_out.to(dtype))
    after = [t.detach() for t in (xs, ws, bs, ts, cws) if t is not None]

    errors = {"loss": _rel(loss, rloss, torch), "grad_input": _rel(xs.grad, leaves[0].grad, torch)}
    errors["grad_weight_shard"] = _rel(ws.grad, leaves[1].grad[rows], torch)
    if bs is not None:
        errors["grad_bias_shard"] = _rel(bs.grad, leaves[2].grad[rows], torch)
    if prob:
        errors["grad_target_shard"] = _rel(ts.grad, leaves[3].grad[..., rows], torch)
    if formula_error is not None:
        errors["reference_formula_vs_F.cross_entropy"] = formula_error
    tolerance = {}
    if case.get("naive"):  # "no worse than single-process torch in the same dtype, plus a small tolerance"
        nl = [t.detach().to(dtype).requires_grad_() if t is not None and t.is_floating_point() else t for t in leaves]
        ncw = None if cw is None else cw.to(dtype)
        nloss, _, nstats = _reference(nl[0], nl[1], nl[2], ncw, nl[3], case, torch)
        nloss.backward(grad_out.to(dtype))
        naive = {"loss": _rel(nloss, rloss, torch), "grad_input": _rel(nl[0].grad, leaves[0].grad, torch)}
        naive["grad_weight_shard"] = _rel(nl[1].grad[rows], leaves[1].grad[rows], torch)
        if bs is not None:
            naive["grad_bias_shard"] = _rel(nl[2].grad[rows], leaves[2].grad[rows], torch)
        naive["entropy"] = _rel(nstats[2], rent, torch)
        tolerance = {key: TOL[case["dtype"]] + 2.0 * err for key, err in naive.items()}
    exact = [
        dict(what="loss dtype is the input dtype", ok=loss.dtype == dtype),
        dict(what="inputs not mutated", ok=all(torch.equal(u, v) for u, v in zip(before, after, strict=True))),
    ]
    lossval = loss.detach().double().reshape(-1).tolist()
    if case["stats"]:
        errors["lse"] = _rel(out.lse, rlse.reshape(positions), torch)
        errors["entropy"] = _rel(out.entropy, rent.reshape(positions), torch)
        exact.append(dict(what="predicted == argmax", ok=torch.equal(out.predicted, rarg.reshape(positions))))
        lossval += out.lse.double().reshape(-1).tolist() + out.predicted.double().reshape(-1).tolist()
    return dict(name=case["name"], dtype=case["dtype"], errors=errors, exact=exact, loss=lossval, tolerance=tolerance)


def _micro_batches(rank, world, torch, vp) -> dict:
    """Gradient accumulation with a global normalizer equals one large batch ("mean")."""
    case = dict(dtype="float64", kind="ignore", reduction="mean", weighted=True, eps=0.1, bias=True, lam=0.02,
                cap=None, positions=(9,), ignore_index=-100, V=11, style=1, seed=200)  # fmt: skip
    x, W, b, cw, target = _data(case, torch)
    start, size = _shards(11, world, 1, 200)[rank]
    rows = slice(start, start + size)
    xl = x.clone().requires_grad_()
    Wl, bl = W.clone().requires_grad_(), b.clone().requires_grad_()
    rloss, _, _ = _reference(xl, Wl, bl, cw, target, case, torch)
    rloss.backward()
    valid = target != -100
    total = float(cw[target[valid]].sum())  # the weight sum of all targets across micro-batches
    ws, bs = W[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
    xs = x.clone().requires_grad_()
    acc = 0.0
    for part in (slice(0, 4), slice(4, 9)):
        loss = vp.vocab_parallel_linear_cross_entropy(
            xs[part], ws, target[part], vocab_start=start, bias_shard=bs, weight=cw[rows], label_smoothing=0.1,
            z_loss=0.02, normalizer=torch.tensor(total, dtype=torch.float64),
        )  # fmt: skip
        loss.backward()
        acc = acc + loss.detach()
    errors = {
        "loss": _rel(acc, rloss, torch),
        "grad_input": _rel(xs.grad, xl.grad, torch),
        "grad_weight_shard": _rel(ws.grad, Wl.grad[rows], torch),
        "grad_bias_shard": _rel(bs.grad, bl.grad[rows], torch),
    }
    return dict(name=MICRO_BATCHES, dtype="float64", errors=errors, exact=[], loss=[float(acc)])


def _faults(rank, world, torch, vp) -> dict:
    """Scenarios for a group of 3: each rank records (exception class, message)."""
    g = torch.Generator().manual_seed(3)  # the same input on every rank
    x = torch.randn(4, 5, dtype=torch.float64, generator=g)
    W = torch.randn(11, 5, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 3, 10, 7])
    layout = [(0, 4), (4, 3), (7, 4)]
    start, size = layout[rank]

    def attempt(**over):
        s = over.pop("start", start)
        n = over.pop("size", size)
        kwargs = dict(vocab_start=s)
        kwargs.update(over)
        xx = kwargs.pop("x", x)
        yy = kwargs.pop("y", y)
        try:
            vp.vocab_parallel_linear_cross_entropy(xx, W[s : s + n], yy, **kwargs)
        except Exception as err:  # noqa: BLE001 - recorded and checked by the parent
            return [type(err).__name__, str(err)]
        return ["ok", ""]

    out = {}
    out["overlap"] = attempt(start=start - 1 if rank == 2 else start)  # rank 2 holds [6, 10): overlaps rank 1
    out["gap"] = attempt(start=start + 1 if rank == 2 else start, size=3 if rank == 2 else size)
    out["duplicate"] = attempt(start=0 if rank == 1 else start, size=4 if rank == 1 else size)
    out["disagree"] = attempt(reduction="sum" if rank == 1 else "mean")
    out["disagree_shape"] = attempt(x=x[:3] if rank == 2 else x, y=y[:3] if rank == 2 else y)
    out["bad_class_weight"] = attempt(weight=torch.ones(5 if rank == 0 else size, dtype=torch.float64))
    out["out_of_bounds"] = attempt(y=torch.tensor([0, 11, 2, 3]))
    out["bad_option"] = attempt(label_smoothing=1.5)
    out["unknown_keyword"] = attempt(label_smothing=0.1)
    out["normalizer_with_sum"] = attempt(reduction="sum", normalizer=4.0)
    out["uint16_input"] = attempt(x=x.to(torch.uint16))
    out["uint16_target"] = attempt(y=y.to(torch.uint16))  # any integer dtype holds class indices
    kind, msg = attempt()
    if kind == "ok":
        import torch.nn.functional as F

        full = F.cross_entropy(x @ W.T, y)
        got = vp.vocab_parallel_linear_cross_entropy(x, W[start : start + size], y, vocab_start=start)
        if abs(float(got) - float(full)) > 1e-12 * abs(float(full)):
            kind, msg = "mismatch", f"{float(got)} != {float(full)}"
    out["after_faults"] = [kind, msg]
    return out


def _worker(rank: int, world: int, port: int, out_dir: str, plan_path: str) -> None:
    import torch
    from torch import distributed as dist

    torch.set_num_threads(1)
    with open(plan_path) as f:
        plan = json.load(f)
    timeout = timedelta(seconds=120)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timeout)
    from softmaxce.torch import distributed as vp

    wanted = set(plan["cases"])
    res = dict(cases=[_run_case(case, rank, world, torch, vp) for case in _cases() if case["name"] in wanted])
    if MICRO_BATCHES in wanted:
        res["cases"].append(_micro_batches(rank, world, torch, vp))
    if plan["faults"]:
        res["faults"] = _faults(rank, world, torch, vp)
    if plan["dead"]:
        res["faults"] = _dead_rank(rank, torch, vp)  # rank 1 exits afterwards
    with open(os.path.join(out_dir, f"{world}-{rank}.json"), "w") as f:
        json.dump(res, f)
    if plan["dead"]:
        os._exit(0)
    dist.destroy_process_group()


def _dead_rank(rank, torch, vp) -> dict:
    """Rank 1 first stalls (alive, never calling), then dies; rank 0 calls the head on 5 s subgroups."""
    from torch import distributed as dist

    def call(group) -> dict:
        t0 = time.monotonic()
        res = dict(raised=False, timeout=5.0)
        try:
            x, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
            vp.vocab_parallel_linear_cross_entropy(x, w, y, vocab_start=0, group=group)
        except Exception as err:  # noqa: BLE001 - the parent checks the class
            res.update(raised=True, mro=[c.__name__ for c in type(err).__mro__], message=str(err)[:500])
            res["notes"] = getattr(err, "__notes__", [])
        res["elapsed"] = time.monotonic() - t0
        return res

    out = {}
    stalled = dist.new_group([0, 1], timeout=timedelta(seconds=5))
    if rank == 1:
        time.sleep(8.0)  # alive but never reaching the call
    else:
        out["stalled"] = call(stalled)
    dead = dist.new_group([0, 1], timeout=timedelta(seconds=5))
    dist.barrier()
    if rank == 1:
        return out  # the caller writes its file, then the process exits
    time.sleep(2.0)  # rank 1 is gone by now
    out["dead"] = call(dead)
    return out


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
