"""Frozen convolutions on pre-packed oneDNN weights (CPU, fp32 and bf16): same outputs and input gradients
as `F.conv2d`, the model is left as it was, a training run with them learns the same LoRA, and `auto`
packs only when the memory for the copies is known to be there."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from lora_trainer.engine import trainer as trainer_module
from lora_trainer.engine.run import LoraRun, load_model
from lora_trainer.events import Message

from recording import EventRecorder
from lora_trainer.models.diffusers_bundle import DiffusersBundle
from lora_trainer.models import packed_convs as packed_convs_module
from lora_trainer.models.gemm_convs import PointwiseLinear
from lora_trainer.models.packed_convs import PackedConv, PackedConvs, packed_weight_bytes, packing_available
from lora_trainer.planner import estimate
from lora_trainer.utils import device as device_module

from conftest import assert_same_loss_and_grads, first_batch_loss_and_grads, make_config, trainer_of

pytestmark = pytest.mark.skipif(not packing_available(torch.device("cpu"), torch.float32),
                                reason="this torch has no oneDNN packed convolutions")
needs_bf16 = pytest.mark.skipif(not packing_available(torch.device("cpu"), torch.bfloat16),
                                reason="this CPU's oneDNN has no bf16 convolutions")
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)]


def _plain(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("kernel,padding", [(3, 1), (1, 0), (3, 0), (5, 2), (3, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_packed_convolution_gives_the_same_output_and_input_gradient(kernel, padding, channels_last, dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, kernel, padding=padding).to(dtype).requires_grad_(False)
    packed = PackedConvs(conv)
    assert len(packed.layers) == 1
    for shape in [(2, 16, 12, 10), (1, 16, 7, 9)]:  # a second shape reuses the weights packed for the first
        x = torch.randn(shape, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x_packed, x_plain = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_packed, out_plain = conv(x_packed), _plain(conv, x_plain)
        assert out_packed.dtype == dtype and out_packed.shape == out_plain.shape
        grad = torch.randn_like(out_plain)
        out_packed.backward(grad)
        out_plain.backward(grad)
        scale = out_plain.float().abs().max().item()
        assert (out_packed.float() - out_plain.float()).abs().max().item() <= 1e-2 * scale
        grad_scale = x_plain.grad.float().abs().max().item()
        assert (x_packed.grad.float() - x_plain.grad.float()).abs().max().item() <= 1e-2 * grad_scale
    unbatched = torch.randn(16, 7, 9, dtype=dtype)  # nn.Conv2d takes one image without a batch too
    assert torch.equal(conv(unbatched), _plain(conv, unbatched[None])[0])
    packed.remove()
    assert "forward" not in conv.__dict__  # the class's forward again


@needs_bf16
def test_only_frozen_stride_one_bf16_convolutions_are_packed_and_unpacking_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),             # packed
        nn.Conv2d(8, 8, 3, stride=2, padding=1),   # strided: plain
        nn.Conv2d(8, 8, 3, padding=1, groups=2),   # grouped: plain
        nn.Conv2d(8, 8, 1),                        # trainable (a LoRA factor): a linear layer
        nn.Conv2d(8, 4, 3, padding="same"),        # padding by name: plain
    ).to(torch.bfloat16)
    for layer in list(model)[:3] + [model[4]]:
        layer.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 4, 16, 16, dtype=torch.bfloat16)
    expected = model(x)

    packed = PackedConvs(model)
    assert [(type(layer), layer.module) for layer in packed.layers] == [(PackedConv, model[0]),
                                                                        (PointwiseLinear, model[3])]
    x_grad = x.clone().requires_grad_(True)
    out = model(x_grad)
    out.float().sum().backward()
    assert model[3].weight.grad is not None and x_grad.grad is not None  # the trainable layer still learns
    assert (out.float() - expected.float()).abs().max().item() <= 1e-2 * expected.float().abs().max().item()
    packed.remove()
    assert all("forward" not in m.__dict__ for m in model)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def _train(cfg, pack: bool, monkeypatch, in_place: bool = True):
    """Trains with or without packing; packed in place, checks that the original weights are gone while
    training and come back exactly afterwards."""
    monkeypatch.setattr(packed_convs_module, "packing_available", lambda *args: pack)
    if not in_place:
        pack_beside = DiffusersBundle.pack_convolutions
        monkeypatch.setattr(DiffusersBundle, "pack_convolutions",  # the same layers, packed beside their weights
                            lambda self, **kw: pack_beside(self, **{**kw, "in_place": False}))
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    convs = [m for m in trainer.bundle.unet.modules() if isinstance(m, nn.Conv2d)]
    packed = [m for m in convs if isinstance(getattr(m.forward, "__self__", None), PackedConv)]
    originals = [m.weight.detach().clone() for m in packed]
    storages = [StorageWeakRef(m.weight.untyped_storage()) for m in packed]
    try:
        assert bool(packed) == pack
        run.train()
        gc.collect()
        assert all((m.weight.numel() == 0) == in_place for m in packed)  # in place: only the packed copies ...
        assert all(ref.expired() == in_place for ref in storages)  # ... while training: the originals are freed
        tensors = load_file(str(run.save_final()))
    finally:
        run.close()
    assert not any("forward" in m.__dict__ for m in convs)  # the bundle is handed back unpacked ...
    for m, original in zip(packed, originals):  # ... with its weights exactly as they were
        assert torch.equal(m.weight, original)
    return trainer, tensors


@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=needs_bf16), "no"])
def test_a_cpu_run_with_packed_convolutions_learns_the_same_lora(tmp_path, tiny_model_dir, color_data, monkeypatch,
                                                                 precision):
    results = {}
    for pack in (False, True):
        cfg = make_config(tiny_model_dir, color_data, tmp_path / str(pack), max_steps=4, mixed_precision=precision,
                          log_every_n_steps=1, output_name="x")
        results[pack] = _train(cfg, pack, monkeypatch)
    (plain_trainer, plain), (packed_trainer, packed) = results[False], results[True]
    assert plain.keys() == packed.keys()
    worst = max((torch.linalg.vector_norm(plain[k].float() - packed[k].float()) /
                 torch.linalg.vector_norm(plain[k].float())).item() for k in plain)
    assert worst <= 2e-2  # fp32 too: AdamW's first steps divide gradients of ~1e-8 by themselves plus eps
    assert packed_trainer.progress.losses == pytest.approx(plain_trainer.progress.losses, rel=2e-2)


def test_packing_in_place_changes_nothing_but_the_memory(tmp_path, tiny_model_dir, color_data, monkeypatch):
    """fp32: the LoRA trained on convolutions packed in place is bit-identical to the one trained on packed copies
    beside the originals, whose losses and LoRA gradients equal those on the unpacked weights (relative 1e-5)."""
    loras = {}
    for in_place in (True, False):  # (patched beside for the rest of the test)
        cfg = make_config(tiny_model_dir, color_data, tmp_path / str(in_place), max_steps=4, output_name="x")
        loras[in_place] = _train(cfg, True, monkeypatch, in_place)[1]
    assert loras[True].keys() == loras[False].keys()
    for key in loras[True]:
        assert torch.equal(loras[True][key], loras[False][key]), key
    results = {}
    for pack in (False, True):
        monkeypatch.setattr(packed_convs_module, "packing_available", lambda *args: pack)
        with trainer_of(make_config(tiny_model_dir, color_data, tmp_path / f"g{pack}", output_name="x")) as trainer:
            results[pack] = first_batch_loss_and_grads(trainer)
    assert_same_loss_and_grads(results[True], results[False])


def _packed_layers(trainer) -> int:
    return sum(isinstance(m, nn.Conv2d) and "forward" in m.__dict__ for m in trainer.bundle.unet.modules())


@pytest.mark.parametrize("setting,free,packs", [("auto", "plenty", True), ("auto", "short", False),
                                                ("auto", "unknown", False), (True, "short", True),
                                                (False, "plenty", False)])
def test_pack_conv_weights_follows_the_setting_and_the_available_memory(tmp_path, tiny_model_dir, color_data,
                                                                        monkeypatch, setting, free, packs):
    """auto packs when the copies take at most half the available memory and says why when it does not
    (or cannot tell); true packs regardless; false never packs."""
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=1, pack_conv_weights=setting)
    recorder = EventRecorder()
    run = LoraRun(cfg, [recorder], tensorboard=False)
    need = []

    def ram():  # "short": just under twice what auto's copies take (fp32: the lean ones, asked last)
        return {"plenty": 64 * 2**30, "short": 2 * need[-1] - 1, "unknown": None}[free]

    monkeypatch.setattr(trainer_module, "available_ram", ram)
    original = DiffusersBundle.packed_convolution_bytes
    monkeypatch.setattr(DiffusersBundle, "packed_convolution_bytes",
                        lambda self, *args: need.append(original(self, *args)) or need[-1])
    try:
        trainer = run.setup()
        packed = _packed_layers(trainer)
    finally:
        run.close()
    assert need and need[0] > 0
    said = [m.text for m in recorder.of_type(Message) if "pack_conv_weights" in m.text]
    assert (packed > 0) == packs
    assert bool(said) == (setting == "auto" and not packs)
    if said:
        assert "half the available memory" in said[0]


def test_the_memory_plan_counts_the_packed_copies_only_where_the_trainer_makes_them(tmp_path, tiny_model_dir,
                                                                                    color_data):
    plans = {setting: estimate(make_config(tiny_model_dir, color_data, tmp_path / "o", pack_conv_weights=setting))
             for setting in (True, False, "auto")}
    convs = [m for m in load_model(make_config(tiny_model_dir, color_data, tmp_path / "o")).unet.modules()
             if isinstance(m, nn.Conv2d) and m.stride == (1, 1)]
    assert plans[False].packed == 0 and not any("packed" in line for line in plans[False].lines())
    assert plans[True].packed == sum(4 * m.weight.numel() for m in convs)  # two fp32 copies each, in place
    assert plans[True].peak == max(plans[False].peak, plans[True].weights + plans[True].packed + plans[True].lora_state
                                   + plans[True].activations + plans[True].transient)
    assert any("packed conv copies" in line for line in plans[True].lines())
    unet = load_model(make_config(tiny_model_dir, color_data, tmp_path / "o")).unet.requires_grad_(False)
    lean = packed_weight_bytes(unet, torch.float32, in_place=True, lean=True)
    assert plans["auto"].packed == lean < plans[True].packed  # fp32 auto: the 1x1 layers run as GEMMs
    compiled = estimate(make_config(tiny_model_dir, color_data, tmp_path / "o", pack_conv_weights=True,
                                    torch_compile=True))
    assert compiled.packed == 0  # the trainer never packs a compiled UNet: the plan agrees


def test_packing_needs_a_cpu_and_the_weights_dtype_for_the_compute():
    assert not packing_available(torch.device("cpu"), torch.float32, autocast_dtype=torch.bfloat16)
    assert not packing_available(torch.device("meta"), torch.float32)
    assert not packing_available(torch.device("cpu"), torch.float16)
    assert packing_available(torch.device("cpu"), torch.float32)


@needs_bf16
def test_bf16_packing_runs_under_bf16_autocast():
    assert packing_available(torch.device("cpu"), torch.bfloat16, autocast_dtype=torch.bfloat16)


@pytest.mark.parametrize("system,container,expected", [(8, None, 8), (8, 3, 3), (None, 3, 3), (None, None, None)])
def test_available_memory_is_the_smaller_of_the_system_and_the_container_limit(monkeypatch, system, container,
                                                                               expected):
    monkeypatch.setattr(device_module, "proc_kb_field", lambda path, key: system)
    monkeypatch.setattr(device_module, "_cgroup_headroom", lambda: container)
    monkeypatch.setattr(device_module.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert device_module.available_ram() == expected


def test_layers_whose_weight_dora_reads_are_not_packed_and_the_plan_agrees(tmp_path, tiny_model_dir, color_data,
                                                                          monkeypatch):
    """DoRA reads its base layers' weights in every forward: those layers stay unpacked with their weights (packed
    beside them they would hold three copies), the other convolutions are packed in place, and `plan` counts
    exactly the packed ones."""
    monkeypatch.setattr(packed_convs_module, "packing_available", lambda *args: True)
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=2, pack_conv_weights=True,
                      network_type="locon", network_args={"use_dora": True, "conv_dim": 0}, output_name="x")
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    try:
        read = {id(m) for m in trainer.network.base_layers_read()}
        convs = [m for m in trainer.bundle.unet.modules() if type(m) is nn.Conv2d and m.stride == (1, 1)
                 and not m.weight.requires_grad]
        reading = [m for m in convs if id(m) in read]
        others = [m for m in convs if id(m) not in read]
        assert reading and others  # DoRA on the 1x1 projections, the 3x3 convolutions left to packing
        packed_bytes = sum(4 * m.weight.numel() for m in others)  # in place: one fp32 copy net each (two, less one)
        run.train()
        assert not any("forward" in m.__dict__ for m in reading)
        assert all(m.weight.numel() > 0 for m in reading)
        assert all("forward" in m.__dict__ and m.weight.numel() == 0 for m in others)
    finally:
        run.close()
    assert estimate(cfg).packed == packed_bytes
