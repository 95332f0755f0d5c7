"""The prompt assistant without a browser: prompts collected from the WebUI's PNG info (and the EXIF comment
of .jpg files), styles.csv and a pasted list; training pairs whose idea skips the user's common tags; a tiny
model trained on them expands an idea into a prompt with the user's style; the WebUI's own output folders and
styles file are offered (with a stand-in for the WebUI's `modules`)."""
from __future__ import annotations

import struct
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from PIL import Image, PngImagePlugin

from lora_trainer.errors import DatasetError
from text_models import build_tiny_llama

SUBJECTS = ["a red fox", "an old lighthouse", "a sleeping cat", "a mountain lake", "a city street", "a tall ship",
            "a snowy forest", "a desert road", "a young knight", "a glass teapot", "a village market", "a white horse"]
STYLE = "oil painting, golden hour, by greg rutkowski"
PROMPTS = [f"masterpiece, {s}, {STYLE}" for s in SUBJECTS]


def webui_png(path: Path, prompt: str, seed: int = 0) -> Path:
    """An image as the WebUI saves it: its generation info in a `parameters` PNG text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nNegative prompt: blurry, ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                                f"Seed: {seed}, Size: 64x64, Model: tiny")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def webui_jpg(path: Path, prompt: str) -> Path:
    """A .jpg as the WebUI saves it (with piexif): the info as an EXIF UserComment in UTF-16 behind the
    "UNICODE" prefix. The EXIF block is written by hand: Pillow 9.5 drops a sub-IFD built with Exif.get_ifd."""
    comment = b"UNICODE\0" + f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7".encode("utf-16-be")
    ifd0 = struct.pack(">HHHII", 1, 0x8769, 4, 1, 26) + struct.pack(">I", 0)  # one entry: the Exif IFD at 26
    exif_ifd = struct.pack(">HHHII", 1, 0x9286, 7, len(comment), 44) + struct.pack(">I", 0)  # UserComment at 44
    Image.new("RGB", (8, 8)).save(path, exif=b"Exif\0\0MM\0*" + struct.pack(">I", 8) + ifd0 + exif_ifd + comment)
    return path


def test_generation_info_is_read_like_the_webui_does():
    from lora_trainer.text.prompts import prompt_from_parameters

    assert prompt_from_parameters("a cat,\n(sitting:1.2)\nNegative prompt: dog\nSteps: 20, Sampler: Euler, Seed: 1") == \
        "a cat, (sitting:1.2)"
    assert prompt_from_parameters("no settings line, just: a prompt") == "no settings line, just: a prompt"


def test_prompts_are_collected_from_images_styles_and_a_pasted_list(tmp_path):
    from lora_trainer.text.prompts import collect_prompts

    images = tmp_path / "outputs" / "txt2img-images" / "2026-12-01"
    images.mkdir(parents=True)
    for i, prompt in enumerate(PROMPTS[:4]):
        webui_png(images / f"{i:05d}.png", prompt, seed=i)
    webui_png(images / "again.png", PROMPTS[0])  # a duplicate
    webui_jpg(images / "photo.jpg", PROMPTS[4])
    Image.new("RGB", (8, 8)).save(images / "plain.png")  # no generation info
    (images / "broken.png").write_bytes(b"not an image")
    styles = tmp_path / "styles.csv"
    styles.write_text("name,prompt,negative_prompt\nmine,\"{prompt}, oil painting, golden hour\",blurry\nempty,,\n",
                      encoding="utf-8")
    collected = collect_prompts([str(tmp_path / "outputs")], [str(styles)], f"{PROMPTS[5]}\n\n  {PROMPTS[6]}  \n")
    assert collected.prompts[:2] == PROMPTS[5:7]  # pasted first, then the newest images
    assert set(collected.prompts) == set(PROMPTS[:7]) | {"oil painting, golden hour"}
    assert (collected.from_images, collected.from_styles, collected.pasted) == (6, 1, 2)
    assert collected.images_without_info == 2
    assert "8 distinct prompt(s)" in collected.summary()
    with pytest.raises(DatasetError, match="does not exist"):
        collect_prompts([str(tmp_path / "nowhere")])


def test_the_idea_of_a_prompt_skips_the_users_common_tags(tmp_path):
    from lora_trainer.text.assistant import training_pairs, write_training_data

    pairs = training_pairs(PROMPTS + ["(a blue whale:1.3), <lora:style:0.8>, masterpiece"])
    assert pairs[0] == {"prompt": "Idea: a red fox\nPrompt:", "completion": f" {PROMPTS[0]}"}
    assert pairs[-1]["prompt"] == "Idea: a blue whale\nPrompt:"
    with pytest.raises(DatasetError, match="needs at least 2"):
        write_training_data(PROMPTS[:1], tmp_path)


def test_a_trained_assistant_writes_prompts_in_the_users_style(tmp_path):
    from lora_trainer.jobs import list_loras
    from lora_trainer.text.assistant import PromptAssistant, assistant_config, write_training_data
    from lora_trainer.text.run import train_text

    folder = tmp_path / "prompt_assistant"
    write_training_data(PROMPTS, folder)
    model = build_tiny_llama(tmp_path / "llama", corpus=PROMPTS + ["Idea: x\nPrompt:"])
    assistant = PromptAssistant(folder)
    with pytest.raises(Exception, match="not trained yet"):
        assistant.expand("a red fox")
    result = train_text(assistant_config(str(model), folder, steps=80, learning_rate=1e-2, device="cpu"))
    assert result.adapter_dir == folder and result.losses[-1] < 0.5 * result.losses[0]
    assert list_loras(folder) == []  # a peft adapter is not one of the image LoRAs the Results section lists
    style = ("masterpiece", "oil painting", "golden hour", "by greg rutkowski")
    for idea in ("a red fox", "a purple dragon"):  # one it saw, one it did not
        expanded = assistant.expand(idea, creativity=0)
        assert sum(tag in expanded for tag in style) >= 2, expanded
    assert assistant.expand("a purple dragon", creativity=0.8, seed=3) == \
        assistant.expand("a purple dragon", creativity=0.8, seed=3)
    with pytest.raises(DatasetError, match="type an idea"):
        assistant.expand("  ")


def test_the_webui_output_folders_and_styles_are_offered(tmp_path, monkeypatch):
    """The A1111 host (and so HostedService, which the page asks) offers them; with a stand-in for the WebUI's
    `modules` (its option names and `styles_filename` as in v1.10.1)."""
    from lora_trainer.hosts.a1111.host import A1111Host
    from lora_trainer.service import HostedService, StandaloneService

    (tmp_path / "outputs" / "txt2img-images").mkdir(parents=True)
    (tmp_path / "styles.csv").write_text("name,prompt\n", encoding="utf-8")
    modules = ModuleType("modules")
    modules.paths = SimpleNamespace(script_path=str(tmp_path))
    modules.shared = SimpleNamespace(
        opts=SimpleNamespace(outdir_samples="", outdir_txt2img_samples="outputs/txt2img-images",
                             outdir_img2img_samples="outputs/img2img-images"),
        styles_filename=[str(tmp_path / "styles.csv"), str(tmp_path / "missing.csv")])
    monkeypatch.setitem(sys.modules, "modules", modules)
    folders, styles = HostedService(A1111Host()).prompt_sources()
    assert folders == [str(tmp_path / "outputs" / "txt2img-images")]  # img2img-images does not exist yet
    assert styles == [str(tmp_path / "styles.csv")]
    assert StandaloneService(str(tmp_path / "runs")).prompt_sources() == ([], [])
