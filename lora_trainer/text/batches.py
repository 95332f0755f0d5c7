"""Records -> token examples -> padded batches.

- Plain documents: with packing, joined (each followed by the end-of-text token) into one stream cut into
  `max_len` blocks, so no token is padding; without, one sequence per document, cut at `max_len`.
- Prompt/completion pairs: `prompt tokens + completion tokens + eos`, cut at `max_len`; with
  completion-only loss the prompt's labels are IGNORE, so only the completion is learned.
- Batches are right-padded; padding has attention mask 0 and label IGNORE (whatever the pad token is:
  labels come from lengths, never from comparing ids with the pad id, which may equal eos).
Data order is counter-based: epoch E's order depends only on (seed, E), so a resumed run sees what an
uninterrupted one sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..utils.seeding import py_random
from .data import TextRecord

IGNORE = -100  # the label of a token that is not learned (torch's cross_entropy ignore_index)


@dataclass
class Example:
    """One training sequence: token ids and, per position, the token to learn there or IGNORE."""

    input_ids: List[int]
    labels: List[int]

    @property
    def target_tokens(self) -> int:
        """Tokens the loss counts: labels after the first position (each is predicted from the ones before)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass
class TokenStats:
    documents: int = 0
    pairs: int = 0
    tokens: int = 0
    truncated: List[str] = field(default_factory=list)  # sources cut at max_len
    skipped: List[str] = field(default_factory=list)  # pairs whose prompt fills the whole window


@dataclass
class ExampleSet:
    examples: List[Example]
    stats: TokenStats = field(default_factory=TokenStats)

    def __len__(self) -> int:
        return len(self.examples)

    def epoch_batches(self, epoch: int, seed: int, batch_size: int) -> List[List[int]]:
        """Example indices of every batch of `epoch`, in a shuffled order that depends only on (seed, epoch)."""
        order = list(range(len(self.examples)))
        py_random(seed, "text-order", epoch).shuffle(order)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.examples) // batch_size)

    def subset(self, indices: Sequence[int]) -> "ExampleSet":
        return ExampleSet([self.examples[i] for i in indices], self.stats)

    def target_tokens(self, indices: Sequence[int]) -> int:
        return sum(self.examples[i].target_tokens for i in indices)


def encode(tokenizer: Any, text: str, special: bool) -> List[int]:
    """Token ids of `text`; `special`: with the tokenizer's own start tokens (a Llama BOS), as a sequence start."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def tokenize(records: Sequence[TextRecord], tokenizer: Any, max_len: int, eos_id: Optional[int],
             packing: bool = True, completion_only: bool = True, add_eos: bool = True) -> ExampleSet:
    """Token examples of the records (see the module docstring)."""
    stats = TokenStats()
    examples: List[Example] = []
    end = [eos_id] if add_eos and eos_id is not None else []
    stream: List[int] = []
    for record in records:
        if record.is_pair:
            stats.pairs += 1
            prompt = encode(tokenizer, record.prompt or "", special=True)
            completion = encode(tokenizer, record.completion or "", special=False) + end
            stats.tokens += len(prompt) + len(completion)
            if len(prompt) >= max_len:
                stats.skipped.append(record.source)
                continue
            if len(prompt) + len(completion) > max_len:
                stats.truncated.append(record.source)
            ids = (prompt + completion)[:max_len]
            labels = [IGNORE] * len(prompt) + ids[len(prompt):] if completion_only else list(ids)
            examples.append(Example(ids, labels))
            continue
        stats.documents += 1
        ids = encode(tokenizer, record.text or "", special=True) + end
        stats.tokens += len(ids)
        if packing:
            stream.extend(ids)
        else:
            if len(ids) > max_len:
                stats.truncated.append(record.source)
            examples.append(Example(ids[:max_len], ids[:max_len]))
    for start in range(0, len(stream), max_len):
        block = stream[start:start + max_len]
        if len(block) >= 2:  # a single token has nothing to predict
            examples.append(Example(block, list(block)))
    return ExampleSet(examples, stats)


def collate(examples: Sequence[Example], pad_id: int) -> Dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels of a right-padded batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def split_validation(n: int, fraction: float, seed: int) -> tuple:
    """(training indices, validation indices): `fraction` of n held out (at least one, never all)."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * fraction)))
    held = set(py_random(seed, "text-validation").sample(range(n), k))
    return [i for i in range(n) if i not in held], sorted(held)
