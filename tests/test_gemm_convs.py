"""Frozen fp32 convolutions as GEMMs on their own weights (models/gemm_convs): the same outputs and input
gradients as `F.conv2d`, no copy of the weight, and a training run on them learns what it learns on the
plain layers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_trainer.models import gemm_convs as gemm_convs_module
from lora_trainer.models import packed_convs as packed_convs_module
from lora_trainer.models.gemm_convs import GemmConv, PointwiseLinear
from lora_trainer.models.packed_convs import PackedConv, PackedConvs, packing_available

from conftest import assert_same_loss_and_grads, first_batch_loss_and_grads, make_config, trainer_of

needs_onednn = pytest.mark.skipif(not packing_available(torch.device("cpu"), torch.float32),
                                  reason="this torch has no oneDNN packed convolutions")


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kernel,padding,stride", [(3, 1, 1), (1, 0, 1), (3, 0, 1), (5, 2, 1), (3, 1, 2),
                                                   (3, 0, 2), (1, 0, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_a_gemm_convolution_gives_the_same_output_and_input_gradient(kernel, padding, stride, channels_last, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, kernel, padding=padding, stride=stride, bias=bias).requires_grad_(False)
    weight = conv.weight.data_ptr()
    layer = GemmConv(conv)
    for shape in [(2, 16, 12, 10), (1, 16, 7, 9)]:
        x = torch.randn(shape)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x_gemm, x_plain = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_gemm = conv(x_gemm)
        out_plain = F.conv2d(x_plain, conv.weight, conv.bias, stride, padding)
        assert out_gemm.shape == out_plain.shape
        grad = torch.randn_like(out_plain)
        out_gemm.backward(grad)
        out_plain.backward(grad)
        assert _relative_error(out_gemm, out_plain) <= 1e-5
        assert _relative_error(x_gemm.grad, x_plain.grad) <= 1e-5
    unbatched = torch.randn(16, 7, 9)
    assert torch.equal(conv(unbatched), F.conv2d(unbatched[None], conv.weight, conv.bias, stride, padding)[0])
    # no copy: the layer computes on the module's own weight and holds no tensor of its own
    assert conv.weight.data_ptr() == weight
    assert not any(isinstance(v, torch.Tensor) for v in vars(layer).values())
    layer.remove()
    assert "forward" not in conv.__dict__


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("trainable", [True, False])
def test_a_pointwise_convolution_as_a_linear_layer_gives_the_same_values_and_gradients(channels_last, trainable):
    """LoRA's trainable 1x1 factors, and the frozen 1x1 layers of lean packing (input gradient only, no copy)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 5, 1).requires_grad_(trainable)
    weight = conv.weight.data_ptr()
    x = torch.randn(2, 12, 6, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 5, 6, 7)
    results = []
    for linear in (False, True):
        layer = PointwiseLinear(conv) if linear else None
        conv.zero_grad()
        x_in = x.clone().requires_grad_(True)
        out = conv(x_in)
        out.backward(grad)
        results.append([out, x_in.grad] + ([conv.weight.grad.clone(), conv.bias.grad.clone()] if trainable else []))
        if layer:
            assert conv.weight.data_ptr() == weight
            assert not any(isinstance(v, torch.Tensor) for v in vars(layer).values())
            layer.remove()
    assert len(results[1]) == len(results[0]) == (4 if trainable else 2)
    for linear, plain in zip(results[1], results[0]):
        assert linear.shape == plain.shape and _relative_error(linear, plain) <= 1e-5


@needs_onednn
def test_lean_packing_runs_wide_pointwise_and_strided_layers_as_gemms_and_packs_the_rest(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(gemm_convs_module, "GEMM_MIN_OUT_CHANNELS", 32)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1),   # narrow 3x3: packed
                          nn.Conv2d(8, 32, 3, padding=1),  # wide 3x3: GEMM
                          nn.Conv2d(32, 8, 1),             # 1x1: GEMM
                          nn.Conv2d(8, 8, 3, stride=2, padding=1)).requires_grad_(False)  # strided: GEMM
    lean = PackedConvs(model, lean=True)
    assert [type(layer) for layer in lean.layers] == [PackedConv, GemmConv, PointwiseLinear, GemmConv]
    lean.remove()
    every = PackedConvs(model)  # not lean: every stride-1 layer packed, the strided one still a GEMM
    assert [type(layer) for layer in every.layers] == [PackedConv, PackedConv, PackedConv, GemmConv]
    every.remove()


@needs_onednn
def test_a_run_on_gemm_convolutions_learns_what_it_learns_on_the_plain_layers(tmp_path, tiny_model_dir,
                                                                             color_data, monkeypatch):
    """fp32, every frozen convolution of the tiny UNet as a GEMM (none packed) and LoRA's 1x1 factors as linear
    layers: the same loss and LoRA gradients as without (relative 1e-5), and the weights stay where they were."""
    monkeypatch.setattr(gemm_convs_module, "GEMM_MIN_OUT_CHANNELS", 1)
    results = {}
    for gemm in (False, True):
        monkeypatch.setattr(packed_convs_module, "packing_available", lambda *args: gemm)
        with trainer_of(make_config(tiny_model_dir, color_data, tmp_path / f"g{gemm}", output_name="x")) as trainer:
            layers = [m.forward.__self__ for m in trainer.bundle.unet.modules()
                      if isinstance(m, nn.Conv2d) and "forward" in m.__dict__]
            assert all(isinstance(layer, (GemmConv, PointwiseLinear)) for layer in layers) and bool(layers) == gemm
            assert any(isinstance(layer, PointwiseLinear) for layer in layers) == gemm  # the 1x1 layers
            pointers = [layer.module.weight.data_ptr() for layer in layers]
            results[gemm] = first_batch_loss_and_grads(trainer)
            assert [layer.module.weight.data_ptr() for layer in layers] == pointers
    assert_same_loss_and_grads(results[True], results[False])
