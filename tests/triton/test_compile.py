"""The Triton kernels compile for a Hopper GPU (sm_90: Triton IR, PTX and ptxas's cubin) on a machine
without one. The interpreter tests run the kernels' Python; only the compiler checks what it accepts
(the first GPU run found the fused head's backward failing to compile under Triton 3.6, which the
interpreter had run for months). The launchers run unchanged with `kernel[grid](...)` turned into a
compile-only warm-up and Triton's CUDA driver answering for device 0 of capability 9.0."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from softmaxce import CEOptions, SparseTarget
from softmaxce.torch._triton import _launch

if importlib.util.find_spec("triton.backends.nvidia") is None:
    pytest.skip("Triton without its NVIDIA backend", allow_module_level=True)

EVERY_OPTION = CEOptions(reduction="none", label_smoothing=0.1, z_loss=1e-2, softcap=3.0)


@pytest.fixture
def compile_only(monkeypatch):
    """Kernel launches compile for sm_90 and return without running; yields the compiled kernels' names."""
    import triton.backends.nvidia.driver as nvidia
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class Hopper(nvidia.CudaDriver):
        def __init__(self):  # no CUDA library to load: only the target and device/stream numbers are asked
            pass

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    compiled = []

    def warm_up(self, grid):
        def compile_kernel(*args, **kwargs):
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            assert kernel.asm["cubin"], self.fn.__name__  # ptxas produced machine code
            compiled.append(self.fn.__name__)

        return compile_kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(driver, "_active", Hopper())
    monkeypatch.setattr(JITFunction, "__getitem__", warm_up)
    monkeypatch.setattr(_launch, "check", lambda *a, **k: None)  # CPU tensors stand in for CUDA ones
    yield compiled


def _target(kind, P, C):
    if kind == "index":
        return torch.randint(0, C, (P,))
    if kind == "prob":
        return torch.rand(P, C)
    return SparseTarget(torch.randint(0, C, (P, 3)), torch.rand(P, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["index", "prob", "sparse"])
def test_logits_kernel_compiles(compile_only, dtype, kind):
    z = torch.randn(5, 300).to(dtype)
    _launch.cross_entropy_rows(z, _target(kind, 5, 300), torch.rand(300), EVERY_OPTION, True, torch.ones(5))
    assert compile_only == ["_ce_kernel"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("kind", "rows"), [("index", 5), ("prob", 70), ("sparse", 70)])
def test_fused_head_kernels_compile(compile_only, dtype, kind, rows):
    """5 rows: one row block, weight gradients by atomic adds in the rows kernel; 70: the class-tiled kernel."""
    x, W, b = torch.randn(rows, 64).to(dtype), torch.randn(300, 64).to(dtype), torch.randn(300).to(dtype)
    _launch.linear_cross_entropy_rows(x, W, _target(kind, rows, 300), b, torch.rand(300), EVERY_OPTION, (True,) * 3)
    expected = ["_lce_forward", "_lce_backward_rows"] + (["_lce_backward_cols"] if rows > 64 else [])
    assert compile_only == expected
