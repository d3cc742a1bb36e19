"""The Hugging Face causal language models that `patch` supports, and how each one is laid out.

Every supported `XForCausalLM.forward` computes, in transformers 5.x,

    h      = self.<base>(every named argument except labels and logits_to_keep, **kwargs).last_hidden_state
    h      = slice_logits_to_keep(h, logits_to_keep)
    logits = lm_head(h)                             # then s * tanh(logits / s) where the model soft-caps
    loss   = ForCausalLMLoss(logits, labels, vocab_size, **kwargs)

so one replacement forward serves them all; this table holds what differs between them. A class is
supported only by its exact name and module: a subclass may override forward, so it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Architecture", "SUPPORTED", "SUPPORTED_ARCHITECTURES", "lookup", "supported_names"]


@dataclass(frozen=True)
class Architecture:
    """How one causal LM class is built.

    Attributes:
        base: the attribute holding the decoder that returns last_hidden_state ("model", "transformer").
        softcap: True where forward soft-caps the logits with config.final_logit_softcapping (Gemma 2 and 3).
        output: the class in transformers.modeling_outputs that forward returns.
    """

    base: str
    softcap: bool = False
    output: str = "CausalLMOutputWithPast"


# (module, class name) -> layout
SUPPORTED: dict[tuple[str, str], Architecture] = {
    ("transformers.models.llama.modeling_llama", "LlamaForCausalLM"): Architecture("model"),
    ("transformers.models.mistral.modeling_mistral", "MistralForCausalLM"): Architecture("model"),
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2ForCausalLM"): Architecture("model"),
    ("transformers.models.qwen3.modeling_qwen3", "Qwen3ForCausalLM"): Architecture("model"),
    ("transformers.models.gemma.modeling_gemma", "GemmaForCausalLM"): Architecture("model"),
    ("transformers.models.gemma2.modeling_gemma2", "Gemma2ForCausalLM"): Architecture("model", softcap=True),
    ("transformers.models.gemma3.modeling_gemma3", "Gemma3ForCausalLM"): Architecture("model", softcap=True),
    ("transformers.models.phi3.modeling_phi3", "Phi3ForCausalLM"): Architecture("model"),
    ("transformers.models.gpt2.modeling_gpt2", "GPT2LMHeadModel"): Architecture(
        "transformer", output="CausalLMOutputWithCrossAttentions"
    ),
}

# The supported class names, in the order above.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(name for _, name in SUPPORTED)


def supported_names() -> str:
    """The supported class names, for error messages: "LlamaForCausalLM, MistralForCausalLM, ..."."""
    return ", ".join(SUPPORTED_ARCHITECTURES)


def lookup(cls: type) -> Architecture | None:
    """The layout of exactly this class, or None when it is not supported (subclasses included)."""
    return SUPPORTED.get((cls.__module__, cls.__qualname__))
