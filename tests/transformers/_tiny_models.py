"""Tiny random-init models of every supported architecture, built from configs (no download).

Dropout is off (so training-mode forwards are deterministic) and the weights are initialized with a
larger spread than the default 0.02, so that the logits are far from uniform and the loss and its
gradients carry signal; Gemma 2 and 3 soft-cap at 5.0 so the cap bends the logits.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 97  # not a power of two
_COMMON = dict(vocab_size=VOCAB, initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(
    _COMMON,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    attention_dropout=0.0,
)

CONFIGS = {
    "LlamaForCausalLM": lambda: transformers.LlamaConfig(**_DECODER),
    "MistralForCausalLM": lambda: transformers.MistralConfig(**_DECODER, sliding_window=None),
    "Qwen2ForCausalLM": lambda: transformers.Qwen2Config(**_DECODER),
    "Qwen3ForCausalLM": lambda: transformers.Qwen3Config(**_DECODER, head_dim=8),
    "GemmaForCausalLM": lambda: transformers.GemmaConfig(**_DECODER, head_dim=8),
    "Gemma2ForCausalLM": lambda: transformers.Gemma2Config(
        **_DECODER, head_dim=8, final_logit_softcapping=5.0, sliding_window=4
    ),
    "Gemma3ForCausalLM": lambda: transformers.Gemma3TextConfig(
        **_DECODER, head_dim=8, final_logit_softcapping=5.0, sliding_window=4
    ),
    "Phi3ForCausalLM": lambda: transformers.Phi3Config(
        **_DECODER, resid_pdrop=0.0, embd_pdrop=0.0, original_max_position_embeddings=64
    ),
    "GPT2LMHeadModel": lambda: transformers.GPT2Config(
        **_COMMON, n_embd=32, n_layer=1, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    ),
}
ARCHITECTURES = tuple(CONFIGS)


def tiny_model(name: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A fresh random `name` model in training mode, in `dtype`."""
    torch.manual_seed(seed)
    model = getattr(transformers, name)(CONFIGS[name]())
    return model.to(dtype).train()


def batch(*, batch_size: int = 2, seq: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (right padding on row 0) and labels with ignored positions:
    padded positions and a prompt prefix of the last row are -100."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, seq), generator=gen)
    mask = torch.ones(batch_size, seq, dtype=torch.long)
    mask[0, seq - 3 :] = 0  # 3 padded positions
    ids[0, seq - 3 :] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[-1, :4] = -100  # a prompt whose tokens are not predicted
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
