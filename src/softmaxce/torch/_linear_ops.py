"""torch.library custom ops of the fused linear head (`softmaxce::linear_cross_entropy_rows` and its
backward), with fake kernels and autograd: cross_entropy(x @ W.T + b, target) on rows, never holding
all P x V logits. The dispatch, the autograd design and the helpers are those of `_ops.py` (read its
docstring): float32/float64 CPU tensors on the NumPy engine's chunked head (`softmaxce._fused`, its
three products on torch's BLAS through `_products.TorchProducts`), CUDA tensors on the Triton kernels,
anything else on `_chunked.linear_ce_rows`; the forward computes (grad_x, grad_W, grad_b) with
upstream gradient 1 and the backward scales them in place; create_graph=True and torch.func take the
composite path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import _fused, _threads
from .._options import CEOptions
from .._sparse import SparseTarget
from . import _chunked, _composite, _triton
from ._ops import (
    _empty,
    _np,
    _np64,
    _np_target,
    _numpy_path,
    _options,
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

_LinearResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]


def _lce_numpy(
    x: Tensor,
    W: Tensor,
    target: Tensor | SparseTarget,
    bias: Tensor | None,
    weight: Tensor | None,
    opts: CEOptions,
    chunk_size: int,
    want: tuple[bool, bool, bool],
    grad_output: Tensor | None,
) -> _LinearResult:
    r = _fused.forward_linear(
        _np(x),
        _np(W),
        _np_target(target),
        _np(bias),
        _np64(weight),
        opts,
        chunk_size or None,
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
    x: Tensor,
    W: Tensor,
    target: Tensor | SparseTarget,
    bias: Tensor | None,
    weight: Tensor | None,
    opts: CEOptions,
    chunk_size: int,
    want: tuple[bool, bool, bool],
    grad_output: Tensor | None,
) -> _LinearResult:
    acc = _chunked.acc_dtype(x.dtype)
    norm, coef = _chunked.prepare(target, weight, opts, W.shape[0], acc, any(want), grad_output)
    loss, _, gx, gw, gb = _chunked.linear_ce_rows(x, W, bias, target, weight, opts, coef, want, chunk_size or None)
    return _chunked.reduce(loss, opts.reduction, norm).to(x.dtype), gx, gw, gb


def _lce_impl(x, W, target, bias, weight, opts, chunk_size, want, grad_output, backend) -> _LinearResult:
    if _use_triton(backend, x):
        return _triton.linear_cross_entropy_rows(x, W, target, bias, weight, opts, want, grad_output)
    if _numpy_path(x) and x.dtype == W.dtype and backend != "torch":
        with _threads.torch_threads():
            return _lce_numpy(x, W, target, bias, weight, opts, chunk_size, want, grad_output)
    return _lce_chunked(x, W, target, bias, weight, opts, chunk_size, want, grad_output)


def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return t if t is not None else _empty(like)


@torch.library.custom_op("softmaxce::linear_cross_entropy_rows", mutates_args=())
def _lce_fwd(
    x: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
    chunk_size: int,
    grad_x: bool,
    grad_w: bool,
    grad_b: bool,
    backend: str,
    target_values: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_x, grad_W, grad_b) with upstream 1; a gradient not asked for (or for "none") is empty.
    With target_values (P, K), target is a sparse target's (P, K) indices."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    want = (grad_x, grad_w, grad_b and bias is not None) if reduction != "none" else (False, False, False)
    target = _target(target, target_values)
    loss, gx, gw, gb = _lce_impl(x, linear_weight, target, bias, weight, opts, chunk_size, want, None, backend)
    return loss, _or_empty(gx, x), _or_empty(gw, linear_weight), _or_empty(gb, linear_weight)


def _fake_grads(
    x: Tensor, linear_weight: Tensor, bias: Tensor | None, want: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Fake (grad_x, grad_W, grad_b): the parameters' shapes where wanted, else empty."""
    gx = x.new_empty(x.shape) if want[0] else x.new_empty((0,))
    gw = linear_weight.new_empty(linear_weight.shape) if want[1] else linear_weight.new_empty((0,))
    gb = bias.new_empty(bias.shape) if want[2] and bias is not None else linear_weight.new_empty((0,))
    return gx, gw, gb


@_lce_fwd.register_fake
def _(x, linear_weight, target, bias, weight, *options):
    *_, reduction, _chunk_size, grad_x, grad_w, grad_b, _backend = options[:10]  # the op's trailing arguments
    reduced = reduction != "none"
    loss = x.new_empty(() if reduced else (x.shape[0],))
    return (loss, *_fake_grads(x, linear_weight, bias, (grad_x and reduced, grad_w and reduced, grad_b and reduced)))


@torch.library.custom_op("softmaxce::linear_cross_entropy_rows_backward", mutates_args=())
def _lce_bwd(
    x: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    weight: Tensor | None,
    grad_output: Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
    chunk_size: int,
    grad_x: bool,
    grad_w: bool,
    grad_b: bool,
    backend: str,
    target_values: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_W, grad_b) for the upstream gradient grad_output (0-d, or (P,) for "none")."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    want = (grad_x, grad_w, grad_b and bias is not None)
    target = _target(target, target_values)
    _, gx, gw, gb = _lce_impl(x, linear_weight, target, bias, weight, opts, chunk_size, want, grad_output, backend)
    return _or_empty(gx, x), _or_empty(gw, linear_weight), _or_empty(gb, linear_weight)


@_lce_bwd.register_fake
def _(x, linear_weight, target, bias, weight, grad_output, *options):
    *_, grad_x, grad_w, grad_b, _backend = options[:10]  # the op's trailing arguments
    return _fake_grads(x, linear_weight, bias, (grad_x, grad_w, grad_b))


def _linear_target_grad(x, W, bias, target, weight, grad_output, eps, cap, reduction, chunk_size) -> Tensor:
    """dJ/dt = -(1 - eps) k w ln a for a probability target, the logits re-formed chunk by chunk."""
    P, V = target.shape
    out = torch.empty_like(target)
    acc = _chunked.acc_dtype(x.dtype)
    k = _target_coef(grad_output, reduction, P, acc)
    for s in _chunked.chunks(P, _chunked.chunk_rows(P, V, acc, chunk_size or None)):
        z = x[s] @ W.T if bias is None else torch.addmm(bias, x[s], W.T)
        out[s] = _target_grad(z, target[s], weight, k[s] if reduction == "none" else k, eps, cap)
    return out


def _linear_values_grad(x, W, bias, target: SparseTarget, weight, grad_output, eps, cap, reduction, chunk_size):
    """dJ/dv = (1 - eps) k w_{i_k} (lse - z_{i_k}) for a sparse target, the logits re-formed chunk by chunk."""
    P, V = x.shape[0], W.shape[0]
    out = torch.empty_like(target.values)
    acc = _chunked.acc_dtype(x.dtype)
    k = _values_coef(grad_output, target, reduction, acc)
    for s in _chunked.chunks(P, _chunked.chunk_rows(P, V, acc, chunk_size or None)):
        z = x[s] @ W.T if bias is None else torch.addmm(bias, x[s], W.T)
        out[s] = _chunked.sparse_values_grad(z, _chunked.rows(target, s), weight, k[s], eps, cap or None)
    return out


def _lce_setup(ctx, inputs, output) -> None:
    (x, W, target, bias, weight, ignore_index, eps, lam, cap, reduction, chunk_size, *flags, backend, values) = inputs
    ctx.opts = (ignore_index, eps, lam, cap, reduction, chunk_size, backend)
    ctx.precomputed = reduction != "none"
    ctx.flags = tuple(flags)  # (grad_x, grad_W, grad_b) computed by the forward
    saved = output[1:] if ctx.precomputed else (None, None, None)
    ctx.save_for_backward(x, W, target, bias, weight, values, *saved)
    # the gradient outputs are not differentiable, and no zero-filled x- and W-sized gradients are made up
    # for them (that would be a transient copy of the gradients' size, and time to fill it)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _lce_backward(ctx, d_loss, d_gx, d_gw, d_gb) -> tuple[Tensor | None, ...]:
    if d_loss is None:  # nothing flows back through the loss (its gradient outputs are not differentiable)
        return (None,) * len(ctx.needs_input_grad)
    x, W, target, bias, weight, values, *saved = ctx.saved_tensors
    ignore_index, eps, lam, cap, reduction, chunk_size, backend = ctx.opts
    need_x, need_w, need_t, need_b = ctx.needs_input_grad[:4]
    need_v = values is not None and ctx.needs_input_grad[-1]
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable themselves
        opts = _options(ignore_index, eps, lam, cap, reduction)
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
        opts = (ignore_index, eps, lam, cap, reduction, chunk_size)
        got = _lce_bwd(x, W, target, bias, weight, d_loss, *opts, *need, backend, values)
        g = [t if n else None for n, t in zip(need, got, strict=True)]
    g_target = g_values = None
    if need_v:
        t = SparseTarget(target, values)
        g_values = _linear_values_grad(x, W, bias, t, weight, d_loss, eps, cap, reduction, chunk_size)
    elif need_t and values is None:
        g_target = _linear_target_grad(x, W, bias, target, weight, d_loss, eps, cap, reduction, chunk_size)
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
    loss = _lce_fwd(
        x,
        linear_weight,
        target,
        bias,
        weight,
        options.ignore_index,
        options.label_smoothing,
        options.z_loss,
        options.softcap or 0.0,
        options.reduction,
        int(chunk_size or 0),
        on and x.requires_grad,
        on and linear_weight.requires_grad,
        on and bias is not None and bias.requires_grad,
        backend or "",
        values,
    )[0]
    return loss
