"""LoCon, LoHa, LoKr and their DoRA variant on tiny SD1, SD2 and SDXL models: after a few training steps,
the host's formulas (tests/a1111_lyco_reference.py, A1111 v1.10.1 re-implemented) rebuild from the saved
file exactly the change the trained model applies, every module is in the file, and the metadata says
what it is."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from lora_trainer.engine.run import LoraRun
from lora_trainer.tiny import build_tiny_sd1

from a1111_lyco_reference import calc_updown
from conftest import make_config
from tiny_families import build_tiny_sd2, build_tiny_sdxl

KINDS = {
    "locon": {"network_type": "locon", "network_args": {"conv_dim": 2, "conv_alpha": 1}},
    "loha": {"network_type": "loha", "network_args": {"conv_dim": 2}},
    "lokr": {"network_type": "lokr", "network_args": {"conv_dim": 2}},
    "locon-dora": {"network_type": "locon", "network_args": {"use_dora": True}},
    "loha-dora": {"network_type": "loha", "network_args": {"use_dora": True, "conv_dim": 2}},
    "lokr-dora": {"network_type": "lokr", "network_args": {"use_dora": True, "factor": 4}},
}
BUILDERS = {"sd1": build_tiny_sd1, "sd2": build_tiny_sd2, "sdxl": build_tiny_sdxl}
try:  # the LyCORIS package (requirements/test.txt): a second independent reader of the files
    import lycoris.modules as LYCORIS
except ImportError:  # pragma: no cover - the A1111 reference still runs
    LYCORIS = None


def lycoris_package_output(tensors, name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of the module the `lycoris-lora` package's own per-module loader (`get_module` +
    `make_module`, what its `create_lycoris_from_weights` runs) builds from our file on `layer`, for input
    `x`. Its forward, not its `get_diff_weight`: in 4.1.3 that applies alpha / rank twice for LoHa and LoKr
    (its own forward and the hosts apply it once). Not for DoRA: the package builds `dora_scale` per output
    row (wd_on_out) and cannot load the hosts' per-input-column files."""
    own = {k: v.to(layer.weight.dtype) for k, v in tensors.items() if k.startswith(name + ".")}
    kind, params = LYCORIS.get_module(own, name)
    assert kind is not None, f"the lycoris package reads no module type from {name}"
    module = LYCORIS.make_module(kind, params, name, plain_copy(layer, layer.weight.dtype))
    with torch.no_grad():
        return module(x)


def plain_copy(layer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A fresh nn.Linear / nn.Conv2d with `layer`'s weights and none of a run's per-layer forwards
    (packed convolutions hold oneDNN tensors, which cannot be copied)."""
    if isinstance(layer, nn.Conv2d):
        fresh = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, bias=layer.bias is not None)
    else:
        fresh = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    fresh.load_state_dict({k: v.detach() for k, v in layer.state_dict().items()})
    return fresh.to(dtype)


def with_change(layer: nn.Module, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s output with `delta` added to its weight."""
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, layer.weight + delta, layer.bias, layer.stride, layer.padding)
        return F.linear(x, layer.weight + delta, layer.bias)


def probe(weight: torch.Tensor) -> torch.Tensor:
    """An input for a layer with this weight (Conv2d when 4-d), in the weight's dtype."""
    shape = (1, weight.shape[1], 6, 6) if weight.dim() == 4 else (3, weight.shape[1])
    return torch.randn(shape, dtype=weight.dtype)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: build(root / family, seed=0) for family, build in BUILDERS.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# every kind on every family; DoRA on a different base kind per family (each is one strategy shared by all)
CASES = [(family, kind) for family, dora in (("sd1", "locon-dora"), ("sd2", "loha-dora"), ("sdxl", "lokr-dora"))
         for kind in ("locon", "loha", "lokr", dora)]


@pytest.mark.parametrize("family,kind", CASES)
def test_the_hosts_formulas_rebuild_what_was_trained(tmp_path, models, color_data, family, kind):
    """Per module: A1111's formulas on the file give the change the trained layer reports, the layer's
    forward adds exactly that change, and (not DoRA) the lycoris-lora package's module built from the file
    adds it too."""
    cfg = make_config(models[family], color_data, tmp_path / "out", max_steps=1, lora_rank=4, lora_alpha=2,
                      learning_rate=2e-2, train_text_encoder=True, batch_size=1, gradient_checkpointing=False,
                      **KINDS[kind])
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    run.train()
    path = run.save_final()
    trainer.bundle.restore()  # convolutions packed in place for the CPU get their weights back to be read here
    tensors = load_file(str(path))
    network = trainer.network
    names = {m.name for m in network.layers}
    assert {k.split(".", 1)[0] for k in tensors} == names  # no module dropped, none extra
    assert any(getattr(m.layer.base_layer, "kernel_size", None) == (3, 3) for m in network.layers)  # LoCon targets
    changed = 0
    for m in network.layers:
        parts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == m.name}
        base = m.layer.base_layer.weight.detach().float()
        with torch.no_grad():
            ours = network.kind.layer_delta(m.layer).detach()
        host = calc_updown(parts, base)
        assert host.shape == base.shape, m.name
        assert rel_err(host, ours) < 1e-5 or (ours.norm() == 0 and host.norm() == 0), m.name
        changed += int(ours.norm() > 0)
        x32 = probe(base)
        with torch.no_grad():
            assert rel_err(m.layer(x32), with_change(plain_copy(m.layer.base_layer, torch.float32), ours, x32)) < 1e-5
        layer = plain_copy(m.layer.base_layer, torch.float64)  # float64: W x + dW x - W x keeps dW x's digits
        x = probe(layer.weight)
        with torch.no_grad():
            plain = layer(x)
        mine = with_change(layer, ours.double(), x) - plain
        if "dora" in kind:
            assert tuple(parts["dora_scale"].shape) == (1, base.shape[1]) + (1,) * (base.dim() - 2)
        elif LYCORIS:
            package = lycoris_package_output(tensors, m.name, layer, x) - plain
            assert rel_err(package, mine) < 1e-5 or (mine.norm() == 0 and package.norm() == 0), m.name
    assert changed > len(network.layers) // 2  # the steps trained most modules
    meta = safe_open(str(path), "pt").metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == KINDS[kind]["network_type"]
    assert ("dora_wd" in args) == ("dora" in kind)
    run.close()


def test_lora_keys_with_dora_scale_read_as_locon_and_a_row_norm_dora_is_refused(tmp_path):
    from lora_trainer.adapters import default_adapter_kinds
    from lora_trainer.errors import LoraFormatError

    kinds = default_adapter_kinds()
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(2, 6, 3, 3), "lora_unet_x.lora_up.weight": torch.randn(4, 2, 1, 1),
               "lora_unet_x.alpha": torch.tensor(1.0), "lora_unet_x.dora_scale": torch.rand(1, 6, 1, 1)}
    spec = kinds.file_spec(tensors, "f")
    assert spec.kind.name == "locon" and spec.args == {"use_dora": True, "conv_dim": 2, "conv_alpha": 1.0}
    module = kinds.read_modules(tensors, "f")["lora_unet_x"]
    base = torch.randn(4, 6, 3, 3)
    parts = {k.split(".", 1)[1]: v for k, v in tensors.items()}
    assert rel_err(module.delta_on(base), calc_updown(parts, base)) < 1e-6
    assert module.low_rank() is None  # combine / resize refuse it
    linear = {"lora_unet_y.lora_down.weight": torch.randn(3, 8), "lora_unet_y.lora_up.weight": torch.randn(5, 3),
              "lora_unet_y.alpha": torch.tensor(2.0)}
    conv = {k: v for k, v in tensors.items() if "dora_scale" not in k}
    mixed = kinds.file_spec({**conv, **linear}, "f")  # a LoCon file: linear and 3x3 modules (init_lora, grid)
    assert (mixed.kind.name, mixed.rank, mixed.alpha, mixed.args["conv_dim"]) == ("locon", 3, 2.0, 2)
    tensors["lora_unet_x.dora_scale"] = torch.rand(4, 1, 1, 1)  # LyCORIS wd_on_out / peft: per output row
    with pytest.raises(LoraFormatError, match="per input column"):
        kinds.read_modules(tensors, "f")


# each kind once in place (LoHa, the slowest, on the smallest tower); DoRA in place on SD1
@pytest.mark.parametrize("where,kind", [("sd1", "locon-dora"), ("sd2", "loha"), ("sdxl", "lokr")])
def test_in_place_in_the_webui_model_names_and_losses_equal_the_diffusers_path(tmp_path, color_data, where, kind):
    """The WebUI's own ldm / sgm model trained in place gets the same kohya names (ResNet and sampler layers
    included) and the same loss as the converted file, and comes back exactly as it was."""
    from ldm_families import build_tiny_sd2_ldm, build_tiny_sdxl_sgm, save_sd2_single_file, save_sdxl_single_file
    from ldm_tiny import build_tiny_ldm, save_single_file
    from lora_trainer.engine.run import load_model, train
    from lora_trainer.hosts.a1111.layouts import in_place_bundle
    from webui_checks import assert_restored, same_lora_same_loss, snapshot

    build, save = {"sd1": (build_tiny_ldm, save_single_file), "sd2": (build_tiny_sd2_ldm, save_sd2_single_file),
                   "sdxl": (build_tiny_sdxl_sgm, save_sdxl_single_file)}[where]
    model = build(tmp_path, seed=0)
    saved = snapshot(model)
    path = save(model, tmp_path / "models" / f"tiny-{where}.safetensors")
    te = "dora" not in kind  # DoRA is refused on OpenCLIP's packed attention (SD2 / SDXL text towers)
    tokenizer = tmp_path / ("sgm_tokenizer" if where == "sdxl" else "ldm_tokenizer")
    cfg = make_config(path, color_data, tmp_path / "out", tokenizer_path=str(tokenizer),
                      train_text_encoder=te, **KINDS[kind])
    train(cfg.__class__(**{**cfg.to_dict(), "max_steps": 1, "output_dir": str(tmp_path / "one")}),
          bundle=in_place_bundle(model, name="tiny"))
    assert_restored(model, saved)  # every adapted layer (ResNet convs included) put back, nothing left behind
    names, losses, steps = same_lora_same_loss(tmp_path, cfg, [in_place_bundle(model, name="tiny"), load_model(cfg)],
                                               ["unet"] + (["te1", "te2"] if where == "sdxl" else ["te"]) * te)
    assert any("resnets" in n or "in_layers" in n for n in names) and any("sampler" in n or "_op" in n for n in names)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert steps[0] == pytest.approx(steps[1], abs=1e-5)


def test_the_planner_counts_each_kinds_parameters_and_activations(tmp_path, models, color_data):
    """Each kind's estimate comes from its own layers on the meta device: LoCon adds the conv layers' state,
    LoHa (four factors) more than LoCon at the same rank; LoHa's full-size change per layer is not kept for
    the backward, so its activations are no larger than LoCon's."""
    from lora_trainer.planner import estimate

    plans = {nt: estimate(make_config(models["sd1"], color_data, tmp_path / nt, network_type=nt, lora_rank=4))
             for nt in ("lora", "locon", "loha", "lokr")}
    for nt, plan in plans.items():
        print(f"{nt}: adapter state {plan.lora_state} B, activations {plan.activations} B")
    assert plans["locon"].lora_state > plans["lora"].lora_state
    assert plans["loha"].lora_state > plans["locon"].lora_state
    # LoHa's weight-sized change is rebuilt in the backward, not kept: no more than LoCon's rank-wide intermediates
    assert plans["loha"].activations <= plans["locon"].activations
    assert all(p.lora_state > 0 for p in plans.values())


def test_resume_equals_an_uninterrupted_run_and_init_lora_reads_the_kind_back(tmp_path, models, color_data):
    """LoHa with DoRA and conv layers: stopping after 1 step and resuming gives the uninterrupted run's file bit
    for bit; `init_lora` from that file builds the same network (kind, conv_dim, use_dora from the file)."""
    from lora_trainer.engine.run import train

    common = dict(lora_rank=3, lora_alpha=2, save_steps=1, output_name="run", batch_size=1, learning_rate=1e-2,
                  network_type="loha", network_args={"use_dora": True, "conv_dim": 2, "conv_alpha": 1})
    full = train(make_config(models["sd1"], color_data, tmp_path / "full", max_steps=2, **common))
    train(make_config(models["sd1"], color_data, tmp_path / "cut", max_steps=1, **common))
    cut = train(make_config(models["sd1"], color_data, tmp_path / "cut", max_steps=2, resume=True, **common))
    a, b = load_file(str(full.lora_path)), load_file(str(cut.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    run = LoraRun(make_config(models["sd1"], color_data, tmp_path / "next", max_steps=1, batch_size=1,
                              init_lora=str(full.lora_path)), tensorboard=False)
    trainer = run.setup()
    assert trainer.network.kind.name == "loha" and trainer.network.rank == 3
    loaded = trainer.network.kohya_state_dict(torch.float32)
    assert loaded.keys() == a.keys() and all(torch.equal(loaded[k], a[k].float()) for k in a)
    run.close()


def test_config_takes_the_kinds_and_refuses_bad_arguments_clearly(tmp_path, color_data):
    from lora_trainer.adapters import default_adapter_kinds
    from lora_trainer.config import config_from_dict
    from lora_trainer.errors import ConfigError

    base = dict(train_data_dir=str(color_data), base_model="m", output_dir=str(tmp_path))
    cfg = config_from_dict({**base, "network_type": "lokr", "network_args": {"conv_dim": "8", "use_dora": "true",
                                                                              "factor": "4"}})
    spec = default_adapter_kinds().spec_for(cfg)  # the page and --network_args give text
    assert spec.kind.name == "lokr" and spec.args == {"conv_dim": 8, "use_dora": True, "factor": 4}
    for raw, message in [({"network_type": "loha", "network_args": {"factor": 2}}, "loha takes conv_dim"),
                         ({"network_type": "lora", "network_args": {"use_dora": True}}, "choose network_type locon"),
                         ({"network_type": "dora"}, "use_dora: true in network_args"),
                         ({"network_type": "locon", "network_args": {"conv_dim": "x"}}, "conv_dim: expected a number"),
                         ({"network_type": "locon", "network_args": {"use_dora": "maybe"}}, "expected true or false")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({**base, **raw})


@pytest.mark.parametrize("kind,args", [("loha", {}), ("lokr", {"factor": 4}), ("locon", {"use_dora": True})])
@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_a_weight_sized_change_is_rebuilt_in_the_backward_not_kept(kind, args, conv):
    """LoHa, LoKr and DoRA build a change as large as the layer's weight: between forward and backward autograd
    keeps less than one such tensor per layer (the input and the small factors), and the gradients equal those
    of the same formula kept whole."""
    from lora_trainer.adapters import default_adapter_kinds
    from lora_trainer.adapters.base import AdapterSpec

    torch.manual_seed(0)
    layer = nn.Conv2d(32, 48, 3, padding=1) if conv else nn.Linear(96, 128)
    root = nn.Sequential(layer)
    adapter_kind = default_adapter_kinds().get(kind)
    adapted = adapter_kind.wrap(root, ["0"], AdapterSpec(adapter_kind, 4, 2.0, 0.0, dict(args)))["0"]
    for p in adapted.factors.parameters():  # no zero factor: every gradient is non-trivial
        p.data.normal_()
    layer.requires_grad_(False)
    x = torch.randn((2, 32, 5, 5) if conv else (4, 96), requires_grad=True)  # as after an earlier adapted layer
    kept = []

    def pack(t):
        if t.data_ptr() != layer.weight.data_ptr():  # the frozen base weight itself is a reference, not a copy
            kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = root(x)
    weight_size = layer.weight.numel()
    assert sum(n for n in kept if n >= weight_size) == 0, f"weight-sized tensors kept: {kept}"
    out.square().sum().backward()
    params = [x, *adapted.factors.parameters()]
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    whole = layer(x) + (F.conv2d(x, adapted.delta(), None, 1, 1) if conv else F.linear(x, adapted.delta()))
    whole.square().sum().backward()
    for g, p in zip(got, params):
        assert rel_err(g, p.grad) < 1e-5
