"""What a run says at start about its inputs, before any step is spent: the memory plan on a GPU, layers
narrower than lora_rank, captions longer than the text encoder's window. Advice only: nothing here stops a run."""
from __future__ import annotations

import logging
from typing import Optional, Tuple

from ..config import TrainConfig
from ..data.dataset import TrainingSet
from ..models.bundle import ModelBundle


def memory_advice(config: TrainConfig) -> Tuple[str, int]:
    """The planner's verdict and what to change when the config will not fit the GPU, with its log level."""
    try:
        from ..planner import plan

        verdict = plan(config)
    except Exception as exc:  # noqa: BLE001 - advice only; never stops a run
        return f"memory plan unavailable: {exc}", logging.DEBUG
    level = logging.WARNING if verdict.fits is False else logging.INFO
    return (f"memory plan: peak about {verdict.peak / 2**30:.1f} GiB of {(verdict.capacity or 0) / 2**30:.1f} GiB"
            + "".join(f"; {a}" for a in verdict.advice)), level


def rank_limit_warning(network, rank: int) -> Optional[str]:
    """A layer narrower than lora_rank can learn at most its width: say so, with the effective rank."""
    narrow = network.narrow_layers()
    if not narrow:
        return None
    widths = sorted({w for _, w in narrow})
    return (f"lora_rank {rank} is larger than the width of {len(narrow)} layer(s) (e.g. {narrow[0][0]}, width "
            f"{narrow[0][1]}): there the effective rank is only {', '.join(map(str, widths))}. The file stores "
            f"rank {rank} everywhere; a lower lora_rank gives the same result in a smaller file")


def long_caption_warning(dataset: TrainingSet, bundle: ModelBundle) -> Optional[str]:
    """The captions the text encoder will cut, with their token counts."""
    from ..data.doctor import MAX_TOKENS

    long = []
    for i, r in enumerate(dataset.records):
        n = bundle.count_tokens(dataset.fixed_caption(i))
        if n is not None and n > MAX_TOKENS:
            long.append(f"{r.rel} ({n})")
    if not long:
        return None
    return (f"{len(long)} caption(s) are longer than the text encoder's {MAX_TOKENS}-token window and will be "
            f"cut: {', '.join(long[:10])}")
