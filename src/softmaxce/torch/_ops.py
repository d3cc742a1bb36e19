"""torch.library custom ops for softmax cross-entropy and the fused linear head, with fake kernels
and autograd, so that models using them run under torch.compile(fullgraph=True).

All ops work in row form: logits (P, C) or x (P, D), one row per position, class axis last; the
front ends (`_functional.py`) validate and reshape. Each op dispatches on the data:

- float32 / float64 CPU tensors: the NumPy engine (softmaxce._engine, and softmaxce._fused for the
  fused head) on zero-copy `tensor.numpy()` views;
- anything else (float16 / bfloat16 CPU, any other device): `_chunked.py`, the same algorithm in
  torch operations with float32 accumulation.

Autograd: for reduction "mean"/"sum" the forward op computes dL/dlogits (or the fused head's three
gradients) in the same pass with upstream gradient 1, and backward multiplies by grad_output. For
"none" the backward op recomputes with the per-position upstream gradient. The gradient with respect
to a probability target is dL/dt = -(1 - eps) * k * w * ln a (`_rowmath.target_grad`, in backward).

Higher order: when the backward runs with grad mode on (create_graph=True), it is instead the
vector-Jacobian product of the composite loss (`_composite.vjp`), built from differentiable torch
ops, so second and higher derivatives are exact. Under torch.func transforms and forward AD the
rows functions below take the composite path outright (the ops have no vmap or forward-mode rule).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import _engine, _fused
from .._options import CEOptions
from .._validation import Layout
from . import _chunked, _composite
from . import _rowmath as rm

__all__ = ["cross_entropy_rows", "linear_cross_entropy_rows"]


def _numpy_path(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().numpy()


def _np64(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).numpy()


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
    target_rows, w, norm = _engine.prepare_targets(layout, _np(target), _np64(weight), opts, dtype)
    if opts.reduction != "mean":
        norm = 1.0
    coef = grad = None
    if want_grad:
        coef = _engine.row_coefficients(opts.reduction, norm, _np64(grad_output), (P,), P)
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
    acc = _chunked.acc_dtype(logits.dtype)
    norm, coef = _chunked.prepare(target, weight, opts, logits.shape[1], acc, want_grad, grad_output)
    loss, grad, _ = _chunked.ce_rows(logits, target, weight, opts, coef)
    return _chunked.reduce(loss, opts.reduction, norm).to(logits.dtype), grad


def _ce_impl(
    logits: Tensor, target: Tensor, weight: Tensor | None, opts: CEOptions, want_grad: bool, grad_output: Tensor | None
) -> tuple[Tensor, Tensor | None]:
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


def _target_coef(grad_output: Tensor, reduction: str, P: int, acc: torch.dtype) -> Tensor:
    """k_n = dJ/dl_n for the target gradient: 0-d ("mean": grad_output / P, "sum") or (P, 1) ("none")."""
    k = grad_output.to(acc)
    if reduction == "mean":
        k = k / P  # probability targets: "mean" divides by the number of positions
    return k.reshape(-1, 1) if reduction == "none" else k


def _target_grad(logits: Tensor, target: Tensor, weight: Tensor | None, k: Tensor, eps: float, cap: float) -> Tensor:
    """dJ/dt = -(1 - eps) * k_n * w * ln a for probability targets t (n, C), k from `_target_coef`."""
    acc = _chunked.acc_dtype(logits.dtype)
    z = logits.to(acc, copy=cap > 0.0)
    if cap > 0.0:
        rm.soft_cap_(z, cap)
    log_a, _, _ = rm.log_softmax(z)
    return rm.target_grad(log_a, k, None if weight is None else weight.to(acc), eps).to(target.dtype)


def _ce_setup(ctx, inputs, output) -> None:
    logits, target, weight, ignore_index, eps, lam, cap, reduction, compute_grad = inputs
    ctx.opts = (ignore_index, eps, lam, cap, reduction)
    ctx.precomputed = compute_grad and reduction != "none"
    grad = output[1] if ctx.precomputed else None
    ctx.save_for_backward(logits, target, weight, grad)


def _ce_backward(ctx, d_loss, d_grad) -> tuple[Tensor | None, ...]:
    logits, target, weight, grad = ctx.saved_tensors
    ignore_index, eps, lam, cap, reduction = ctx.opts
    g_logits = g_target = None
    if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable itself
        opts = _options(ignore_index, eps, lam, cap, reduction)
        g_logits, g_target = _composite.vjp(
            lambda z, t: _composite.cross_entropy_rows(z, t, weight, opts),
            (logits, target),
            ctx.needs_input_grad[:2],
            d_loss,
        )
        return g_logits, g_target, None, None, None, None, None, None, None
    if ctx.needs_input_grad[0]:
        if ctx.precomputed:
            g_logits = grad * d_loss.to(grad.dtype)  # the forward computed dloss/dlogits with upstream 1
        else:
            g_logits = _ce_bwd(logits, target, weight, d_loss, ignore_index, eps, lam, cap, reduction)
    if ctx.needs_input_grad[1]:
        k = _target_coef(d_loss, reduction, logits.shape[0], _chunked.acc_dtype(logits.dtype))
        g_target = _target_grad(logits, target, weight, k, eps, cap)
    return g_logits, g_target, None, None, None, None, None, None, None


_ce_fwd.register_autograd(_ce_backward, setup_context=_ce_setup)


def cross_entropy_rows(logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions) -> Tensor:
    """Softmax cross-entropy on rows: logits (P, C), target (P,) class indices or (P, C)
    probabilities (already validated). Returns the reduced loss (0-d) or the (P,) losses.

    Under a torch.func transform or forward AD the composite torch path computes it (`_composite.py`);
    otherwise the custom op, whose backward is exact to any order."""
    if _composite.transforms_active(logits, target, weight):
        return _composite.cross_entropy_rows(logits, target, weight, options)
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

_LinearResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]


def _lce_numpy(
    x: Tensor,
    W: Tensor,
    target: Tensor,
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
        _np(target),
        _np(bias),
        _np64(weight),
        opts,
        chunk_size or None,
        want_grad=any(want),
        want_stats=False,
        grad_output=_np64(grad_output),
    )
    grads = (r.grad_x, r.grad_weight, r.grad_bias)
    return (
        torch.from_numpy(np.asarray(r.loss)).to(x.dtype),
        *(torch.from_numpy(g) if wanted and g is not None else None for wanted, g in zip(want, grads, strict=True)),
    )


def _lce_chunked(
    x: Tensor,
    W: Tensor,
    target: Tensor,
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


def _lce_impl(x, W, target, bias, weight, opts, chunk_size, want, grad_output) -> _LinearResult:
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
    *_, reduction, _chunk_size, grad_x, grad_w, grad_b = options  # the op's trailing arguments
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
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_W, grad_b) for the upstream gradient grad_output (0-d, or (P,) for "none")."""
    opts = _options(ignore_index, label_smoothing, z_loss, softcap, reduction)
    want = (grad_x, grad_w, grad_b and bias is not None)
    _, gx, gw, gb = _lce_impl(x, linear_weight, target, bias, weight, opts, chunk_size, want, grad_output)
    return _or_empty(gx, x), _or_empty(gw, linear_weight), _or_empty(gb, linear_weight)


@_lce_bwd.register_fake
def _(x, linear_weight, target, bias, weight, grad_output, *options):
    *_, grad_x, grad_w, grad_b = options  # the op's trailing arguments
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


def _lce_setup(ctx, inputs, output) -> None:
    (x, W, target, bias, weight, ignore_index, eps, lam, cap, reduction, chunk_size, grad_x, grad_w, grad_b) = inputs
    ctx.opts = (ignore_index, eps, lam, cap, reduction, chunk_size)
    ctx.precomputed = reduction != "none"
    ctx.flags = (grad_x, grad_w, grad_b)
    saved = output[1:] if ctx.precomputed else (None, None, None)
    ctx.save_for_backward(x, W, target, bias, weight, *saved)


def _lce_backward(ctx, d_loss, d_gx, d_gw, d_gb) -> tuple[Tensor | None, ...]:
    x, W, target, bias, weight, *saved = ctx.saved_tensors
    ignore_index, eps, lam, cap, reduction, chunk_size = ctx.opts
    need_x, need_w, need_t, need_b = ctx.needs_input_grad[:4]
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable themselves
        opts = _options(ignore_index, eps, lam, cap, reduction)
        gx, gw, gt, gb = _composite.vjp(
            lambda x_, w_, t_, b_: _composite.linear_cross_entropy_rows(x_, w_, t_, b_, weight, opts),
            (x, W, target, bias),
            (need_x, need_w, need_t, need_b),
            d_loss,
        )
        return gx, gw, gt, gb, *([None] * 10)
    need = (need_x, need_w, need_b)
    g = [None, None, None]
    if ctx.precomputed and all(flag or not n for n, flag in zip(need, ctx.flags, strict=True)):
        # the forward computed (grad_x, grad_W, grad_b) with upstream 1
        g = [s * d_loss.to(s.dtype) if n else None for n, s in zip(need, saved, strict=True)]
    elif any(need):
        opts = (ignore_index, eps, lam, cap, reduction, chunk_size)
        got = _lce_bwd(x, W, target, bias, weight, d_loss, *opts, *need)
        g = [t if n else None for n, t in zip(need, got, strict=True)]
    g_target = None
    if need_t:
        g_target = _linear_target_grad(x, W, bias, target, weight, d_loss, eps, cap, reduction, chunk_size)
    return g[0], g[1], g_target, g[2], *([None] * 10)


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
    Returns the reduced loss (0-d) or the (P,) losses; never forms all P x V logits (except under a
    torch.func transform or forward AD, where the composite torch path computes it)."""
    if _composite.transforms_active(x, linear_weight, target, bias, weight):
        return _composite.linear_cross_entropy_rows(x, linear_weight, target, bias, weight, options)
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
