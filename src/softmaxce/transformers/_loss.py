"""Hugging Face's causal LM loss (transformers.loss.loss_utils.ForCausalLMLoss), computed by softmaxce.

For final hidden states h (B, S, D), the head z = h W^T + b, optional soft-capping z <- s tanh(z / s),
and labels y (B, S), HF's loss is the next-token cross-entropy

    t      = shift_labels if given, else (y[:, 1:], then one ignore_index)      # position i predicts y[i+1]
    l_n    = -ln softmax(z_n)[t_n],  l_n = 0 where t_n == ignore_index
    loss   = sum_n l_n / num_items_in_batch          when num_items_in_batch is given (gradient accumulation)
             sum_n l_n / #{n : t_n != ignore_index}  otherwise (every position ignored: NaN)

with the arithmetic in float32 for float16/bfloat16 models (HF upcasts the logits; here the hidden
states and W are upcast, so the loss comes back in float32 as HF's does). `lm_loss` computes it from
h and W with softmaxce.torch.linear_cross_entropy, never forming the (B, S, V) logits;
`lm_loss_from_logits` computes it from logits that exist anyway (eval mode).
"""

from __future__ import annotations

import torch
from torch import Tensor

import softmaxce.torch as sce

__all__ = ["lm_loss", "lm_loss_from_logits", "shifted_targets"]


def shifted_targets(labels: Tensor, shift_labels: Tensor | None, ignore_index: int, device: torch.device) -> Tensor:
    """The flat next-token targets t (positions,): shift_labels if given, else labels shifted left by one."""
    if shift_labels is None:
        padded = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)  # (..., S + 1)
        shift_labels = padded[..., 1:]  # t_i = y_{i+1}; the last position is ignored
    return shift_labels.reshape(-1).to(device)


def _normalize(loss_sum_or_mean: Tensor, num_items_in_batch: Tensor | int | None) -> Tensor:
    if num_items_in_batch is None:
        return loss_sum_or_mean  # already the mean over kept positions
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum_or_mean.device)
    return loss_sum_or_mean / num_items_in_batch  # loss = sum_n l_n / num_items_in_batch


def lm_loss(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None,
    labels: Tensor,
    *,
    shift_labels: Tensor | None = None,
    num_items_in_batch: Tensor | int | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
) -> Tensor:
    """ForCausalLMLoss(s tanh((h W^T + b) / s), labels, ...) without the logits.

    Args:
        hidden: (..., D) final hidden states, already sliced by logits_to_keep.
        head_weight: (V, D) lm_head weight; head_bias: (V,) or None.
        labels: the model's labels (shifted here unless shift_labels is given).
        shift_labels, num_items_in_batch, ignore_index: as in HF's ForCausalLMLoss.
        softcap: the model's final_logit_softcapping, or None.

    Returns:
        A 0-d loss, float32 for float16/bfloat16 models (as HF), else in the model's dtype.
    """
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, head_weight.dtype), torch.float32)
    device = head_weight.device
    x = hidden.reshape(-1, hidden.shape[-1]).to(device=device, dtype=dtype)  # (N, D)
    W = head_weight.to(dtype)  # (V, D); a no-op for float32 / float64 models
    b = None if head_bias is None else head_bias.to(dtype)
    t = shifted_targets(labels, shift_labels, ignore_index, device)  # (N,)
    loss = sce.linear_cross_entropy(
        x,
        W,
        t,
        linear_bias=b,
        reduction="mean" if num_items_in_batch is None else "sum",
        ignore_index=ignore_index,
        softcap=softcap,
    )
    return _normalize(loss, num_items_in_batch)


def lm_loss_from_logits(
    logits: Tensor,
    labels: Tensor,
    *,
    shift_labels: Tensor | None = None,
    num_items_in_batch: Tensor | int | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """ForCausalLMLoss(logits, labels, ...) on logits that already exist (soft-capped if the model caps)."""
    z = logits.float()  # HF upcasts the logits to float32
    z = z.reshape(-1, z.shape[-1])  # (N, V)
    t = shifted_targets(labels, shift_labels, ignore_index, z.device)  # (N,)
    loss = sce.cross_entropy(z, t, ignore_index=ignore_index, reduction="mean" if num_items_in_batch is None else "sum")
    return _normalize(loss, num_items_in_batch)
