"""Sparse targets (`SparseTarget` of (P, K) rows) through the Triton kernels (interpreted and on CUDA).

Each result (loss, grad logits / grad_x, grad_W, grad_b) equals the dense scatter-added target's
y[n, i_k] += v_k through the same kernels and the float64 reference, both on the kept positions
only: an all-padding position is ignored (loss 0, gradient 0, not counted by "mean"). The rows have
duplicate indices, padding and one all-padding position; every option and reduction is in the grid.
"""

from __future__ import annotations

import pytest
import torch
from _tritoncases import close, option_grid, reference, upstream

import softmaxce.torch as sce
from softmaxce import CEOptions, SparseTarget
from softmaxce.torch import _triton

P, C, K = 7, 13, 4
D, V = 5, 37  # the fused head: V spans three 16-wide tiles in the interpreter
IGNORED = 3  # the all-padding position

# the options of the class-index/probability grid (the target kind is sparse here), all `slow`;
# FEW runs by default: each option on, each reduction, with and without weights
GRID = [
    pytest.param(*case[2:], id=case[0].replace("prob", "sparse"), marks=pytest.mark.slow)
    for case in option_grid()
    if case[1]
]
FEW = [
    pytest.param(False, CEOptions(), id="sparse-mean"),
    pytest.param(True, CEOptions(reduction="sum", label_smoothing=0.1), id="sparse-sum-weight-smooth0.1"),
    pytest.param(
        True, CEOptions(reduction="none", label_smoothing=0.1, z_loss=1e-2, softcap=3.0), id="sparse-none-every-option"
    ),
]


def sparse_target(rng, classes: int, device="cpu") -> SparseTarget:
    """(P, K) rows with duplicates (entries 0 and 1 of row 0), padding, an all-padding row."""
    idx = torch.from_numpy(rng.integers(0, classes, (P, K)))
    idx[0, 1] = idx[0, 0]
    idx[1, 2] = -1
    idx[5, 0] = -7
    idx[IGNORED] = -1
    return SparseTarget(idx.to(device), torch.from_numpy(rng.uniform(0.0, 1.0, (P, K))).float().to(device))


def dense(t: SparseTarget, classes: int) -> torch.Tensor:
    """The dense target: y[n, i_k] += v_k over the entries that are not padding."""
    keep = t.indices >= 0
    y = torch.zeros(t.indices.shape[0], classes, dtype=t.values.dtype, device=t.values.device)
    return y.scatter_add_(1, t.indices.clamp(min=0), torch.where(keep, t.values, 0.0))


def kept(t: SparseTarget) -> torch.Tensor:
    return (t.indices >= 0).any(dim=1)


def _expand(ours_kept: torch.Tensor, k: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-position results over the kept rows, zero-filled at the ignored ones."""
    out = ours_kept.new_zeros((rows, *ours_kept.shape[1:]))
    out[k.to(out.device)] = ours_kept
    return out


def _loss(ref_loss, options, k):
    return _expand(ref_loss, k, P) if options.reduction == "none" else ref_loss


# ----------------------------------------------------------------------------- logits given


def _check_logits(rng, weighted, options, device):
    z = torch.from_numpy(rng.normal(0.0, 3.0, (P, C))).float().to(device)
    t = sparse_target(rng, C, device)
    w = torch.from_numpy(rng.uniform(0.2, 2.0, C)).float().to(device) if weighted else None
    go = upstream(rng, P, options.reduction).to(device)
    loss, grad = _triton.cross_entropy_rows(z, t, w, options, True, go.float())
    k = kept(t)
    y = dense(t, C)[k]
    go_k = go[k] if options.reduction == "none" else go
    ref_loss, ref_grad = reference(z[k], y, w, options, go_k)
    close(loss, _loss(ref_loss, options, k))
    close(grad, _expand(ref_grad, k, P))
    d_loss, d_grad = _triton.cross_entropy_rows(z[k], y.float(), w, options, True, go_k.float())
    close(loss, _loss(d_loss, options, k))
    close(grad, _expand(d_grad, k, P))
    assert not grad[IGNORED].any()


@pytest.mark.parametrize(("weighted", "options"), FEW)
def test_logits_matches_dense_and_reference(device, rng, weighted, options):
    _check_logits(rng, weighted, options, device)


@pytest.mark.parametrize(("weighted", "options"), GRID)
def test_logits_grid(device, rng, weighted, options):
    _check_logits(rng, weighted, options, device)


def test_no_entries_and_minus_inf_off_the_entries(device, rng):
    z = torch.randn(3, 5, device=device)
    t = SparseTarget(torch.zeros(3, 0, dtype=torch.long, device=device), torch.zeros(3, 0, device=device))
    loss, grad = _triton.cross_entropy_rows(z, t, None, CEOptions(reduction="sum"), True)
    assert float(loss) == 0.0 and not grad.any()
    # a -inf logit on a class without an entry contributes nothing (as for a class index)
    z = torch.tensor([[0.0, float("-inf"), 1.0, 2.0]])
    t = SparseTarget(torch.tensor([[0, 3, -1]], device=device), torch.tensor([[0.25, 0.75, 0.5]], device=device))
    loss, grad = _triton.cross_entropy_rows(z.to(device), t, None, CEOptions(), True)
    zz = z.double().requires_grad_()
    ref = -(0.25 * zz.log_softmax(1)[0, 0] + 0.75 * zz.log_softmax(1)[0, 3])
    ref.backward()
    close(loss, ref.detach())
    close(grad, zz.grad)


# ----------------------------------------------------------------------------- fused linear head


def _check_linear(rng, weighted, options, device):
    x = torch.from_numpy(rng.normal(0.0, 1.0, (P, D))).float().to(device)
    W = torch.from_numpy(rng.normal(0.0, 1.0, (V, D))).float().to(device)
    b = torch.from_numpy(rng.normal(0.0, 0.5, V)).float().to(device)
    t = sparse_target(rng, V, device)
    w = torch.from_numpy(rng.uniform(0.2, 2.0, V)).float().to(device) if weighted else None
    go = upstream(rng, P, options.reduction).to(device)
    ours = _triton.linear_cross_entropy_rows(x, W, t, b, w, options, (True, True, True), go.float())
    k = kept(t)
    y = dense(t, V)[k]
    go_k = go[k] if options.reduction == "none" else go
    xd, Wd, bd = (a.cpu().double() for a in (x, W, b))
    ref_loss, G = reference(xd[k.cpu()] @ Wd.T + bd, y, w, options, go_k)
    ref = (_loss(ref_loss, options, k), _expand(G @ Wd, k, P), G.T @ xd[k.cpu()], G.sum(dim=0))
    d = _triton.linear_cross_entropy_rows(x[k], W, y.float(), b, w, options, (True, True, True), go_k.float())
    through_dense = (_loss(d[0], options, k), _expand(d[1], k, P), d[2], d[3])
    for a, r, dd in zip(ours, ref, through_dense, strict=True):
        close(a, r, rtol=5e-5, atol=5e-6)
        close(a, dd, rtol=5e-5, atol=5e-6)
    assert not ours[1][IGNORED].any()


@pytest.mark.parametrize(("weighted", "options"), FEW)
def test_linear_matches_dense_and_reference(device, rng, deterministic, weighted, options):
    _check_linear(rng, weighted, options, device)


@pytest.mark.parametrize(("weighted", "options"), GRID)
def test_linear_grid(device, rng, deterministic, weighted, options):
    _check_linear(rng, weighted, options, device)


# ----------------------------------------------------------------------------- front ends


def test_backend_triton_takes_sparse_targets(device, rng, monkeypatch):
    """backend="triton" runs the kernels for a SparseTarget (the values' gradient on the torch path):
    the loss and every gradient equal backend="torch"'s."""
    calls = []
    for name in ("cross_entropy_rows", "linear_cross_entropy_rows"):
        real = getattr(_triton, name)
        monkeypatch.setattr(_triton, name, lambda *a, _r=real, _n=name, **kw: calls.append(_n) or _r(*a, **kw))
    t = sparse_target(rng, C, device)
    opts = {"label_smoothing": 0.1, "z_loss": 1e-2}
    z0 = torch.from_numpy(rng.normal(0.0, 2.0, (P, C))).float().to(device)
    x0, W0 = torch.randn(P, D, device=device), torch.randn(C, D, device=device)
    results = {}
    for backend in ("triton", "torch"):
        z, x, W = (a.clone().requires_grad_() for a in (z0, x0, W0))
        v1, v2 = (t.values.clone().requires_grad_() for _ in range(2))
        loss = sce.cross_entropy(z, SparseTarget(t.indices, v1), backend=backend, **opts)
        loss = loss + sce.linear_cross_entropy(x, W, SparseTarget(t.indices, v2), backend=backend, **opts)
        loss.backward()
        results[backend] = (loss.detach(), z.grad, x.grad, W.grad, v1.grad, v2.grad)
    for a, r in zip(results["triton"], results["torch"], strict=True):
        close(a, r, rtol=1e-5, atol=1e-6)
    assert "cross_entropy_rows" in calls and "linear_cross_entropy_rows" in calls
