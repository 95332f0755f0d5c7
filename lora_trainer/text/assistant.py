"""The prompt assistant: a LoRA on a small local language model, trained on the user's own prompts, that
turns a short idea ("red fox in snow") into a prompt in their usual style.

Training pairs: the idea of a prompt is its first comma-separated part that is not one of the user's
common tags (quality and style tags that appear in many of their prompts), stripped of attention syntax;
the model learns `Idea: <idea>\\nPrompt:` -> ` <the whole prompt>` with the loss on the completion only.
Expanding feeds the same template and decodes up to the end-of-text token or the end of the line.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ..errors import DatasetError, ModelLoadError
from ..utils.atomic import atomic_write_text
from ..utils.device import pick_device, pick_precision
from .config import TextTrainConfig, text_config_from_dict
from .model import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_model_folder, load_causal_lm, load_tokenizer,
                    position_limit, quiet_peft, read_model_config)

ASSISTANT_NAME = "prompt_assistant"
TEMPLATE = "Idea: {idea}\nPrompt:"
COMMON_SHARE = 0.3  # a tag in more than this share of the prompts is a style tag, never the idea
IDEA_WORDS = 8
MIN_PROMPTS = 2


def _tags(prompt: str) -> List[str]:
    text = re.sub(r"<[^>]*>", " ", prompt)  # <lora:name:0.8>, <hypernet:...>
    text = re.sub(r":\s*[\d.]+\s*(?=[)\]])", "", text)  # (word:1.2) weights
    text = re.sub(r"[()\[\]{}]", " ", text)
    return [t for t in (re.sub(r"\s+", " ", part).strip() for part in text.split(",")) if t]


def common_tags(prompts: Sequence[str]) -> set:
    """Tags (lower case) that appear in more than COMMON_SHARE of the prompts."""
    counts = Counter(tag.lower() for p in prompts for tag in set(_tags(p)))
    return {tag for tag, n in counts.items() if n > COMMON_SHARE * len(prompts)} if len(prompts) >= 3 else set()


def idea_of(prompt: str, common: set) -> str:
    """The prompt's subject: its first tag that is not a common one (else its first tag), at most IDEA_WORDS words."""
    tags = _tags(prompt) or [prompt]
    subject = next((t for t in tags if t.lower() not in common), tags[0])
    return " ".join(subject.split()[:IDEA_WORDS])


def training_pairs(prompts: Sequence[str]) -> List[dict]:
    common = common_tags(prompts)
    return [{"prompt": TEMPLATE.format(idea=idea_of(p, common)), "completion": f" {p}"} for p in prompts]


def write_training_data(prompts: Sequence[str], folder: Path) -> Path:
    """`folder/prompts.jsonl` (the training pairs) and `folder/prompts.txt` (the collected list, to read)."""
    if len(prompts) < MIN_PROMPTS:
        raise DatasetError(f"only {len(prompts)} prompt(s) collected: the assistant needs at least {MIN_PROMPTS} "
                           f"(a few hundred teach a style well)")
    atomic_write_text(folder / "prompts.txt", "\n".join(prompts) + "\n")
    lines = [json.dumps(pair, ensure_ascii=False) for pair in training_pairs(prompts)]
    return atomic_write_text(folder / "prompts.jsonl", "\n".join(lines) + "\n")


def assistant_config(model: str, folder: Path, steps: int = 300, learning_rate: float = 2e-4, rank: int = 8,
                     device: str = "auto") -> TextTrainConfig:
    """The run that trains the assistant on `folder/prompts.jsonl`; the adapter goes into `folder` too (a new
    run replaces the last one: the assistant is retrained, not continued)."""
    data = folder / "prompts.jsonl"
    if not data.is_file():
        raise DatasetError("no prompts collected yet: press Collect prompts first")
    limit = position_limit(read_model_config(check_model_folder(model))) or 256
    return text_config_from_dict(dict(
        task="text", base_model=model, train_data=str(data), output_dir=str(folder),
        max_seq_length=min(256, limit), batch_size=8, max_steps=int(steps), learning_rate=float(learning_rate),
        lora_rank=int(rank), lr_scheduler="constant", device=device, overwrite=True))


@dataclass
class LoadedAssistant:
    key: Tuple[str, float]
    model: Any
    tokenizer: Any
    device: torch.device


class PromptAssistant:
    """Expands ideas with the newest trained adapter in `folder` (loaded once, reloaded when it changes)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.loaded: Optional[LoadedAssistant] = None

    def _load(self) -> LoadedAssistant:
        from peft import PeftModel

        adapter = self.folder
        if not (adapter / ADAPTER_WEIGHTS).is_file():
            raise ModelLoadError("the prompt assistant is not trained yet: collect prompts, then press Train")
        key = (str(adapter), (adapter / ADAPTER_WEIGHTS).stat().st_mtime)
        if self.loaded is not None and self.loaded.key == key:
            return self.loaded
        self.loaded = None
        base = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path", "")
        folder = check_model_folder(base)
        device = pick_device("auto")
        dtype = pick_precision("auto", device).base_dtype  # bf16/fp16 on a GPU (beside the WebUI's model), else fp32
        with quiet_peft():
            model = PeftModel.from_pretrained(load_causal_lm(folder, dtype), str(adapter)).to(device).eval()
        self.loaded = LoadedAssistant(key, model, load_tokenizer(folder), device)
        return self.loaded

    def unload(self) -> None:
        """Free the loaded model (before the assistant is trained again, or to give its memory back)."""
        self.loaded = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def expand(self, idea: str, creativity: float = 0.7, seed: int = 0, max_new_tokens: int = 96) -> str:
        """A prompt for `idea` in the user's style; creativity 0 always gives the same (most likely) prompt."""
        idea = " ".join((idea or "").split())
        if not idea:
            raise DatasetError("type an idea first, e.g. red fox in snow")
        a = self._load()
        encoded = a.tokenizer(TEMPLATE.format(idea=idea), return_tensors="pt")
        eos = a.tokenizer.eos_token_id
        sampling = {"do_sample": True, "temperature": float(creativity), "top_p": 0.95} if creativity > 0 else \
            {"do_sample": False}
        with torch.random.fork_rng(devices=[a.device] if a.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(int(seed))
            out = a.model.generate(input_ids=encoded["input_ids"].to(a.device),
                                   attention_mask=encoded["attention_mask"].to(a.device),
                                   max_new_tokens=max_new_tokens, eos_token_id=eos,
                                   pad_token_id=a.tokenizer.pad_token_id if a.tokenizer.pad_token_id is not None
                                   else eos, **sampling)
        text = a.tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.split("\n")[0].strip()
