"""A patched model in real training: Trainer with gradient accumulation, evaluate with metrics,
torch.compile, save_pretrained / from_pretrained."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
import transformers
from _tiny_models import VOCAB, tiny_model

import softmaxce.transformers as sce_hf


def _examples(n: int = 8, seq: int = 10) -> list[dict[str, torch.Tensor]]:
    """n examples with different numbers of ignored labels, so micro-batches have unequal token counts
    and only the num_items_in_batch normalization makes 4 x 2 equal 1 x 8."""
    gen = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        ids = torch.randint(3, VOCAB, (seq,), generator=gen)
        labels = ids.clone()
        labels[: 1 + i] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long), "labels": labels})
    return out


def _args(tmp_path: pathlib.Path, batch_size: int, accumulation: int) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the update is lr * gradient
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def _train(tmp_path, *, patched: bool, batch_size: int, accumulation: int):
    model = tiny_model("LlamaForCausalLM", dtype=torch.float64)
    if patched:
        sce_hf.patch(model)
    seen: list[dict] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    args = _args(tmp_path, batch_size, accumulation)
    transformers.Trainer(model=model, args=args, train_dataset=_examples()).train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, seen


def test_trainer_gradient_accumulation_equals_one_large_batch(tmp_path):
    before = {n: p.detach().clone() for n, p in tiny_model("LlamaForCausalLM", dtype=torch.float64).named_parameters()}
    accumulated, seen = _train(tmp_path, patched=True, batch_size=2, accumulation=4)
    large, _ = _train(tmp_path, patched=True, batch_size=8, accumulation=1)
    hf, _ = _train(tmp_path, patched=False, batch_size=2, accumulation=4)
    assert len(seen) == 4
    total = sum(int((ex["labels"][1:] != -100).sum()) for ex in _examples())
    assert all(int(kw["num_items_in_batch"]) == total for kw in seen)  # Trainer passes it through **kwargs
    for n in before:
        assert not torch.equal(large[n], before[n]), n  # the step moved every parameter
        torch.testing.assert_close(accumulated[n], large[n], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(accumulated[n], hf[n], rtol=1e-4, atol=1e-7)  # HF: float32 loss


def test_trainer_evaluate_and_compute_metrics(tmp_path):
    received = {}

    def compute_metrics(pred):
        received["shape"] = pred.predictions.shape
        predicted = pred.predictions[:, :-1].argmax(-1)
        labels = pred.label_ids[:, 1:]
        kept = labels != -100
        return {"accuracy": float((predicted[kept] == labels[kept]).mean())}

    metrics = {}
    for patched in (False, True):
        model = tiny_model("LlamaForCausalLM")
        if patched:
            sce_hf.patch(model)
        trainer = transformers.Trainer(
            model=model, args=_args(tmp_path, 2, 1), eval_dataset=_examples(), compute_metrics=compute_metrics
        )
        metrics[patched] = trainer.evaluate()
    assert received["shape"] == (8, 10, VOCAB)
    assert metrics[True]["eval_accuracy"] == metrics[False]["eval_accuracy"]
    np.testing.assert_allclose(metrics[True]["eval_loss"], metrics[False]["eval_loss"], rtol=1e-5)


def test_torch_compile_of_patched_model():
    model = tiny_model("Gemma2ForCausalLM")
    examples = _examples(2)
    inputs = {k: torch.stack([ex[k] for ex in examples]) for k in examples[0]}
    sce_hf.patch(model)
    eager = model(**inputs).loss
    eager.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # inductor: too slow for CI
    loss = compiled(**inputs).loss
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-7)


def _files(path: pathlib.Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def test_save_pretrained_writes_the_same_files_and_loading_is_unpatched(tmp_path):
    model = tiny_model("Gemma3ForCausalLM")
    model.save_pretrained(tmp_path / "plain")
    sce_hf.patch(model)
    model.save_pretrained(tmp_path / "patched")
    plain, patched = _files(tmp_path / "plain"), _files(tmp_path / "patched")
    assert plain.keys() == patched.keys() and "model.safetensors" in plain
    assert plain == patched

    loaded = transformers.Gemma3ForCausalLM.from_pretrained(tmp_path / "patched")
    assert not sce_hf.is_patched(loaded) and "forward" not in loaded.__dict__
    loaded.train()
    examples = _examples(2)
    inputs = {k: torch.stack([ex[k] for ex in examples]) for k in examples[0]}
    assert loaded(**inputs).logits is not None
    assert sce_hf.patch(loaded)(**inputs).logits is None


@pytest.mark.parametrize("name", ["Qwen3ForCausalLM", "GPT2LMHeadModel"])
def test_a_few_sgd_steps_follow_the_unpatched_model(name):
    """Five optimizer steps: the parameters stay with the unpatched model's (float64 models)."""
    examples = _examples(4)
    inputs = {k: torch.stack([ex[k] for ex in examples]) for k in examples[0]}
    params = {}
    for patched in (False, True):
        model = tiny_model(name, dtype=torch.float64)
        if patched:
            sce_hf.patch(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        for _ in range(5):
            opt.zero_grad()
            model(**inputs).loss.backward()
            opt.step()
        params[patched] = dict(model.named_parameters())
    for n, p in params[False].items():
        torch.testing.assert_close(params[True][n], p, rtol=1e-5, atol=1e-7)
