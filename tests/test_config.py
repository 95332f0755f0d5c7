"""Config validation: typos, bad values and missing paths are caught before anything loads."""
from __future__ import annotations

import pytest
import yaml

from lora_trainer.cli import main
from lora_trainer.config import TrainConfig, config_from_dict, load_config, parse_overrides
from lora_trainer.errors import ConfigError

BASE = {"train_data_dir": "data", "base_model": "model", "output_dir": "out"}


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_misspelt_key_names_the_right_key():
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "lora_rnak": 8})
    assert "lora_rnak" in str(err.value) and "lora_rank" in str(err.value)


def test_cli_exits_2_on_misspelt_key(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", {**BASE, "lora_rnak": 8})
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lora_rank" in err


@pytest.mark.parametrize("key,value,needle", [
    ("lora_rank", 0, "minimum"),
    ("lora_rank", "eight", "whole number"),
    ("mixed_precision", "fp8", "one of"),
    ("lr_scheduler", "cosine_annealing", "one of"),
    ("learning_rate", "fast", "number"),
    ("flip_aug", "yes please", "true or false"),
    ("gradient_checkpointing", "yes please", "one of"),
    ("resolution", 500, "multiple of 8"),
])
def test_bad_values_are_rejected_with_the_key(key, value, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, key: value})
    assert key in str(err.value) and needle in str(err.value)


def test_defaults_and_derived_values():
    cfg = config_from_dict({**BASE, "lora_rank": 16, "output_dir": "/tmp/runs/my_style"})
    assert cfg.effective_alpha == 16.0
    assert cfg.effective_output_name == "my_style"
    assert cfg.resolution == 512 and cfg.mixed_precision == "auto"
    assert isinstance(cfg, TrainConfig)


def test_yaml_scientific_notation_and_aliases(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_data_dir: d\nbase_model: m\noutput_dir: o\nlearning_rate: 1e-4\nnetwork_dim: 32\n")
    cfg = load_config(path)
    assert cfg.learning_rate == pytest.approx(1e-4) and cfg.lora_rank == 32


def test_set_overrides_are_parsed_as_yaml():
    assert parse_overrides(["lora_rank=16", "train_text_encoder=true", "output_name=x"]) == {
        "lora_rank": 16, "train_text_encoder": True, "output_name": "x"}
    with pytest.raises(ConfigError):
        parse_overrides(["lora_rank"])


def test_missing_required_keys():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"lora_rank": 4})
    assert "train_data_dir" in str(err.value)


def _one_line_error(tmp_path, capsys, **over):
    data = {**BASE, **over}
    cfg = write_yaml(tmp_path / "c.yaml", data)
    code = main(["train", "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_data_folder_is_one_line(tmp_path, capsys, tiny_model_dir):
    err = _one_line_error(tmp_path, capsys, train_data_dir=str(tmp_path / "nope"), base_model=str(tiny_model_dir),
                          output_dir=str(tmp_path / "out"))
    assert "train_data_dir" in err and "does not exist" in err


def test_empty_data_folder_is_one_line(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    err = _one_line_error(tmp_path, capsys, train_data_dir=str(tmp_path / "empty"), base_model=str(tiny_model_dir),
                          output_dir=str(tmp_path / "out"))
    assert "no images" in err


def test_missing_base_model_is_one_line(tmp_path, capsys, color_data):
    err = _one_line_error(tmp_path, capsys, train_data_dir=str(color_data), base_model=str(tmp_path / "m.safetensors"),
                          output_dir=str(tmp_path / "out"))
    assert "base_model" in err and "does not exist" in err


def test_image_without_caption_is_named(tmp_path, capsys, tiny_model_dir):
    from PIL import Image

    data = tmp_path / "d"
    data.mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(data / "lonely.png")
    err = _one_line_error(tmp_path, capsys, train_data_dir=str(data), base_model=str(tiny_model_dir),
                          output_dir=str(tmp_path / "out"))
    assert "lonely.png" in err and "caption" in err
