"""Tiny randomly initialised causal language models for the text-trainer tests (and its benchmark), with a
byte-level BPE tokenizer trained offline on the test's own text. Works with transformers 4.30 and 5.x.

- GPT-2: Conv1D layers, no pad token (the trainer pads with eos), `<|endoftext|>` as eos.
- Llama architecture (what Qwen2/Mistral checkpoints look like to peft): Linear q/k/v/o and gated MLP,
  `<s>` added in front of every sequence, `</s>` eos, a real `<pad>` token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch

# Random weights ten times wider than the default 0.02: with the default, the tied output embeddings are so
# small that a LoRA needs hundreds of steps to move the logits; with 0.1 a few dozen steps show learning.
INIT_RANGE = 0.1
# Learnable text: a few sentences in a fixed cycle; a tiny model learns to continue them.
LEARNABLE = [
    "the red fox jumps over the lazy dog.",
    "a small cat sleeps on the warm mat.",
    "blue birds sing in the old oak tree.",
    "the river runs fast under the stone bridge.",
]


def learnable_text(repeats: int = 12) -> str:
    return "\n\n".join(LEARNABLE * repeats)


def build_tokenizer(folder: Path, corpus: Iterable[str], vocab_size: int = 320, eos: str = "<|endoftext|>",
                    bos: Optional[str] = None, pad: Optional[str] = None):
    """A byte-level BPE tokenizer trained on `corpus`, saved to `folder` and loaded back with AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = [t for t in (eos, bos, pad) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = {"eos_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    if pad:
        kwargs["pad_token"] = pad
    PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def build_tiny_gpt2(folder: Path, corpus: Iterable[str] = (learnable_text(),), seed: int = 0, n_positions: int = 128,
                    n_embd: int = 64, n_layer: int = 2, n_head: int = 2, vocab_size: Optional[int] = None) -> Path:
    """A GPT-2 with Conv1D layers and no pad token, saved to `folder` with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(folder, corpus)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size or len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, initializer_range=INIT_RANGE, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    return folder


def build_tiny_llama(folder: Path, corpus: Iterable[str] = (learnable_text(),), seed: int = 0,
                     max_positions: int = 128, hidden: int = 64, layers: int = 2) -> Path:
    """A Llama-architecture model (grouped-query attention, gated MLP) with a `<pad>` token, saved to `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(folder, corpus, eos="</s>", bos="<s>", pad="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, initializer_range=INIT_RANGE, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder
