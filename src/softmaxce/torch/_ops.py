"""torch.library custom ops for softmax cross-entropy and the fused linear head, with fake kernels
and autograd, so that models using them run under torch.compile(fullgraph=True).

All ops work in row form: logits (P, C) or x (P, D), one row per position, class axis last; the
front ends (`_functional.py`) validate and reshape. Each op dispatches on the data:

- float32 / float64 CPU tensors: the NumPy engine (softmaxce._engine / softmaxce._linear) on
  zero-copy `tensor.numpy()` views;
- anything else (float16 / bfloat16 CPU, any other device): `_chunked.py`, the same algorithm in
  torch operations with float32 accumulation.

Autograd: for reduction "mean"/"sum" the forward op computes dL/dlogits (or the fused head's three
gradients) in the same pass with upstream gradient 1, and backward multiplies by grad_output. For
"none" the backward op recomputes with the per-position upstream gradient. The gradient with respect
to a probability target is dL/dt = -(1 - eps) * k * w * ln a (pure torch ops in backward).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import _engine
from .._options import CEOptions
from .._validation import Layout
from . import _chunked

__all__ = ["cross_entropy_rows", "linear_cross_entropy_rows"]


def _numpy_path(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _np(t: Tensor | None):
    return None if t is None else t.detach().numpy()


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


def _options(ignore_index: int, eps: float, lam: float, cap: float, reduction: str) -> CEOptions:
    return CEOptions(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=eps,
        z_loss=lam,
        softcap=cap if cap > 0.0 else None,
    )


# ----------------------------------------------------------------------------- cross_entropy on rows


def _ce_numpy(
    logits: Tensor, target: Tensor, weight: Tensor | None, opts: CEOptions, want_grad: bool, grad_output: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    P, C = logits.shape
    probability = target.dim() == 2
    dtype = np.dtype(np.float64) if logits.dtype == torch.float64 else np.dtype(np.float32)
    layout = Layout(C, 1, (P,), probability)
    rows = _engine.logits_rows(_np(logits), layout, dtype)  # a view for contiguous logits
    w_np = None if weight is None else weight.detach().to(torch.float64).numpy()
    target_rows, w, norm = _engine.prepare_targets(layout, _np(target), w_np, opts, dtype)
    if opts.reduction != "mean":
        norm = 1.0
    coef = grad = None
    if want_grad:
        go = None if grad_output is None else _np(grad_output.to(torch.float64))
        coef = _engine.row_coefficients(opts.reduction, norm, go, (P,), P)
        grad = np.empty((P, C), dtype=dtype)
    r = _engine.run_rows(rows, target_rows, probability, w, opts, coef, grad, False)
    if opts.reduction == "none":
        loss = torch.from_numpy(r.loss.astype(dtype))
    else:
        total = r.loss.sum()
        if opts.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total / np.float64(norm)  # as PyTorch: 0/0 is NaN, x/0 is inf
        loss = torch.tensor(total, dtype=logits.dtype)
    return loss, None if grad is None else torch.from_numpy(grad)


def _ce_chunked(
    logits: Tensor, target: Tensor, weight: Tensor | None, opts: CEOptions, want_grad: bool, grad_output: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    P, C = logits.shape
    probability = target.dim() == 2
    acc = _chunked.acc_dtype(logits.dtype)
    if not probability:
        _chunked.check_targets(target, C, opts.ignore_index)
    norm = _chunked.normalizer(target, weight, opts.ignore_index, probability, C, acc)
    coef = None
    if want_grad:
        coef = _chunked.row_coef(opts.reduction, norm, grad_output, P, acc, logits.device)
    loss, grad, _ = _chunked.ce_rows(
        logits,
        target,
        weight,
        probability,
        opts.ignore_index,
        opts.label_smoothing,
        opts.z_loss,
        opts.softcap or 0.0,
        coef,
    )
    if opts.reduction != "none":
        loss = loss.sum()
        if opts.reduction == "mean":
            loss = loss / norm
    return loss.to(logits.dtype), grad


def _ce_impl(logits, target, weight, opts, want_grad, grad_output):
    run = _ce_numpy if _numpy_path(logits) else _ce_chunked
    return run(logits, target, weight, opts, want_grad, grad_output)


@torch.library.custom_op("softmaxce::cross_entropy_rows", mutates_args=())
def _ce_fwd(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """(loss, grad): loss reduced (0-d) or (P,); grad = dloss/dlogits (P, C) with upstream 1 when
    compute_grad and reduction != "none", else an empty tensor."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    want = compute_grad and reduction != "none"
    loss, grad = _ce_impl(logits, target, weight, opts, want, None)
    return loss, grad if grad is not None else _empty(logits)


@_ce_fwd.register_fake
def _(logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, compute_grad):
    P, C = logits.shape
    loss = logits.new_empty((P,) if reduction == "none" else ())
    grad = logits.new_empty((P, C)) if compute_grad and reduction != "none" else logits.new_empty((0,))
    return loss, grad


@torch.library.custom_op("softmaxce::cross_entropy_rows_backward", mutates_args=())
def _ce_bwd(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    grad_output: Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
) -> Tensor:
    """dJ/dlogits (P, C) for the upstream gradient grad_output (0-d, or (P,) for "none")."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    return _ce_impl(logits, target, weight, opts, True, grad_output)[1]


@_ce_bwd.register_fake
def _(logits, target, weight, grad_output, ignore_index, label_smoothing, z_loss, softcap, reduction):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _target_grad(
    logits: Tensor, target: Tensor, weight: Tensor | None, grad_output: Tensor, eps: float, cap: float, reduction: str
) -> Tensor:
    """dJ/dt = -(1 - eps) * k_n * w * ln a for probability targets t (P, C); k_n the upstream coefficient."""
    acc = _chunked.acc_dtype(logits.dtype)
    z = logits.to(acc)
    if cap > 0.0:
        z = torch.tanh(z / cap) * cap
    log_a = torch.log_softmax(z, dim=1)
    k = grad_output.to(acc)
    if reduction == "mean":
        k = k / logits.shape[0]
    k = k.reshape(-1, 1) if reduction == "none" else k
    g = log_a * (-(1.0 - eps) * k)
    if weight is not None:
        g = g * weight.to(acc)
    return g.to(target.dtype)


def _ce_setup(ctx, inputs, output):
    logits, target, weight, ignore_index, eps, lam, cap, reduction, compute_grad = inputs
    ctx.opts = (ignore_index, eps, lam, cap, reduction)
    ctx.precomputed = compute_grad and reduction != "none"
    grad = output[1] if ctx.precomputed else None
    ctx.save_for_backward(logits, target, weight, grad)


def _ce_backward(ctx, d_loss, d_grad):
    logits, target, weight, grad = ctx.saved_tensors
    ignore_index, eps, lam, cap, reduction = ctx.opts
    g_logits = g_target = None
    if ctx.needs_input_grad[0]:
        if ctx.precomputed:
            g_logits = grad * d_loss.to(grad.dtype)  # the forward computed dloss/dlogits with upstream 1
        else:
            g_logits = _ce_bwd(logits, target, weight, d_loss, ignore_index, eps, lam, cap, reduction)
    if ctx.needs_input_grad[1]:
        g_target = _target_grad(logits, target, weight, d_loss, eps, cap, reduction)
    return g_logits, g_target, None, None, None, None, None, None, None


_ce_fwd.register_autograd(_ce_backward, setup_context=_ce_setup)


def cross_entropy_rows(logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions) -> Tensor:
    """Softmax cross-entropy on rows: logits (P, C), target (P,) class indices or (P, C)
    probabilities (already validated). Returns the reduced loss (0-d) or the (P,) losses."""
    needs = torch.is_grad_enabled() and logits.requires_grad
    loss, _ = _ce_fwd(
        logits,
        target,
        weight,
        options.ignore_index,
        options.label_smoothing,
        options.z_loss,
        options.softcap or 0.0,
        options.reduction,
        needs,
    )
    return loss


# ----------------------------------------------------------------------------- fused linear head on rows


def _lce_numpy(
    x,
    W,
    target,
    bias,
    weight,
    opts: CEOptions,
    chunk_size: int,
    want: tuple[bool, bool, bool],
    grad_output: Tensor | None,
):
    from .._linear import linear_cross_entropy, linear_cross_entropy_and_grad

    kwargs = dict(
        bias=_np(bias),
        weight=None if weight is None else weight.detach().to(torch.float64).numpy(),
        ignore_index=opts.ignore_index,
        reduction=opts.reduction,
        label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss,
        softcap=opts.softcap,
        chunk_size=chunk_size or None,
    )
    if not any(want):
        loss = linear_cross_entropy(_np(x), _np(W), _np(target), **kwargs)
        return torch.from_numpy(np.asarray(loss, dtype=np.result_type(loss))).to(x.dtype), None, None, None
    go = None if grad_output is None else grad_output.detach().to(torch.float64).numpy()
    loss, gx, gw, gb = linear_cross_entropy_and_grad(_np(x), _np(W), _np(target), grad_output=go, **kwargs)
    loss = torch.from_numpy(np.asarray(loss)).to(x.dtype)
    return (
        loss,
        torch.from_numpy(gx) if want[0] else None,
        torch.from_numpy(gw) if want[1] else None,
        torch.from_numpy(gb) if want[2] and gb is not None else None,
    )


def _lce_chunked(
    x,
    W,
    target,
    bias,
    weight,
    opts: CEOptions,
    chunk_size: int,
    want: tuple[bool, bool, bool],
    grad_output: Tensor | None,
):
    P = x.shape[0]
    V = W.shape[0]
    probability = target.dim() == 2
    acc = _chunked.acc_dtype(x.dtype)
    if not probability:
        _chunked.check_targets(target, V, opts.ignore_index)
    norm = _chunked.normalizer(target, weight, opts.ignore_index, probability, V, acc)
    coef = _chunked.row_coef(opts.reduction, norm, grad_output, P, acc, x.device) if any(want) else None
    loss, _, gx, gw, gb = _chunked.linear_ce_rows(
        x,
        W,
        bias,
        target,
        weight,
        probability,
        opts.ignore_index,
        opts.label_smoothing,
        opts.z_loss,
        opts.softcap or 0.0,
        coef,
        want,
        chunk_size or None,
    )
    if opts.reduction != "none":
        loss = loss.sum()
        if opts.reduction == "mean":
            loss = loss / norm
    return loss.to(x.dtype), gx, gw, gb


def _lce_impl(x, W, target, bias, weight, opts, chunk_size, want, grad_output):
    run = _lce_numpy if _numpy_path(x) and x.dtype == W.dtype else _lce_chunked
    return run(x, W, target, bias, weight, opts, chunk_size, want, grad_output)


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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad_x, grad_W, grad_b) with upstream 1; a gradient not asked for (or for "none") is empty."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    want = (grad_x, grad_w, grad_b and bias is not None) if reduction != "none" else (False, False, False)
    loss, gx, gw, gb = _lce_impl(x, linear_weight, target, bias, weight, opts, chunk_size, want, None)
    return loss, _or_empty(gx, x), _or_empty(gw, linear_weight), _or_empty(gb, linear_weight)


@_lce_fwd.register_fake
def _(
    x,
    linear_weight,
    target,
    bias,
    weight,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
    chunk_size,
    grad_x,
    grad_w,
    grad_b,
):
    P = x.shape[0]
    reduced = reduction != "none"
    loss = x.new_empty((P,) if not reduced else ())
    gx = x.new_empty(x.shape) if grad_x and reduced else x.new_empty((0,))
    gw = linear_weight.new_empty(linear_weight.shape) if grad_w and reduced else linear_weight.new_empty((0,))
    gb = bias.new_empty(bias.shape) if grad_b and reduced and bias is not None else linear_weight.new_empty((0,))
    return loss, gx, gw, gb


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
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_W, grad_b) for the upstream gradient grad_output (0-d, or (P,) for "none")."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    want = (grad_x, grad_w, grad_b and bias is not None)
    _, gx, gw, gb = _lce_impl(x, linear_weight, target, bias, weight, opts, chunk_size, want, grad_output)
    return _or_empty(gx, x), _or_empty(gw, linear_weight), _or_empty(gb, linear_weight)


@_lce_bwd.register_fake
def _(
    x,
    linear_weight,
    target,
    bias,
    weight,
    grad_output,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
    chunk_size,
    grad_x,
    grad_w,
    grad_b,
):
    gx = x.new_empty(x.shape) if grad_x else x.new_empty((0,))
    gw = linear_weight.new_empty(linear_weight.shape) if grad_w else linear_weight.new_empty((0,))
    gb = bias.new_empty(bias.shape) if grad_b and bias is not None else linear_weight.new_empty((0,))
    return gx, gw, gb


def _linear_target_grad(x, W, bias, target, weight, grad_output, eps, cap, reduction, chunk_size) -> Tensor:
    """dJ/dt = -(1 - eps) k w ln a for a probability target, the logits re-formed chunk by chunk."""
    P, V = target.shape
    out = torch.empty_like(target)
    step = _chunked.chunk_rows(P, V, chunk_size or None)
    go = grad_output.reshape(-1) if reduction == "none" else grad_output
    for s0 in range(0, P, step):
        s1 = min(s0 + step, P)
        z = x[s0:s1] @ W.T if bias is None else torch.addmm(bias, x[s0:s1], W.T)
        out[s0:s1] = _target_grad(
            z,
            target[s0:s1],
            weight,
            go[s0:s1] if reduction == "none" else go,
            eps,
            cap,
            "sum" if reduction == "mean" else reduction,
        ) / (P if reduction == "mean" else 1)
    return out


def _lce_setup(ctx, inputs, output):
    (x, W, target, bias, weight, ignore_index, eps, lam, cap, reduction, chunk_size, grad_x, grad_w, grad_b) = inputs
    ctx.opts = (ignore_index, eps, lam, cap, reduction, chunk_size)
    ctx.precomputed = reduction != "none"
    ctx.flags = (grad_x, grad_w, grad_b)
    saved = output[1:] if ctx.precomputed else (None, None, None)
    ctx.save_for_backward(x, W, target, bias, weight, *saved)


def _lce_backward(ctx, d_loss, d_gx, d_gw, d_gb):
    x, W, target, bias, weight, gx, gw, gb = ctx.saved_tensors
    ignore_index, eps, lam, cap, reduction, chunk_size = ctx.opts
    need_x, need_w, need_t, need_b = (
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        ctx.needs_input_grad[2],
        ctx.needs_input_grad[3],
    )
    g = [None, None, None]
    have = (
        ctx.precomputed
        and (not need_x or ctx.flags[0])
        and (not need_w or ctx.flags[1])
        and (not need_b or ctx.flags[2])
    )
    if have:
        if need_x:
            g[0] = gx * d_loss.to(gx.dtype)
        if need_w:
            g[1] = gw * d_loss.to(gw.dtype)
        if need_b:
            g[2] = gb * d_loss.to(gb.dtype)
    elif need_x or need_w or need_b:
        bx, bw, bb = _lce_bwd(
            x,
            W,
            target,
            bias,
            weight,
            d_loss,
            ignore_index,
            eps,
            lam,
            cap,
            reduction,
            chunk_size,
            need_x,
            need_w,
            need_b,
        )
        g = [bx if need_x else None, bw if need_w else None, bb if need_b else None]
    g_target = None
    if need_t:
        g_target = _linear_target_grad(x, W, bias, target, weight, d_loss, eps, cap, reduction, chunk_size)
    return g[0], g[1], g_target, g[2], None, None, None, None, None, None, None, None, None, None


_lce_fwd.register_autograd(_lce_backward, setup_context=_lce_setup)


def linear_cross_entropy_rows(
    x: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    weight: Tensor | None,
    options: CEOptions,
    chunk_size: int | None = None,
) -> Tensor:
    """The fused head on rows: x (P, D), linear_weight (V, D), target (P,) or (P, V) (validated).
    Returns the reduced loss (0-d) or the (P,) losses; never forms all P x V logits."""
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
    )[0]
    return loss
