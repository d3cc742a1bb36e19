"""Vocabulary-parallel linear + cross-entropy head on torch.distributed, exact across ranks.

When the classifier weight W (V, D) or its logits outgrow one process, each rank of a process group
holds a slice of the vocabulary, rows [vocab_start, vocab_start + Vs) of W (and of the bias and the
class weight), as Megatron does for language-model heads. Every rank passes the same input and
target; every rank gets the same loss, equal to the single-process

    torch.nn.functional.cross_entropy(x @ W.T + b, target, weight=w, ...)

for every option (label smoothing over the GLOBAL vocabulary, class weights, ignore_index,
probability targets, sparse targets, z_loss, softcap, all reductions), the full gradient of the input, and the
gradient of its own shard of W and b. Shards may be uneven, even empty. gloo (CPU) and NCCL (GPU).

Collectives per call (none of a data-dependent size; P = number of positions, k = group size):
    forward:  1 all-gather of the shard layout (k x 17 numbers, checked before any math),
              1 all-reduce MAX of (P,) local maxima ((P, k) for the *_with_stats variant),
              1 all-reduce SUM of one stacked (P * c + 1,) buffer, 3 <= c <= 6.
    backward: 1 all-reduce SUM of grad_input (P, D), only when the input requires grad (with a
              sparse target whose values require grad, their gradient (P, K) travels in it too).

A sparse target (`softmaxce.SparseTarget`, GLOBAL class indices, the same on every rank): each rank
keeps the entries whose index falls in its shard (shifted to local indices; the others act as
padding there), adds their part of sum_c beta_c and sum_c beta_c z_c to the SUM all-reduce, and
subtracts them in its gradient; whether a position is kept (an entry with index >= 0) is read from
the global target, so every rank agrees.

Example (run on every rank of an initialized process group)::

    import torch.distributed as dist
    from softmaxce.torch.distributed import vocab_parallel_linear_cross_entropy

    rank, k = dist.get_rank(), dist.get_world_size()
    rows = torch.arange(V).tensor_split(k)[rank]              # this rank's classes (may be uneven)
    w_shard = W_full[rows].clone().requires_grad_()          # in practice: only the shard exists
    loss = vocab_parallel_linear_cross_entropy(x, w_shard, y, vocab_start=int(rows[0]))
    loss.backward()   # x.grad: full gradient on every rank; w_shard.grad: this shard's rows only
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch import distributed as dist

from .._options import REDUCTIONS, CEOptions, LossKeywords
from .._sparse import SparseTarget
from .._validation import (
    TargetOutOfBoundsError,
    WeightShapeError,
    check_layout,
    check_sparse_layout,
    out_of_bounds_message,
)
from . import _dtypes
from ._chunked import acc_dtype, check_sparse_indices, chunk_rows
from ._vocab_parallel import Plan, VocabParallelFunction, collective

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = [
    "ShardLayoutError",
    "VocabParallelCrossEntropyResult",
    "VocabParallelOptions",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_cross_entropy_with_stats",
]

# fields of the layout all-gather; all but the first two and the last must agree on every rank
_FIELDS = (
    "vocab_start",
    "shard_size",
    "number of positions",
    "input ndim",
    "feature size D",
    "target kind (0 index, 1 probability, 2 sparse)",
    "bias_shard given",
    "class weight given",
    "reduction",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "normalizer given",
    "dtype",
    "input requires grad",
    "local check failed",
)
_MUST_AGREE = _FIELDS[2:-1]
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class ShardLayoutError(ValueError, RuntimeError):
    """The ranks' shards do not tile [0, V) exactly, or the ranks disagree on the call (shapes, options)."""


@dataclass(frozen=True)
class VocabParallelCrossEntropyResult:
    """Loss and per-position statistics of the vocabulary-parallel head (identical on every rank).

    Attributes:
        loss: as `vocab_parallel_linear_cross_entropy` returns it (differentiable).
        lse: log-sum-exp of the (soft-capped) logits over the GLOBAL vocabulary, positions' shape,
            float32 for float16/bfloat16 input, else the input dtype.
        predicted: global argmax class (int64), the smallest index among ties, as torch.argmax.
        entropy: entropy of softmax over the global vocabulary, -sum_c a_c ln a_c, dtype as lse.
    """

    loss: torch.Tensor
    lse: torch.Tensor
    predicted: torch.Tensor
    entropy: torch.Tensor


class VocabParallelOptions(LossKeywords, total=False):
    """The keyword options of the vocab-parallel head: `softmaxce.CEOptions`' keywords, and `group`,
    `bias_shard`, `weight`, `normalizer`, `chunk_size` (see `vocab_parallel_linear_cross_entropy`)."""

    group: dist.ProcessGroup | None
    bias_shard: torch.Tensor | None
    weight: torch.Tensor | None
    normalizer: float | torch.Tensor | None
    chunk_size: int | None


def vocab_parallel_linear_cross_entropy(
    input: Tensor, weight_shard: Tensor, target: Tensor, *, vocab_start: int, **options: Unpack[VocabParallelOptions]
) -> Tensor:
    """Cross-entropy of a linear head whose vocabulary is sharded across the ranks of `group`.

    Equals, on every rank, `F.cross_entropy(x @ W.T + b, target, weight=w, ...)` for the full
    W = cat(weight_shard of every rank in vocabulary order) (V, D), with the extensions of
    docs/SEMANTICS.md: per position, with z the (soft-capped) logits over the global vocabulary,

        l_n = (1 - eps) w_y (lse_n - z_ny) + (eps / V) sum_{c < V} w_c (lse_n - z_nc) + lam w_y lse_n^2

    (probability targets: l_n = sum_c w_c t'_nc (lse_n - z_nc) + lam lse_n^2, t' = (1 - eps) t + eps / V).
    Call it on every rank of the group, with the same input, target and options; call backward on
    every rank too (it all-reduces grad_input). Collective counts: see the module docstring.

    Args:
        input: (..., D) floating; the leading dims are positions (the class axis of the logits is last).
        weight_shard: (Vs, D), this rank's rows [vocab_start, vocab_start + Vs) of W, input's dtype.
        target: class indices, the positions' shape, the same on every rank; or a probability
            target (..., Vs) floating: this rank's slice of the vocabulary; or a
            `softmaxce.SparseTarget` of torch tensors, (..., K) GLOBAL indices and values, the same
            on every rank (gradients flow to its values; ignore_index must then be negative).
        vocab_start: first global class this rank holds. The shards of all ranks must tile [0, V).
        **options: keyword-only, declared in `VocabParallelOptions`; an unknown keyword raises TypeError:
        group: the process group (default: the world).
        bias_shard: (Vs,) rows of the bias, or None.
        weight: (Vs,) this rank's slice of the class weight, or None (all ones).
        ignore_index, reduction, label_smoothing, z_loss, softcap: as `softmaxce.cross_entropy`;
            label smoothing spreads eps over the global V classes.
        normalizer: for reduction="mean" only: the divisor of the summed loss, e.g. the number of
            targets (or their class-weight sum) over all micro-batches and data-parallel ranks, so
            that accumulated gradients equal one large batch's. Default: this call's own count.
        chunk_size: positions per chunk of local logits (default: as many as fit
            `softmaxce._engine.CHUNK_BYTES` of this rank's logits in float32, float64 for float64 input).

    Returns:
        The loss in the input dtype: a scalar, or the positions' shape for reduction="none".

    Raises:
        ShardLayoutError: on every rank, before any math, when the shards do not tile [0, V) exactly
            or the ranks disagree on shapes, dtype or options; a rank whose own input fails a check
            raises that check's error (PyTorch's type and message), the others a ShardLayoutError.
        RuntimeError: a collective failed (a rank died or timed out); raised within the group's timeout.
    """
    return _run("vocab_parallel_linear_cross_entropy", input, weight_shard, target, vocab_start, options, False).loss


def vocab_parallel_linear_cross_entropy_with_stats(
    input: Tensor, weight_shard: Tensor, target: Tensor, *, vocab_start: int, **options: Unpack[VocabParallelOptions]
) -> VocabParallelCrossEntropyResult:
    """`vocab_parallel_linear_cross_entropy` plus per-position lse, global argmax and entropy.

    Same arguments and the same number of collectives (the MAX all-reduce carries every rank's local
    maximum, (P, k), so that each rank learns who holds the global argmax). The logits are never
    gathered. `predicted` is exact for V < 2**24 with float32/half input (2**53 with float64).
    """
    function = "vocab_parallel_linear_cross_entropy_with_stats"
    return _run(function, input, weight_shard, target, vocab_start, options, want_stats=True)


def _run(
    function: str, x, w, target, vocab_start, keywords: VocabParallelOptions, want_stats: bool
) -> VocabParallelCrossEntropyResult:
    group, b, cw = keywords.get("group"), keywords.get("bias_shard"), keywords.get("weight")
    normalizer, chunk_size = keywords.get("normalizer"), keywords.get("chunk_size")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("vocab_parallel_linear_cross_entropy needs torch.distributed.init_process_group() first")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise RuntimeError("vocab_parallel_linear_cross_entropy: this process is not a member of `group`")

    # ---- local checks; their outcome travels in the layout all-gather so every rank fails together
    local_error: BaseException | None = None
    meta = [math.nan] * len(_FIELDS)
    try:
        options = CEOptions.from_keywords(function, keywords, VocabParallelOptions)
        kind = _check_local(x, w, target, vocab_start, b, cw, options, normalizer, chunk_size)
        meta = [
            float(vocab_start),
            float(w.shape[0]),
            float(math.prod(x.shape[:-1])),
            float(x.dim()),
            float(x.shape[-1]),
            float(kind),
            float(b is not None),
            float(cw is not None),
            float(REDUCTIONS.index(options.reduction)),
            float(options.ignore_index),
            options.label_smoothing,
            options.z_loss,
            options.softcap or 0.0,
            float(normalizer is not None),
            float(_DTYPES.index(x.dtype)),
            float(x.requires_grad and torch.is_grad_enabled()),
            0.0,
        ]
    except Exception as err:  # noqa: BLE001 - re-raised below, after every rank has heard of it
        local_error = err
    meta[-1] = float(local_error is not None)
    device = _collective_device(group, x)
    mine = torch.tensor(meta, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    collective("layout all-gather", rank, world, lambda: dist.all_gather(gathered, mine, group=group))
    table = torch.stack(gathered).cpu().tolist()  # (k, fields), the same on every rank
    if local_error is not None:
        raise local_error
    failed = [r for r in range(world) if table[r][-1] != 0.0]
    if failed:
        raise ShardLayoutError(
            f"vocab_parallel_linear_cross_entropy: rank(s) {failed} of the group failed their input checks "
            "(their own error says why); no rank computed anything"
        )
    vocab_size, owner_order = _check_table(table)

    probability, sparse = kind == 1, kind == 2
    if sparse:  # the same target on every rank: every rank raises
        check_sparse_indices(target.indices, vocab_size, tuple(x.shape[:-1]))
    elif not probability:
        t = target.reshape(-1).long()  # any integer dtype (torch has no < for uint16 on CPU)
        bad = (t != options.ignore_index) & ((t < 0) | (t >= vocab_size))
        if bool(bad.any()):  # the same target on every rank: every rank raises
            raise TargetOutOfBoundsError(out_of_bounds_message(int(t[bad][0])))

    P, D, Vs = int(math.prod(x.shape[:-1])), x.shape[-1], w.shape[0]
    plan = Plan(
        vocab_start=int(vocab_start),
        vocab_size=vocab_size,
        shard_size=Vs,
        owner_order=owner_order,
        rank=rank,
        world_size=world,
        group=group,
        probability=probability,
        sparse=sparse,
        reduction=options.reduction,
        ignore_index=options.ignore_index,
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        softcap=options.softcap,
        normalizer=normalizer,
        chunk_size=chunk_rows(P, Vs, acc_dtype(x.dtype), chunk_size),
        want_stats=want_stats,
    )
    if sparse:  # the values travel as the differentiable target, the indices beside them
        K = target.k
        t2, indices = target.values.reshape(P, K), target.indices.reshape(P, K)
    else:
        t2, indices = (target.reshape(P, Vs) if probability else target.reshape(P)), None
    loss, lse, predicted, entropy = VocabParallelFunction.apply(x.reshape(P, D), w, b, t2, cw, plan, indices)
    positions = tuple(x.shape[:-1])
    if options.reduction == "none":
        loss = loss.reshape(positions)
    if want_stats:
        lse, predicted, entropy = lse.reshape(positions), predicted.reshape(positions), entropy.reshape(positions)
    return VocabParallelCrossEntropyResult(loss, lse, predicted, entropy)


def _check_local(x, w, target, vocab_start, b, cw, options: CEOptions, normalizer, chunk_size) -> int:
    """Checks one rank's arguments on metadata only; returns the target's kind: 0 class indices,
    1 probabilities, 2 sparse."""
    sparse = isinstance(target, SparseTarget)
    if sparse and not isinstance(target.indices, torch.Tensor):
        raise TypeError("a SparseTarget for vocab_parallel_linear_cross_entropy must hold torch tensors")
    for name, value in (("input", x), ("weight_shard", w), ("target", target.values if sparse else target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(value).__name__}")
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, numbers.Integral) or vocab_start < 0:
        raise ShardLayoutError(f"vocab_start must be an int >= 0, got {vocab_start!r}")
    if x.dim() == 0:
        raise ShardLayoutError("input must be (..., D) with at least one dimension (the features), got a 0-d tensor")
    if x.dtype not in _DTYPES:
        check_layout((1,), _dtypes.kind(x.dtype), _dtypes.name(x.dtype), (), "i", "Long", None, options)
        raise TypeError(f"input dtype {x.dtype} is not supported (float64, float32, float16, bfloat16)")
    D = x.shape[-1]
    if w.dim() != 2 or w.shape[1] != D:
        raise ShardLayoutError(f"weight_shard must be (Vs, D) with D = {D} (input's last dim), got {list(w.shape)}")
    if w.dtype != x.dtype:
        raise ShardLayoutError(f"weight_shard dtype {w.dtype} differs from input dtype {x.dtype}")
    Vs = w.shape[0]
    if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (Vs,) or b.dtype != x.dtype):
        raise ShardLayoutError(
            f"bias_shard must be a ({Vs},) tensor of dtype {x.dtype} (one per row of weight_shard), "
            f"got {list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}"
        )
    if cw is not None and (not isinstance(cw, torch.Tensor) or tuple(cw.shape) != (Vs,) or not cw.is_floating_point()):
        shape = list(cw.shape) if isinstance(cw, torch.Tensor) else type(cw).__name__
        raise WeightShapeError(
            f"weight (the class-weight shard) should be a floating tensor of shape [{Vs}], one per row of "
            f"weight_shard, but got: {shape}"
        )
    positions = tuple(x.shape[:-1])
    logits_shape = (Vs,) if x.dim() == 1 else (positions[0], Vs, *positions[1:])
    if sparse:
        check_sparse_layout(logits_shape, "f", _dtypes.name(x.dtype), target.shape, None, options)
        if target.indices.device != x.device:
            raise ValueError(f"Expected the sparse target on the input's device {x.device}, but it is on "
                             f"{target.indices.device}")  # fmt: skip
        _check_normalizer_and_chunk(options, normalizer, chunk_size)
        return 2
    probability = target.is_floating_point() and target.dim() == x.dim()
    if probability and tuple(target.shape) != (*positions, Vs):
        raise ShardLayoutError(
            f"a probability target shard must have shape {[*positions, Vs]} (positions, then this rank's {Vs} "
            f"classes), got {list(target.shape)}"
        )
    # the logits' shape with the class axis where PyTorch has it: (Vs,) or (N, Vs, d1..dk)
    check_layout(
        logits_shape,
        "f",
        _dtypes.name(x.dtype),
        logits_shape if probability else tuple(target.shape),
        _dtypes.kind(target.dtype),
        _dtypes.name(target.dtype),
        None,
        options,
    )
    _check_normalizer_and_chunk(options, normalizer, chunk_size)
    return int(probability)


def _check_normalizer_and_chunk(options: CEOptions, normalizer, chunk_size) -> None:
    if normalizer is not None:
        if options.reduction != "mean":
            raise ValueError(f'normalizer is only used with reduction="mean", not "{options.reduction}"')
        if isinstance(normalizer, torch.Tensor):
            if normalizer.dim() != 0 or normalizer.is_complex():
                raise ValueError(
                    f"normalizer must be a number or a 0-d real tensor, got shape {list(normalizer.shape)}"
                )
        elif isinstance(normalizer, bool) or not isinstance(normalizer, numbers.Real):
            raise TypeError(f"normalizer must be a number or a 0-d tensor, not {type(normalizer).__name__}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _check_table(table: list[list[float]]) -> tuple[int, tuple[int, ...]]:
    """Every rank's (vocab_start, shard_size, ...) row: same call everywhere, shards tiling [0, V)."""
    for i, name in enumerate(_FIELDS):
        if name not in _MUST_AGREE:
            continue
        values = [row[i] for row in table]
        if any(v != values[0] for v in values):
            shown = [REDUCTIONS[int(v)] for v in values] if name == "reduction" else values
            if name == "dtype":
                shown = [str(_DTYPES[int(v)]) for v in values]
            raise ShardLayoutError(
                f"vocab_parallel_linear_cross_entropy: the ranks disagree on {name}: {shown} (by rank); every rank "
                "must pass the same input, target layout and options"
            )
    spans = sorted((int(row[0]), int(row[1]), r) for r, row in enumerate(table))
    vocab_size = sum(size for _, size, _ in spans)
    pos = 0
    for start, size, _ in spans:
        if start != pos:
            listing = ", ".join(f"rank {r}: [{int(row[0])}, {int(row[0] + row[1])})" for r, row in enumerate(table))
            kind = f"a gap [{pos}, {start})" if start > pos else f"an overlap at [{start}, {pos})"
            raise ShardLayoutError(
                f"vocab_parallel_linear_cross_entropy: the vocabulary shards do not tile [0, {vocab_size}) exactly "
                f"({kind}); shards by rank: {listing}"
            )
        pos += size
    if vocab_size == 0:
        raise ShardLayoutError("vocab_parallel_linear_cross_entropy: every shard is empty (V = 0)")
    return vocab_size, tuple(r for _, _, r in spans)


def _collective_device(group, x) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
