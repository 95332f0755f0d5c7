"""Checks shared by the tests that train a WebUI-shaped model in place (SD1, SD2, SDXL)."""
from __future__ import annotations

import torch

from lora_trainer.engine.run import LoraRun
from lora_trainer.events import Callback, StepEnded


def peft_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def snapshot(model):
    """Weights, parameter storage/dtype/flags and module modes, to compare after training."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: (p.data_ptr(), p.dtype, p.requires_grad) for n, p in model.named_parameters()},
            {n: m.training for n, m in model.named_modules()})


def assert_restored(model, saved):
    """The model is exactly as `snapshot` saw it, with no LoRA layer, instance forward or peft attribute left."""
    state, params, modes = saved
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    assert {n: (p.data_ptr(), p.dtype, p.requires_grad) for n, p in model.named_parameters()} == params
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert peft_layers(model) == []
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]
    assert not hasattr(model.model.diffusion_model, "peft_config")


class MidRunPeek(Callback):
    """Looks at the model during training (after step 2): where each base weight's storage is, which peft
    layers and which instance-level forwards (the WebUI-side LoRA patches) are in it."""

    def __init__(self, model):
        self.model = model
        self.base_ptrs = {}
        self.lora_layers = []
        self.forwards = []

    def on_event(self, event):
        if isinstance(event, StepEnded) and event.step == 2:
            self.base_ptrs = {n.replace(".base_layer", ""): p.data_ptr()
                              for n, p in self.model.named_parameters() if "lora_" not in n}
            self.lora_layers = peft_layers(self.model)
            self.forwards = [n for n, m in self.model.named_modules() if "forward" in m.__dict__]

    def assert_no_base_weight_moved(self, saved):
        assert self.base_ptrs == {n: v[0] for n, v in saved[1].items()}  # no base weight was copied or moved


def same_lora_same_loss(tmp_path, cfg, bundles, prefixes):
    """Set up both bundles with the same LoRA weights; return their names and the loss / step of each."""
    trainers = []
    for i, bundle in enumerate(bundles):
        run = LoraRun(cfg.__class__(**{**cfg.to_dict(), "output_dir": str(tmp_path / f"out{i}")}), bundle=bundle,
                      tensorboard=False)
        trainers.append(run.setup())
    names = [sorted(m.name for m in t.network.layers) for t in trainers]
    state = trainers[1].network.kohya_state_dict(torch.float32)
    g = torch.Generator().manual_seed(3)
    for key in state:
        if not state[key].any():  # what starts at zero (LoRA's up, LoHa's w2a, LoKr's w2): random, so it counts
            state[key] = torch.randn(state[key].shape, generator=g) * 0.2
    for t in trainers:
        t.network.load_kohya_state_dict(state)
    batches = trainers[0].dataset.epoch_batches(0, cfg.seed, cfg.batch_size)
    noise, timesteps = trainers[0].step_noise(0, 0, batches[0])
    with torch.no_grad():
        losses = [float(t.batch_loss(batches[0], noise, timesteps).mean()) for t in trainers]
    steps = [float(t.optimizer_step(0, batches[:1])) for t in trainers]  # one real training step each
    assert names[0] == names[1] and len(names[0]) > 20
    assert {n.split("_")[1] for n in names[0]} == set(prefixes)
    return names[0], losses, steps
