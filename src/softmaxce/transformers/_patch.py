"""patch / unpatch: give one Hugging Face causal LM instance a forward that never forms the logits.

The patched forward has the class forward's signature (``**kwargs`` included, so Trainer still
passes ``num_items_in_batch``) and does what it does, except where the loss is concerned:

    labels is None                    -> the class forward itself (generation is unchanged)
    labels given, model.training      -> h = base(...) sliced by logits_to_keep;
                                         loss = lm_loss(h, lm_head.weight, lm_head.bias, labels, ...)
                                         logits = None  (lm_head(h), soft-capped, if keep_logits=True)
    labels given, not model.training  -> logits as HF computes them; loss from those logits

The replacement is bound on the instance (``model.forward = MethodType(...)``): the class, the
weights, the config and every other instance are untouched, so saving and loading are unchanged and
``unpatch`` only deletes the instance attribute.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any

import torch
import transformers.modeling_outputs as hf_outputs
from torch import nn
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.modeling_utils import slice_logits_to_keep

from ._architectures import Architecture, lookup, supported_names
from ._loss import lm_loss, lm_loss_from_logits

__all__ = ["is_patched", "patch", "unpatch"]

_STATE = "_softmaxce_patch"  # instance attribute holding the patch's options

# Each output class's fields other than loss and logits, which come from the base model's output.
# (Read once here: dataclasses.fields() inside forward stops torch.compile's fullgraph tracing.)
_FIELDS = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("loss", "logits"))
    for cls in (hf_outputs.CausalLMOutputWithPast, hf_outputs.CausalLMOutputWithCrossAttentions)
}


@dataclasses.dataclass(frozen=True)
class _Patch:
    keep_logits: bool


def _architecture(model: Any) -> Architecture:
    cls = type(model)
    arch = lookup(cls)
    if arch is None:
        raise TypeError(
            f"softmaxce.transformers.patch does not support {cls.__module__}.{cls.__qualname__}; "
            f"supported (exactly these classes, not subclasses): {supported_names()}"
        )
    return arch


def _check_head(model: Any) -> None:
    """The head must be a plain nn.Linear with its weights in memory: a LoRA-wrapped or quantized
    head computes something else than x W^T + b, and reading its .weight would silently drop that."""
    head = getattr(model, "lm_head", None)
    cls = type(model).__name__
    if type(head) is not nn.Linear:
        raise TypeError(
            f"softmaxce.transformers.patch needs {cls}.lm_head to be a plain torch.nn.Linear, got "
            f"{type(head).__module__}.{type(head).__qualname__} (LoRA-wrapped and quantized heads are not "
            "supported: patch the model before wrapping its head, and keep lm_head out of the adapter's targets)"
        )
    weight = head.weight
    if not weight.is_floating_point() or weight.device.type == "meta":
        raise TypeError(
            f"softmaxce.transformers.patch needs {cls}.lm_head.weight to be a floating-point tensor in memory, "
            f"got dtype {weight.dtype} on device {weight.device}"
        )


def _check_loss_function(model: Any) -> None:
    # PreTrainedModel.loss_function's lookup, without its warning (a logging call stops fullgraph tracing)
    loss_function = model.__dict__.get("_loss_function")
    if loss_function is None:
        loss_function = LOSS_MAPPING.get(getattr(model, "loss_type", None), ForCausalLMLoss)
    if loss_function is not ForCausalLMLoss:
        name = getattr(loss_function, "__qualname__", loss_function)
        raise TypeError(
            f"softmaxce.transformers reproduces HF's ForCausalLMLoss, but {type(model).__name__}.loss_function is "
            f"{name!r} (loss_type={getattr(model, 'loss_type', None)!r})"
        )


def _causal_lm_forward(model: Any, arch: Architecture, keep_logits: bool, arguments: dict[str, Any]):
    """The forward of a supported XForCausalLM when labels are given; `arguments` are the call's, by name.
    Nothing here reads a tensor's value on the host, so it compiles (torch.compile, fullgraph=True)."""
    # return_dict as transformers' @can_return_tuple decides it
    return_dict = model.config.return_dict
    passed = arguments.pop("return_dict", return_dict)
    if passed is not None:
        return_dict = passed
    labels = arguments.pop("labels")
    logits_to_keep = arguments.pop("logits_to_keep", 0)
    _check_head(model)  # the head may have been wrapped since patch()
    _check_loss_function(model)

    outputs = getattr(model, arch.base)(**arguments)  # every other argument, **kwargs included, as HF passes them
    hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)  # (B, K, D), or (K, D) for a mask
    cap = model.config.final_logit_softcapping if arch.softcap else None
    loss_kwargs = {
        "shift_labels": arguments.get("shift_labels"),
        "num_items_in_batch": arguments.get("num_items_in_batch"),
        "ignore_index": arguments.get("ignore_index", -100),
    }

    logits = None
    if keep_logits or not model.training:
        logits = model.lm_head(hidden)  # (B, K, V), exactly as HF
        if cap is not None:
            logits = logits / cap
            logits = torch.tanh(logits)
            logits = logits * cap
    if model.training:
        head = model.lm_head
        loss = lm_loss(hidden, head.weight, head.bias, labels, softcap=cap, **loss_kwargs)
    else:
        loss = lm_loss_from_logits(logits, labels, **loss_kwargs)

    output_cls = getattr(hf_outputs, arch.output)
    fields = {name: getattr(outputs, name, None) for name in _FIELDS[output_cls]}  # past_key_values, ...
    output = output_cls(loss=loss, logits=logits, **fields)
    return output if return_dict else output.to_tuple()


def _make_forward(cls: type, arch: Architecture, keep_logits: bool):
    original = cls.forward
    signature = inspect.signature(original)  # (self, input_ids, ..., labels, ..., logits_to_keep, **kwargs)
    params = list(signature.parameters.values())[1:]
    kinds = {p.kind for p in params}
    names = tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if "labels" not in names or inspect.Parameter.VAR_KEYWORD not in kinds:
        raise TypeError(
            f"{cls.__qualname__}.forward{signature} has no labels argument or no **kwargs: this transformers "
            "version is not one softmaxce.transformers supports"
        )

    def forward(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{cls.__qualname__}.forward() takes {len(names)} positional arguments, got {len(args)}")
        arguments = dict(zip(names, args, strict=False))  # the leading named parameters
        for name in kwargs:
            if name in arguments:
                raise TypeError(f"{cls.__qualname__}.forward() got multiple values for argument {name!r}")
        arguments.update(kwargs)
        if arguments.get("labels") is None:
            return original(self, *args, **kwargs)  # no loss: HF's forward, unchanged
        return _causal_lm_forward(self, arch, keep_logits, arguments)

    forward.__signature__ = signature  # what Trainer and generate() inspect
    forward.__name__ = "forward"
    forward.__qualname__ = f"{cls.__qualname__}.forward"
    forward.__doc__ = original.__doc__
    return forward


def patch(model: Any, *, keep_logits: bool = False) -> Any:
    """Computes `model`'s causal LM loss with softmaxce, never forming the (batch, seq, vocab) logits.

    Patches this one instance in place and returns it; patching it again with the same options is a
    no-op. With labels, in training mode, the loss is HF's ForCausalLMLoss (label shift or
    `shift_labels`, ignore_index -100, `num_items_in_batch`, `logits_to_keep`, the model's
    final_logit_softcapping, float32 arithmetic for half-precision models) computed by
    `softmaxce.torch.linear_cross_entropy` from the final hidden states and lm_head's weight, and the
    output's `logits` is None. In eval mode the logits are returned as HF returns them; without
    labels the forward is HF's.

    Args:
        model: an instance of one of the supported classes (LlamaForCausalLM, MistralForCausalLM,
            Qwen2ForCausalLM, Qwen3ForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM,
            Phi3ForCausalLM, GPT2LMHeadModel) whose lm_head is a plain torch.nn.Linear.
        keep_logits: also return the logits in training mode (they cost their (B, S, V) memory but
            are not used by the loss, so their gradient never exists unless you use them).

    Returns:
        `model`, patched.

    Raises:
        TypeError: the class is not supported, lm_head is not a plain linear layer (LoRA-wrapped,
            quantized), or the model's loss_function is not HF's ForCausalLMLoss.
        ValueError: the model is patched with another keep_logits, or its forward was already
            replaced on the instance by someone else.
    """
    arch = _architecture(model)
    state = model.__dict__.get(_STATE)
    if state is not None:
        if state.keep_logits != bool(keep_logits):
            raise ValueError(
                f"this {type(model).__name__} is already patched with keep_logits={state.keep_logits}; "
                "call softmaxce.transformers.unpatch(model) first to patch it with other options"
            )
        return model
    if "forward" in model.__dict__:
        raise ValueError(
            f"this {type(model).__name__}'s forward was already replaced on the instance "
            f"({model.__dict__['forward']!r}); patch the model before wrapping it"
        )
    _check_head(model)
    _check_loss_function(model)
    model.forward = types.MethodType(_make_forward(type(model), arch, bool(keep_logits)), model)
    setattr(model, _STATE, _Patch(bool(keep_logits)))
    return model


def unpatch(model: Any) -> Any:
    """Restores the class forward of a model patched by `patch`; returns it. A no-op on an unpatched model."""
    if model.__dict__.get(_STATE) is not None:
        del model.forward
        delattr(model, _STATE)
    return model


def is_patched(model: Any) -> bool:
    """Whether `patch` has patched this instance (and `unpatch` has not restored it)."""
    return model.__dict__.get(_STATE) is not None
