import pytest
import torch
import torchvision

from attrlib.models import (
    VGG16_WIDTHS,
    ModelConfig,
    build_model,
    load_torchvision_features_,
    vgg16_bn_voc,
)


@pytest.mark.parametrize("width_div", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [227, 64])
def test_output_and_attribution_shapes(width_div, size):
    model = vgg16_bn_voc(width_div, num_classes=20, input_size=size).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feature = model.forward_features(images)
        logits = model(images)
    assert logits.shape == (2, 20)
    side = {227: 14, 64: 4}[size]
    assert feature.shape == (2, 512 // width_div, side, side)
    assert model.config.attribution_size == side
    assert model.config.feature_size == {227: 7, 64: 2}[size]
    # the attribution layer is the module that produces that feature
    seen = {}
    handle = model.attribution_layer.register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        model(images)
    handle.remove()
    torch.testing.assert_close(seen["o"], feature)
    assert isinstance(model.attribution_layer, torch.nn.ReLU)


def test_classifier_reads_flattened_final_map():
    model = vgg16_bn_voc(1, input_size=227)
    assert model.classifier[-1].in_features == 512 * 7 * 7
    assert isinstance(model.classifier[0], torch.nn.Dropout)


def test_widths_divide():
    assert vgg16_bn_voc(4).config.widths == tuple(w // 4 for w in VGG16_WIDTHS)
    with pytest.raises(ValueError, match="width_div"):
        vgg16_bn_voc(3)
    with pytest.raises(ValueError, match="13 conv widths"):
        ModelConfig(widths=(8, 8))


def test_torchvision_features_load_and_match():
    torch.manual_seed(0)
    reference = torchvision.models.vgg16_bn(weights=None).eval()
    # random BN statistics so the comparison is not trivially zero-centred
    for m in reference.features:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = vgg16_bn_voc(1, input_size=64).eval()
    assert list(ours.features.state_dict()) == list(reference.features.state_dict())
    load_torchvision_features_(ours, reference.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.features(images), reference.features(images))


def test_torchvision_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torchvision_features_(vgg16_bn_voc(1), tmp_path / "nope.pth")
    path = tmp_path / "vgg.pth"
    # the features alone: the loader reads nothing else, and the full file is 0.5 GB of temp disk
    features = {
        k: v
        for k, v in torchvision.models.vgg16_bn(weights=None).state_dict().items()
        if k.startswith("features.")
    }
    torch.save(features, path)
    with pytest.raises(ValueError, match="width_div=1 only"):
        load_torchvision_features_(vgg16_bn_voc(2), path)
    torch.save({"classifier.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no 'features"):
        load_torchvision_features_(vgg16_bn_voc(1), path)


def test_build_model_from_config_roundtrip():
    model = vgg16_bn_voc(8, num_classes=10, input_size=64)
    again = build_model(model.config.to_dict())
    assert again.config == model.config
    pruned = build_model({**model.config.to_dict(), "widths": [5] * 13})
    assert pruned.convs[3].out_channels == 5
