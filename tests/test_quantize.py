"""Fake quantization (torch's observers and rounding ops), the head-only SWA map through it,
quantized checkpoints, and the int8 CPU network that reproduces an 8-bit one."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MinMaxObserver, PerChannelMinMaxObserver

from attrlib.distill import attribution_maps, swa_map_full_backward
from attrlib.engine import load_model, make_checkpoint
from attrlib.io import save_torch_atomic
from attrlib.quantize import (
    QuantSpec,
    calibrate_,
    quantization_of,
    quantize_,
    stored_bytes,
    to_int8,
    weight_bytes,
)
from tests.nets import random_resnet, random_vgg

SIZE = 32
NUM_CLASSES = 5


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def quantized_vgg(bits: int = 8, seed: int = 0) -> nn.Module:
    model = quantize_(random_vgg(NUM_CLASSES, SIZE, seed), QuantSpec(weight_bits=bits))
    return calibrate_(model, [images(8, seed=10), images(8, seed=11)])


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_weights_round_like_torchs_fake_quantize_module_on_a_narrow_symmetric_grid(bits):
    model = quantized_vgg(bits)
    conv = model.features[3]
    raw = conv.parametrizations.weight.original.detach()
    q = 2 ** (bits - 1) - 1
    reference = FakeQuantize(
        observer=PerChannelMinMaxObserver,
        quant_min=-q,
        quant_max=q,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    torch.testing.assert_close(conv.weight, reference(raw), rtol=0, atol=0)
    scale = raw.abs().amax(dim=(1, 2, 3)) / q  # (C_out,)
    steps = conv.weight / scale[:, None, None, None]
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-4)  # on the grid
    assert steps.abs().amax().round().item() == q  # the largest weight keeps its value
    assert 2 * q + 1 >= len(torch.unique(steps[0].round()))


def test_activations_round_to_the_calibrated_range_and_stay_frozen_while_training():
    model = quantize_(random_vgg(NUM_CLASSES, SIZE, 0), QuantSpec(8, act_bits=4))
    calibration = images(16, seed=3)
    observer = MinMaxObserver(quant_min=0, quant_max=15, dtype=torch.quint8)
    relu = model.features[2]
    seen = {}
    hook = model.features[0].register_forward_hook(lambda m, i, o: seen.update(conv=o))
    calibrate_(model, [calibration])
    hook.remove()
    with torch.no_grad():
        observer(model.features[1].eval()(seen["conv"]).relu())
    scale, zero_point = observer.calculate_qparams()
    torch.testing.assert_close(relu.output_fake_quant.scale, scale)
    assert int(relu.output_fake_quant.zero_point) == int(zero_point) == 0
    model.train()
    model(images(4, seed=5) * 10)  # far outside the calibration range
    torch.testing.assert_close(relu.output_fake_quant.scale, scale)
    out = relu(torch.rand(2, 8, 4, 4) * 100)
    levels = torch.unique(out)
    assert len(levels) <= 16 and out.max() <= 15 * scale + 1e-6


@pytest.mark.parametrize("family", ["vgg", "resnet"])
def test_head_only_swa_map_equals_the_full_second_backward_through_fake_quantization(family):
    build = random_vgg if family == "vgg" else random_resnet
    model = quantize_(build(NUM_CLASSES, SIZE, 0), QuantSpec(weight_bits=4))
    calibrate_(model, [images(8, seed=2)])
    for m in model.modules():  # dropout would draw different masks in the two passes
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = images(6)
    classes = torch.randint(0, NUM_CLASSES, (6,), generator=torch.Generator().manual_seed(4))
    head_only = attribution_maps(model, x, classes, "swa", create_graph=True)
    full = swa_map_full_backward(model, x, classes)
    torch.testing.assert_close(head_only, full, rtol=1e-5, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    grads_a = torch.autograd.grad(head_only.pow(2).sum(), params, allow_unused=True)
    grads_b = torch.autograd.grad(full.pow(2).sum(), params, allow_unused=True)
    compared = 0
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            compared += 1
    assert compared > 10


def test_a_quantized_checkpoint_rebuilds_the_same_network(tmp_path):
    model = quantized_vgg(4).eval()
    x = images(4)
    path = tmp_path / "best.pt"
    save_torch_atomic(path, make_checkpoint(model, tuple(f"c{i}" for i in range(NUM_CLASSES))))
    loaded, ckpt = load_model(path)
    assert ckpt["quantization"] == {"weight_bits": 4, "act_bits": 8}
    assert quantization_of(loaded) == QuantSpec(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    float_ckpt = make_checkpoint(random_vgg(NUM_CLASSES, SIZE, 0), ("a",))
    assert "quantization" not in float_ckpt


def test_int8_network_reproduces_the_fake_quantized_one_and_is_smaller():
    model = quantized_vgg(8).eval()
    int8 = to_int8(model)
    x = images(16, seed=7)
    with torch.no_grad():
        expected = model(x)
        got = int8(x)
    # requantizing between layers rounds a few values the other way: stated tolerance
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
    assert stored_bytes(int8) < 0.4 * stored_bytes(random_vgg(NUM_CLASSES, SIZE, 0))
    # the fake-quantized network is left as it was
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_int8_conversion_refuses_lower_widths_and_other_families():
    with pytest.raises(ValueError, match="8-bit"):
        to_int8(quantized_vgg(4))
    resnet = quantize_(random_resnet(NUM_CLASSES, SIZE, 0), QuantSpec(8))
    with pytest.raises(ValueError, match="vgg16_bn family only, not resnet"):
        to_int8(resnet)
    with pytest.raises(ValueError, match="8-bit quantized network, got None"):
        to_int8(random_vgg(NUM_CLASSES, SIZE, 0))


def test_bad_specs_and_double_quantization_are_refused():
    with pytest.raises(ValueError, match="weight_bits must be in 2..8, got 1"):
        QuantSpec(weight_bits=1)
    with pytest.raises(ValueError, match="act_bits must be in 2..8, got 16"):
        QuantSpec(act_bits=16)
    with pytest.raises(ValueError, match="unknown fields"):
        QuantSpec.from_dict({"weight_bits": 8, "bits": 8})
    with pytest.raises(ValueError, match="quantized already"):
        quantize_(quantized_vgg(8), QuantSpec(8))
    with pytest.raises(ValueError, match="not quantized"):
        calibrate_(random_vgg(NUM_CLASSES, SIZE, 0), [images(2)])


def test_weight_bytes_count_the_quantized_widths():
    float_model = random_vgg(NUM_CLASSES, SIZE, 0)
    n = sum(p.numel() for p in float_model.parameters())
    assert weight_bytes(float_model) == 4 * n
    model = quantized_vgg(4)
    weights = [
        m.parametrizations.weight.original
        for m in model.modules()
        if hasattr(m, "parametrizations")
    ]
    rest = n - sum(w.numel() for w in weights)
    bits = sum(w.numel() * 4 + w.shape[0] * 32 for w in weights) + 32 * rest
    assert weight_bytes(model) == (bits + 7) // 8
    assert weight_bytes(model) < 0.2 * weight_bytes(float_model)
