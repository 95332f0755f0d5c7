"""Samples and grids through the WebUI's own txt2img processing, so they look like what users get."""
from __future__ import annotations

from typing import List, Sequence

from .state import preserved_state


def txt2img(prompt: str, negative: str, width: int, height: int, steps: int, cfg: float, seed: int,
            sampler: str = "Euler"):
    """One image from `modules.processing` with the loaded model as it is now (LoRA layers included)."""
    from modules import processing, shared

    forget_cached_conds(processing)
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model, prompt=prompt, negative_prompt=negative, width=width, height=height,
        steps=steps, cfg_scale=cfg, seed=seed, sampler_name=sampler, batch_size=1, n_iter=1,
        do_not_save_samples=True, do_not_save_grid=True)
    try:
        with preserved_state(shared.state):
            return processing.process_images(p).images[0]
    finally:
        p.close()
        forget_cached_conds(processing)


def forget_cached_conds(processing) -> None:
    """Drop the WebUI's cond cache (its last prompt's text-encoder output, kept across generations by the
    default "persistent cond cache" and keyed by prompt and settings, not by weights). Around a render with
    the text encoder being trained: the sample sees that text encoder, and no later txt2img reuses its output."""
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]


def webui_sampler(prompts: Sequence) -> List:
    """The WebUI bundle's `sample`: our `SamplePrompt`s rendered by the WebUI's txt2img."""
    return [txt2img(p.prompt, p.negative, p.width, p.height, p.steps, p.cfg, p.seed) for p in prompts]


def webui_grid(names: Sequence[str], prompt: str, weights: Sequence[float], seed: int = 0, size: int = 512,
               steps: int = 20, cfg: float = 7.0, negative: str = ""):
    """Rows = LoRAs of the Lora folder, columns = weights, each cell `prompt <lora:name:weight>`."""
    from ...grid import GridResult, assemble_grid

    rows = [[txt2img(f"{prompt} <lora:{name}:{w:g}>", negative, size, size, steps, cfg, seed) for w in weights]
            for name in names]
    columns = [f"weight {w:g}" for w in weights]
    image = assemble_grid(rows, list(names), columns)
    image.info["lora_trainer_grid"] = f"rows={','.join(names)}; columns={','.join(columns)}; prompt={prompt}"
    return GridResult(image, list(names), columns, (size, size))
