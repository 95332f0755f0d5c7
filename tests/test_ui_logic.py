"""The page's logic without a browser or gradio: form <-> config <-> YAML, presets, the dataset scan, the
HTML views, the loss chart, and the backend's captioning hooks."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from lora_trainer.service import StandaloneService, TrainerService
from lora_trainer.config import FIELDS, load_config
from lora_trainer.errors import ConfigError, DatasetError, LoraTrainerError
from lora_trainer.jobs import JobStatus
from tiny_data import make_color_dataset
from lora_trainer.ui import charts, forms, presets, scanning, views


def _form_values(names, **changes):
    values = {n: forms.field_spec(n).default for n in names}
    values.update(changes)
    return [values[n] for n in names]


# ---------------------------------------------------------------------------- forms
def test_every_config_key_has_exactly_one_place_on_the_page():
    placed = list(forms.DATASET_KEYS + forms.MODEL_KEYS + forms.MAIN_KEYS)
    for _title, keys in forms.advanced_groups():
        placed += keys
    assert sorted(placed) == sorted(forms.form_keys())
    assert set(forms.form_keys()) == set(FIELDS) - {"config_version"}
    assert all(forms.field_spec(k).tip for k in forms.form_keys())
    assert "gradient_checkpointing" in forms.field_spec("lora_rank").tip  # the out-of-memory tip


@pytest.mark.parametrize("name,kind", [("lora_rank", "int"), ("learning_rate", "float"), ("flip_aug", "bool"),
                                       ("lr_scheduler", "choice"), ("cache_latents", "choice"),
                                       ("max_steps", "number_or_empty"), ("trigger_word", "text")])
def test_field_kinds(name, kind):
    assert forms.field_spec(name).kind == kind


def test_form_values_round_trip_through_a_config(tmp_path):
    names = forms.form_keys()
    values = _form_values(names, train_data_dir=str(tmp_path), base_model="m.safetensors", output_dir=str(tmp_path),
                          lora_alpha="2.5", max_steps="120", cache_latents="false", learning_rate=3e-4,
                          lora_rank=16.0, min_snr_gamma="", trigger_word="  sks  ")
    raw = forms.raw_from_form(names, values)
    assert raw["lora_alpha"] == 2.5 and raw["max_steps"] == 120 and raw["lora_rank"] == 16
    assert "min_snr_gamma" not in raw and raw["trigger_word"] == "sks"
    config = forms.make_config(TrainerService(), names, values)
    assert config.cache_latents is False and config.learning_rate == 3e-4
    again = forms.make_config(TrainerService(), names, forms.form_from_config(names, config))
    assert again == config


def test_form_errors_name_the_key(tmp_path):
    names = forms.form_keys()
    with pytest.raises(ConfigError, match="train_data_dir"):
        forms.make_config(TrainerService(), names, _form_values(names, base_model="m"))
    with pytest.raises(ConfigError, match="max_steps"):
        forms.make_config(TrainerService(), names, _form_values(names, train_data_dir="d", base_model="m",
                                                                max_steps="lots"))


def test_save_and_load_config_is_the_yaml_the_cli_reads(tmp_path):
    names = forms.form_keys()
    values = _form_values(names, train_data_dir=str(tmp_path / "data"), base_model=str(tmp_path / "m"),
                          output_name="mine", lora_rank=12, max_steps="50")
    backend = StandaloneService(str(tmp_path / "runs"))
    path, text = forms.save_config_file(backend, names, values, "")
    assert path == (tmp_path / "runs" / "mine" / forms.DEFAULT_CONFIG_NAME).resolve()  # empty: beside the run
    assert path.read_text(encoding="utf-8") == text
    cli = load_config(path)
    assert cli.lora_rank == 12 and cli.max_steps == 50 and cli.output_dir == str((tmp_path / "runs" / "mine").resolve())
    loaded_path, config, form = forms.load_config_values(str(path), names)
    assert loaded_path == path and config == cli
    assert forms.make_config(backend, names, form) == cli
    assert forms.cli_command(path) == f"python -m lora_trainer train --config {path}"
    with pytest.raises(ConfigError, match="does not exist"):
        forms.load_config_values(str(tmp_path / "nope.yaml"), names)
    with pytest.raises(ConfigError):
        forms.load_config_values("  ", names)


def test_presets_fill_the_main_settings():
    for name in presets.preset_names():
        values = presets.preset_values(name)
        assert {"lora_rank", "lora_alpha", "learning_rate", "epochs", "resolution"} <= set(values)
        assert set(values) <= set(forms.MAIN_KEYS)
    with pytest.raises(KeyError, match="quick test"):
        presets.preset_values("nope")


# ---------------------------------------------------------------------------- scan and views
def test_scan_reports_uncaptioned_images_and_missing_folders(tmp_path):
    root = make_color_dataset(tmp_path / "d", n=3, captions="txt")
    (root / "2_blue.txt").unlink()
    view = scanning.scan_folder({"train_data_dir": str(root), "resolution": 64, "min_bucket_reso": 64})
    assert view.report.num_images == 3 and not view.report.can_train
    assert view.sources == {"0_red.png": "sidecar", "1_green.png": "sidecar", "2_blue.png": "none"}
    items, rels = scanning.gallery_items(view, limit=2)
    assert rels == ["0_red.png", "1_green.png"] and items[0][1] == "0_red.png: a red image"
    html = views.report_html(view.report, str(root))
    assert 'data-images="3"' in html and 'data-can-train="0"' in html and "NO CAPTION  2_blue.png" in html
    with pytest.raises(DatasetError, match="does not exist"):
        scanning.scan_folder({"train_data_dir": str(tmp_path / "missing")})
    with pytest.raises(DatasetError, match="enter the folder"):
        scanning.scan_folder({"train_data_dir": "  "})


def test_status_and_messages_are_escaped():
    s = JobStatus(state="failed", name="<b>x</b>", step=3, total_steps=10, loss=0.5, error="boom <script>")
    html = views.status_html(s)
    assert "&lt;b&gt;x" in html and "&lt;script&gt;" in html and 'data-active="0"' in html
    running = views.status_html(JobStatus(state="running", step=5, total_steps=10, steps_per_second=2.0,
                                          eta_seconds=75))
    assert 'data-active="1"' in running and "ETA 1:15" in running and "2.00 it/s" in running
    assert "lt-msg-error" in views.error_html(DatasetError("bad <folder>"))
    assert "ValueError" in views.error_html(ValueError("x"))


def test_results_table_and_labels():
    items = [{"name": "a", "path": "/r/one/a.safetensors", "size_mb": 1.5, "rank": "4"},
             {"name": "a", "path": "/r/two/a.safetensors"},
             {"name": "a-step00000010", "path": "/r/one/a-step00000010.safetensors"}]
    final = views.final_results(items)
    assert [i["path"] for i in final] == ["/r/one/a.safetensors", "/r/two/a.safetensors"]
    labels = views.result_labels(final)
    assert labels == ["a (one)", "a (two)"]
    assert views.find_result(final, "a (two)")["path"] == "/r/two/a.safetensors"
    html = views.results_html(final)
    assert 'data-count="2"' in html and "/r/two/a.safetensors" in html
    assert "/r/two" not in views.results_html(final, show_paths=False)


def test_loss_chart():
    assert 'data-points="0"' in charts.loss_svg([])
    svg = charts.loss_svg([[i, 1.0 / i] for i in range(1, 1001)])
    assert svg.startswith("<svg") and 'data-points="1000"' in svg
    assert svg.count("<polyline") == 2
    assert len(charts.thin(list(range(1000)), 400)) == 400 and charts.thin(list(range(1000)), 400)[-1] == 999
    assert charts.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert "nan" not in charts.loss_svg([[1, float("nan")], [2, 0.5]])


# ---------------------------------------------------------------------------- backend hooks
def test_captioners_outside_the_webui_are_the_model_backends():
    names = TrainerService().captioners()
    assert {"blip", "clip-tags", "blip+clip-tags"} <= set(names)
    assert not [n for n in names if n.startswith("webui")]


def test_captioners_use_the_caption_package(monkeypatch, tmp_path):
    calls = {}

    def caption_folder(input_dir, **kwargs):
        calls.update(kwargs, input_dir=input_dir)
        return types.SimpleNamespace(captioned=2, skipped=1, broken=[], stopped=False, notes=["wrote metadata.csv"])

    spec = types.SimpleNamespace
    registry = types.SimpleNamespace(available=lambda: [spec(name="blip"), spec(name="clip-tags")])
    fake = types.ModuleType("lora_trainer.caption")
    fake.default_captioners = lambda: registry
    fake.caption_folder = caption_folder
    monkeypatch.setitem(sys.modules, "lora_trainer.caption", fake)
    monkeypatch.setattr("lora_trainer.caption", fake, raising=False)
    backend = TrainerService()
    assert backend.captioners() == ["blip", "clip-tags"]
    root = make_color_dataset(tmp_path / "d", n=2, captions="txt")
    summary = backend.run_captioner(str(root), "blip", prefix="sks, ", overwrite=True)
    assert summary == "2 image(s) captioned with blip; 1 already had a caption; wrote metadata.csv"
    assert calls["fmt"] == "txt" and calls["backend"] == "blip" and calls["prefix"] == "sks, "
    assert calls["overwrite"] is True and calls["input_dir"] == str(root)
    with pytest.raises(DatasetError):
        backend.run_captioner(str(tmp_path / "missing"), "blip")


def test_standalone_backend_defaults(tmp_path):
    backend = StandaloneService(str(tmp_path / "runs"))
    config = backend.make_config({"train_data_dir": "d", "base_model": "m", "output_name": "n"})
    assert Path(config.output_dir) == (tmp_path / "runs" / "n").resolve()
    (tmp_path / "runs" / "older").mkdir(parents=True)
    assert (tmp_path / "runs" / "older") in backend.results_folders()
    assert backend.prompt_text("n", 0.8, "sks") == "sks, <lora:n:0.8>"


def test_every_key_round_trips_through_the_form_with_its_default():
    from lora_trainer.config import config_from_dict
    from lora_trainer.ui.forms import form_from_config, form_keys, raw_from_form

    base = config_from_dict({"train_data_dir": "d", "base_model": "m", "output_dir": "o"})
    names = form_keys()
    again = config_from_dict(raw_from_form(names, form_from_config(names, base)))
    assert again.to_dict() == base.to_dict()


# ---------------------------------------------------------------------------- the Results section's tools
def test_grid_rows_settings_and_checkpoint_names(tmp_path):
    from lora_trainer.service import checkpoint_file_name
    from lora_trainer.grid import parse_weights, run_checkpoints
    from lora_trainer.ui.result_views import grid_rows, grid_settings

    for name in ("o-step00000004", "o-step00000002", "o", "o_r2", "other-step00000002", "o-step2"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    assert [p.stem for p in run_checkpoints(tmp_path / "o.safetensors")] == \
        ["o-step00000002", "o-step00000004", "o"]
    assert parse_weights(" 0.4, 1 ,") == [0.4, 1.0]
    for bad in ("", "0.4;1", "x"):
        with pytest.raises(LoraTrainerError, match="weight"):
            parse_weights(bad)

    items = [{"name": "o", "path": str(tmp_path / "o.safetensors")},
             {"name": "o_r2", "path": str(tmp_path / "o_r2.safetensors")}]
    backend = StandaloneService(str(tmp_path))
    assert [Path(p).stem for p in grid_rows(backend, items, "o", [])] == ["o-step00000002", "o-step00000004", "o"]
    assert [Path(p).stem for p in grid_rows(backend, items, "o", ["o_r2", "o"])] == ["o_r2", "o"]
    with pytest.raises(LoraTrainerError, match="pick a LoRA"):
        grid_rows(backend, items, None, [])
    with pytest.raises(LoraTrainerError, match="press Refresh"):
        grid_rows(backend, items, "o", ["gone"])

    assert grid_settings(3, 64.0, "2", None) == {"seed": 3, "size": 64, "steps": 2, "cfg": 7.0}
    for args, said in [((0, 100, 20, 7), "multiple of 8"), ((0, 512, 0, 7), "at least 1"),
                       ((0, 512, 20, -1), "CFG"), ((0, "big", 20, 7), "whole numbers")]:
        with pytest.raises(LoraTrainerError, match=said):
            grid_settings(*args)

    assert checkpoint_file_name("", "base-o") == "base-o.safetensors"
    assert checkpoint_file_name(" mine.safetensors ", "x") == "mine.safetensors"
    for bad in ("../up", "a/b", "c:\\d", ".."):
        with pytest.raises(LoraTrainerError, match="plain file name"):
            checkpoint_file_name(bad, "x")
