"""Localization evaluation: the shared trunk forward changes nothing in the table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attrlib.evaluate
from attrlib.attribution import FEATURE_METHODS, attribute
from attrlib.data import VOCLocalization, load_classes
from attrlib.evaluate import (
    checkpoint_labels,
    localization_table,
    trunk_forward,
)
from attrlib.models import vgg16_bn_voc


def test_forward_is_the_head_of_the_trunk_feature() -> None:
    """`localization_table` takes its logits from `head(forward_features(x))`: exactly `model(x)`."""
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=5, input_size=48).eval()
    images = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model.head(model.forward_features(images)), model(images))


def test_trunk_forward_channels_last_equals_the_plain_forward() -> None:
    """The channels-last prediction pass gives the NCHW feature, logits and maps up to rounding."""
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=5, input_size=48).train()
    images = torch.randn(6, 3, 48, 48)
    feature, logits = trunk_forward(model, images)
    assert model.training  # eval mode inside only
    assert feature.is_contiguous(memory_format=torch.channels_last)
    assert images.is_contiguous()  # the caller's images keep their layout
    model.eval()
    with torch.no_grad():
        plain = model.forward_features(images)
        torch.testing.assert_close(feature, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, model(images), rtol=1e-5, atol=1e-5)
    classes = torch.tensor([0, 1, 2, 3, 4, 0])
    for method in FEATURE_METHODS.names():
        ours = attribute(model, images, classes, method, feature=feature)
        expected = attribute(model, images, classes, method, feature=plain)
        assert expected.abs().max() > 0
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_table_equals_the_image_path(synth_root: Path, monkeypatch) -> None:
    """Maps from the batch's trunk feature score like maps recomputed from the pair images."""
    classes = load_classes(synth_root)
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=len(classes), input_size=32).double().eval()
    items = VOCLocalization(synth_root, "val", classes, size=32)
    dataset = [(image.double(), labels, mask) for image, labels, mask in items]  # float64

    def table() -> object:
        out, _ = localization_table(
            model, dataset, None, batch_size=3, progress=False, require_prediction=False
        )
        return out

    shared = table()
    real_attribute = attrlib.evaluate.attribute

    def from_images(model, images, classes, method, feature=None):
        # the trunk runs again, in the layout of `trunk_forward` (NCHW rounds differently,
        # enough to break ties between pixels of these tiny maps)
        images = images.contiguous(memory_format=torch.channels_last)
        return real_attribute(model, images, classes, method)

    monkeypatch.setattr(attrlib.evaluate, "attribute", from_images)
    recomputed = table()
    assert len(shared) > 0
    assert shared[["image", "class", "method"]].equals(recomputed[["image", "class", "method"]])
    assert (shared["auc"] - recomputed["auc"]).abs().max() < 1e-9
    assert shared["pointing"].equals(recomputed["pointing"])


def test_checkpoint_labels_are_unique_folders_below_the_common_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "default"
    paths = [
        runs / "teacher" / "best.pt",
        runs / "prune_iterative" / "naive-s0" / "iter_08" / "best.pt",
        runs / "prune_iterative" / "swa-s0" / "iter_08" / "best.pt",
    ]
    assert checkpoint_labels([str(p) for p in paths]) == [
        "teacher",
        "prune_iterative/naive-s0/iter_08",
        "prune_iterative/swa-s0/iter_08",
    ]
    assert checkpoint_labels([str(paths[1])]) == ["iter_08"]
    with pytest.raises(ValueError, match="share a folder"):
        checkpoint_labels([str(paths[0]), str(runs / "teacher" / "last.pt")])
