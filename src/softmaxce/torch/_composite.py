"""The loss as plain, differentiable torch operations: the path for higher-order derivatives,
torch.func transforms and forward-mode AD.

For row logits z (P, C), soft-capped to s tanh(z / s) when softcap s is set, ln a = log_softmax(z),
lse = logsumexp(z), and beta, omega from `_rowmath.py` (docs/SEMANTICS.md), the loss formed by
`_chunked.row_losses` as on the chunked path:

    l_n = -sum_j beta_nj ln a_nj + lam omega_n lse_n^2        (0 for an ignored position)
    J   = sum_n l_n / sum_n omega_n ("mean"; P for probability targets),  sum_n l_n ("sum"),  l ("none")

Every operation is out of place and differentiable to any order, so autograd's double backward,
torch.func.grad / vmap / jacrev / jacfwd and forward AD all see the exact function. It forms the
(P, C) log-probabilities at once (as torch.nn.functional.cross_entropy does); the fast custom ops in
`_ops.py` stay the path for first-order training. `_ops.py` uses it in two places: the front-end
rows functions take it under a torch.func transform or forward AD, and the ops' backward calls
`vjp` when the backward itself must be differentiable (create_graph=True).

A sparse target (`SparseTarget` of (P, K) rows) is computed here too without a dense target: its
K entries' ln a are gathered and the smoothing term is one dense sum (`_rowmath.sparse_sums`), so
the loss is differentiable to any order in the logits and the values (never in the indices), and
omega_n is 1 for a position with an entry that is not padding, 0 for an ignored one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._options import CEOptions
from .._sparse import SparseTarget
from . import _chunked

__all__ = ["cross_entropy_rows", "linear_cross_entropy_rows", "transforms_active", "vjp"]


def transforms_active(*tensors: Tensor | None) -> bool:
    """True under a torch.func transform (grad, vmap, jacrev, jacfwd, ...) or when a tensor carries
    a forward-AD tangent: the custom ops have neither a vmap nor a forward-mode rule, so these take
    the composite path. Never true while torch.compile traces (the ops are its path)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return True
    fwd = torch.autograd.forward_ad
    if getattr(fwd, "_current_level", 0) < 0:  # no dual level entered: no tensor can carry a tangent
        return False
    return any(t is not None and t.is_floating_point() and fwd.unpack_dual(t).tangent is not None for t in tensors)


def _row_losses(z: Tensor, target: Tensor, weight: Tensor | None, opts: CEOptions) -> tuple[Tensor, Tensor]:
    """(l (P,), omega (P,)) in the accumulation dtype; target (P,) class indices, (P, C) probabilities
    or a SparseTarget of (P, K) rows."""
    C = z.shape[1]
    z = z.to(_chunked.acc_dtype(z.dtype))
    if opts.softcap is not None:
        z = opts.softcap * torch.tanh(z / opts.softcap)  # Gemma 2 soft-capping
    # the class indices checked, but not on a batched target (no host read there)
    if isinstance(target, SparseTarget):
        if not torch._C._functorch.is_functorch_wrapped_tensor(target.indices):
            _chunked.check_sparse_indices(target.indices, C)
    elif target.dim() != 2 and not torch._C._functorch.is_functorch_wrapped_tensor(target):
        _chunked.check_targets(target, C, opts.ignore_index)
    log_a = torch.log_softmax(z, dim=1)  # ln a (P, C)
    lse = torch.logsumexp(z, dim=1)  # (P,)
    loss, omega, _ = _chunked.row_losses(log_a, lse, _chunked.Problem(target, weight, opts))
    return loss, omega


def _reduce(loss: Tensor, omega: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """J in the logits' dtype: "mean" divides by sum_n omega_n (0/0 is NaN, as in PyTorch)."""
    if reduction == "none":
        return loss.to(dtype)
    total = loss.sum()
    return (total / omega.sum() if reduction == "mean" else total).to(dtype)


def cross_entropy_rows(logits: Tensor, target: Tensor, weight: Tensor | None, options: CEOptions) -> Tensor:
    """J of logits (P, C) and target (P,) / (P, C) / a SparseTarget of (P, K) rows, differentiable to
    any order in logits and a probability target (a sparse target's values)."""
    loss, omega = _row_losses(logits, target, weight, options)
    return _reduce(loss, omega, options.reduction, logits.dtype)


def linear_cross_entropy_rows(
    x: Tensor, linear_weight: Tensor, target: Tensor, bias: Tensor | None, weight: Tensor | None, options: CEOptions
) -> Tensor:
    """J of z = x W^T + b (P, V), formed whole, differentiable to any order in x, W, b and a
    probability target."""
    z = torch.nn.functional.linear(x, linear_weight, bias)  # (P, V)
    return cross_entropy_rows(z, target, weight, options)


def vjp(
    loss_fn: Callable[..., Tensor], inputs: Sequence[Tensor | None], needs: Sequence[bool], d_loss: Tensor
) -> list[Tensor | None]:
    """dJ/d inputs[i] * d_loss for each needed input, as a differentiable function of the inputs and
    d_loss: the backward of the fast ops when create_graph=True (then its own derivative is exact).
    `inputs` are the saved originals, so the graph built here hangs off the caller's graph."""
    wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
    with torch.enable_grad():
        loss = loss_fn(*inputs)
        got = iter(
            torch.autograd.grad(loss, wanted, d_loss, create_graph=True, allow_unused=True, materialize_grads=True)
        )
    return [next(got) if need else None for need in needs]
