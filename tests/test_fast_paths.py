"""The fast paths of a training step change its speed, never its result: CUDA-graph steps (engine/graphs)
train the same LoRA as eager steps, and LoRA layers without peft's input upcast compute the same values."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lora_trainer.engine.run import LoraRun
from lora_trainer.adapters import make_spec
from lora_trainer.network.network import AdapterNetwork, NetworkComponent
from lora_trainer.utils import device as device_module

from conftest import make_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _train(cfg):
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    try:
        run.train()
        path = run.save_final()
    finally:
        run.close()
    return trainer, load_file(str(path))


def test_graphs_stay_off_on_cpu_and_the_run_trains(tmp_path, tiny_model_dir, color_data):
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=3, cuda_graphs=True)
    trainer, tensors = _train(cfg)
    assert trainer.graphs is None
    assert trainer.progress.step == 3 and tensors


@needs_cuda
@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
def test_graphed_steps_train_the_same_lora_as_eager_steps(tmp_path, tiny_model_dir, color_data, min_snr_gamma):
    results = {}
    for graphs in (False, True):
        cfg = make_config(tiny_model_dir, color_data, tmp_path / str(graphs), max_steps=8, device="cuda",
                          mixed_precision="bf16", cuda_graphs=graphs, min_snr_gamma=min_snr_gamma, channels_last=False,
                          log_every_n_steps=4, output_name="x")
        results[graphs] = _train(cfg)
    (eager_trainer, eager), (graph_trainer, graphed) = results[False], results[True]
    assert eager_trainer.graphs is None
    assert graph_trainer.graphs.replays == 8  # every step replayed (the first one right after its capture)
    assert eager.keys() == graphed.keys()
    for key in eager:
        diff = (eager[key].float() - graphed[key].float()).abs().max().item()
        scale = eager[key].float().abs().max().item()
        assert diff <= 1e-3 * scale + 1e-7, (key, diff, scale)
    # the losses the user sees are the same too
    assert eager_trainer.progress.losses == pytest.approx(graph_trainer.progress.losses, rel=1e-3)


def test_lora_layers_without_input_upcast_give_identical_outputs_and_gradients_under_autocast():
    torch.manual_seed(0)
    root = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).to(torch.bfloat16).requires_grad_(False)
    net = AdapterNetwork.inject([NetworkComponent("unet", root, ["0", "2"], lambda p: f"lora_unet_{p}")],
                                make_spec(rank=4, alpha=4))
    for p in net.parameters():  # lora_B starts at zero: give both factors values so every path counts
        nn.init.normal_(p, std=0.2)
    x = torch.randn(4, 16, dtype=torch.bfloat16)

    def forward_backward(skip_upcast: bool):
        for p in net.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16), (net.without_input_upcast() if skip_upcast else nullcontext()):
            out = root(x)
        out.float().square().sum().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    plain_out, plain_grads = forward_backward(False)
    fast_out, fast_grads = forward_backward(True)
    assert torch.equal(plain_out, fast_out)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, fast_grads))
    assert all(getattr(m.layer, "cast_input_dtype_enabled", True) for m in net.layers)  # restored afterwards


def _peft_and_fused(layer, x):
    """(output, input grad, LoRA grads) of peft's own forward and of the installed fused one."""
    results = []
    for forward in (lambda t: type(layer).forward(layer, t), layer):
        x_ = x.detach().clone().requires_grad_(True)
        for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            p.grad = None
        torch.manual_seed(1)  # the same dropout mask in both
        out = forward(x_)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
        results.append((out.detach(), x_.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad))
    return results


@pytest.mark.parametrize("dropout,multiplier", [(0.0, 1.0), (0.3, 1.0), (0.0, 0.6)])
def test_lora_linear_layers_fold_the_scaled_sum_into_one_product_with_peft_values(dropout, multiplier, monkeypatch):
    from lora_trainer.adapters.lora_forward import FusedLoraLinear

    torch.manual_seed(0)
    root = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 8)).requires_grad_(False)
    spec = make_spec(rank=4, alpha=2, dropout=dropout)
    net = AdapterNetwork.inject([NetworkComponent("unet", root, ["0", "2"], lambda p: f"lora_unet_{p}")], spec)
    for p in net.parameters():
        nn.init.normal_(p, std=0.2)
    net.set_multiplier(multiplier)
    layer = root[0]
    assert isinstance(layer.__dict__["forward"].__self__, FusedLoraLinear)  # installed on every Linear LoRA layer
    assert layer.scaling["default"] == pytest.approx(multiplier * 2 / 4)
    x = torch.randn(3, 5, 24)
    (peft_out, peft_dx, peft_da, peft_db), (out, dx, da, db) = _peft_and_fused(layer, x)
    for ours, theirs in ((out, peft_out), (dx, peft_dx), (da, peft_da), (db, peft_db)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, layer.base_layer(x), atol=1e-3)  # the LoRA counts
    monkeypatch.setattr(type(layer), "forward", lambda *a, **k: pytest.fail("peft's forward ran"))
    torch.testing.assert_close(layer(x), out) if dropout == 0 else layer(x)  # the fused path ran, not peft's


def test_a_lora_in_another_dtype_than_its_base_output_sums_as_peft_does():
    root, _ = _lora_on_linear(torch.bfloat16)
    (peft_out, *peft_grads), (out, *grads) = _peft_and_fused(root[0], torch.randn(6, 24, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.equal(out, peft_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, peft_grads))


@pytest.mark.parametrize("requested", ["bf16", "auto"])
def test_bf16_on_cpu_keeps_base_weights_in_bf16_and_lora_in_fp32(tmp_path, tiny_model_dir, color_data, monkeypatch,
                                                                 requested):
    """mixed_precision: bf16 on a CPU (what auto picks where the CPU has AMX): half-size base weights in
    channels-last layout, fp32 LoRA, finite losses, sample images render, and the saved LoRA has every
    kohya tensor."""
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: True)
    cfg = make_config(tiny_model_dir, color_data, tmp_path / "out", max_steps=4, mixed_precision=requested,
                      sample_prompts=["a red image --s 2"], sample_every_n_steps=4, log_every_n_steps=2)
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    try:
        base = [p for n, p in trainer.bundle.unet.named_parameters() if "lora_" not in n]
        lora = trainer.network.parameters()
        assert trainer.precision.name == "bf16"
        assert base and all(p.dtype == torch.bfloat16 for p in base)
        assert lora and all(p.dtype == torch.float32 for p in lora)
        assert trainer.bundle.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        modules = trainer.network.count()
        run.train()
        tensors = load_file(str(run.save_final()))
    finally:
        run.close()
    assert len(trainer.progress.losses) == 4 and all(abs(v) < 1e3 for v in trainer.progress.losses)  # NaN fails too
    assert list((tmp_path / "out" / "samples").glob("*.png"))
    assert len(tensors) == 3 * modules


def test_a_shape_that_cannot_be_captured_runs_eager_after_one_warning():
    """GraphedLoss returns None (the caller runs the step eagerly) when capture fails, says why once, and
    does not retry that shape; here capture fails because the tensors are not on a GPU."""
    from lora_trainer.engine.graphs import GraphedLoss

    weight = nn.Parameter(torch.ones(3))
    messages = []
    graphs = GraphedLoss(lambda lat, noise, t, cond: ((lat + noise) * weight).sum(dim=1), [weight], max_graphs=1,
                         say=lambda text, level=None: messages.append(text))
    args = (torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, dtype=torch.long), {"crossattn": torch.zeros(2, 4, 5)})
    assert graphs(*args) is None and graphs(*args) is None
    assert len(messages) == 1 and "CUDA graph capture failed for latents 2x3" in messages[0]
    assert graphs.replays == 0 and not graphs.graphed


def test_a_bundle_reused_after_a_channels_last_run_starts_from_the_default_layout(tmp_path, tiny_model_dir):
    from lora_trainer.config import config_from_dict
    from lora_trainer.engine.run import load_model

    bundle = load_model(config_from_dict({"train_data_dir": ".", "base_model": str(tiny_model_dir), "output_dir": "."}))
    bundle.prepare(torch.device("cpu"), torch.float32, False, False)
    bundle.use_channels_last()
    assert bundle.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    bundle.prepare(torch.device("cpu"), torch.float32, False, False)  # the next run
    assert bundle.unet.conv_in.weight.is_contiguous()


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_on_a_cpu_follows_its_bf16_units(monkeypatch, amx):
    """auto on a CPU: bf16 base weights (fp32 LoRA, no grad scaler) where it has AMX, fp32 elsewhere. A model
    whose fp32 weights belong to the WebUI stays fp32: autocast would re-cast its weights on every call."""
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: amx)
    cpu = torch.device("cpu")
    chosen = device_module.pick_precision("auto", cpu)
    assert (chosen.name, chosen.base_dtype, chosen.autocast_dtype, chosen.use_grad_scaler) == (
        ("bf16", torch.bfloat16, torch.bfloat16, False) if amx else ("no", torch.float32, None, False))
    assert device_module.pick_precision("no", cpu).base_dtype == torch.float32
    webui = device_module.precision_for_weights(torch.float32, cpu, "auto")
    assert (webui.name, webui.base_dtype, webui.autocast_dtype) == ("no", torch.float32, None)


def test_peft_variants_of_a_lora_layer_keep_peft_forward():
    """peft's own DoRA computes more than the plain sum: such a layer runs peft's forward unchanged."""
    from peft import LoraConfig, inject_adapter_in_model

    from lora_trainer.adapters.lora_forward import FusedLoraLinear

    torch.manual_seed(0)
    root = nn.Sequential(nn.Linear(8, 6))
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["0"], use_dora=True), root)
    FusedLoraLinear(root[0], "default")
    nn.init.normal_(root[0].lora_B["default"].weight)
    x = torch.randn(3, 8)
    assert torch.equal(root(x), type(root[0]).forward(root[0], x))
    assert not torch.allclose(root(x), root[0].base_layer(x), atol=1e-3)


def _lora_on_linear(dtype=torch.float32, **spec):
    torch.manual_seed(0)
    root = nn.Sequential(nn.Linear(24, 40)).to(dtype).requires_grad_(False)
    net = AdapterNetwork.inject([NetworkComponent("unet", root, ["0"], lambda p: f"lora_unet_{p}")],
                                make_spec(rank=4, alpha=4, **spec))
    for p in net.parameters():
        nn.init.normal_(p, std=0.2)
    return root, net


def test_under_autocast_the_fused_sum_matches_peft_to_bf16_rounding():
    root, _ = _lora_on_linear(torch.bfloat16)
    x = torch.randn(2, 7, 24, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (peft_out, *peft_grads), (out, *grads) = _peft_and_fused(root[0], x)
    assert out.dtype == torch.bfloat16
    for ours, theirs in ((out, peft_out), *zip(grads, peft_grads)):  # bf16 rounds each route differently
        assert (ours.float() - theirs.float()).norm() <= 1e-2 * theirs.float().norm()


def test_a_webui_manual_cast_of_nn_linear_runs_peft_sum(monkeypatch):
    """A1111 on MPS/XPU/GTX 16xx casts every Linear's weight to the input's dtype inside nn.Linear.forward
    (no autocast): the LoRA's up weight stays fp32 while its input is fp16, so the plain sum must run."""
    root, _ = _lora_on_linear()
    original = nn.Linear.forward

    def manual_cast_forward(self, x):
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    monkeypatch.setattr(nn.Linear, "forward", manual_cast_forward)
    x = torch.randn(5, 24, dtype=torch.float16)
    with torch.no_grad():
        ours, theirs = root[0](x), type(root[0]).forward(root[0], x)
    monkeypatch.setattr(nn.Linear, "forward", original)
    assert ours.dtype == torch.float16 and torch.equal(ours, theirs)


def test_a_removed_lora_layer_is_freed_without_waiting_for_the_garbage_collector():
    import gc
    import weakref

    root, net = _lora_on_linear()
    layer = weakref.ref(root[0])
    gc.disable()
    try:
        net.remove()
        assert isinstance(root[0], nn.Linear) and layer() is None
    finally:
        gc.enable()
