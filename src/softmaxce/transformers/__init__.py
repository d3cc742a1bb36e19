"""Hugging Face causal language models whose training loss never forms the logits (the `[transformers]` extra).

    import softmaxce.transformers as sce_hf
    model = sce_hf.patch(AutoModelForCausalLM.from_pretrained(...))   # then train as usual
    loss = model(input_ids, labels=labels).loss                         # output.logits is None in training

With labels, a patched model's loss is HF's ForCausalLMLoss(lm_head(h), labels, ...), the next-token
cross-entropy with the label shift, ignore_index -100, num_items_in_batch, logits_to_keep and Gemma's
final_logit_softcapping, computed by softmaxce.torch.linear_cross_entropy(h, lm_head.weight, ...)
from the final hidden states h: the (batch, seq, vocab) logits and their gradient never exist.
"""

from .._extras import require

require("transformers", "transformers", "torch")

from ._architectures import SUPPORTED_ARCHITECTURES  # noqa: E402
from ._patch import is_patched, patch, unpatch  # noqa: E402

__all__ = ["SUPPORTED_ARCHITECTURES", "is_patched", "patch", "unpatch"]
