"""Find a CLIP tokenizer offline, and refuse one that cannot work.

Order: `tokenizer_path`; a `tokenizer/` folder beside the checkpoint; the local Hugging Face cache
(`openai/clip-vit-large-patch14`, local files only); the CLIP vocabulary shipped in this package
(`clip_tokenizer/`, MIT-licensed, from OpenAI's CLIP via open_clip: the same token ids). SD2's and
SDXL's OpenCLIP encoders use the same vocabulary (padded with "!"). So a single-file checkpoint always
has a tokenizer, with an empty Hugging Face cache too; one whose vocabulary or `model_max_length` does
not fit the text encoder is refused with the reason (`check_tokenizer`), never used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ModelLoadError

CLIP_L = "openai/clip-vit-large-patch14"
SHIPPED = Path(__file__).resolve().parent / "clip_tokenizer"
CLIP_VOCAB_SIZE, CLIP_LENGTH = 49408, 77


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


def load_clip_tokenizer(explicit: Optional[str], near: Path):
    """A CLIPTokenizer from the first offline source that has one; a clear error otherwise."""
    from transformers import CLIPTokenizer

    if explicit:
        folder = Path(explicit)
        if not folder.is_dir():
            raise ModelLoadError(f"tokenizer_path {explicit!r} is not a folder")
        if not _has_files(folder):
            raise ModelLoadError(f"tokenizer_path {explicit!r} has no vocab.json and merges.txt (a CLIP tokenizer "
                                 f"folder, e.g. the tokenizer/ folder of an SD1.5 diffusers model)")
        return _read(folder)
    for folder in (near / "tokenizer", near):
        if _has_files(folder):
            return _read(folder)
    try:
        cached = CLIPTokenizer.from_pretrained(CLIP_L, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache
        cached = None
    # transformers 5 answers an empty cache with a 2-token tokenizer (model_max_length 10^30) instead of an error
    if cached is not None and len(cached) == CLIP_VOCAB_SIZE and cached.model_max_length == CLIP_LENGTH:
        return cached
    if _has_files(SHIPPED):
        return _read(SHIPPED)
    raise ModelLoadError(  # only when the package was installed without its data files
        f"no CLIP tokenizer found offline ({SHIPPED} is missing from this installation): set tokenizer_path to a "
        f"folder with vocab.json and merges.txt (e.g. the tokenizer/ folder of any SD1.5 diffusers model)")


def _has_files(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def _read(folder: Path):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged vocab.json / merges.txt / tokenizer_config.json
        raise ModelLoadError(f"the tokenizer in {str(folder)!r} cannot be read ({type(exc).__name__}: {exc})"
                             .splitlines()[0]) from None


def check_tokenizer(tokenizer, source: str, vocab_rows: Optional[int] = None,
                    positions: Optional[int] = None) -> None:
    """Refuse a tokenizer that cannot feed the text encoder: no special tokens, a `model_max_length` the
    encoder cannot take (a missing one reads as 10^30), or a vocabulary of another size than the encoder's."""
    hint = ("fix it, or set tokenizer_path to the tokenizer/ folder of a model of this family (or leave "
            "tokenizer_path out to use the CLIP tokenizer shipped with lora_trainer)")
    length = tokenizer.model_max_length
    most = positions or CLIP_LENGTH
    if not isinstance(length, int) or not 2 <= length <= most:
        raise ModelLoadError(f"the tokenizer from {source} has model_max_length {length}, but the text encoder "
                             f"takes at most {most} tokens (CLIP: 77): {hint}")
    size = len(tokenizer)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None or size < 3:
        raise ModelLoadError(f"the tokenizer from {source} has no usable vocabulary ({size} entries, start/end "
                             f"tokens {tokenizer.bos_token!r}/{tokenizer.eos_token!r}): {hint}")
    if vocab_rows is not None and size != vocab_rows:
        raise ModelLoadError(f"the tokenizer from {source} has {size} tokens but the text encoder has {vocab_rows} "
                             f"token embeddings: it is not this model's tokenizer; {hint}")


def check_tokenizers(parts: Dict[str, Any], source: str) -> None:
    """`check_tokenizer` for each tokenizer / text encoder pair of a loaded model's parts."""
    for suffix in ("", "_2"):
        tokenizer, encoder = parts.get(f"tokenizer{suffix}"), parts.get(f"text_encoder{suffix}")
        if tokenizer is None or encoder is None:
            continue
        config = encoder.config
        where = f"{source} (tokenizer{suffix})"
        check_tokenizer(tokenizer, where, config.vocab_size, config.max_position_embeddings)
