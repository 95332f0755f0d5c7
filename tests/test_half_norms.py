"""GroupNorm/LayerNorm in the base weights' half-precision dtype (models/half_norms): the same values as
the norm computed in that dtype, the model is left as it was, `auto` switches it on only where autocast
would compute these norms in fp32 (CUDA), and a run with them learns nearly the LoRA that fp32 norms give."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lora_trainer.engine.run import LoraRun
from lora_trainer.models.diffusers_bundle import DiffusersBundle
from lora_trainer.models.half_norms import HalfPrecisionNorms, half_norms_help
from lora_trainer.models.layer_forwards import LayerForward, LayerForwards

from conftest import make_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def _frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, 1.0 if p.dim() == 1 and p is getattr(module, "weight", None) else 0.0, 0.2)
    return module.to(dtype).requires_grad_(False)


NORMS = [(lambda: nn.GroupNorm(4, 16, eps=1e-6), (2, 16, 8, 8)),  # eps as in the UNet's GroupNorms
         (lambda: nn.LayerNorm(16, eps=1e-6), (2, 10, 16)),
         (lambda: nn.LayerNorm(16, elementwise_affine=False), (2, 10, 16))]


def _reference(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


@pytest.mark.parametrize("make,shape", NORMS)
def test_a_half_norm_computes_in_bf16_with_autocast_off(make, shape, monkeypatch):
    norm = _frozen(make(), BF16)
    x = (torch.randn(shape) * 3e-3 + 1e-2).to(BF16).requires_grad_(True)  # variance ~1e-5: eps shows
    wrapped = HalfPrecisionNorms(norm)
    assert len(wrapped.layers) == 1
    autocast_inside = []
    for name in ("group_norm", "layer_norm"):
        original = getattr(F, name)
        monkeypatch.setattr(F, name, lambda *a, _f=original, **k: autocast_inside.append(
            torch.is_autocast_enabled("cpu")) or _f(*a, **k))
    with torch.autocast("cpu", dtype=BF16):
        out = norm(x)
    monkeypatch.undo()
    assert autocast_inside == [False]  # CUDA autocast would compute it in fp32
    out.float().square().sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    ref = _reference(norm, x_ref)  # plain bf16, no autocast, the module's own eps
    ref.float().square().sum().backward()
    assert out.dtype == BF16 and torch.equal(out, ref)
    assert torch.equal(x.grad, x_ref.grad)
    # and it is a normalisation: close to the fp32 result (bf16 rounding only)
    fp32 = type(norm).forward(norm.float(), x.detach().float())
    assert (out.float() - fp32).abs().max().item() < 0.05 * fp32.abs().max().item()


@pytest.mark.parametrize("make,shape", NORMS[:2])
def test_an_input_in_another_dtype_takes_the_modules_own_path(make, shape):
    norm = _frozen(make(), BF16)
    x = torch.randn(shape)  # fp32: autocast decides, as without the wrapper (a CPU's refuses GroupNorm's mix)

    def call():
        try:
            with torch.autocast("cpu", dtype=BF16):
                return norm(x), None
        except RuntimeError as error:
            return None, str(error)

    (expected, expected_error), _, (out, error) = call(), HalfPrecisionNorms(norm), call()
    assert error == expected_error
    assert (out is None and expected is None) or (out.dtype == expected.dtype and torch.equal(out, expected))


def test_only_frozen_half_precision_norms_are_converted_and_removing_leaves_the_model_as_it_was():
    class OwnNorm(nn.GroupNorm):  # a subclass may compute otherwise (the WebUI's GroupNorm32 upcasts): left alone
        pass

    model = nn.Sequential(nn.GroupNorm(2, 8), nn.LayerNorm(8), OwnNorm(2, 8), nn.GroupNorm(2, 8), nn.GroupNorm(2, 8),
                          nn.GroupNorm(2, 8), nn.Linear(8, 8))
    model.to(BF16).requires_grad_(False)
    model[3].float()  # fp32 weights: nothing to gain
    model[4].requires_grad_(True)  # a trained norm: left alone
    own_forward = model[5].forward
    model[5].forward = own_forward  # someone else's instance forward: neither replaced nor removed
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = HalfPrecisionNorms(model)
    assert [layer.module for layer in wrapped.layers] == [model[0], model[1]]
    wrapped.remove()
    assert all("forward" not in m.__dict__ for i, m in enumerate(model) if i != 5)
    assert model[5].__dict__["forward"] is own_forward
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("setting,device,base,autocast,on", [
    ("auto", CUDA, BF16, BF16, True), ("auto", CUDA, FP16, FP16, False), (True, CUDA, FP16, FP16, True),
    ("auto", CPU, BF16, BF16, False),   # a CPU's autocast already computes these norms in bf16
    ("auto", CUDA, FP32, BF16, False),  # fp32 base weights (autocast casts them per call): nothing to gain
    ("auto", CUDA, FP32, None, False), (True, CPU, BF16, BF16, True), (False, CUDA, BF16, BF16, False)])
def test_half_precision_norms_setting(setting, device, base, autocast, on):
    assert half_norms_help(setting, device, base, autocast) is on


def _norms(trainer):
    return [m for m in trainer.bundle.unet.modules() if type(m) in (nn.GroupNorm, nn.LayerNorm)]


class _Fp32Norm(LayerForward):
    """A norm as CUDA autocast runs it: input and weights cast up to fp32, an fp32 output."""

    def forward(self, x):
        n = self.module
        w = None if n.weight is None else n.weight.float()
        b = None if n.bias is None else n.bias.float()
        with torch.autocast("cpu", enabled=False):
            if isinstance(n, nn.GroupNorm):
                return F.group_norm(x.float(), n.num_groups, w, b, n.eps)
            return F.layer_norm(x.float(), n.normalized_shape, w, b, n.eps)


def _fp32_norms(model: nn.Module) -> LayerForwards:
    return LayerForwards(model, _Fp32Norm, lambda m: type(m) in (nn.GroupNorm, nn.LayerNorm))


def _train(cfg, wrapped: bool = False):
    run = LoraRun(cfg, tensorboard=False)
    trainer = run.setup()
    norms = _norms(trainer)
    try:
        assert bool(norms) and all("forward" in m.__dict__ for m in norms) == wrapped
        run.train()
        result = trainer.progress.losses, load_file(str(run.save_final()))
    finally:
        run.close()
    assert not any("forward" in m.__dict__ for m in norms)  # handed back as it was
    return result


def _relative_distance(a, b, suffix: str) -> float:
    keys = [k for k in b if k.endswith(suffix)]
    flat_a, flat_b = (torch.cat([t[k].float().flatten() for k in keys]) for t in (a, b))
    return (torch.linalg.vector_norm(flat_a - flat_b) / torch.linalg.vector_norm(flat_b)).item()


def test_a_bf16_run_with_half_precision_norms_strays_no_farther_from_fp32_than_with_fp32_norms(
        tmp_path, tiny_model_dir, color_data, monkeypatch):
    """Three runs, same seed and data: fp32 throughout; bf16 with fp32 norms, as CUDA autocast runs them
    (emulated on this CPU); bf16 with `half_precision_norms`. Measured: the LoRA factors of either bf16 run
    are ~8% (up) / ~0.6% (down) away from the fp32 run's (Adam's first steps follow the gradients' signs),
    and half-precision norms add no more than that."""
    def config(name, precision):
        return make_config(tiny_model_dir, color_data, tmp_path / name, max_steps=6, mixed_precision=precision,
                           half_precision_norms=True, log_every_n_steps=1, output_name="x")

    fp32_losses, fp32 = _train(config("fp32", "no"))
    half_losses, half = _train(config("half", "bf16"), wrapped=True)
    with monkeypatch.context() as patch:
        patch.setattr(DiffusersBundle, "use_half_precision_norms",
                      lambda bundle: bundle._overrides.append(_fp32_norms(bundle.unet)))
        upcast_losses, upcast = _train(config("upcast", "bf16"), wrapped=True)
    assert fp32.keys() == half.keys() == upcast.keys()
    assert any(not torch.equal(half[k], upcast[k]) for k in half)  # the norms did compute differently
    for suffix in ("lora_up.weight", "lora_down.weight"):
        assert _relative_distance(half, fp32, suffix) <= 1.25 * _relative_distance(upcast, fp32, suffix)
    assert half_losses == pytest.approx(upcast_losses, rel=1e-2)
    assert half_losses == pytest.approx(fp32_losses, rel=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (autocast's fp32 norm policy)")
@pytest.mark.parametrize("make,shape", NORMS[:2])
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_under_cuda_autocast_half_norms_keep_activations_and_gradients_in_half_precision(make, shape, dtype):
    norm = _frozen(make(), dtype).cuda()
    x = torch.randn(shape, device="cuda", dtype=dtype)
    with torch.autocast("cuda", dtype=dtype):
        assert norm(x).dtype == FP32  # autocast's own policy
        HalfPrecisionNorms(norm)
        x.requires_grad_(True)
        out = norm(x)
    out.float().square().sum().backward()
    assert out.dtype == dtype and x.grad.dtype == dtype
    with torch.autocast("cuda", dtype=dtype):
        assert norm(x.detach().float()).dtype == FP32  # an fp32 input: autocast's own policy still
    ref = type(norm).forward(norm.float(), x.detach().float())
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()
