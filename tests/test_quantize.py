"""Fake quantization (torch's observers and rounding ops), the head-only SWA map through it,
quantized checkpoints, and the int8 CPU network that reproduces an 8-bit one."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MinMaxObserver, PerChannelMinMaxObserver

import attrlib.stages as stages
from attrlib.attribution import FEATURE_METHODS, METHODS, attribute
from attrlib.config import EvalConfig, QuantizeConfig, TeacherConfig
from attrlib.distill import attribution_maps, swa_map_full_backward
from attrlib.engine import load_model, make_checkpoint
from attrlib.io import save_torch_atomic
from attrlib.quantize import (
    QuantSpec,
    calibrate_,
    plain_weights,
    quantization_of,
    quantize_,
    rounded_float_copy,
    stored_bytes,
    to_int8,
    weight_bytes,
)
from tests.nets import random_resnet, random_vgg

SIZE = 32
NUM_CLASSES = 5


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def quantized_vgg(bits: int = 8, seed: int = 0, edge_bits: int | None = 8) -> nn.Module:
    spec = QuantSpec(weight_bits=bits, edge_bits=edge_bits)
    model = quantize_(random_vgg(NUM_CLASSES, SIZE, seed), spec)
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


@pytest.mark.parametrize("family", ["vgg", "resnet"])
def test_ebp_of_a_quantized_network_uses_its_rounded_weights_positive_part(family):
    """zennit's rules swap the parameters `named_parameters` lists; a parametrized weight is
    not among them, so EBP on the quantized network itself would keep its signed weights
    (on a global-average-pooled head that is Grad-CAM's map, not EBP's)."""
    build = random_vgg if family == "vgg" else random_resnet
    model = quantize_(build(NUM_CLASSES, SIZE, 0), QuantSpec(weight_bits=2, edge_bits=2))
    model = calibrate_(model, [images(8, seed=2)]).eval()
    rounded = rounded_float_copy(model).eval()  # the same numbers, plain float parameters
    x = images(6)
    classes = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        feature = model.forward_features(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = FEATURE_METHODS.get("ebp")(model, feature, classes)
    torch.testing.assert_close(maps, FEATURE_METHODS.get("ebp")(rounded, feature, classes))
    assert maps.abs().max() > 0
    copy_ = plain_weights(model)
    assert copy_ is not model and plain_weights(rounded) is rounded
    assert quantization_of(model) is not None  # the network itself stays quantized
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(copy_(x), model(x), rtol=0, atol=0)


def test_a_quantized_checkpoint_rebuilds_the_same_network(tmp_path):
    model = quantized_vgg(4).eval()
    x = images(4)
    path = tmp_path / "best.pt"
    save_torch_atomic(path, make_checkpoint(model, tuple(f"c{i}" for i in range(NUM_CLASSES))))
    loaded, ckpt = load_model(path)
    assert ckpt["quantization"] == {"weight_bits": 4, "act_bits": 8, "edge_bits": 8}
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
    with pytest.raises(ValueError, match="edge_bits must be in 2..8, got 9"):
        QuantSpec(edge_bits=9)
    with pytest.raises(ValueError, match="unknown fields"):
        QuantSpec.from_dict({"weight_bits": 8, "bits": 8})
    with pytest.raises(ValueError, match="quantized already"):
        quantize_(quantized_vgg(8), QuantSpec(8))
    with pytest.raises(ValueError, match="not quantized"):
        calibrate_(random_vgg(NUM_CLASSES, SIZE, 0), [images(2)])


def test_the_first_conv_and_the_last_linear_layer_keep_edge_bits():
    def levels(module):  # distinct steps of the first output channel's weights
        return len(torch.unique(module.weight[0].detach()))

    edged = quantized_vgg(2)
    assert edged.features[0].parametrizations.weight[0].bits == 8
    assert edged.classifier[-1].parametrizations.weight[0].bits == 8
    assert levels(edged.features[0]) > 3
    for conv in edged.convs[1:]:
        assert conv.parametrizations.weight[0].bits == 2 and levels(conv) <= 3
    plain = quantized_vgg(2, edge_bits=None)
    assert plain.features[0].parametrizations.weight[0].bits == 2
    assert plain.classifier[-1].parametrizations.weight[0].bits == 2


def test_weight_bytes_count_the_quantized_widths():
    float_model = random_vgg(NUM_CLASSES, SIZE, 0)
    n = sum(p.numel() for p in float_model.parameters())
    assert weight_bytes(float_model) == 4 * n
    model = quantized_vgg(4, edge_bits=None)
    weights = [
        m.parametrizations.weight.original
        for m in model.modules()
        if hasattr(m, "parametrizations")
    ]
    rest = n - sum(w.numel() for w in weights)
    bits = sum(w.numel() * 4 + w.shape[0] * 32 for w in weights) + 32 * rest
    assert weight_bytes(model) == (bits + 7) // 8
    assert weight_bytes(model) < 0.2 * weight_bytes(float_model)


# ---------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def teacher(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    stages.train_teacher(
        TeacherConfig(profile="smoke", data_root=str(synth_root), out_dir=str(out), device="cpu")
    )
    return out / "best.pt"


def _quantize_config(synth_root, teacher, out, **fields) -> QuantizeConfig:
    return QuantizeConfig(
        profile="smoke",
        data_root=str(synth_root),
        model=str(teacher),
        out_dir=str(out),
        device="cpu",
        **{"epochs": 2, **fields},
    )


def _history(out_dir):
    history = json.loads((out_dir / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_quantization_aware_fine_tuning_resumes_bit_identically(
    synth_root, teacher, tmp_path, monkeypatch
):
    cfg = _quantize_config(synth_root, teacher, tmp_path / "full", bits=4, matching="swa")
    model, _ = stages.quantize(cfg)
    assert quantization_of(model) == QuantSpec(4, 8)
    real_fit = stages.fit

    def interrupted(*args, **kwargs):  # stops once the first epoch is saved
        def stop(epoch, record):
            if epoch == 1:
                raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch_end": stop})

    cut = _quantize_config(synth_root, teacher, tmp_path / "cut", bits=4, matching="swa")
    monkeypatch.setattr(stages, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stages.quantize(cut)
    monkeypatch.setattr(stages, "fit", real_fit)
    stopped = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert len(stopped["history"]) == 1 and stopped["finished"] is False
    stages.quantize(cut)
    assert _history(tmp_path / "cut") == _history(tmp_path / "full")
    a = load_model(tmp_path / "full" / "best.pt")[1]["model_state"]
    b = load_model(tmp_path / "cut" / "best.pt")[1]["model_state"]
    assert any("activation_fake_quant" in k or "output_fake_quant" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_quantized_run_is_evaluated_by_every_attribution_method(synth_root, teacher, tmp_path):
    cfg = _quantize_config(synth_root, teacher, tmp_path / "w8", epochs=1)
    model, _ = stages.quantize(cfg)
    summary = stages.evaluate_checkpoint(
        EvalConfig(
            profile="smoke",
            data_root=str(synth_root),
            checkpoint=str(tmp_path / "w8" / "best.pt"),
            teacher=str(teacher),
            device="cpu",
            faith_pairs=0,
        ),
        progress=False,
    )
    assert "refused_methods" not in summary
    assert summary["weight_bytes"] < 0.3 * 4 * summary["params"]
    loaded = load_model(tmp_path / "w8" / "best.pt")[0].eval()
    x = images(4)
    for method in METHODS:  # every rule runs through the rounded network
        maps = attribute(loaded, x, torch.arange(4) % NUM_CLASSES, method)
        assert maps.shape == (4, SIZE, SIZE) and torch.isfinite(maps).all(), method
    report = stages.quantized_deployment(cfg, model)
    assert report["bytes_int8"] < 0.4 * report["bytes_float"]
    assert abs(report["map_class_int8"] - report["map_class_fake_quantized"]) < 0.02
    assert report["max_logit_gap_relative"] < 0.05
    lower = _quantize_config(synth_root, teacher, tmp_path / "w4", epochs=1, bits=4)
    assert stages.quantized_deployment(lower, model) is None


def test_quantize_config_names_its_fields_and_its_run():
    cfg = QuantizeConfig(profile="smoke", bits=4, matching="sswa", seed=2)
    assert cfg.run_name() == "w4-sswa-s2"
    assert cfg.recipe.epochs == 1  # the smoke profile's quantize recipe
    with pytest.raises(ValueError, match="bits must be in 2..8, got 9"):
        QuantizeConfig(profile="smoke", bits=9)
    with pytest.raises(ValueError, match="calibration_batches must be >= 1"):
        QuantizeConfig(profile="smoke", calibration_batches=0)


def test_the_residual_walk_reads_a_quantized_resnets_rounded_activations():
    """LRP and RAP walk a ResNet from one recorded forward (propagation.record_residual):
    on a quantized network it must be the quantized forward, not the float one."""
    from attrlib.attribution.propagation import record_residual

    spec = QuantSpec(weight_bits=3, act_bits=3, edge_bits=3)
    model = random_resnet(NUM_CLASSES, SIZE, 0).eval()
    x = images(3)
    with torch.no_grad():
        float_logits = model(x)
    model = calibrate_(quantize_(model, spec), [images(8, seed=10)]).eval()
    record = record_residual(model, x)
    with torch.no_grad():
        assert torch.equal(record.features, model.forward_features(x))
        logits = model(x)
        assert torch.equal(model.fc(record.pooled), logits)
    assert (logits - float_logits).abs().max() > 0.05  # the rounding moved the logits
    for method in ("lrp", "rap"):
        maps = attribute(model, x, torch.tensor([0, 2, 4]), method)
        assert maps.shape == (3, SIZE, SIZE) and torch.isfinite(maps).all()
