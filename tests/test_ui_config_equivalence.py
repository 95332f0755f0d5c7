"""A config saved by the page, loaded back by the page and run through the backend gives the same LoRA
(identical tensors) as the CLI's `train --config` path on that YAML."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from lora_trainer.service import StandaloneService
from lora_trainer.config import load_config
from lora_trainer.engine.run import train
from lora_trainer.ui import forms


def test_ui_run_of_a_loaded_yaml_equals_the_cli_run(tmp_path, tiny_model_dir, color_data):
    names = forms.form_keys()
    values = {n: forms.field_spec(n).default for n in names}
    values.update(train_data_dir=str(color_data), base_model=str(tiny_model_dir), output_name="same",
                  resolution=64, min_bucket_reso=64, max_bucket_reso=128, lora_rank=4, lora_alpha="2",
                  batch_size=2, max_steps="6", learning_rate=1e-3, seed=123, device="cpu", save_precision="fp32",
                  train_text_encoder=True, trigger_word="sks")
    backend = StandaloneService(str(tmp_path / "ui_runs"))

    # The page: Save config -> Load config -> Start (the functions behind those buttons).
    path, _text = forms.save_config_file(backend, names, [values[n] for n in names], str(tmp_path / "cfg.yaml"))
    _path, _config, loaded = forms.load_config_values(str(path), names)
    status = backend.start(forms.make_config(backend, names, loaded))
    status = backend.jobs.wait(300)
    assert status.state == "finished", status.error
    ui_lora = load_file(status.lora_path)

    # The CLI: python -m lora_trainer train --config cfg.yaml (another output folder).
    cli_config = load_config(path, {"output_dir": str(tmp_path / "cli_out")})
    cli_lora = load_file(train(cli_config).lora_path)

    assert ui_lora.keys() == cli_lora.keys() and any(k.startswith("lora_te_") for k in ui_lora)
    for key, tensor in ui_lora.items():
        assert torch.equal(tensor, cli_lora[key]), key
