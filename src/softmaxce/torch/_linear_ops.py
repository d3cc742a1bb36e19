"""torch.library custom ops of the fused linear head (`softmaxce::linear_cross_entropy_rows` and its
backward), with fake kernels and autograd: cross_entropy(x @ W.T + b, target) on rows, never holding
all P x V logits. The dispatch, the autograd design and the helpers are those of `_ops.py` (read its
docstring): float32/float64 CPU tensors on the NumPy engine's chunked head (`softmaxce._fused`, in
chunks of TORCH_CHUNK_BYTES of logits unless the caller sets the rows, its three products on torch's
BLAS through `_products.TorchProducts`), anything else on `_chunked.linear_ce_rows` (CUDA tensors
too: its products are cuBLAS's), the Triton kernels only with backend="triton" (on an H200 they took
12x torch eager's time at Llama-3 8B's head shape; see README "GPU"); the forward computes (grad_x,
grad_W, grad_b) with upstream gradient 1 and the backward scales them in place; create_graph=True
and torch.func take the composite path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import _engine, _fused, _resources, _threads
from .._options import CEOptions
from .._sparse import SparseTarget
from . import _chunked, _composite, _triton
from ._chunked import Problem
from ._ops import (
    _OPTIONS_SCHEMA,
    _VALUES_SCHEMA,
    _custom_op,
    _np,
    _np64,
    _np_target,
    _numpy_path,
    _op_options,
    _options,
    _or_empty,
    _refuse_weight_grad,
    _scale_saved,
    _target,
    _target_coef,
    _target_grad,
    _use_triton,
    _values_coef,
)
from ._products import TorchProducts

__all__ = ["linear_cross_entropy_rows"]


# ----------------------------------------------------------------------------- fused linear head on rows

_LinearResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]  # (loss, grad_x, grad_W, grad_b)
_Want = tuple[bool, bool, bool]  # which of (grad_x, grad_W, grad_b) to compute


# The chunk budget of the NumPy head when the torch front end calls it (its own default is
# `softmaxce._engine.CHUNK_BYTES`, 48 MiB). Per chunk, grad_W += G^T x reads and writes all of grad_W,
# so few rows per chunk make that update memory-bound: N = 4096, D = 1024, V = 128256, 2 threads,
# forward + backward against the three bare GEMMs: 98 rows (48 MiB) 1.21-1.31x, 392 rows 1.12x,
# 784 rows (384 MiB) 1.02x. The NumPy API keeps the smaller budget (its peak-memory goal). Where memory
# is short the budget shrinks to a quarter of what is available, down to the NumPy API's.
TORCH_CHUNK_BYTES = 384 * 2**20


def _torch_chunk_bytes() -> int:
    """TORCH_CHUNK_BYTES, or a quarter of the available memory if that is less (but at least the NumPy
    API's `_engine.CHUNK_BYTES`)."""
    available = _resources.available_memory()
    if available is None:
        return TORCH_CHUNK_BYTES
    return min(TORCH_CHUNK_BYTES, max(_engine.CHUNK_BYTES, available // 4))


def _lce_numpy(
    x: Tensor, W: Tensor, b: Tensor | None, problem: Problem, chunk_size: int, want: _Want, grad_output: Tensor | None
) -> _LinearResult:
    target, weight, opts = problem
    if not chunk_size:  # rows of float32 (float64) logits that fit the torch front end's budget
        chunk_size = _chunked.chunk_rows(x.shape[0], W.shape[0], x.dtype, budget=_torch_chunk_bytes())
    r = _fused.forward_linear(
        _np(x),
        _np(W),
        _np_target(target),
        _np(b),
        _np64(weight),
        opts,
        chunk_size,
        want_grad=any(want),
        want_stats=False,
        grad_output=_np64(grad_output),
        products=TorchProducts(),  # torch's BLAS pool, not a second one
    )
    grads = (r.grad_x, r.grad_weight, r.grad_bias)
    return (
        torch.from_numpy(np.asarray(r.loss)).to(x.dtype),
        *(torch.from_numpy(g) if wanted and g is not None else None for wanted, g in zip(want, grads, strict=True)),
    )


def _lce_chunked(
    x: Tensor, W: Tensor, b: Tensor | None, problem: Problem, chunk_size: int, want: _Want, grad_output: Tensor | None
) -> _LinearResult:
    target, weight, opts = problem
    acc = _chunked.acc_dtype(x.dtype)
    norm, coef = _chunked.prepare(target, weight, opts, W.shape[0], acc, any(want), grad_output)
    loss, _, gx, gw, gb = _chunked.linear_ce_rows(x, W, b, problem, coef, want, chunk_size or None)
    return _chunked.reduce(loss, opts.reduction, norm).to(x.dtype), gx, gw, gb


def _lce_impl(x, W, bias, problem, chunk_size, want, grad_output, backend) -> _LinearResult:
    """(loss, grad_x, grad_W, grad_b), a gradient None where not wanted, on the backend for these
    tensors (`_ops.py`'s dispatch)."""
    if _use_triton(backend, x, automatic=False):  # by name only: not yet faster than the chunked path
        target, weight, opts = problem
        return _triton.linear_cross_entropy_rows(x, W, target, bias, weight, opts, want, grad_output)
    if _numpy_path(x) and x.dtype == W.dtype and backend != "torch":
        with _threads.torch_threads():
            return _lce_numpy(x, W, bias, problem, chunk_size, want, grad_output)
    return _lce_chunked(x, W, bias, problem, chunk_size, want, grad_output)


# The two ops take the same arguments, the backward's with grad_output after the tensors: the loss
# options as `_ops._OPTIONS_SCHEMA` declares them, then the head's own; `_Args` names them.
_TENSORS = "Tensor x, Tensor linear_weight, Tensor target, Tensor? bias, Tensor? weight"
_ARGS = f"{_OPTIONS_SCHEMA}, SymInt chunk_size, bool grad_x, bool grad_w, bool grad_b, str backend, {_VALUES_SCHEMA}"


class _Args(NamedTuple):
    """The ops' arguments after their tensors (`_ARGS`), as the op functions receive them."""

    ignore_index: int
    eps: float  # label_smoothing
    lam: float  # z_loss
    cap: float  # softcap, 0.0: none
    reduction: str
    chunk_size: int  # rows per chunk, 0: as many as fit the CHUNK_BYTES budget
    grad_x: bool
    grad_w: bool
    grad_b: bool
    backend: str
    values: Tensor | None = None  # target_values (the dispatcher leaves out a None)

    def options(self) -> CEOptions:
        return _options(self.ignore_index, self.eps, self.lam, self.cap, self.reduction)

    def wanted(self, bias: Tensor | None, forward: bool) -> _Want:
        """The gradients an op computes: those asked for (grad_b only with a bias); the forward's none
        for "none" (the backward op computes them with the per-position upstream gradient)."""
        if forward and self.reduction == "none":
            return (False, False, False)
        return (self.grad_x, self.grad_w, self.grad_b and bias is not None)


def _lce_op(x, W, target, bias, weight, grad_output, args: _Args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Both ops: (loss, grad_x, grad_W, grad_b) for the upstream gradient grad_output (None: 1, the
    forward), a gradient not computed empty (an op's output cannot be None)."""
    want = args.wanted(bias, forward=grad_output is None)
    problem = Problem(_target(target, args.values), weight, args.options())
    loss, gx, gw, gb = _lce_impl(x, W, bias, problem, args.chunk_size, want, grad_output, args.backend)
    return loss, _or_empty(gx, x), _or_empty(gw, W), _or_empty(gb, W)


def _lce_fake(x, W, bias, grad_output, args: _Args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`_lce_op`'s outputs as fake tensors: the parameters' shapes where computed, else empty."""
    want = args.wanted(bias, forward=grad_output is None)
    loss = x.new_empty(() if args.reduction != "none" else (x.shape[0],))
    gx = x.new_empty(x.shape) if want[0] else x.new_empty((0,))
    gw = W.new_empty(W.shape) if want[1] else W.new_empty((0,))
    gb = bias.new_empty(bias.shape) if want[2] else W.new_empty((0,))
    return loss, gx, gw, gb


@_custom_op("softmaxce::linear_cross_entropy_rows", f"({_TENSORS}, {_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)")
def _lce_fwd(x, linear_weight, target, bias, weight, *args):
    """(loss, grad_x, grad_W, grad_b) with upstream 1; a gradient not asked for (or for "none") is empty.
    With target_values (P, K), target is a sparse target's (P, K) indices."""
    return _lce_op(x, linear_weight, target, bias, weight, None, _Args(*args))


@_lce_fwd.register_fake
def _(x, linear_weight, target, bias, weight, *args):
    return _lce_fake(x, linear_weight, bias, None, _Args(*args))


@_custom_op(
    "softmaxce::linear_cross_entropy_rows_backward",
    f"({_TENSORS}, Tensor grad_output, {_ARGS}) -> (Tensor, Tensor, Tensor)",
)
def _lce_bwd(x, linear_weight, target, bias, weight, grad_output, *args):
    """(grad_x, grad_W, grad_b) for the upstream gradient grad_output (0-d, or (P,) for "none")."""
    return _lce_op(x, linear_weight, target, bias, weight, grad_output, _Args(*args))[1:]


@_lce_bwd.register_fake
def _(x, linear_weight, target, bias, weight, grad_output, *args):
    return _lce_fake(x, linear_weight, bias, grad_output, _Args(*args))[1:]


def _logit_chunks(x: Tensor, W: Tensor, bias: Tensor | None, chunk_size: int) -> Iterator[tuple[slice, Tensor]]:
    """(s, z) chunk by chunk: rows s and their logits z = x[s] W^T + b (n, V), re-formed."""
    P, V = x.shape[0], W.shape[0]
    for s in _chunked.chunks(P, _chunked.chunk_rows(P, V, _chunked.acc_dtype(x.dtype), chunk_size or None)):
        yield s, (x[s] @ W.T if bias is None else torch.addmm(bias, x[s], W.T))


def _linear_target_grad(x, W, bias, target: Tensor, weight, grad_output, args: _Args) -> Tensor:
    """dJ/dt = -(1 - eps) k w ln a for a probability target, the logits re-formed chunk by chunk."""
    out = torch.empty_like(target)
    k = _target_coef(grad_output, args.reduction, target.shape[0], _chunked.acc_dtype(x.dtype))
    for s, z in _logit_chunks(x, W, bias, args.chunk_size):
        out[s] = _target_grad(z, target[s], weight, k[s] if args.reduction == "none" else k, args.eps, args.cap)
    return out


def _linear_values_grad(x, W, bias, target: SparseTarget, weight, grad_output, args: _Args) -> Tensor:
    """dJ/dv = (1 - eps) k w_{i_k} (lse - z_{i_k}) for a sparse target, the logits re-formed chunk by chunk."""
    out = torch.empty_like(target.values)
    k = _values_coef(grad_output, target, args.reduction, _chunked.acc_dtype(x.dtype))
    for s, z in _logit_chunks(x, W, bias, args.chunk_size):
        out[s] = _chunked.sparse_values_grad(z, _chunked.rows(target, s), weight, k[s], args.eps, args.cap or None)
    return out


def _lce_setup(ctx, inputs, output) -> None:
    x, W, target, bias, weight, *args = inputs
    args = _Args(*args)
    ctx.args = args._replace(values=None)  # the values are saved as a tensor
    ctx.precomputed = args.reduction != "none"
    ctx.flags = (args.grad_x, args.grad_w, args.grad_b)  # (grad_x, grad_W, grad_b) computed by the forward
    saved = output[1:] if ctx.precomputed else (None, None, None)
    ctx.save_for_backward(x, W, target, bias, weight, args.values, *saved)
    # the gradient outputs are not differentiable, and no zero-filled x- and W-sized gradients are made up
    # for them (that would be a transient copy of the gradients' size, and time to fill it)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _lce_backward(ctx, d_loss, d_gx, d_gw, d_gb) -> tuple[Tensor | None, ...]:
    if d_loss is None:  # nothing flows back through the loss (its gradient outputs are not differentiable)
        return (None,) * len(ctx.needs_input_grad)
    x, W, target, bias, weight, values, *saved = ctx.saved_tensors
    args: _Args = ctx.args
    need_x, need_w, need_t, need_b = ctx.needs_input_grad[:4]
    need_v = values is not None and ctx.needs_input_grad[-1]
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable themselves
        opts = args.options()
        if values is not None:  # the sparse target's values vary, its indices are fixed
            gx, gw, gv, gb = _composite.vjp(
                lambda x_, w_, v_, b_: _composite.linear_cross_entropy_rows(
                    x_, w_, SparseTarget(target, v_), b_, weight, opts
                ),
                (x, W, values, bias),
                (need_x, need_w, need_v, need_b),
                d_loss,
            )
            return gx, gw, None, gb, *([None] * 11), gv
        gx, gw, gt, gb = _composite.vjp(
            lambda x_, w_, t_, b_: _composite.linear_cross_entropy_rows(x_, w_, t_, b_, weight, opts),
            (x, W, target, bias),
            (need_x, need_w, need_t, need_b),
            d_loss,
        )
        return gx, gw, gt, gb, *([None] * 11)
    need = (need_x, need_w, need_b)
    g = [None, None, None]
    if ctx.precomputed and all(flag or not n for n, flag in zip(need, ctx.flags, strict=True)):
        # the forward computed (grad_x, grad_W, grad_b) with upstream 1: scaled in place, once
        g = _scale_saved(ctx, [s if n else None for n, s in zip(need, saved, strict=True)], d_loss) or g
    if any(n and s is None for n, s in zip(need, g, strict=True)):
        asked = args._replace(grad_x=need_x, grad_w=need_w, grad_b=need_b, values=values)
        got = _lce_bwd(x, W, target, bias, weight, d_loss, *asked)
        g = [t if n else None for n, t in zip(need, got, strict=True)]
    g_target = g_values = None
    if need_v:
        t = SparseTarget(target, values)
        g_values = _linear_values_grad(x, W, bias, t, weight, d_loss, args)
    elif need_t and values is None:
        g_target = _linear_target_grad(x, W, bias, target, weight, d_loss, args)
    return g[0], g[1], g_target, g[2], *([None] * 11), g_values  # a trailing None past the inputs is allowed


_lce_fwd.register_autograd(_lce_backward, setup_context=_lce_setup)


def linear_cross_entropy_rows(
    x: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    weight: Tensor | None,
    options: CEOptions,
    chunk_size: int | None = None,
    backend: str | None = None,
    values: Tensor | None = None,
) -> Tensor:
    """The fused head on rows: x (P, D), linear_weight (V, D), target (P,) or (P, V), or with `values`
    (P, K) a sparse target's (P, K) indices (validated). Returns the reduced loss (0-d) or the (P,)
    losses; never forms all P x V logits (except under a torch.func transform or forward AD, or when
    a probability target's class weight needs a gradient, where the composite torch path computes
    it). backend: "triton", "torch" or None (automatic)."""
    weight_grad = _refuse_weight_grad(weight, values is not None or target.dim() == 2)
    if weight_grad or _composite.transforms_active(x, linear_weight, target, bias, weight, values):
        t = _target(target, values)
        return _composite.linear_cross_entropy_rows(x, linear_weight, t, bias, weight, options)
    on = torch.is_grad_enabled()
    wanted = [on and t is not None and t.requires_grad for t in (x, linear_weight, bias)]  # grad_x, grad_W, grad_b
    args = _Args(*_op_options(options), int(chunk_size or 0), *wanted, backend or "", values)
    return _lce_fwd(x, linear_weight, target, bias, weight, *args)[0]
