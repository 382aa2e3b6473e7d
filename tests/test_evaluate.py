"""Localization evaluation: the shared trunk forward changes nothing in the table."""

from __future__ import annotations

from pathlib import Path

import torch

import attrlib.evaluate
from attrlib.data import VOCLocalization, load_classes
from attrlib.evaluate import DEFAULT_METHODS, localization_table
from attrlib.models import vgg16_bn_voc


def test_forward_is_the_head_of_the_trunk_feature() -> None:
    """`localization_table` takes its logits from `head(forward_features(x))`: exactly `model(x)`."""
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=5, input_size=48).eval()
    images = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model.head(model.forward_features(images)), model(images))


def test_table_equals_the_image_path(synth_root: Path, monkeypatch) -> None:
    """Maps from the batch's trunk feature score like maps recomputed from the pair images."""
    classes = load_classes(synth_root)
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=len(classes), input_size=32).double().eval()
    items = VOCLocalization(synth_root, "val", classes, size=32)
    dataset = [(image.double(), labels, mask) for image, labels, mask in items]  # float64

    def table() -> object:
        out, _ = localization_table(
            model, dataset, DEFAULT_METHODS, batch_size=3, progress=False, require_prediction=False
        )
        return out

    shared = table()
    real_attribute = attrlib.evaluate.attribute

    def from_images(model, images, classes, method, feature=None):
        return real_attribute(model, images, classes, method)  # the trunk runs again

    monkeypatch.setattr(attrlib.evaluate, "attribute", from_images)
    recomputed = table()
    assert len(shared) > 0
    assert shared[["image", "class", "method"]].equals(recomputed[["image", "class", "method"]])
    assert (shared["auc"] - recomputed["auc"]).abs().max() < 1e-9
    assert shared["pointing"].equals(recomputed["pointing"])
