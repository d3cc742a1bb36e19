"""A patched model computes the function the unpatched one does: HF's ForCausalLMLoss.

For every supported architecture (tiny random-init models, no download): the loss and every
parameter's gradient equal the unpatched model's in float32 (loss 1e-5 relative, gradients 1e-4
relative norm) with ignored and padded positions, num_items_in_batch and shift_labels; in bfloat16
our error against a float64 copy of the same weights is no worse than the unpatched bf16 model's
plus a small tolerance; without labels the outputs are identical.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _tiny_models import ARCHITECTURES, VOCAB, batch, tiny_model

import softmaxce.transformers as sce_hf


def loss_and_grads(model, inputs: dict, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def shift_labels_of(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets built by the caller (as packed-sequence collators do), here with one more ignored."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].clone()
    shifted[0, 0] = -100
    return shifted


CASES = {
    "labels": lambda b: {},
    "num_items_in_batch": lambda b: {"num_items_in_batch": torch.tensor(23)},  # the count over a larger batch
    "num_items_int": lambda b: {"num_items_in_batch": 23},
    "shift_labels": lambda b: {"shift_labels": shift_labels_of(b["labels"])},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_float32_loss_and_every_gradient_equal_unpatched(name, case):
    model = tiny_model(name)
    inputs = batch()
    kwargs = CASES[case](inputs)
    loss_hf, grads_hf = loss_and_grads(model, inputs, **kwargs)
    sce_hf.patch(model)
    loss, grads = loss_and_grads(model, inputs, **kwargs)
    assert loss.dtype == loss_hf.dtype == torch.float32
    assert float(abs(loss - loss_hf) / abs(loss_hf)) <= 1e-5
    assert grads.keys() == grads_hf.keys()
    for n in grads_hf:
        assert rel_norm(grads[n], grads_hf[n]) <= 1e-4, n


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_bfloat16_error_no_worse_than_unpatched(name):
    """Error against a float64 copy of the same bf16 weights: ours <= HF's bf16 error + tolerance."""
    model = tiny_model(name, dtype=torch.bfloat16)
    reference = copy.deepcopy(model).double()
    inputs = batch(seq=16)
    loss_ref, grads_ref = loss_and_grads(reference, inputs)
    loss_hf, grads_hf = loss_and_grads(model, inputs)
    sce_hf.patch(model)
    loss, grads = loss_and_grads(model, inputs)
    assert loss.dtype == loss_hf.dtype == torch.float32  # HF upcasts the logits: so do we
    err_hf = float(abs(loss_hf.double() - loss_ref) / abs(loss_ref))
    err = float(abs(loss.double() - loss_ref) / abs(loss_ref))
    assert err <= err_hf + 1e-3, (err, err_hf)
    for n in grads_ref:
        assert grads[n].dtype == torch.bfloat16
        assert rel_norm(grads[n], grads_ref[n]) <= rel_norm(grads_hf[n], grads_ref[n]) + 1e-2, n


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_without_labels_outputs_identical(name, training):
    model = tiny_model(name).train(training)
    inputs = batch()
    del inputs["labels"]
    with torch.no_grad():
        expected = model(**inputs)
        sce_hf.patch(model)
        got = model(**inputs)
    assert type(got) is type(expected)
    assert torch.equal(got.logits, expected.logits)


def test_generate_identical():
    model = tiny_model("LlamaForCausalLM").eval()
    ids = batch()["input_ids"][1:]
    expected = model.generate(ids, max_new_tokens=4, do_sample=False)
    sce_hf.patch(model)
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), expected)


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "Gemma2ForCausalLM", "GPT2LMHeadModel"])
def test_eval_mode_returns_hf_logits_and_loss(name):
    model = tiny_model(name).eval()
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs)
        sce_hf.patch(model)
        got = model(**inputs)
    assert torch.equal(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "Gemma3ForCausalLM"])
def test_training_logits_none_unless_keep_logits(name):
    model = tiny_model(name)
    inputs = batch()
    expected = model(**inputs)
    assert sce_hf.patch(model)(**inputs).logits is None
    got = sce_hf.patch(sce_hf.unpatch(model), keep_logits=True)(**inputs)
    assert torch.equal(got.logits, expected.logits)  # soft-capped as HF does
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=0)


def test_return_dict_false_gives_a_tuple_led_by_the_loss():
    model = tiny_model("LlamaForCausalLM")
    inputs = batch()
    expected = model(**inputs, return_dict=False)
    got = sce_hf.patch(model)(**inputs, return_dict=False)
    assert isinstance(got, tuple)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=0)


def test_positional_arguments():
    model = tiny_model("LlamaForCausalLM")
    b = batch()
    # (input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, labels)
    expected = model(b["input_ids"], b["attention_mask"], None, None, None, b["labels"]).loss
    sce_hf.patch(model)
    got = model(b["input_ids"], b["attention_mask"], None, None, None, b["labels"]).loss
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    with pytest.raises(TypeError, match="multiple values for argument 'attention_mask'"):
        model(b["input_ids"], b["attention_mask"], attention_mask=b["attention_mask"], labels=b["labels"])


def _keep(kind: str, seq: int):
    """logits_to_keep values of every kind slice_logits_to_keep accepts, for a batch of 2 x seq."""
    if kind == "int":
        return 5
    if kind == "index_1d":
        return torch.tensor([0, 2, 3, 7])
    if kind == "index_2d":
        return torch.tensor([[1, 2, 4], [0, 5, 6]])
    mask = torch.zeros(2, seq, dtype=torch.bool)  # kind == "mask": a different count per row
    mask[0, [1, 2, 5]] = True
    mask[1, [0, 3, 4, 6, 8]] = True
    return mask


@pytest.mark.parametrize("kind", ["int", "index_1d", "index_2d", "mask"])
@pytest.mark.parametrize("name", ["LlamaForCausalLM", "Gemma2ForCausalLM"])
def test_logits_to_keep_selects_the_positions_hf_does(name, kind):
    """The loss over the kept positions, with shift_labels (or labels) shaped like them, equals HF's."""
    model = tiny_model(name)
    inputs = batch()
    keep = _keep(kind, inputs["input_ids"].shape[1])
    gen = torch.Generator().manual_seed(3)
    if kind == "mask":
        kept = int(keep.sum())
        extra = {"shift_labels": torch.randint(0, VOCAB, (kept,), generator=gen)}
        labels = extra["shift_labels"]
    else:
        rows = keep if isinstance(keep, int) else keep.shape[-1]
        labels = torch.randint(0, VOCAB, (2, rows), generator=gen)
        labels[0, 0] = -100
        extra = {}
    inputs["labels"] = labels
    loss_hf, grads_hf = loss_and_grads(model, inputs, logits_to_keep=keep, **extra)
    sce_hf.patch(model)
    loss, grads = loss_and_grads(model, inputs, logits_to_keep=keep, **extra)
    assert float(abs(loss - loss_hf) / abs(loss_hf)) <= 1e-5
    for n in grads_hf:
        assert rel_norm(grads[n], grads_hf[n]) <= 1e-4, n


def test_labels_not_matching_kept_positions_raise_as_hf():
    model = tiny_model("LlamaForCausalLM")
    inputs = batch()
    with pytest.raises(ValueError, match=r"Expected input batch_size \(2\) to match target batch_size \(18\)") as hf:
        model(**inputs, logits_to_keep=1)
    sce_hf.patch(model)
    with pytest.raises(ValueError) as ours:
        model(**inputs, logits_to_keep=1)
    assert str(ours.value) == str(hf.value)


def test_every_position_ignored_is_nan_as_hf():
    model = tiny_model("LlamaForCausalLM")
    inputs = batch()
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    assert model(**inputs).loss.isnan()
    assert sce_hf.patch(model)(**inputs).loss.isnan()


def test_ignore_index_keyword_is_honoured():
    model = tiny_model("LlamaForCausalLM")
    inputs = batch()
    inputs["labels"] = torch.where(inputs["labels"] == -100, 0, inputs["labels"])  # 0 marks ignored here
    expected = model(**inputs, ignore_index=0).loss
    torch.testing.assert_close(sce_hf.patch(model)(**inputs, ignore_index=0).loss, expected, rtol=1e-5, atol=0)
