"""patch / unpatch as an API: in place, idempotent, reversible, one instance only, clear errors."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest
import torch
import transformers
from _tiny_models import ARCHITECTURES, batch, tiny_model

import softmaxce.transformers as sce_hf


def test_supported_architectures_are_the_tested_ones():
    assert set(sce_hf.SUPPORTED_ARCHITECTURES) == set(ARCHITECTURES)


def test_patch_in_place_twice_is_a_noop_and_unpatch_restores():
    model = tiny_model("LlamaForCausalLM")
    assert not sce_hf.is_patched(model)
    assert sce_hf.patch(model) is model
    forward = model.forward
    assert sce_hf.is_patched(model)
    assert sce_hf.patch(model) is model and model.forward is forward  # no-op
    assert sce_hf.unpatch(model) is model
    assert not sce_hf.is_patched(model) and "forward" not in model.__dict__
    assert model.forward.__func__ is type(model).forward
    assert sce_hf.unpatch(model) is model  # unpatching an unpatched model is a no-op


def test_patch_with_other_options_raises():
    model = sce_hf.patch(tiny_model("LlamaForCausalLM"))
    with pytest.raises(ValueError, match="already patched with keep_logits=False"):
        sce_hf.patch(model, keep_logits=True)


def test_patch_touches_only_the_instance():
    model, other = tiny_model("LlamaForCausalLM"), tiny_model("LlamaForCausalLM")
    class_forward = transformers.LlamaForCausalLM.forward
    sce_hf.patch(model)
    inputs = batch()
    assert model(**inputs).logits is None
    assert other(**inputs).logits is not None
    assert transformers.LlamaForCausalLM.forward is class_forward and "forward" not in other.__dict__


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_signature_is_hf_and_keeps_kwargs(name):
    model = tiny_model(name)
    expected = inspect.signature(model.forward)
    sce_hf.patch(model)
    got = inspect.signature(model.forward)
    assert got == expected
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in got.parameters.values())


def test_unsupported_architecture_names_class_and_supported():
    config = transformers.OPTConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16
    )
    with pytest.raises(TypeError, match=r"OPTForCausalLM; supported .*LlamaForCausalLM, MistralForCausalLM"):
        sce_hf.patch(transformers.OPTForCausalLM(config))


def test_subclass_is_unsupported():
    class MyLlama(transformers.LlamaForCausalLM):
        pass

    with pytest.raises(TypeError, match="MyLlama"):
        sce_hf.patch(MyLlama(tiny_model("LlamaForCausalLM").config))


class LoraLinear(torch.nn.Module):
    """What peft does to a targeted head: the base layer plus a low-rank update."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2):
        super().__init__()
        self.base_layer = base
        self.weight = base.weight
        self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


class Int8Linear(torch.nn.Linear):
    """A quantized head subclasses nn.Linear (bitsandbytes' Linear8bitLt does)."""


def _int8(head: torch.nn.Linear) -> Int8Linear:
    return Int8Linear(head.in_features, head.out_features, bias=False)


@pytest.mark.parametrize("wrap", [LoraLinear, _int8], ids=["lora", "int8"])
def test_head_that_is_not_plain_linear_raises_at_patch(wrap):
    model = tiny_model("LlamaForCausalLM")
    model.lm_head = wrap(model.lm_head)
    with pytest.raises(TypeError, match="LlamaForCausalLM.lm_head to be a plain torch.nn.Linear"):
        sce_hf.patch(model)


def test_head_wrapped_after_patch_raises_at_forward():
    model = sce_hf.patch(tiny_model("LlamaForCausalLM"))
    model.lm_head = LoraLinear(model.lm_head)
    with pytest.raises(TypeError, match="LoraLinear"):
        model(**batch())


def test_custom_loss_function_raises():
    model = tiny_model("LlamaForCausalLM")
    model.loss_function = lambda logits, labels, vocab_size, **kw: logits.sum()
    with pytest.raises(TypeError, match="reproduces HF's ForCausalLMLoss"):
        sce_hf.patch(model)


def test_forward_replaced_by_someone_else_raises():
    model = tiny_model("LlamaForCausalLM")
    model.forward = model.forward  # as accelerate's autocast wrapper does
    with pytest.raises(ValueError, match="forward was already replaced"):
        sce_hf.patch(model)


def test_import_without_transformers_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "softmaxce.transformers" or m.startswith("softmaxce.transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'softmaxce\[transformers\]'"):
        importlib.import_module("softmaxce.transformers")
