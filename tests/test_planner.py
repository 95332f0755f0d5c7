"""The memory planner on the tiny model: it runs offline on configs only and behaves sensibly."""
from __future__ import annotations

import yaml

from lora_trainer.cli import main
from lora_trainer.planner import estimate

from conftest import make_config


def test_estimates_grow_with_batch_and_shrink_with_checkpointing(tmp_path, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "o", batch_size=1)
    one = estimate(cfg)
    four = estimate(cfg, batch_size=4)
    assert one.weights > 0 and one.lora_state > 0 and one.activations > 0
    assert four.weights == one.weights and four.activations > 3 * one.activations
    ckpt = estimate(make_config(tiny_model_dir, color_data, tmp_path / "o", gradient_checkpointing=True), batch_size=4)
    assert ckpt.activations < four.activations
    wider = estimate(make_config(tiny_model_dir, color_data, tmp_path / "o", lora_rank=16))
    assert wider.lora_state > one.lora_state


def test_plan_command_prints_the_estimate_and_a_batch_size(tmp_path, capsys, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "o")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["plan", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "estimated peak" in out and "largest batch_size that fits" in out


def test_a_bf16_run_on_a_cpu_peaks_while_the_fp32_model_loads(tmp_path, tiny_model_dir, color_data):
    """On a CPU the model loads in fp32 before bf16 halves its frozen weights: that load is the floor of the
    estimate (measured on full-size SD1.5 at 256 px: 3.98 GiB resident, the fp32 model's size)."""
    fp32 = estimate(make_config(tiny_model_dir, color_data, tmp_path / "o"))
    bf16 = estimate(make_config(tiny_model_dir, color_data, tmp_path / "o", mixed_precision="bf16"))
    assert bf16.weights < fp32.weights
    assert bf16.loading == fp32.loading and bf16.loading >= fp32.weights
    assert bf16.peak >= bf16.loading and fp32.peak == fp32.weights + fp32.packed + fp32.lora_state + fp32.activations + fp32.transient
    assert any("loading (fp32)" in line for line in bf16.lines())
    assert not any("loading" in line for line in fp32.lines())
