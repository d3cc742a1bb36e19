"""Class-axis-1 logits (N, C, d1..dk) with class-index targets through `softmaxce.torch.cross_entropy`:
the NumPy engine reads them in place and writes the gradient in the same layout (`_ops._Axis1`), and
every result equals the float64 reference (PyTorch's own F.cross_entropy in float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import softmaxce.torch as sce
from softmaxce import _engine
from softmaxce.torch import _ops

# C = 1, 2, 3, 7, 10, 17 and spatial sizes that are no multiple of a vector width
CASES = [((2, 1, 5), {}), ((3, 2, 9, 3), {"weighted": True}), ((2, 3, 13), {"label_smoothing": 0.2}),
         ((2, 7, 4, 5), {"z_loss": 1e-2, "weighted": True}), ((3, 10, 11), {"softcap": 2.5}),
         ((2, 17, 3, 7), {"weighted": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0})]  # fmt: skip
IDS = [f"{'x'.join(map(str, s))}-{'-'.join(kw) or 'plain'}" for s, kw in CASES]


def _problem(shape, weighted, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64).mul(3).to(dtype)
    C = shape[1]
    t = torch.randint(0, C, (shape[0], *shape[2:]), generator=g)
    t.view(-1)[::4] = -100  # some ignored positions
    w = torch.rand(C, generator=g, dtype=torch.float64).to(dtype) + 0.5 if weighted else None
    return z, t, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("shape", "options"), CASES, ids=IDS)
def test_matches_the_float64_reference(shape, options, reduction, dtype):
    options = dict(options)
    z, t, w = _problem(shape, options.pop("weighted", False), dtype, seed=len(IDS) * shape[1] + shape[-1])
    z_ref = z.detach().to(torch.float64).requires_grad_()
    w64 = None if w is None else w.to(torch.float64)
    softcap, z_loss = options.pop("softcap", None), options.pop("z_loss", 0.0)
    capped = z_ref if softcap is None else softcap * torch.tanh(z_ref / softcap)
    ref = F.cross_entropy(capped, t, w64, reduction=reduction, **options)
    if z_loss:  # lam * lse^2 per kept position, weighted and reduced like the loss
        keep = t != -100
        wy = (torch.ones_like(capped[:, 0]) if w64 is None else w64[t.clamp(min=0)]) * keep
        extra = z_loss * wy * torch.logsumexp(capped, 1) ** 2
        extra = {"none": extra, "sum": extra.sum(), "mean": extra.sum() / wy.sum()}[reduction]
        ref = ref + extra
    z_ours = z.clone().requires_grad_()
    before = z_ours.detach().clone()
    ours = sce.cross_entropy(z_ours, t, w, reduction=reduction, z_loss=z_loss, softcap=softcap, **options)
    up = torch.rand(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    (ref * up).sum().backward()
    (ours * up.to(dtype)).sum().backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert ours.dtype == dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours.to(torch.float64), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(z_ours.grad.to(torch.float64), z_ref.grad, rtol=tol, atol=tol)
    assert torch.equal(z_ours.detach(), before)  # the input is not modified


def test_the_logits_are_read_in_place(monkeypatch):
    """The engine receives the caller's (N, C, d1, d2) array, not a moved (P, C) copy, and the gradient
    comes back in the logits' layout."""
    seen = []
    real = _engine.forward_logits

    def spy(logits, *args, **kwargs):
        seen.append((logits.shape, logits.__array_interface__["data"][0]))
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(_engine, "forward_logits", spy)
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    t = torch.randint(0, 3, (2, 4, 5))
    sce.cross_entropy(z, t).backward()
    assert seen == [((2, 3, 4, 5), z.data_ptr())]
    assert z.grad.shape == z.shape and z.grad.is_contiguous()


def test_second_order_and_a_second_backward():
    z, t, w = _problem((2, 4, 3, 5), True, torch.float64, seed=3)
    for fn in (sce.cross_entropy, F.cross_entropy):
        x = z.clone().requires_grad_()
        loss = fn(x, t, w, label_smoothing=0.1)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        y = z.clone().requires_grad_()
        loss2 = fn(y, t, w, reduction="sum")
        loss2.backward(retain_graph=True)
        first = y.grad.clone()
        loss2.backward(torch.tensor(2.0, dtype=torch.float64))  # recomputed: the saved gradient was used
        if fn is sce.cross_entropy:
            ours = (g, h, first, y.grad)
        else:
            torch.testing.assert_close(ours, (g, h, first, y.grad), rtol=1e-12, atol=1e-12)


def test_traced_calls_and_other_backends_take_the_rows():
    z = torch.randn(2, 3, 4)
    t = torch.randint(0, 3, (2, 4))
    assert _ops.axis1_applies(z, t, None, None)
    assert not _ops.axis1_applies(z, t, None, "torch")
    assert not _ops.axis1_applies(z.bfloat16(), t, None, None)
    assert not _ops.axis1_applies(z[:, :, 0], t[:, 0], None, None)  # 2-D: rows already
    compiled = torch.compile(lambda z, t: sce.cross_entropy(z, t), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(z, t), F.cross_entropy(z, t))


@pytest.mark.parametrize("mode", ["no_grad", "leaf without grad", "training"])
def test_gradient_computed_only_when_autograd_wants_it(monkeypatch, mode):
    """The forward computes the gradient only with grad mode on and logits requiring grad (under
    torch.no_grad, autograd.Function still reports needs_input_grad True); the loss is the same."""
    asked = []
    engine_pass = _ops._engine_pass

    def spy(logits, target, weight, options, want_grad, *rest, **kw):
        asked.append(want_grad)
        return engine_pass(logits, target, weight, options, want_grad, *rest, **kw)

    monkeypatch.setattr(_ops, "_engine_pass", spy)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, 5, 6, 7, generator=gen)
    t = torch.randint(0, 5, (2, 6, 7), generator=gen)
    x = z.clone().requires_grad_(mode != "leaf without grad")
    if mode == "no_grad":
        with torch.no_grad():
            loss = sce.cross_entropy(x, t)
    else:
        loss = sce.cross_entropy(x, t)
    assert asked == [mode == "training"]
    torch.testing.assert_close(loss, F.cross_entropy(z, t))
