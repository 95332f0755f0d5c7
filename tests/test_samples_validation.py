"""See it learn: sample images at the configured steps, deterministic validation loss, the overfitting
warning, the checkpoint x weight grid, and sampling that leaves training untouched."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_trainer.engine.run import LoraRun, train
from lora_trainer.engine.sampling import SamplePrompt, parse_prompt_line
from lora_trainer.engine.validation import OverfitDetector, Validator
from lora_trainer.events import Message, SampleImages

from recording import EventRecorder
from lora_trainer.formats.kohya import read_metadata

from conftest import make_config

PROMPTS = ["a red image --s 3 --d 5", "a blue image --w 64 --h 64 --s 2 --l 4 --n green"]


def test_prompt_flags_are_parsed_like_kohya():
    p = parse_prompt_line("a cat, best --n blurry, low --w 640 --h 384 --s 25 --l 5.5 --d 42", SamplePrompt(""))
    assert (p.prompt, p.negative, p.width, p.height, p.steps, p.cfg, p.seed) == \
        ("a cat, best", "blurry, low", 640, 384, 25, 5.5, 42)


def _sample_run(tmp_path, model, data, name, **over):
    recorder = EventRecorder()
    cfg = make_config(model, data, tmp_path / name, max_steps=6, sample_prompts=PROMPTS, sample_every_n_steps=2,
                      sample_at_start=True, **over)
    result = train(cfg, [recorder])
    return result, recorder


def test_samples_appear_at_exactly_the_configured_steps_and_are_deterministic(tmp_path, tiny_model_dir, color_data):
    result, recorder = _sample_run(tmp_path, tiny_model_dir, color_data, "a")
    events = recorder.of_type(SampleImages)
    assert [e.step for e in events] == [0, 2, 4, 6]
    folder = tmp_path / "a" / "samples"
    assert sorted(p.name for p in folder.iterdir()) == [f"step{s:08d}_{i:02d}.png" for s in (0, 2, 4, 6) for i in (0, 1)]
    assert Image.open(folder / "step00000000_00.png").size == (64, 64)
    again, _ = _sample_run(tmp_path, tiny_model_dir, color_data, "b")
    for p in folder.iterdir():
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "b" / "samples" / p.name)))
    first, last = (np.asarray(Image.open(folder / f"step0000000{s}_00.png")).astype(int) for s in (0, 6))
    assert np.abs(first - last).max() > 0  # the LoRA changed what the model draws
    assert (tmp_path / "a" / "a.preview.png").is_file()


def test_taking_samples_does_not_change_training(tmp_path, tiny_model_dir, color_data):
    with_samples, _ = _sample_run(tmp_path, tiny_model_dir, color_data, "s", output_name="x")
    plain = train(make_config(tiny_model_dir, color_data, tmp_path / "p", max_steps=6, output_name="x"))
    a, b = load_file(str(with_samples.lora_path)), load_file(str(plain.lora_path))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_validation_loss_is_deterministic_and_follows_the_weights(tmp_path, tiny_model_dir, color_data):
    run = LoraRun(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=3, validation_split=0.25),
                  tensorboard=False)
    trainer = run.setup()
    assert len(run.validation_set) == 1 and len(trainer.dataset) == 3
    validator = Validator(trainer, run.validation_set, seed=7)
    first, second = validator.loss(), validator.loss()
    assert first == second
    batches = trainer.dataset.epoch_batches(0, 0, 2)
    trainer.optimizer_step(0, batches[:1])
    trainer.optimizer_step(1, batches[1:2])
    assert validator.loss() != first
    run.close()


def test_checkpoints_carry_validation_loss_and_the_summary_names_the_best(tmp_path, tiny_model_dir, color_data):
    recorder = EventRecorder()
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=6, save_steps=2, validation_split=0.25)
    result = train(cfg, [recorder])
    values = [float(read_metadata(p)["ss_validation_loss"]) for p in result.checkpoints]
    assert len(values) == 3 and all(v > 0 for v in values)
    assert any("lowest validation loss" in m.text for m in recorder.of_type(Message))


def test_overfitting_detector():
    rising = OverfitDetector()
    msgs = [rising.update(s, v, t) for s, v, t in [(10, 0.50, 0.60), (20, 0.40, 0.50), (30, 0.42, 0.45),
                                                   (40, 0.45, 0.40), (50, 0.47, 0.35)]]
    assert msgs[:3] == [None, None, None] and "overfitting from step 20" in msgs[3]
    assert rising.best() == (20, 0.40)
    falling = OverfitDetector()
    assert all(falling.update(s, 1.0 / s, 1.0 / s) is None for s in range(1, 10))


def test_grid_has_rows_by_columns_cells_with_labels(tmp_path, tiny_model_dir, color_data):
    from lora_trainer.cli import main

    result = train(make_config(tiny_model_dir, color_data, tmp_path / "o", max_steps=4, save_steps=2))
    out = tmp_path / "grid.png"
    code = main(["grid", "--loras", str(tmp_path / "o"), "--prompt", "a red image", "--weights", "0.5,1.0",
                 "--size", "64", "--steps", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0
    from lora_trainer.grid import LABEL_HEIGHT, LABEL_WIDTH

    grid = Image.open(out)
    rows, cols = 2, 2  # o-step00000002 and o (final); weights 0.5 and 1.0
    assert grid.size == (LABEL_WIDTH + cols * 64, LABEL_HEIGHT + rows * 64)
    assert "o-step00000002" in grid.text["lora_trainer_grid"] and "weight 0.5" in grid.text["lora_trainer_grid"]
    arr = np.asarray(grid.convert("L"))
    header, side = arr[:LABEL_HEIGHT, LABEL_WIDTH:], arr[LABEL_HEIGHT:, :LABEL_WIDTH]
    assert (header < 128).sum() > 30 and (side < 128).sum() > 30  # text was drawn in the label areas
    cells = [arr[LABEL_HEIGHT + r * 64:LABEL_HEIGHT + (r + 1) * 64, LABEL_WIDTH + c * 64:LABEL_WIDTH + (c + 1) * 64]
             for r in range(rows) for c in range(cols)]
    assert len({c.tobytes() for c in cells}) == 4  # every checkpoint x weight looks different
    assert result.lora_path.is_file()
