"""Forge Neo's adapter on stand-ins for Forge's classes (tests/forge_standins.py: layers that cast per call,
weights made under torch.inference_mode, blocks that add in place): training runs in place, the LoRA
learns, no base weight is copied or changed, and the model comes back exactly as it was."""
from __future__ import annotations

import copy
import sys
import types

import pytest
import torch

from lora_trainer.engine.run import train
from lora_trainer.errors import ModelLoadError
from lora_trainer.events import Callback, StepEnded
from lora_trainer.formats.kohya import load_kohya_lora
from lora_trainer.hosts import A1111Host, ForgeNeoHost, default_hosts
from lora_trainer.hosts.forge_neo.blocks import BlockForwards
from lora_trainer.hosts.forge_neo.bundle import ForgeBundle
from lora_trainer.hosts.forge_neo.sdxl_bundle import ForgeSDXLBundle
from lora_trainer.models.frozen_layers import FrozenLayerForwards
from lora_trainer.models.sd1 import SD1Family
from lora_trainer.models.sdxl import SDXLFamily
from lora_trainer.tiny import tiny_text_encoder, tiny_tokenizer

from conftest import make_config
from forge_standins import StandInForgeEngine, StandInUNet, as_inference_weights, standin_fetch
from webui_checks import peft_layers


@pytest.fixture
def tokenizer(tmp_path):
    return tiny_tokenizer(tmp_path / "tok")


def engine(tokenizer, sdxl: bool = False) -> StandInForgeEngine:
    encoders = [tiny_text_encoder(tokenizer, seed=s) for s in range(2 if sdxl else 1)]
    return StandInForgeEngine(tokenizer, encoders, sdxl=sdxl)


def state(sd_model):
    """Every weight of the UNet and text encoders (values, storage, inference-ness), module modes, instance
    forwards, peft layers and requires_grad flags."""
    parts = {"unet": sd_model.forge_objects.unet.model.diffusion_model,
             "text": sd_model.forge_objects.clip.cond_stage_model}
    return {name: ({k: (v.clone(), v.data_ptr(), v.is_inference()) for k, v in m.state_dict().items()},
                   {n: x.training for n, x in m.named_modules()},
                   [n for n, x in m.named_modules() if "forward" in x.__dict__], peft_layers(m),
                   {n: p.requires_grad for n, p in m.named_parameters()})
            for name, m in parts.items()}


def assert_same_state(before, after):
    for part in before:
        (w0, modes0, fw0, peft0, grad0), (w1, modes1, fw1, peft1, grad1) = before[part], after[part]
        assert w0.keys() == w1.keys()
        for k, (value, ptr, inference) in w0.items():
            assert torch.equal(value, w1[k][0]) and ptr == w1[k][1] and inference == w1[k][2], f"{part}: {k}"
        assert modes0 == modes1 and fw0 == fw1 == [] and peft0 == peft1 == [] and grad0 == grad1


def unet_output(sd_model, seed: int = 1):
    unet = sd_model.forge_objects.unet.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 5, unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features, generator=g)
    y = None if unet.label_emb is None else torch.randn(1, unet.label_emb[0][0].in_features, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500.0]), context=ctx, y=y, transformer_options={})


def test_the_standins_reproduce_forges_obstacles():
    """Without the adapter, autograd fails on these modules the way it fails in Forge."""
    unet = as_inference_weights(StandInUNet(), torch.float16)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace|Inference tensors"):
        unet(x, torch.tensor([10.0]), context=torch.randn(1, 3, 32)).sum().backward()


def test_frozen_layers_give_the_same_input_gradients_without_holding_a_weight():
    torch.manual_seed(0)
    reference = StandInUNet()
    forge = as_inference_weights(copy.deepcopy(reference), torch.float32)
    reference.requires_grad_(False)
    weights = {p.data_ptr() for p in forge.parameters()}
    conv_shapes = {tuple(p.shape) for p in forge.parameters() if p.dim() == 4 and p.shape[2:] == (3, 3)}
    saved, grads = [], []
    for model in (reference, forge):
        layers = [BlockForwards(model)] + ([FrozenLayerForwards(model, standin_fetch)] if model is forge else [])
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
        ctx = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(4))
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            saved.clear()  # what the forward pass leaves for the backward pass
            loss = model(x, torch.tensor([10.0, 900.0]), context=ctx).square().mean()
        loss.backward()
        grads.append(x.grad)
        for forwards in layers:
            forwards.remove()
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert saved  # the hook saw the stand-in's backward graph
    assert not [t for t in saved if t.data_ptr() in weights]  # no weight (nor an alias of one) was held
    assert not [t for t in saved if tuple(t.shape) in conv_shapes]  # nor a per-call cast of a 3x3 conv weight


def test_block_forwards_compute_the_same_output():
    unet = as_inference_weights(StandInUNet(), torch.float16)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32)
    with torch.no_grad():
        expected = unet(x, torch.tensor([10.0]), context=ctx)
    blocks, frozen = BlockForwards(unet), FrozenLayerForwards(unet, standin_fetch)
    assert len(blocks) == 4 + 5  # transformer blocks + ResBlocks
    got = unet(x.requires_grad_(True), torch.tensor([10.0]), context=ctx)
    assert torch.equal(got.detach(), expected)
    blocks.remove()
    frozen.remove()
    assert not [n for n, m in unet.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("sdxl,kind", [(False, "lora"), (True, "lora"), (False, "locon")],
                         ids=["sd15", "sdxl", "sd15-locon"])
def test_training_in_place_learns_and_gives_the_model_back_unchanged(tmp_path, tokenizer, color_data, sdxl, kind):
    """In place in (stand-ins for) Forge's model: every LoRA B moves, the names are kohya's, nothing is copied
    or left behind; LoCon also trains the ResBlocks' and samplers' layers."""
    sd_model = engine(tokenizer, sdxl)
    before, out_before = state(sd_model), unet_output(sd_model)
    bundle = (ForgeSDXLBundle if sdxl else ForgeBundle)(sd_model, SDXLFamily() if sdxl else SD1Family(), "standin",
                                                         fetch=standin_fetch)
    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=4, learning_rate=1e-2,
                      train_text_encoder=True, batch_size=2, network_type=kind)
    peek = Peek(sd_model)
    result = train(cfg, [peek], bundle=bundle)
    tensors, metadata = load_kohya_lora(result.lora_path)
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and all(float(u.abs().sum()) > 0 for u in ups)  # every LoRA B got gradients and moved
    prefixes = {k.split("_")[1] for k in tensors}
    assert prefixes == ({"unet", "te1", "te2"} if sdxl else {"unet", "te"})
    assert metadata["ss_base_model_version"].startswith("sdxl" if sdxl else "sd_v1")
    assert any("resnets" in k for k in tensors) == (kind == "locon")  # the stand-in UNet has no samplers
    assert peek.base_ptrs == {k: v[1] for k, v in before["unet"][0].items()}  # nothing copied or moved
    assert_same_state(before, state(sd_model))
    assert torch.equal(unet_output(sd_model), out_before)


class Peek(Callback):
    def __init__(self, sd_model):
        self.unet = sd_model.forge_objects.unet.model.diffusion_model
        self.base_ptrs = {}

    def on_event(self, event):
        if isinstance(event, StepEnded) and event.step == 2:
            self.base_ptrs = {k.replace(".base_layer", ""): v.data_ptr()
                              for k, v in self.unet.state_dict().items() if "lora_" not in k and ".factors." not in k}


def test_an_exception_mid_training_gives_the_model_back(tmp_path, tokenizer, color_data):
    sd_model = engine(tokenizer)
    before = state(sd_model)

    class Boom(Callback):
        def on_event(self, event):
            if isinstance(event, StepEnded) and event.step == 2:
                raise RuntimeError("simulated failure")

    cfg = make_config(tmp_path / "unused", color_data, tmp_path / "out", max_steps=5, train_text_encoder=True,
                      gradient_checkpointing=True)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(cfg, [Boom()], bundle=ForgeBundle(sd_model, SD1Family(), "standin", fetch=standin_fetch))
    assert_same_state(before, state(sd_model))


def test_quantised_weights_are_refused_before_anything_changes(tokenizer):
    sd_model = engine(tokenizer)
    layer = sd_model.forge_objects.unet.model.diffusion_model.input_blocks[1][1].proj_in
    with torch.inference_mode():
        layer.weight = torch.nn.Parameter(layer.weight.to(torch.float8_e4m3fn), requires_grad=False)
    with pytest.raises(ModelLoadError, match="quantised weights .*float8"):
        ForgeBundle(sd_model, SD1Family(), "standin")


def test_forge_is_detected_before_a1111(monkeypatch):
    assert not ForgeNeoHost().detect()  # a plain Python process
    for name in ("modules", "modules.shared", "modules_forge", "backend"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    assert ForgeNeoHost().detect() and not A1111Host().detect()
    assert default_hosts().detect().name == "forge_neo"


def test_clearing_loras_uses_forges_signature_and_memory_manager(monkeypatch, tokenizer):
    """A stand-in for Forge's `networks.load_networks(names, te_multipliers, unet_multipliers)`, which fails
    with "'NoneType' object is not iterable" when called A1111-style with one list."""
    calls = []

    def load_networks(names, te_multipliers=None, unet_multipliers=None):
        calls.append(("load_networks", list(zip(names, te_multipliers, unet_multipliers))))

    memory = types.ModuleType("backend.memory_management")
    memory.load_models_gpu = lambda patchers: calls.append(("load_models_gpu", len(patchers)))
    backend = types.ModuleType("backend")
    backend.memory_management = memory
    for name, module in (("networks", types.SimpleNamespace(load_networks=load_networks)), ("backend", backend),
                         ("backend.memory_management", memory)):
        monkeypatch.setitem(sys.modules, name, module)
    from lora_trainer.hosts.forge_neo.lora_loader import clear_active_loras

    clear_active_loras(engine(tokenizer))
    assert calls == [("load_networks", []), ("load_models_gpu", 2)]


def test_queued_trainings_run_one_by_one_on_forges_main_thread_in_its_gpu_queue(monkeypatch, tmp_path,
                                                                                  tiny_model_dir, color_data):
    """The job queue in Forge Neo, as far as the host seam goes: each queued training goes through the host's
    run_job, so it runs inside Forge's GPU queue (a stand-in for `modules.call_queue.wrap_gradio_gpu_call`
    holding one lock) on Forge's main thread (a stand-in for `modules_forge.main_thread`), one after the other."""
    import queue as threads_queue
    import threading

    from lora_trainer.jobs import JobManager
    from lora_trainer.service import StandaloneService

    gpu, calls, runs = threading.Lock(), threads_queue.Queue(), []

    def main_loop():  # Forge's main thread runs what it is handed, one at a time
        while True:
            fn, done = calls.get()
            fn()
            done.set()

    threading.Thread(target=main_loop, name="standin-forge-main", daemon=True).start()

    def run_and_wait_result(fn):
        done = threading.Event()
        calls.put((fn, done))
        done.wait()

    def wrap_gradio_gpu_call(func, extra_outputs=None):
        def locked(*args):
            with gpu:
                return func(*args)
        return locked

    call_queue, main_thread = types.ModuleType("modules.call_queue"), types.ModuleType("modules_forge.main_thread")
    call_queue.wrap_gradio_gpu_call, main_thread.run_and_wait_result = wrap_gradio_gpu_call, run_and_wait_result
    for name, module in (("modules", types.ModuleType("modules")), ("modules.call_queue", call_queue),
                         ("modules_forge", types.ModuleType("modules_forge")), ("modules_forge.main_thread", main_thread)):
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["modules_forge"].main_thread = main_thread

    def recorded_train(config, callbacks):
        runs.append((config.output_name, threading.current_thread().name, gpu.locked()))
        return train(config, callbacks)

    service = StandaloneService(str(tmp_path / "runs"), JobManager(runner=ForgeNeoHost().run_job,
                                                                   train_fn=recorded_train))
    queue = service.job_queue()
    for name in ("a", "b"):
        queue.add("train", make_config(tiny_model_dir, color_data, tmp_path / name, output_name=name, max_steps=2,
                                       batch_size=1).to_dict())
    assert queue.runner.run_until_empty() == 2
    jobs = queue.list()
    assert [(j.name, j.state, j.step) for j in jobs] == [("a", "done", 2), ("b", "done", 2)]
    assert jobs[1].started_at >= jobs[0].finished_at
    assert runs == [("a", "standin-forge-main", True), ("b", "standin-forge-main", True)]
    assert all(load_kohya_lora(j.result["lora_path"])[0] for j in jobs)  # LoRAs another reader loads
