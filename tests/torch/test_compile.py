"""torch.compile(fullgraph=True) of tiny models using softmaxce's ops gives eager's loss and gradients
(kept small: compiling is slow on a shared 2-core machine)."""

from __future__ import annotations

import pytest
import torch
from _tiny_model import TinyModel, assert_matches_eager


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("head", ["fused", "logits"])
def test_compiled_matches_eager(head, reduction, dtype):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyModel(head, reduction).to(dtype)
    x = torch.randn(10, 6, dtype=dtype)
    t = torch.randint(0, 11, (10,))
    t[2] = -100
    eager = model(x, t)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    # inductor for one case (slow to compile); aot_eager still traces with fake kernels and autograd
    inductor = head == "fused" and reduction == "mean" and dtype == torch.float32
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if inductor else "aot_eager")
    loss = compiled(x, t)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert_matches_eager(loss, grads, eager, eager_grads, dtype)


def test_opcheck():
    """torch.library.opcheck: schema, fake kernels and autograd registration are consistent."""
    from softmaxce.torch import _linear_ops, _ops

    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 3, -100, 6, 2])
    w = torch.rand(7, dtype=torch.float64)
    torch.library.opcheck(_ops._ce_fwd, (z, t, w, -100, 0.1, 1e-3, 0.0, "mean", True, ""))
    torch.library.opcheck(_ops._ce_fwd, (z, t, None, -100, 0.0, 0.0, 3.0, "none", False, ""))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_linear_ops._lce_fwd, (x, W, t, b, w, -100, 0.1, 1e-3, 0.0, "sum", 2, True, True, True, ""))
