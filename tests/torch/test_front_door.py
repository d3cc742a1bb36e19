"""What the drop-in adds at its front door: backend=, inplace_backward=, one gradient-sized buffer,
and PyTorch's rule for a class weight that requires grad."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import softmaxce.torch as sce


def _problem(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), torch.tensor([0, 4, -100, 2, 2, 1][:n])


def test_bad_backend_is_a_value_error_naming_it():
    z, t = _problem()
    with pytest.raises(ValueError, match="'cuda' is not a valid backend"):
        sce.cross_entropy(z, t, backend="cuda")
    with pytest.raises(ValueError, match="'numba' is not a valid backend"):
        sce.LinearCrossEntropyLoss(4, 3, backend="numba")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_backend_torch_takes_the_chunked_path_with_the_same_result(reduction):
    z, t = _problem()
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la = sce.cross_entropy(a, t, reduction=reduction, label_smoothing=0.2)
    lb = sce.cross_entropy(b, t, reduction=reduction, label_smoothing=0.2, backend="torch")
    torch.testing.assert_close(la, lb)
    la.sum().backward()
    lb.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_saved_gradient_is_scaled_once_and_a_retained_graph_recomputes(scale):
    """The backward scales the forward's gradient in place; a second backward through a retained graph
    must still give the exact gradient (it recomputes), as torch's does."""
    z, t = _problem()
    ours = z.clone().requires_grad_(True)
    ref = z.clone().requires_grad_(True)
    for fn, leaf in ((sce.cross_entropy, ours), (F.cross_entropy, ref)):
        loss = fn(leaf, t, label_smoothing=0.1) * scale
        loss.backward(retain_graph=True)
        loss.backward()
    torch.testing.assert_close(ours.grad, ref.grad)


def test_fused_head_saved_gradients_scaled_once_and_recomputed_on_retain_graph():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    t = torch.randint(0, 7, (9,), generator=g)
    leaves = {k: [v.clone().requires_grad_(True) for v in (x, W, b)] for k in ("ours", "ref")}
    for fn, (xx, ww, bb) in ((sce.linear_cross_entropy, leaves["ours"]), (F.linear_cross_entropy, leaves["ref"])):
        loss = 2.5 * fn(xx, ww, t, linear_bias=bb)
        loss.backward(retain_graph=True)
        loss.backward()
    for ours, ref in zip(leaves["ours"], leaves["ref"], strict=True):
        torch.testing.assert_close(ours.grad, ref.grad)


_PEAK = """
import resource, torch, softmaxce.torch as sce
torch.manual_seed(0)
z = torch.randn(2048, 16384, requires_grad=True)  # 128 MiB
t = torch.randint(0, 16384, (2048,))
sce.cross_entropy(z[:8], t[:8]).backward()  # warm-up: numba's cache, allocator
z.grad = None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sce.cross_entropy(z, t).backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024 / z.nbytes)
"""


def test_a_training_step_holds_one_gradient_sized_buffer():
    """Forward + backward beyond the inputs: the gradient (which becomes z.grad) and nothing else of
    that size (peak RSS growth in a fresh process, in units of the logits' size)."""
    out = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 1.5


def test_inplace_backward_writes_the_gradient_over_the_logits():
    z, t = _problem()
    ref = z.clone().requires_grad_(True)
    F.cross_entropy(ref, t, label_smoothing=0.1, reduction="sum").backward()
    logits = z.clone().requires_grad_(True)
    criterion = sce.CrossEntropyLoss(label_smoothing=0.1, reduction="sum", inplace_backward=True)
    loss = criterion(logits, t)
    torch.testing.assert_close(loss, F.cross_entropy(z, t, label_smoothing=0.1, reduction="sum"))
    (2.0 * loss).backward()
    torch.testing.assert_close(logits.grad, 2.0 * ref.grad)
    torch.testing.assert_close(logits.detach(), 2.0 * ref.grad)  # the logits are the gradient now


@pytest.mark.parametrize("mode", ["no_grad", "leaf without grad"])
def test_inplace_backward_leaves_the_logits_alone_when_no_backward_comes(mode):
    """Evaluation (torch.no_grad) or logits that do not require grad: no gradient is wanted, so the
    logits are not overwritten, and the loss is the ordinary one."""
    z, t = _problem()
    logits = z.clone().requires_grad_(mode == "no_grad")
    if mode == "no_grad":
        with torch.no_grad():
            loss = sce.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=True)
    else:
        loss = sce.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=True)
    torch.testing.assert_close(logits.detach(), z, rtol=0, atol=0)
    torch.testing.assert_close(loss, F.cross_entropy(z, t, label_smoothing=0.1))
    assert not loss.requires_grad


def test_inplace_backward_refuses_what_it_cannot_do_exactly():
    z, t = _problem()
    logits = z.clone().requires_grad_(True)
    loss = sce.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, logits, create_graph=True)
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        sce.cross_entropy(z.clone(), t, reduction="none", inplace_backward=True)
    with pytest.raises(ValueError, match="2-D float32 or float64 CPU"):
        sce.cross_entropy(z.clone().half(), t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="torch.func"):
        torch.func.grad(lambda x: sce.cross_entropy(x, t, inplace_backward=True))(z.clone())


def test_class_weight_requiring_grad_follows_pytorch():
    """Class-index targets: PyTorch refuses at the call, and so do we (rather than return no gradient).
    Probability targets: PyTorch differentiates the weight, and so do we."""
    z, t = _problem()
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        sce.cross_entropy(z, t, weight=w)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        sce.linear_cross_entropy(z, torch.randn(5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 4]), weight=w)
    p = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    w_ref = w.detach().clone().requires_grad_(True)
    sce.cross_entropy(z, p, weight=w, label_smoothing=0.1).backward()
    F.cross_entropy(z, p, weight=w_ref, label_smoothing=0.1).backward()
    torch.testing.assert_close(w.grad, w_ref.grad)


_LINEAR_BACKWARD_PEAK = """
import torch, softmaxce.torch as sce
torch.manual_seed(0)
x = torch.randn(512, 256, requires_grad=True)
W = (torch.randn(65536, 256) * 0.05).requires_grad_()  # 64 MiB
t = torch.randint(0, 65536, (512,))
sce.linear_cross_entropy(x[:8], W, t[:8]).backward()  # warm-up
x.grad = W.grad = None
loss = sce.linear_cross_entropy(x, W, t)
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on: the backward alone
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * 4096
loss.backward()
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
print((peak - before) / W.nbytes)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_fused_heads_backward_allocates_no_gradient_sized_buffer():
    """The forward computed grad_x and grad_W; the backward hands them over (scaled in place) without
    a W-sized temporary (autograd used to materialize zero gradients for the op's gradient outputs)."""
    out = subprocess.run([sys.executable, "-c", _LINEAR_BACKWARD_PEAK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 0.25
