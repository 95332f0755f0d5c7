"""The text trainer's data side and its refusals: completion-only labels on a crafted batch (checked against a
cross-entropy computed by hand from the model's logits), padding masked even when pad == eos, packing,
and a clear message for each kind of bad input, before any weight is loaded."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lora_trainer.errors import ConfigError, DatasetError, ModelLoadError
from text_models import build_tiny_gpt2, build_tokenizer, learnable_text


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("text-data-models") / "gpt2")


def config(model: Path, data: Path, out: Path, **overrides):
    from lora_trainer.text.config import text_config_from_dict

    raw = dict(task="text", base_model=str(model), train_data=str(data), output_dir=str(out), max_seq_length=32,
               device="cpu", mixed_precision="no")
    raw.update(overrides)
    return text_config_from_dict(raw)


def test_completion_only_loss_counts_completion_tokens_only(gpt2, tmp_path):
    """A crafted batch of two pairs of different lengths (so one is padded). GPT-2 has no pad token: padding
    uses eos, yet the completion's own final eos is learned and the padding eos is not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_trainer.text.batches import IGNORE, collate, encode, tokenize
    from lora_trainer.text.data import TextRecord
    from lora_trainer.text.trainer import token_loss_sum

    tok = AutoTokenizer.from_pretrained(str(gpt2))
    eos = tok.eos_token_id
    pairs = [("red fox in snow =>", " the red fox jumps over the lazy dog."), ("a cat =>", " a small cat.")]
    records = [TextRecord(f"crafted:{i}", prompt=p, completion=c) for i, (p, c) in enumerate(pairs)]
    examples = tokenize(records, tok, max_len=64, eos_id=eos)
    batch = collate(examples.examples, pad_id=eos)

    for row, (prompt, completion) in enumerate(pairs):
        n_prompt = len(encode(tok, prompt, special=True))
        n_completion = len(encode(tok, completion, special=False)) + 1  # + eos
        labels = batch["labels"][row].tolist()
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:n_prompt + n_completion] == batch["input_ids"][row, n_prompt:n_prompt + n_completion].tolist()
        assert labels[n_prompt + n_completion - 1] == eos  # the completion's end is learned ...
        assert all(x == IGNORE for x in labels[n_prompt + n_completion:])  # ... the padding (also eos) is not
        assert batch["attention_mask"][row].sum() == n_prompt + n_completion

    model = AutoModelForCausalLM.from_pretrained(str(gpt2)).eval()
    with torch.no_grad():
        loss = token_loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # by hand: -log p(token t | tokens < t) for every completion position t, nothing else
    expected, count = 0.0, 0
    for row, (prompt, completion) in enumerate(pairs):
        n_prompt = len(encode(tok, prompt, special=True))
        n_total = n_prompt + len(encode(tok, completion, special=False)) + 1
        for t in range(n_prompt, n_total):
            expected -= torch.log_softmax(logits[row, t - 1].double(), -1)[batch["input_ids"][row, t]].item()
            count += 1
    assert count == examples.target_tokens(range(2))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)

    # with completion_only_loss off the prompt is learned too: more tokens, a different sum
    whole = tokenize(records, tok, max_len=64, eos_id=eos, completion_only=False)
    assert whole.target_tokens(range(2)) > count


def test_packing_joins_documents_without_padding(gpt2):
    from transformers import AutoTokenizer

    from lora_trainer.text.batches import tokenize
    from lora_trainer.text.data import TextRecord

    tok = AutoTokenizer.from_pretrained(str(gpt2))
    docs = [TextRecord(f"d:{i}", text=t) for i, t in enumerate(learnable_text(3).split("\n\n"))]
    packed = tokenize(docs, tok, max_len=16, eos_id=tok.eos_token_id, packing=True)
    stream = [i for d in docs for i in tok(d.text).input_ids + [tok.eos_token_id]]
    assert [i for e in packed.examples for i in e.input_ids] == stream
    assert all(len(e.input_ids) == 16 for e in packed.examples[:-1])
    assert all(e.labels == e.input_ids for e in packed.examples)
    unpacked = tokenize(docs, tok, max_len=16, eos_id=tok.eos_token_id, packing=False)
    assert len(unpacked) == len(docs)


def test_txt_units_and_jsonl_records(tmp_path):
    from lora_trainer.text.data import read_records

    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "four"}) + "\n\n" +
                                      json.dumps({"prompt": "p", "completion": "c"}) + "\n", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("never", encoding="utf-8")
    assert [r.text for r in read_records(tmp_path / "a.txt", "line")] == ["one", "two", "three"]
    assert [r.text for r in read_records(tmp_path / "a.txt", "paragraph")] == ["one\ntwo", "three"]
    records = read_records(tmp_path, "file")
    assert [r.text for r in records[:2]] == ["one\ntwo\n\nthree", "four"]
    assert records[2].is_pair and (records[2].prompt, records[2].completion) == ("p", "c")
    assert records[2].source.endswith("b.jsonl:3")


@pytest.mark.parametrize("content, message", [
    ("{\"text\": \"ok\"}\n{not json}\n", r"bad\.jsonl:2: not valid JSON"),
    ("{\"prompt\": \"only a prompt\"}\n", r"bad\.jsonl:1: expected .* found keys \['prompt'\]"),
])
def test_bad_jsonl_lines_are_named(tmp_path, content, message):
    from lora_trainer.text.data import read_records

    (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_records(tmp_path / "bad.jsonl")


def test_bad_input_is_refused_before_loading_weights(gpt2, tmp_path):
    from lora_trainer.text.run import preflight, prepare_data

    data = tmp_path / "data.txt"
    data.write_text(learnable_text(1), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="does not exist"):
        preflight(config(tmp_path / "no-model", data, tmp_path / "out"))
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        preflight(config(tmp_path / "not-a-model", data, tmp_path / "out"))
    with pytest.raises(DatasetError, match="does not exist"):
        preflight(config(gpt2, tmp_path / "missing.txt", tmp_path / "out"))
    (tmp_path / "empty.txt").write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="holds no text to train on"):
        prepare_data(config(gpt2, tmp_path / "empty.txt", tmp_path / "out"))
    (tmp_path / "doc.md").write_text("text", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"\.md files are not read"):
        preflight(config(gpt2, tmp_path / "doc.md", tmp_path / "out"))
    with pytest.raises(ConfigError, match="max_seq_length: 4096 is over the model's limit of 128"):
        prepare_data(config(gpt2, data, tmp_path / "out", max_seq_length=4096))


def test_a_prompt_longer_than_the_window_is_reported(gpt2, tmp_path):
    from lora_trainer.text.run import prepare_data

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "word " * 40, "completion": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="every prompt fills the whole max_seq_length of 16"):
        prepare_data(config(gpt2, data, tmp_path / "out", max_seq_length=16))


def test_a_tokenizer_without_eos_is_refused_unless_add_eos_is_off(gpt2, tmp_path):
    import shutil

    from lora_trainer.text.run import prepare_data

    folder = tmp_path / "no-eos"
    shutil.copytree(gpt2, folder)
    tok = build_tokenizer(folder, [learnable_text(1)], eos=None, bos="<s>")
    assert tok.eos_token_id is None and tok.pad_token_id is None
    data = tmp_path / "data.txt"
    data.write_text(learnable_text(1), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="no end-of-text \\(eos\\) token"):
        prepare_data(config(folder, data, tmp_path / "out"))
    prepared = prepare_data(config(folder, data, tmp_path / "out", add_eos=False))
    assert prepared.special.pad_id == 0 and "masked out" in prepared.special.note


def test_config_keys_are_checked(tmp_path):
    from lora_trainer.text.config import load_text_config, text_config_from_dict

    with pytest.raises(ConfigError, match="did you mean 'lora_rank'"):
        text_config_from_dict({"task": "text", "lora_rnak": 4})
    with pytest.raises(ConfigError, match="missing required key"):
        text_config_from_dict({"task": "text"})
    with pytest.raises(ConfigError, match="target_modules: expected auto or a list"):
        text_config_from_dict({"task": "text", "target_modules": 3}, check_required=False)
    (tmp_path / "data.txt").write_text("x", encoding="utf-8")
    path = tmp_path / "c.yaml"
    path.write_text("task: text\nbase_model: m\ntrain_data: data.txt\noutput_dir: out\nlearning_rate: 1e-4\n")
    cfg = load_text_config(path, {"lora_r": 16})
    assert cfg.train_data == str(tmp_path / "data.txt")  # found beside the config file
    assert cfg.learning_rate == 1e-4 and cfg.lora_rank == 16
    path.write_text("task: text\nbase_model: m\nlora_rank: 4\nlora_rank: 8\n")
    with pytest.raises(ConfigError, match="'lora_rank' appears twice, on line 3 and line 4"):
        load_text_config(path)


def test_target_modules_per_architecture(gpt2, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lora_trainer.text.model import load_causal_lm, lora_targets

    assert lora_targets(load_causal_lm(gpt2, torch.float32), "auto") == (["c_attn", "c_fc", "c_proj"], True)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    names, fan_in_fan_out = lora_targets(llama, "auto")
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert not fan_in_fan_out
    assert lora_targets(llama, ["q_proj", "v_proj"]) == (["q_proj", "v_proj"], False)
    with pytest.raises(ConfigError, match="c_attn not found in LlamaForCausalLM; its linear layers are named"):
        lora_targets(llama, ["c_attn"])


def test_atomic_folder_keeps_the_old_files_when_writing_fails(tmp_path):
    from lora_trainer.utils.atomic import atomic_folder

    target = tmp_path / "adapter"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("one")
    assert (target / "weights").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp folder left behind
