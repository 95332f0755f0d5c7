"""Sample images during training: kohya-style prompt lines, when to sample, where the images go.

A prompt line is text with optional flags: `--n negative`, `--w 512`, `--h 512`, `--s 20` (steps),
`--l 7.5` (CFG scale), `--d 42` (seed). Sampling never touches the training RNG (its own generator,
the global RNG state is restored), so a run with samples trains exactly like one without.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

from ..errors import ConfigError

FLAGS = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "s": ("steps", int),
         "l": ("cfg", float), "d": ("seed", int)}


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    seed: int = 0


def parse_prompt_line(line: str, defaults: SamplePrompt) -> SamplePrompt:
    """`a cat --n blurry --w 640 --s 25` -> SamplePrompt(prompt='a cat', negative='blurry', width=640, steps=25)."""
    parts = re.split(r"\s--(?=[nwhsld]\s)", " " + line.strip())
    values = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        flag, _, value = part.partition(" ")
        name, kind = FLAGS[flag]
        try:
            values[name] = kind(value.strip())
        except ValueError:
            raise ConfigError(f"config error: sample_prompts: --{flag} expects a number, got {value.strip()!r} "
                              f"in {line!r}") from None
    return replace(defaults, **values)


def load_sample_prompts(source: Union[None, str, Sequence[str]], defaults: SamplePrompt) -> List[SamplePrompt]:
    """Prompts from a list in the config or a text file (one per line, `#` comments)."""
    if not source:
        return []
    if isinstance(source, str):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config error: sample_prompts: {source!r} is neither a list nor an existing file")
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = list(source)
    return [parse_prompt_line(line, defaults) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def is_sample_step(step: int, steps_per_epoch: int, every_n_steps: int, every_n_epochs: int, at_start: bool) -> bool:
    """Whether to sample after optimizer step `step` (0 = before training)."""
    if step == 0:
        return at_start
    if every_n_steps and step % every_n_steps == 0:
        return True
    return bool(every_n_epochs) and step % (steps_per_epoch * every_n_epochs) == 0


def sample_path(folder: Path, step: int, index: int) -> Path:
    return folder / f"step{step:08d}_{index:02d}.png"


def isolated_rng():
    """Sampling must not move the training RNG: fork (and restore) the CPU and CUDA generators."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


def sample_prompts_from_config(config, default_seed: Optional[int] = None) -> List[SamplePrompt]:
    defaults = SamplePrompt("", width=config.resolution, height=config.resolution, steps=config.sample_steps,
                            cfg=config.sample_cfg, seed=config.seed if default_seed is None else default_seed)
    return load_sample_prompts(config.sample_prompts, defaults)
