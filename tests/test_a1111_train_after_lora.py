"""Train -> try the LoRA in txt2img -> train again, in a WebUI-shaped process (issue: the second training
failed at once with "a leaf Variable that requires grad is being used in an in-place operation").

The model is the real ldm LatentDiffusion (tiny). The WebUI's built-in Lora extension is replaced by a
stand-in, `StandInLoraExtension`, that keeps what matters of extensions-builtin/Lora/networks.py in
v1.10.1: a generation with `<lora:...>` adds each module's delta to its weight in place (keeping a backup
copy, under the generation's no_grad), and the next `network_apply_weights` after `load_networks([])`
copies the backup back in place. The WebUI's parameters require grad, as in the host.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Tuple

import pytest
import torch

from lora_trainer.engine.run import train
from lora_trainer.hosts.a1111.bundle import A1111Bundle
from lora_trainer.hosts.a1111.lora_extension import clear_active_networks
from lora_trainer.models.sd1 import SD1Family

from conftest import make_config
from ldm_tiny import build_tiny_ldm
from webui_checks import assert_restored, snapshot


class StandInLoraExtension:
    """Stand-in for the WebUI's `networks` module: what it does to weights, not how it reads files."""

    def __init__(self) -> None:
        self.loaded_networks: List[str] = []
        self.deltas: Dict[str, float] = {}  # name -> scale of a fixed pseudo-delta

    def load_networks(self, names: List[str]) -> None:
        self.loaded_networks = list(names)

    def network_apply_weights(self, module: torch.nn.Module) -> None:
        """As networks.network_apply_weights: restore the backup when the wanted set changed, then add deltas."""
        wanted: Tuple[str, ...] = tuple(self.loaded_networks)
        if getattr(module, "network_current_names", ()) == wanted:
            return
        backup = getattr(module, "network_weights_backup", None)
        if backup is None and wanted:
            module.network_weights_backup = backup = module.weight.to("cpu", copy=True)
        if backup is not None:
            module.weight.copy_(backup)  # in place, on a parameter that requires grad
        for name in wanted:
            module.weight += 0.1 * torch.ones_like(module.weight)
        module.network_current_names = wanted

    def txt2img(self, model: torch.nn.Module, names: List[str]) -> None:
        """A generation: the WebUI runs it under no_grad and patches weights as modules are called."""
        with torch.no_grad():
            self.load_networks(names)
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    self.network_apply_weights(module)


@pytest.fixture
def webui(tmp_path, monkeypatch):
    model = build_tiny_ldm(tmp_path, seed=0)
    assert all(p.requires_grad for p in model.model.diffusion_model.parameters())  # as in the WebUI
    extension = StandInLoraExtension()
    monkeypatch.setitem(sys.modules, "networks", extension)
    return model, extension


def test_train_after_a_txt2img_with_a_lora_and_again(tmp_path, webui, color_data):
    model, extension = webui
    saved = snapshot(model)
    for run in range(2):
        extension.txt2img(model, [f"style{run}"])  # <lora:style:1> in the prompt: weights patched in place
        assert not torch.equal(model.state_dict()["model.diffusion_model.out.2.weight"],
                               saved[0]["model.diffusion_model.out.2.weight"])
        clear_active_networks(model)  # what the host does before training
        assert_restored(model, saved)
        cfg = make_config(tmp_path / "unused", color_data, tmp_path / f"out{run}", max_steps=2)
        result = train(cfg, bundle=A1111Bundle(model, SD1Family(), "tiny"))
        assert result.lora_path.is_file() and result.steps == 2
        assert_restored(model, saved)
