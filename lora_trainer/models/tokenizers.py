"""Find a CLIP tokenizer offline.

Order: `tokenizer_path`; a `tokenizer/` folder beside the checkpoint; the local Hugging Face cache
(`openai/clip-vit-large-patch14`, local files only); rebuilt from the BPE vocabulary that the
open_clip package ships (the WebUI has it installed). CLIP's vocabulary is derived from that file.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import List, Optional

from ..errors import ModelLoadError

CLIP_L = "openai/clip-vit-large-patch14"


def _bytes_to_unicode() -> List[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer_files(folder: Path, merges: List[str], pad_token: str = "<|endoftext|>") -> Path:
    """Write vocab.json / merges.txt / tokenizer_config.json for a CLIP BPE with these merges."""
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token, "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer"}), encoding="utf-8")
    return folder


def _from_open_clip() -> Optional[Path]:
    try:
        import open_clip  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed or broken: try the next source
        return None
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if not bpe or not bpe.is_file():
        return None
    cache = Path(os.environ.get("LORA_TRAINER_CACHE", Path.home() / ".cache" / "lora_trainer")) / "clip-vit-large-patch14"
    if not (cache / "vocab.json").is_file():
        lines = gzip.open(bpe).read().decode("utf-8").split("\n")
        merges = lines[1:49152 - 256 - 2 + 1]
        write_clip_tokenizer_files(cache, merges)
    return cache


def load_clip_tokenizer(explicit: Optional[str], near: Path):
    """A CLIPTokenizer from the first offline source that has one; a clear error otherwise."""
    from transformers import CLIPTokenizer

    candidates = []
    if explicit:
        if not Path(explicit).is_dir():
            raise ModelLoadError(f"tokenizer_path {explicit!r} is not a folder")
        candidates.append(Path(explicit))
    candidates += [near / "tokenizer", near]
    for folder in candidates:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    try:
        return CLIPTokenizer.from_pretrained(CLIP_L, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache
        pass
    rebuilt = _from_open_clip()
    if rebuilt is not None:
        return CLIPTokenizer.from_pretrained(str(rebuilt), local_files_only=True)
    raise ModelLoadError(
        "no CLIP tokenizer found offline: set tokenizer_path to a folder with vocab.json and merges.txt "
        f"(e.g. the tokenizer/ folder of any SD1.5 diffusers model), or put {CLIP_L} in the Hugging Face cache")
