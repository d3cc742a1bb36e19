"""The compiled Triton kernels on a CUDA device at the sizes language models use: several of the
compiled kernels' class tiles (4096 / 8192 wide for logits, 128 for the fused head), odd row counts,
every option at once, float32 against the float64 reference and bfloat16 no worse than torch.
Skipped without a CUDA device (the other files here run the same kernels at small shapes, on CUDA
too where one is present)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from _tritoncases import assert_head_reproducible, close, reference, rel_err

from softmaxce import CEOptions
from softmaxce.torch import _triton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVERY_OPTION = CEOptions(reduction="mean", label_smoothing=0.1, z_loss=1e-4, softcap=30.0, ignore_index=-100)


def near(ours, ref, tol):
    """max |ours - ref| <= tol * max |ref|, in float64 on the CPU."""
    ours, ref = ours.cpu().double(), ref.cpu().double()
    assert torch.isfinite(ours).all()
    err, scale = float((ours - ref).abs().max()), float(ref.abs().max())
    assert err <= tol * scale, (err, scale)


def _targets(gen, P, C, probability):
    if probability:
        t = torch.rand(P, C, device="cuda", generator=gen, dtype=torch.float64)
        return (t / t.sum(dim=1, keepdim=True)).float()
    t = torch.randint(0, C, (P,), device="cuda", generator=gen)
    t[::7] = -100
    return t


@pytest.mark.parametrize("C", [4099, 50257, 128256])
@pytest.mark.parametrize("probability", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_logits_float32_matches_reference(C, probability, reduction):
    gen = torch.Generator(device="cuda").manual_seed(C)
    P = 67
    options = dataclasses.replace(EVERY_OPTION, reduction=reduction)
    z = torch.randn(P, C, device="cuda", generator=gen) * 4.0
    t = _targets(gen, P, C, probability)
    w = torch.rand(C, device="cuda", generator=gen) + 0.2
    go = torch.rand(P, device="cuda", generator=gen) if reduction == "none" else torch.tensor(0.7, device="cuda")
    z_before = z.clone()
    loss, grad = _triton.cross_entropy_rows(z, t, w, options, True, go)
    ref_loss, ref_grad = reference(z, t, w, options, go.double())
    near(loss, ref_loss, 1e-5)
    near(grad, ref_grad, 1e-5)
    assert torch.equal(z, z_before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("C", [50257, 128256])
def test_logits_half_no_worse_than_torch(dtype, C):
    gen = torch.Generator(device="cuda").manual_seed(C + 1)
    P = 129
    z = (torch.randn(P, C, device="cuda", generator=gen) * 6.0).to(dtype)
    t = torch.randint(0, C, (P,), device="cuda", generator=gen)
    options = CEOptions(reduction="sum", label_smoothing=0.1)
    loss, grad = _triton.cross_entropy_rows(z, t, None, options, True, torch.tensor(1.0, device="cuda"))
    assert loss.dtype == grad.dtype == dtype
    ref_loss, ref_grad = reference(z, t, None, options, torch.tensor(1.0))
    zt = z.clone().requires_grad_()
    theirs = F.cross_entropy(zt, t, reduction="sum", label_smoothing=0.1)
    theirs.backward()
    assert rel_err(loss, ref_loss) <= rel_err(theirs.detach(), ref_loss) + 2**-8
    assert rel_err(grad, ref_grad) <= rel_err(zt.grad, ref_grad) + 2**-8
    assert torch.isfinite(grad).all()


def _head(gen, P, D, V, dtype):
    x = torch.randn(P, D, device="cuda", generator=gen).to(dtype)
    W = (torch.randn(V, D, device="cuda", generator=gen) / D**0.5).to(dtype)
    b = (torch.randn(V, device="cuda", generator=gen) * 0.1).to(dtype)
    return x, W, b


def _head_reference(x, W, b, t, w, options, go):
    x, W, b = x.double(), W.double(), b.double()
    loss, G = reference(x @ W.T + b, t, w, options, go.double())
    G = G.to(x.device)
    return loss, G @ W, G.T @ x, G.sum(dim=0)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("probability", [False, True], ids=["index", "prob"])
def test_fused_head_float32_matches_reference(deterministic, probability):
    gen = torch.Generator(device="cuda").manual_seed(7)
    P, D, V = 259, 200, 32771  # odd rows and features; V spans 257 class tiles, the last a partial one
    x, W, b = _head(gen, P, D, V, torch.float32)
    t = _targets(gen, P, V, probability)
    w = torch.rand(V, device="cuda", generator=gen) + 0.2
    go = torch.tensor(1.3, device="cuda")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        ours = _triton.linear_cross_entropy_rows(x, W, t, b, w, EVERY_OPTION, (True, True, True), go)
    finally:
        torch.use_deterministic_algorithms(before)
    ref = _head_reference(x, W, b, t, w, EVERY_OPTION, go)
    for a, r in zip(ours, ref, strict=True):  # loss, grad_x, grad_W, grad_b
        near(a, r, 1e-5)


def test_fused_head_deterministic_is_bitwise_reproducible():
    gen = torch.Generator(device="cuda").manual_seed(8)
    P, D, V = 515, 256, 50257
    x, W, b = _head(gen, P, D, V, torch.bfloat16)
    assert_head_reproducible(x, W, _targets(gen, P, V, False), b)


@pytest.mark.parametrize("V", [50257, 128256])
def test_fused_head_bf16_no_worse_than_torch(V):
    gen = torch.Generator(device="cuda").manual_seed(V)
    P, D = 257, 1024
    x, W, b = _head(gen, P, D, V, torch.bfloat16)
    x = x * 4.0  # confident logits
    t = _targets(gen, P, V, False)
    options = CEOptions(reduction="sum", label_smoothing=0.1)
    ours = _triton.linear_cross_entropy_rows(x, W, t, b, None, options, (True, True, True))
    assert [a.dtype for a in ours] == [torch.bfloat16] * 4
    ref = _head_reference(x, W, b, t, None, options, torch.tensor(1.0))
    xt, Wt, bt = (a.clone().requires_grad_() for a in (x, W, b))
    theirs = F.cross_entropy((xt @ Wt.T + bt).float(), t, reduction="sum", label_smoothing=0.1)
    theirs.backward()
    for a, th, r in zip(ours, (theirs.detach(), xt.grad, Wt.grad, bt.grad), ref, strict=True):
        assert rel_err(a, r) <= rel_err(th, r) + 2**-8


def test_fused_head_never_holds_the_logits():
    """Extra memory beyond inputs and gradients stays under a quarter of the (P, V) bf16 logits."""
    gen = torch.Generator(device="cuda").manual_seed(9)
    P, D, V = 4096, 1024, 65536
    x, W, _ = _head(gen, P, D, V, torch.bfloat16)
    t = _targets(gen, P, V, False)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = _triton.linear_cross_entropy_rows(x, W, t, None, None, CEOptions(), (True, True, False))
    torch.cuda.synchronize()
    grads = (P * D + V * D) * 2
    extra = torch.cuda.max_memory_allocated() - base - grads
    del out
    # the float32 accumulators of grad_x and grad_W are gradient-sized; no P x V buffer
    assert extra < (P * D + V * D) * 4 + P * V * 2 // 4, extra


def test_cross_entropy_front_end_class_axis_1_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(10)
    z = torch.randn(3, 21, 17, 19, device="cuda", generator=gen).requires_grad_()
    t = torch.randint(0, 21, (3, 17, 19), device="cuda", generator=gen)
    t[0, 0, :5] = 255
    import softmaxce.torch as sce

    loss = sce.cross_entropy(z, t, ignore_index=255, label_smoothing=0.05)
    loss.backward()
    zr = z.detach().double().requires_grad_()
    ref = F.cross_entropy(zr, t, ignore_index=255, label_smoothing=0.05)
    ref.backward()
    close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    close(z.grad, zr.grad, rtol=1e-5, atol=1e-7)
