"""Launchers of the Triton kernels (`_kernels.py`) with the contract of the chunked torch path.

`cross_entropy_rows` and `linear_cross_entropy_rows` take the fields of `_chunked.Problem` (target,
weight, options) unpacked and return what `_ops._ce_chunked` and `_linear_ops._lce_chunked` do, so
the op layer dispatches to either: the loss reduced per
`options.reduction` ("mean" divides by docs/SEMANTICS.md's normalizer), and the gradients
d(loss)/d(input) times the upstream gradient (1 when `grad_output` is None; per position for "none").
The normalizer, the row coefficients k = dJ/dl_n and the reduction of the per-row losses are the
torch path's own helpers (`_chunked.prepare` / `reduce`): device tensors, no host synchronization.

Kernels are compiled for CUDA tensors; with TRITON_INTERPRET=1 set when they are called, the same
kernel source runs in Triton's interpreter (CPU tensors included). The two builds are separate module
objects (`_kernels(interpret)`), so setting the variable later in a process still takes effect and
never changes kernels built before.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import sys
from types import ModuleType

import torch
from torch import Tensor

from ..._options import CEOptions
from ..._sparse import SparseTarget
from .. import _chunked

__all__ = ["BackendError", "available", "check", "cross_entropy_rows", "linear_cross_entropy_rows"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class BackendError(RuntimeError):
    """backend="triton" cannot run these tensors here (triton missing, wrong device or dtype)."""


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's interpreter is on (TRITON_INTERPRET=1), read now, as Triton reads it."""
    import triton

    return bool(triton.knobs.runtime.interpret)


def check(device: torch.device | str, dtype: torch.dtype | None = None) -> None:
    """Raises BackendError saying why backend="triton" cannot run tensors of this device and dtype."""
    if not _triton_installed():
        raise BackendError(
            "backend='triton' needs the triton package, which is not installed: "
            "pip install 'softmaxce[gpu]' (or pass backend='torch')"
        )
    device = torch.device(device)
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise BackendError(
            f"backend='triton' runs on CUDA tensors, or on CPU tensors under Triton's interpreter "
            f"(TRITON_INTERPRET=1); got tensors on {device.type} (pass backend='torch' or None)"
        )
    if dtype is not None and dtype not in DTYPES:
        raise BackendError(
            f"backend='triton' computes float32, bfloat16 and float16 inputs; got {dtype} "
            "(pass backend='torch' or None: float64 runs on the torch path)"
        )


def available(device: torch.device | str, dtype: torch.dtype | None = None) -> bool:
    """Whether backend="triton" can run tensors of this device and dtype (what backend=None asks)."""
    try:
        check(device, dtype)
    except BackendError:
        return False
    return True


@functools.cache
def _kernels(interpret: bool) -> ModuleType:
    """`_kernels.py` executed with TRITON_INTERPRET set to `interpret` (triton.jit reads it when it
    decorates): one module object per mode, the process environment restored afterwards."""
    name = f"{__package__}._kernels_{'interpreted' if interpret else 'compiled'}"
    spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).with_name("_kernels.py"))
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return module


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _precision(dtype: torch.dtype, interpret: bool) -> str:
    """tl.dot's input precision: float32 as torch's matmul does (TF32 only when torch allows it)."""
    if dtype == torch.float32 and not interpret and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _kernel_args(
    kernels: ModuleType,
    target: Tensor | SparseTarget,
    weight: Tensor | None,
    options: CEOptions,
    num_classes: int,
    dummy: Tensor,
) -> tuple:
    """The kernels' (`Target`, `Options`, `Flags`) for this target, class weight and options. The target
    is read as class indices (P,) (stride 1), probabilities (P, C) (stride C), or a sparse target's (P, K)
    indices (stride K) and values; unread pointers (and those of empty tensors) are `dummy`."""
    sparse = isinstance(target, SparseTarget)
    if sparse:
        probability, K = True, target.indices.shape[1]
        if K == 0:  # no entries: every row is ignored, nothing is read
            t, t_stride, v = dummy, 0, dummy
        else:
            t, t_stride, v = target.indices.contiguous(), K, target.values.contiguous()
    else:
        probability = target.dim() == 2
        t, t_stride, v = target.contiguous(), (num_classes if probability else 1), dummy
    flags = kernels.Flags(
        IS_PROB=probability,
        HAS_WEIGHT=weight is not None,
        IS_SPARSE=sparse,
        DENSE=probability or options.label_smoothing > 0.0,
        SOFTCAP=options.softcap is not None,
    )
    opts = kernels.Options(options.ignore_index, options.label_smoothing, options.z_loss, options.softcap or 1.0)
    return kernels.Target(t, t_stride, v, dummy if weight is None else weight.contiguous()), opts, flags


# ----------------------------------------------------------------------------- cross-entropy on logits


def cross_entropy_rows(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    options: CEOptions,
    want_grad: bool,
    grad_output: Tensor | None = None,
    *,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(loss, grad) of softmax cross-entropy on rows: logits (P, C), target (P,) class indices,
    (P, C) probabilities or a `SparseTarget` of (P, K) rows, weight (C,) or None (validated by the caller).

    loss is reduced per `options.reduction` in the logits' dtype; grad = dJ/dlogits (P, C) in the
    logits' dtype when `want_grad` (else None), for the upstream gradient `grad_output` (None: 1).
    `out` (P, C), contiguous, receives the gradient; it may be `logits` itself (each tile is read
    before it is overwritten): the caller asked for its logits to be replaced.
    """
    check(logits.device, logits.dtype)
    interpret = interpreting()
    P, C = logits.shape
    z = logits.contiguous()
    norm, coef = _chunked.prepare(target, weight, options, C, torch.float32, want_grad, grad_output)
    loss = torch.zeros(P, dtype=torch.float32, device=z.device)
    grad = None
    if want_grad:
        if out is not None and (out.shape != z.shape or out.dtype != z.dtype or not out.is_contiguous()):
            raise ValueError(f"out must be a contiguous {z.dtype} tensor of shape {tuple(z.shape)}")
        grad = out if out is not None else torch.empty_like(z)
    if P > 0 and C > 0:
        kernels = _kernels(interpret)
        target_arg, opts, flags = _kernel_args(kernels, target, weight, options, C, loss)
        k = coef if coef is not None else loss  # (P,), may be a stride-0 view; unread without a gradient
        block_p = 4 if interpret else 1
        block_c = 8 if interpret else min(_next_pow2(C), 4096 if z.element_size() >= 4 else 8192)
        grid = (triton_cdiv(P, block_p),)
        kernels._ce_kernel[grid](
            z, z.stride(0), target_arg, k, k.stride(0), loss,
            grad if grad is not None else z, C if grad is None else grad.stride(0), P, C, opts,
            F=flags, COMPUTE_GRAD=want_grad, BLOCK_P=block_p, BLOCK_C=block_c,
            **({} if interpret else {"num_warps": 8 if block_c >= 2048 else 4}),
        )  # fmt: skip
    elif grad is not None:
        grad.zero_()
    return _chunked.reduce(loss, options.reduction, norm).to(logits.dtype), grad


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- fused linear head

# (BLOCK_P, BLOCK_V, BLOCK_D, num_warps, num_stages) on a GPU; untuned starting points for sm80+.
_GPU_BLOCKS = {"forward": (64, 128, 64, 8, 3), "rows": (64, 128, 64, 8, 2), "cols": (64, 128, 64, 8, 2)}
_INTERPRETER_BLOCKS = (16, 16, 16)  # tl.dot's smallest tile; small odd test shapes span several tiles


def _blocks(kind: str, interpret: bool) -> tuple[int, int, int, dict]:
    """(BLOCK_P, BLOCK_V, BLOCK_D, launch options) of a fused-head kernel."""
    if interpret:
        return (*_INTERPRETER_BLOCKS, {})
    bp, bv, bd, warps, stages = _GPU_BLOCKS[kind]
    return bp, bv, bd, {"num_warps": warps, "num_stages": stages}


_LinearResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]


def linear_cross_entropy_rows(
    x: Tensor,
    W: Tensor,
    target: Tensor,
    bias: Tensor | None,
    weight: Tensor | None,
    options: CEOptions,
    want: tuple[bool, bool, bool],
    grad_output: Tensor | None = None,
) -> _LinearResult:
    """Computes cross_entropy(x @ W.T + bias, target, weight, **options) and, as `want` =
    (grad_x, grad_W, grad_b) asks, its gradients for the upstream gradient `grad_output` (None: 1),
    without ever writing the (P, V) logits: x (P, D), W (V, D), bias (V,) or None, target (P,),
    (P, V) or a `SparseTarget` of (P, K) rows (validated by the caller). Returns (loss, grad_x,
    grad_W, grad_b); a gradient not asked for is None. Every result is reproducible run to run.
    """
    dtype = torch.promote_types(x.dtype, W.dtype)
    check(x.device, dtype)
    interpret = interpreting()
    kernels = _kernels(interpret)
    P, D = x.shape
    V = W.shape[0]
    want = (want[0], want[1], want[2] and bias is not None)
    xc, Wc = x.to(dtype).contiguous(), W.to(dtype).contiguous()
    b = None if bias is None else bias.contiguous()
    norm, coef = _chunked.prepare(target, weight, options, V, torch.float32, any(want), grad_output)
    dev = x.device
    loss = torch.zeros(P, dtype=torch.float32, device=dev)
    lse = torch.empty(P, dtype=torch.float32, device=dev)
    alpha = torch.empty(P, dtype=torch.float32, device=dev)
    need = coef is not None and any(want)
    gx = torch.zeros(P, D, dtype=torch.float32, device=dev) if need and want[0] else None
    gw = torch.zeros(V, D, dtype=torch.float32, device=dev) if need and want[1] else None
    gb = torch.zeros(V, dtype=torch.float32, device=dev) if need and want[2] else None
    if P > 0 and V > 0:
        dummy = loss
        target_arg, opts, flags = _kernel_args(kernels, target, weight, options, V, dummy)
        precision = _precision(dtype, interpret)

        def launch(kernel, kind: str, *outputs, **switches) -> None:
            """kernel(x, W, b, target, *outputs, P, V, D, options) over blocks of rows, or of classes for "cols"."""
            bp, bv, bd, tuning = _blocks(kind, interpret)
            head = kernels.Head(HAS_BIAS=b is not None, UPCAST=interpret, PRECISION=precision, BLOCK_D=bd)
            grid = (triton_cdiv(V, bv) if kind == "cols" else triton_cdiv(P, bp),)
            kernel[grid](
                xc, Wc, b if b is not None else dummy, target_arg, *outputs, P, V, D, opts,
                F=flags, H=head, BLOCK_P=bp, BLOCK_V=bv, **switches, **tuning,
            )  # fmt: skip

        launch(kernels._lce_forward, "forward", loss, lse, alpha)
        if need:
            # grad_W and grad_b by atomic adds in the rows kernel only where one block holds every row
            # (each element then receives one add: no contention, reproducible) and determinism is not
            # asked; otherwise by the class-tiled kernel, which recomputes the logits once more but
            # adds nothing atomically (on an H200, Llama-3 8B's head, 8192 x 4096 x 128256 bf16: 605 ms
            # against 666 ms with the atomic adds of 128 row blocks).
            one_block = P <= _blocks("rows", interpret)[0]
            atomic = one_block and not torch.are_deterministic_algorithms_enabled()
            atomic_w = gw is not None and atomic
            atomic_b = gb is not None and atomic
            saved = (lse, alpha, coef, coef.stride(0))
            if gx is not None or atomic_w or atomic_b:
                launch(
                    kernels._lce_backward_rows, "rows", *saved,
                    gx if gx is not None else dummy, gw if gw is not None else dummy, gb if gb is not None else dummy,
                    WANT_DX=gx is not None, ATOMIC_DW=atomic_w, ATOMIC_DB=atomic_b,
                )  # fmt: skip
            if not atomic and (gw is not None or gb is not None):
                launch(
                    kernels._lce_backward_cols, "cols", *saved,
                    gw if gw is not None else dummy, gb if gb is not None else dummy,
                    WANT_DW=gw is not None, WANT_DB=gb is not None,
                )  # fmt: skip
    return (
        _chunked.reduce(loss, options.reduction, norm).to(x.dtype),
        None if gx is None else gx.to(x.dtype),
        None if gw is None else gw.to(W.dtype),
        None if gb is None else gb.to(bias.dtype),
    )
