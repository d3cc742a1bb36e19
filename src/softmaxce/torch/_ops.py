"""torch.library custom ops for softmax cross-entropy and the fused linear head, with fake kernels
and autograd, so that models using them run under torch.compile(fullgraph=True).

All ops work in row form: logits (P, C) or x (P, D), one row per position, class axis last; the
front ends (`_functional.py`) validate and reshape. Each op dispatches on the data:

- float32 / float64 CPU tensors: the NumPy engine (softmaxce._engine, and softmaxce._fused for the
  fused head) on zero-copy `tensor.numpy()` views;
- CUDA tensors (and, with backend="triton", any tensors Triton can run, e.g. CPU tensors under
  TRITON_INTERPRET=1): the Triton kernels of `_triton/`; the fused head only with backend="triton"
  (`_linear_ops.py`: on CUDA it takes `_chunked.py` by default);
- anything else (float16 / bfloat16 CPU, other devices, backend="torch"): `_chunked.py`, the same
  algorithm in torch operations with float32 accumulation.

NumPy-engine calls run inside `_threads.torch_threads()` (numba's threads capped at torch's intra-op
count) and the fused head's products run on torch's BLAS (`_products.TorchProducts`), so a training
step keeps one thread pool.

Autograd: for reduction "mean"/"sum" the forward op computes dL/dlogits (or the fused head's three
gradients) in the same pass with upstream gradient 1, and backward multiplies the saved gradient by
grad_output in place (the first time; a second backward with retain_graph recomputes), so a training
step holds one gradient-sized buffer, which autograd then takes over as the input's .grad. For
"none" the backward op recomputes with the per-position upstream gradient. The gradient with respect
to a probability target is dL/dt = -(1 - eps) * k * w * ln a (`_rowmath.target_grad`, in backward).

Sparse targets: every op takes a trailing `target_values` (P, K); when given, `target` is the (P, K)
integer indices and the two are the rows of a `SparseTarget` (docs/SEMANTICS.md, "Sparse targets"). The
NumPy engine reads them as `SparseRows`, the chunked path gathers and scatters K entries per row,
the Triton kernels form each tile's target from the K entries (`_triton/_kernels.py`). The
gradient with respect to the values is dL/dv_k = (1 - eps) k w_{i_k} (lse - z_{i_k}), 0 at padding
(`_chunked.sparse_values_grad`, in backward); the indices get none. "mean" divides by the number of
positions with an entry that is not padding.

Higher order: when the backward runs with grad mode on (create_graph=True), it is instead the
vector-Jacobian product of the composite loss (`_composite.vjp`), built from differentiable torch
ops, so second and higher derivatives are exact. Under torch.func transforms and forward AD the
rows functions below take the composite path outright (the ops have no vmap or forward-mode rule).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.library import CustomOpDef
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import _engine, _resources, _threads
from .._options import CEOptions
from .._sparse import SparseTarget
from .._validation import Layout
from . import _chunked, _composite, _triton
from . import _rowmath as rm
from ._chunked import Problem

__all__ = ["cross_entropy_inplace_backward", "cross_entropy_rows"]


def _numpy_path(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _use_triton(backend: str, t: Tensor, automatic: bool = True) -> bool:
    """backend "triton": the Triton kernels (an error if they cannot run t); "" (automatic): they run
    CUDA tensors they support, unless `automatic` is False (the fused head: `_linear_ops.py`);
    "torch": never."""
    if backend == "triton":
        _triton.check(t.device, t.dtype)
        return True
    return automatic and backend == "" and t.device.type == "cuda" and _triton.available(t.device, t.dtype)


def _wants_grad(logits: Tensor) -> bool:
    """Whether a backward can come for these logits: grad mode on and logits requiring grad. (Inside an
    autograd.Function's forward grad mode is off, and ctx.needs_input_grad is True under torch.no_grad
    too, so the ops ask this before the call.)"""
    return torch.is_grad_enabled() and logits.requires_grad


def _traced(*tensors: Tensor | None) -> bool:
    """Whether these tensors are being traced (torch.compile, AOT autograd, make_fx: fake, functional
    or proxied tensors), where a backward must stay functional."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return True
    return any(t is not None and (type(t) is not Tensor or torch._is_functional_tensor(t)) for t in tensors)


def _scale_saved(ctx, saved: list[Tensor | None], d_loss: Tensor) -> list[Tensor | None] | None:
    """The saved gradients (computed with upstream 1) times d_loss: in place the first time they are
    asked for, so no second gradient-sized buffer exists (while compiling, out of place: the traced
    backward stays functional); None once they were used (a second backward with retain_graph, which
    then recomputes)."""
    if _traced(d_loss, *saved):
        return [None if s is None else s * d_loss.to(s.dtype) for s in saved]
    if getattr(ctx, "consumed", False):
        return None
    ctx.consumed = True
    if not (d_loss.device.type == "cpu" and float(d_loss) == 1.0):
        for s in saved:
            if s is not None:
                s.data.mul_(d_loss.to(s.dtype))  # .data: no version bump of a tensor autograd saved
    return saved


def _target(target: Tensor, values: Tensor | None) -> Tensor | SparseTarget:
    """The op's target: the tensor, or with `values` the sparse target's rows (indices, values)."""
    return target if values is None else SparseTarget(target, values)


# 16-bit logits the NumPy engine's `_half` kernels read and write in their own format
_HALF = {torch.bfloat16: "bfloat16", torch.float16: "float16"}

_Result = tuple[Tensor, Tensor | None]  # (loss, dloss/dlogits or None)


def _np_target(target: Tensor | SparseTarget):
    """A target as NumPy arrays (zero-copy views on the CPU): an array or a SparseTarget of arrays."""
    if isinstance(target, SparseTarget):
        return SparseTarget(_np(target.indices), _np(target.values))
    return _np(target)


def _refuse_weight_grad(weight: Tensor | None, probability: bool) -> bool:
    """True when the class weight needs a gradient (probability targets: the composite path gives it);
    for class-index targets PyTorch refuses, and so do we, rather than return none."""
    if weight is None or not (torch.is_grad_enabled() and weight.requires_grad):
        return False
    if not probability:
        raise RuntimeError(
            "The function 'nll_loss_forward' is not differentiable with respect to argument 'weight'. "
            "This input cannot have requires_grad True."
        )
    return True


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().numpy()


def _np64(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).numpy()


def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    """t, or for None an empty tensor (an op's output cannot be None)."""
    return t if t is not None else like.new_empty((0,))


# ----------------------------------------------------------------------------- the ops' arguments

# A custom op's schema has no CEOptions type: every op takes the loss options as these five scalars
# after its tensors (softcap 0.0: none), and the sparse target's values last. The four ops (here and
# in `_linear_ops.py`) give their schemas as text built on these two rather than infer them from
# annotations, so that the options are declared once; `_op_options` and `_options` convert.
_OPTIONS_SCHEMA = "SymInt ignore_index, float label_smoothing, float z_loss, float softcap, str reduction"
_VALUES_SCHEMA = "Tensor? target_values=None"


def _custom_op(name: str, schema: str) -> Callable[[Callable], CustomOpDef]:
    """torch.library.custom_op with its schema written out; no op mutates its arguments."""
    return torch.library.custom_op(name, mutates_args=(), schema=schema)


def _op_options(options: CEOptions) -> tuple[int, float, float, float, str]:
    """The options as the ops take them (`_OPTIONS_SCHEMA`)."""
    return options.ignore_index, options.label_smoothing, options.z_loss, options.softcap or 0.0, options.reduction


@functools.lru_cache(maxsize=64)
def _options(ignore_index: int, eps: float, lam: float, cap: float, reduction: str) -> CEOptions:
    """The options from the ops' scalars (eps, lam, cap: label_smoothing, z_loss, softcap); memoized
    (CEOptions is immutable): validating them anew took a few microseconds of every call."""
    return CEOptions(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=eps,
        z_loss=lam,
        softcap=cap if cap > 0.0 else None,
    )


# ----------------------------------------------------------------------------- cross_entropy on rows


def _ce_numpy(logits: Tensor, problem: Problem, want_grad: bool, grad_output: Tensor | None) -> _Result:
    target, weight, opts = problem
    P, C = logits.shape
    sparse = isinstance(target, SparseTarget)
    probability = sparse or target.dim() == 2
    half = _HALF.get(logits.dtype)  # bfloat16 / float16: read and written as 16-bit patterns
    dtype = np.dtype(np.float64) if logits.dtype == torch.float64 else np.dtype(np.float32)
    layout = Layout(C, 1, (P,), probability, sparse)
    if half:
        rows = logits.detach().contiguous().view(torch.uint16).numpy()  # no float32 copy
        t_np = _np(target.float() if probability and target.dtype == torch.bfloat16 else target)  # NumPy has no bf16
    else:
        rows = _engine.logits_rows(_np(logits), layout, dtype)  # a view for contiguous logits
        t_np = _np_target(target)
    # a sparse target becomes SparseRows (every index checked against C), never a dense row
    target_rows, w, norm = _engine.prepare_targets(layout, t_np, _np64(weight), opts, dtype)
    if opts.reduction != "mean":
        norm = 1.0
    coef = grad = g_np = None
    if want_grad:
        coef = _engine.row_coefficients(opts.reduction, norm, _np64(grad_output), (P,), P)
        if half:
            grad = torch.from_numpy(_resources.gradient_array((P, C), np.uint16)).view(logits.dtype)
            g_np = grad.view(torch.uint16).numpy()
        else:
            g_np = _resources.gradient_array((P, C), dtype)
            grad = torch.from_numpy(g_np)
    none = opts.reduction == "none"
    r = _engine.run_rows(rows, target_rows, probability, w, opts, coef, g_np, False, half, keep=none)
    if none:
        loss = torch.from_numpy(r.loss).to(logits.dtype)
    else:
        total = r.loss.sum()
        if opts.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total / np.float64(norm)  # as PyTorch: 0/0 is NaN, x/0 is inf
        loss = torch.scalar_tensor(total, dtype=logits.dtype)
    return loss, grad


def _ce_chunked(logits: Tensor, problem: Problem, want_grad: bool, grad_output: Tensor | None) -> _Result:
    target, weight, opts = problem
    acc = _chunked.acc_dtype(logits.dtype)
    norm, coef = _chunked.prepare(target, weight, opts, logits.shape[1], acc, want_grad, grad_output)
    loss, grad, _ = _chunked.ce_rows(logits, problem, coef)
    return _chunked.reduce(loss, opts.reduction, norm).to(logits.dtype), grad


def _ce_impl(logits: Tensor, problem: Problem, want_grad: bool, grad_output: Tensor | None, backend: str) -> _Result:
    """(loss, grad or None) on the backend for these tensors (the module docstring's dispatch)."""
    if _use_triton(backend, logits):
        target, weight, opts = problem
        return _triton.cross_entropy_rows(logits, target, weight, opts, want_grad, grad_output)
    half_ok = logits.device.type == "cpu" and logits.dtype in _HALF and not isinstance(problem.target, SparseTarget)
    if (_numpy_path(logits) or half_ok) and backend != "torch":
        with _threads.torch_threads():
            return _ce_numpy(logits, problem, want_grad, grad_output)
    return _ce_chunked(logits, problem, want_grad, grad_output)


# the two ops' tensors; the backward's are followed by grad_output
_CE_TENSORS = "Tensor logits, Tensor target, Tensor? weight"


@_custom_op(
    "softmaxce::cross_entropy_rows",
    f"({_CE_TENSORS}, {_OPTIONS_SCHEMA}, bool compute_grad, str backend, {_VALUES_SCHEMA}) -> (Tensor, Tensor)",
)
def _ce_fwd(logits, target, weight, ignore_index, eps, lam, cap, reduction, compute_grad, backend, values=None):
    """(loss, grad): loss reduced (0-d) or (P,); grad = dloss/dlogits (P, C) with upstream 1 when
    compute_grad and reduction != "none", else an empty tensor. With target_values (P, K), target is
    a sparse target's (P, K) indices."""
    problem = Problem(_target(target, values), weight, _options(ignore_index, eps, lam, cap, reduction))
    loss, grad = _ce_impl(logits, problem, compute_grad and reduction != "none", None, backend)
    return loss, _or_empty(grad, logits)


@_ce_fwd.register_fake
def _(logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, compute_grad, backend, *_):
    P, C = logits.shape
    loss = logits.new_empty((P,) if reduction == "none" else ())
    grad = logits.new_empty((P, C)) if compute_grad and reduction != "none" else logits.new_empty((0,))
    return loss, grad


@_custom_op(
    "softmaxce::cross_entropy_rows_backward",
    f"({_CE_TENSORS}, Tensor grad_output, {_OPTIONS_SCHEMA}, str backend, {_VALUES_SCHEMA}) -> Tensor",
)
def _ce_bwd(logits, target, weight, grad_output, ignore_index, eps, lam, cap, reduction, backend, values=None):
    """dJ/dlogits (P, C) for the upstream gradient grad_output (0-d, or (P,) for "none")."""
    problem = Problem(_target(target, values), weight, _options(ignore_index, eps, lam, cap, reduction))
    return _ce_impl(logits, problem, True, grad_output, backend)[1]


@_ce_bwd.register_fake
def _(logits, target, weight, grad_output, ignore_index, label_smoothing, z_loss, softcap, reduction, backend, *_):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _target_coef(grad_output: Tensor, reduction: str, P: int, acc: torch.dtype) -> Tensor:
    """k_n = dJ/dl_n for the target gradient: 0-d ("mean": grad_output / P, "sum") or (P, 1) ("none")."""
    k = grad_output.to(acc)
    if reduction == "mean":
        k = k / P  # probability targets: "mean" divides by the number of positions
    return k.reshape(-1, 1) if reduction == "none" else k


def _values_coef(grad_output: Tensor, target: SparseTarget, reduction: str, acc: torch.dtype) -> Tensor:
    """k_n = dJ/dl_n (P,) for a sparse target's values ("mean" divides by the kept positions)."""
    norm = _chunked.normalizer(target, None, -100, True, acc)
    return _chunked.row_coef(reduction, norm, grad_output, target.indices.shape[0], acc)


def _target_grad(logits: Tensor, target: Tensor, weight: Tensor | None, k: Tensor, eps: float, cap: float) -> Tensor:
    """dJ/dt = -(1 - eps) * k_n * w * ln a for probability targets t (n, C), k from `_target_coef`."""
    acc = _chunked.acc_dtype(logits.dtype)
    z = logits.to(acc, copy=cap > 0.0)
    if cap > 0.0:
        rm.soft_cap_(z, cap)
    log_a, _, _ = rm.log_softmax(z)
    return rm.target_grad(log_a, k, None if weight is None else weight.to(acc), eps).to(target.dtype)


def _ce_setup(ctx, inputs, output) -> None:
    logits, target, weight, ignore_index, eps, lam, cap, reduction, compute_grad, backend, values = inputs
    ctx.opts = (ignore_index, eps, lam, cap, reduction, backend)
    ctx.precomputed = compute_grad and reduction != "none"
    grad = output[1] if ctx.precomputed else None
    ctx.save_for_backward(logits, target, weight, grad, values)
    # the gradient output is not differentiable, and no zero-filled N x C gradient is made up for it
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _ce_backward(ctx, d_loss, d_grad) -> tuple[Tensor | None, ...]:
    if d_loss is None:  # nothing flows back through the loss (its gradient outputs are not differentiable)
        return (None,) * len(ctx.needs_input_grad)
    logits, target, weight, grad, values = ctx.saved_tensors
    ignore_index, eps, lam, cap, reduction, backend = ctx.opts
    g_logits = g_target = g_values = None
    none = (None,) * 8  # weight, ignore_index, ..., backend
    if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable itself
        opts = _options(ignore_index, eps, lam, cap, reduction)
        if values is not None:  # the sparse target's values vary, its indices are fixed
            g_logits, g_values = _composite.vjp(
                lambda z, v: _composite.cross_entropy_rows(z, SparseTarget(target, v), weight, opts),
                (logits, values),
                (ctx.needs_input_grad[0], ctx.needs_input_grad[-1]),
                d_loss,
            )
            return g_logits, None, *none, g_values
        g_logits, g_target = _composite.vjp(
            lambda z, t: _composite.cross_entropy_rows(z, t, weight, opts),
            (logits, target),
            ctx.needs_input_grad[:2],
            d_loss,
        )
        return g_logits, g_target, *none, None
    if ctx.needs_input_grad[0]:
        if ctx.precomputed:  # the forward computed dloss/dlogits with upstream 1
            g_logits = (_scale_saved(ctx, [grad], d_loss) or [None])[0]
        if g_logits is None:
            g_logits = _ce_bwd(logits, target, weight, d_loss, ignore_index, eps, lam, cap, reduction, backend, values)
    acc = _chunked.acc_dtype(logits.dtype)
    if values is not None and ctx.needs_input_grad[-1]:
        t = SparseTarget(target, values)
        k = _values_coef(d_loss, t, reduction, acc)
        g_values = _chunked.sparse_values_grad(logits, t, weight, k, eps, cap or None)
    elif values is None and ctx.needs_input_grad[1]:
        k = _target_coef(d_loss, reduction, logits.shape[0], acc)
        g_target = _target_grad(logits, target, weight, k, eps, cap)
    return g_logits, g_target, *none, g_values  # a trailing None past the inputs is allowed


_ce_fwd.register_autograd(_ce_backward, setup_context=_ce_setup)


class _EagerRows(torch.autograd.Function):
    """The `softmaxce::cross_entropy_rows` op called without the dispatcher: the same forward, setup
    and backward (hence the same results and gradients to any order), for eager calls only; traced
    code (torch.compile, make_fx, dispatch modes) calls the op. The op's own dispatch costs about
    0.1 ms a call, which is most of a small batch's time."""

    @staticmethod
    def forward(ctx, *inputs):  # ctx in forward: no per-call signature binding, as setup_context costs
        output = _ce_fwd._init_fn(*inputs)
        _ce_setup(ctx, inputs, output)
        return output

    backward = staticmethod(_ce_backward)


def cross_entropy_rows(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    options: CEOptions,
    backend: str | None = None,
    values: Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy on rows: logits (P, C), target (P,) class indices or (P, C)
    probabilities, or with `values` (P, K) a sparse target's (P, K) indices (already validated).
    Returns the reduced loss (0-d) or the (P,) losses.

    Under a torch.func transform or forward AD, or when a probability target's class weight needs a
    gradient, the composite torch path computes it (`_composite.py`); otherwise the custom op, whose
    backward is exact to any order. backend: "triton", "torch" or None (automatic)."""
    weight_grad = _refuse_weight_grad(weight, values is not None or target.dim() == 2)
    if weight_grad or _composite.transforms_active(logits, target, weight, values):
        return _composite.cross_entropy_rows(logits, _target(target, values), weight, options)
    needs = _wants_grad(logits)
    op = _ce_fwd if _traced(logits, target, weight, values) else _EagerRows.apply
    loss, _ = op(logits, target, weight, *_op_options(options), needs, backend or "", values)
    return loss


# ----------------------------------------------------------------------------- class axis 1, in place


def axis1_applies(logits: Tensor, target: Tensor, weight: Tensor | None, backend: str | None) -> bool:
    """Whether `cross_entropy_axis1` takes these (N, C, d1..dk) logits: float32/float64 CPU, a
    class-index target, the automatic or NumPy backend, an eager call (no tracing, no torch.func
    transform, no forward-AD tangent)."""
    return (
        logits.dim() > 2
        and backend is None
        and _numpy_path(logits)
        and not target.is_floating_point()
        and not _traced(logits, target, weight)
        and not _composite.transforms_active(logits, target, weight)
    )


class _Axis1(torch.autograd.Function):
    """cross_entropy of (N, C, d1..dk) logits with class-index targets on the NumPy engine, which
    reads them in place (`softmaxce._axis1`: class axis 1, no moved copy) and writes the gradient in
    the same layout; the backward scales that saved gradient in place (`_scale_saved`). Second
    order goes through the composite path on the moved rows."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions, needs: bool) -> Tensor:
        # needs: `_wants_grad(logits)`, asked by the caller
        want_grad = needs and options.reduction != "none"
        r = _engine_pass(logits, target, weight, options, want_grad, None)
        grad = torch.from_numpy(r.grad_logits) if want_grad else None
        ctx.save_for_backward(logits, target, weight, grad)
        ctx.options = options
        return torch.from_numpy(np.asarray(r.loss))  # in the logits' dtype

    @staticmethod
    def backward(ctx, d_loss: Tensor) -> tuple[Tensor | None, ...]:
        logits, target, weight, grad = ctx.saved_tensors
        options = ctx.options
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient, through the rows
            C = logits.shape[1]

            def rows(z: Tensor) -> Tensor:
                return _composite.cross_entropy_rows(
                    z.movedim(1, -1).reshape(-1, C), target.reshape(-1), weight, options
                )

            (g,) = _composite.vjp(
                rows, (logits,), (True,), d_loss.reshape(-1) if options.reduction == "none" else d_loss
            )
            return g, None, None, None, None
        if grad is not None:
            scaled = _scale_saved(ctx, [grad], d_loss)
            if scaled is not None:
                return scaled[0], None, None, None, None
        r = _engine_pass(logits, target, weight, options, True, d_loss)  # "none", or a second backward
        return torch.from_numpy(r.grad_logits), None, None, None, None


def _engine_pass(logits, target, weight, options, want_grad: bool, grad_output: Tensor | None, out=None):
    """`_engine.forward_logits` on the caller's tensors as zero-copy NumPy views (the gradient into
    `out` when given), torch's threads paused."""
    with _threads.torch_threads():
        return _engine.forward_logits(
            _np(logits),
            _np_target(target),
            _np64(weight),
            options,
            want_grad=want_grad,
            want_stats=False,
            grad_output=_np64(grad_output),
            out=out,
        )


def cross_entropy_axis1(logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions) -> Tensor:
    """`cross_entropy` of (N, C, d1..dk) logits where `axis1_applies` (validated by the front end):
    the loss, 0-d or of the positions' shape (N, d1..dk)."""
    _refuse_weight_grad(weight, probability=False)
    return _Axis1.apply(logits, target, weight, options, _wants_grad(logits))


# ----------------------------------------------------------------------------- gradient over the logits


class _InplaceBackward(torch.autograd.Function):
    """cross_entropy whose forward writes dloss/dlogits (upstream 1) over the logits and whose backward
    scales them in place by grad_output: no gradient-sized buffer at all (flash-attn's
    inplace_backward). First order only."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions) -> Tensor:
        r = _engine_pass(logits, target, weight, options, True, None, out=_np(logits))
        ctx.save_for_backward(logits)  # now the gradient
        return torch.as_tensor(np.asarray(r.loss), dtype=logits.dtype)

    @staticmethod
    def backward(ctx, d_loss: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("cross_entropy(inplace_backward=True) has no second derivative: use create_graph=False")
        if getattr(ctx, "consumed", False):
            raise RuntimeError(
                "cross_entropy(inplace_backward=True): the logits already hold the gradient of a first backward"
            )
        ctx.consumed = True
        (grad,) = ctx.saved_tensors
        if not (d_loss.device.type == "cpu" and float(d_loss) == 1.0):
            grad.data.mul_(d_loss.to(grad.dtype))
        return grad, None, None, None


def cross_entropy_inplace_backward(logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions) -> Tensor:
    """`cross_entropy(..., inplace_backward=True)` (validated by the front end): the loss, with the
    gradient written over `logits` when autograd will want it (grad mode on, logits requiring grad;
    otherwise the loss alone). Refuses what it cannot do exactly: a gradient for the target or
    the class weight, higher order (in backward), torch.func transforms and torch.compile."""
    targets = (target.indices, target.values) if isinstance(target, SparseTarget) else (target,)
    if torch.compiler.is_compiling() or _composite.transforms_active(logits, *targets, weight):
        raise RuntimeError("cross_entropy(inplace_backward=True) cannot run under torch.compile or torch.func")
    if logits.dim() != 2 or not _numpy_path(logits) or not logits.is_contiguous():
        raise ValueError(
            "inplace_backward=True needs contiguous 2-D float32 or float64 CPU logits, got "
            f"{tuple(logits.shape)} {logits.dtype} on {logits.device.type}"
        )
    if options.reduction == "none":
        raise ValueError("inplace_backward=True needs reduction 'mean' or 'sum', not 'none'")
    if any(t is not None and t.requires_grad for t in (*targets, weight)) and torch.is_grad_enabled():
        raise ValueError("inplace_backward=True gives no gradient for the target or the class weight")
    if not _wants_grad(logits):  # no backward will come (evaluation): the loss alone, logits left as they are
        if isinstance(target, SparseTarget):
            return cross_entropy_rows(logits, target.indices, weight, options, None, values=target.values)
        return cross_entropy_rows(logits, target, weight, options, None)
    return _InplaceBackward.apply(logits, target, weight, options)
