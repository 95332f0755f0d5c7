"""The text-model trainer on tiny random GPT-2 and Llama-architecture models built here: the loss falls on
learnable text (a fixed evaluation set, not the noisy step loss), the adapter loads with
`PeftModel.from_pretrained` as it is and changes the logits, the merged model equals base + adapter, and a
run stopped and resumed equals an uninterrupted one bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.events import Callback, StepEnded
from text_models import build_tiny_gpt2, build_tiny_llama, learnable_text

BUILDERS = {"gpt2": build_tiny_gpt2, "llama": build_tiny_llama}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text-data") / "learnable.txt"
    path.write_text(learnable_text(), encoding="utf-8")
    return path


def text_config(model: Path, data: Path, out: Path, **overrides):
    from lora_trainer.text.config import text_config_from_dict

    raw = dict(task="text", base_model=str(model), train_data=str(data), output_dir=str(out), max_seq_length=32,
               batch_size=4, max_steps=40, learning_rate=1e-2, lora_rank=8, seed=0, device="cpu",
               mixed_precision="no")
    raw.update(overrides)
    return text_config_from_dict(raw)


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_falls_and_the_adapter_loads_with_peft(arch, models, text_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_trainer.text.run import TextRun

    run = TextRun(text_config(models[arch], text_file, tmp_path / "out"), tensorboard=False)
    trainer = run.setup()
    evaluation = trainer.examples.subset(range(8))  # fixed sequences, eval mode: a deterministic measure
    before = trainer.evaluation_loss(evaluation)
    run.train()
    after = trainer.evaluation_loss(evaluation)
    assert after < 0.7 * before, (before, after)
    result = run.save_final()
    assert not result.stopped_early and result.steps == 40
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in result.adapter_dir.iterdir()}

    ids = torch.tensor([evaluation.examples[0].input_ids])
    trained = logits_of(trainer.model, ids)
    base = AutoModelForCausalLM.from_pretrained(str(models[arch])).eval()
    base_logits = logits_of(base, ids)
    loaded = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()  # an independent loader
    loaded_logits = logits_of(loaded, ids)
    assert (loaded_logits - base_logits).abs().max() > 1e-2, "the adapter changes nothing"
    torch.testing.assert_close(loaded_logits, trained, atol=1e-4, rtol=1e-4)


class StopAt(Callback):
    """Asks the run to stop after `step` (what Ctrl-C and the page's Stop do)."""

    def __init__(self, step: int):
        self.step, self.seen = step, 0

    def on_event(self, event) -> None:
        if isinstance(event, StepEnded):
            self.seen = event.step

    def should_stop(self) -> bool:
        return self.seen >= self.step


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resume_after_a_stop_equals_an_uninterrupted_run(arch, models, text_file, tmp_path):
    """GPT-2 trains with its own dropout (0.1) on: the dropout masks must match too. Gradient accumulation 2
    and a step count that crosses epochs."""
    from lora_trainer.text.run import train_text

    settings = dict(max_steps=9, gradient_accumulation_steps=2, lora_dropout=0.1, save_steps=4)
    whole = train_text(text_config(models[arch], text_file, tmp_path / "whole", **settings))
    first = train_text(text_config(models[arch], text_file, tmp_path / "parts", **settings), [StopAt(5)])
    assert first.stopped_early and first.steps == 5
    second = train_text(text_config(models[arch], text_file, tmp_path / "parts", resume=True, **settings))
    assert not second.stopped_early and second.steps == 9
    assert second.losses == whole.losses
    a = load_file(str(whole.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(second.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_run(models, text_file, tmp_path):
    from lora_trainer.errors import ConfigError
    from lora_trainer.text.run import train_text

    out = tmp_path / "out"
    train_text(text_config(models["gpt2"], text_file, out, max_steps=4), [StopAt(2)])
    with pytest.raises(ConfigError, match="lora_rank changed from 8 to 4"):
        train_text(text_config(models["gpt2"], text_file, out, max_steps=4, lora_rank=4, resume=True))


def test_merge_writes_a_plain_model_equal_to_base_plus_adapter(models, text_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_trainer.text.run import train_text

    result = train_text(text_config(models["llama"], text_file, tmp_path / "out", max_steps=6, merge=True))
    assert result.merged_dir == tmp_path / "out" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(str(result.merged_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(result.merged_dir))
    ids = torch.tensor([tokenizer("the red fox jumps").input_ids])
    base = AutoModelForCausalLM.from_pretrained(str(models["llama"])).eval()
    with_adapter = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    torch.testing.assert_close(logits_of(merged, ids), logits_of(with_adapter, ids), atol=1e-4, rtol=1e-4)


def test_a_finished_adapter_is_not_replaced_silently(models, text_file, tmp_path):
    from lora_trainer.errors import ConfigError
    from lora_trainer.text.run import train_text

    out = tmp_path / "out"
    train_text(text_config(models["gpt2"], text_file, out, max_steps=2))
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds an adapter"):
        train_text(text_config(models["gpt2"], text_file, out, max_steps=2, seed=1))
    assert (out / "adapter_model.safetensors").read_bytes() == before
    train_text(text_config(models["gpt2"], text_file, out, max_steps=2, seed=1, overwrite=True))
    assert (out / "adapter_model.safetensors").read_bytes() != before


def test_a_folder_a_live_run_holds_is_refused_at_once(models, text_file, tmp_path):
    """One run per output folder, as for images: the engine's OS lock; free again once that run ends."""
    from lora_trainer.engine.output_folder import FolderBusy, FolderLock
    from lora_trainer.text.run import train_text

    out = tmp_path / "out"
    with FolderLock(out):
        with pytest.raises(FolderBusy, match="in use by another training run"):
            train_text(text_config(models["gpt2"], text_file, out, max_steps=1))
    assert not (out / "adapter_model.safetensors").exists()
    assert train_text(text_config(models["gpt2"], text_file, out, max_steps=1)).steps == 1


def test_bf16_trains_with_bf16_base_weights_and_fp32_lora(models, text_file, tmp_path):
    """mixed_precision bf16 (what auto picks on a CPU with AMX and on most GPUs)."""
    from lora_trainer.text.run import TextRun

    run = TextRun(text_config(models["llama"], text_file, tmp_path / "out", max_steps=3, mixed_precision="bf16"),
                  tensorboard=False)
    trainer = run.setup()
    dtypes = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    run.train()
    result = run.save_final()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}


def test_micro_batches_and_checkpointing_do_not_change_the_step(models, text_file, tmp_path, monkeypatch):
    """The loss of a step is normalised by the step's learned tokens, so an out-of-memory retry with half the
    micro-batch, and gradient checkpointing, give the same losses and LoRA weights (Llama: no dropout)."""
    import lora_trainer.text.trainer as trainer_module
    from lora_trainer.text.run import train_text

    settings = dict(max_steps=3, batch_size=4)
    plain = train_text(text_config(models["llama"], text_file, tmp_path / "plain", **settings))
    checkpointed = train_text(text_config(models["llama"], text_file, tmp_path / "ckpt", gradient_checkpointing=True,
                                          **settings))
    real_loss = trainer_module.token_loss_sum
    ooms = []

    def tight_memory(model, batch, use_cache=False):
        if batch["input_ids"].shape[0] > 2:
            ooms.append(batch["input_ids"].shape[0])
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_loss(model, batch, use_cache)

    monkeypatch.setattr(trainer_module, "token_loss_sum", tight_memory)
    retried = train_text(text_config(models["llama"], text_file, tmp_path / "oom", **settings))
    assert ooms == [4]  # one retry, then micro-batches of 2 for the rest of the run
    for other in (checkpointed, retried):
        torch.testing.assert_close(torch.tensor(other.losses), torch.tensor(plain.losses), rtol=1e-5, atol=1e-6)
        a = load_file(str(plain.adapter_dir / "adapter_model.safetensors"))
        b = load_file(str(other.adapter_dir / "adapter_model.safetensors"))
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
