"""The correctness half of `benchmarks/evaluate.py`: the authors' loop and the batched path agree.

No timing here: the benchmark times; this checks that both paths score the same (image, class)
pairs with equal AUC and pointing, for every registered method, on a tiny model and data set,
and that the re-created Grad-CAM and EBP procedures of the authors give `attribute`'s maps with
their cost structure (forwards and backwards per image and class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from benchmod import load_benchmark
from torch import nn

import attrlib.evaluate
from attrlib.attribution import METHODS, attribute
from attrlib.data import VOCLocalization, load_classes
from attrlib.evaluate import localization_table
from attrlib.models import eval_mode, vgg16_bn_voc

from nets import random_vgg

pytest.importorskip("sklearn")


bench = load_benchmark("evaluate.py")


@pytest.fixture(scope="module")
def tiny_setup(synth_root: Path):
    classes = load_classes(synth_root)
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=len(classes), input_size=32).eval()
    dataset = VOCLocalization(synth_root, "val", classes, size=32)
    return model, dataset


@pytest.mark.parametrize("require_prediction", [False, True])
def test_authors_loop_equals_batched_path(tiny_setup, require_prediction: bool) -> None:
    """Same pairs, same maps up to rounding, same scores on the same maps (float64)."""
    model, dataset = tiny_setup
    methods = METHODS.names()  # every registered method, new ones included
    check = bench.check_equal_scores(
        model, dataset, methods, batch_size=3, require_prediction=require_prediction
    )  # raises AssertionError on any difference beyond the tolerances
    assert check["maps"]["max_rel_diff"] <= bench.MAP_TOLERANCE
    assert check["same_maps"]["auc_max"] <= bench.TOLERANCE
    assert check["same_maps"]["pointing_max"] == 0.0
    # end to end only last-bit map differences separate the paths: a few tied pixels at most
    assert check["end_to_end"]["auc_max"] < 1e-3


def test_check_catches_a_wrong_batched_path(tiny_setup, monkeypatch) -> None:
    """A batched path that scores each row with another row's class must fail the check."""
    model, dataset = tiny_setup
    real_attribute = attrlib.evaluate.attribute

    def swapped(model, images, classes, method, **kwargs):
        return real_attribute(model, images, classes.roll(1), method, **kwargs)

    monkeypatch.setattr(attrlib.evaluate, "attribute", swapped)  # the library's call only
    with pytest.raises(AssertionError, match="differs"):
        bench.check_equal_scores(
            model, dataset, ["ebp", "lrp"], batch_size=4, require_prediction=False
        )


def test_pair_selection_matches_select_pairs(tiny_setup) -> None:
    model, dataset = tiny_setup
    batched, counts = localization_table(
        model, dataset, ["gradcam"], batch_size=4, progress=False, require_prediction=True
    )
    pairs = bench.authors_predict(model, dataset, require_prediction=True)
    assert pairs == counts["pairs_scored"] == len(batched)
    every_gt = bench.authors_predict(model, dataset, require_prediction=False)
    assert every_gt >= pairs and every_gt > 0
    # the authors' loop maps every scorable ground-truth pair, predicted or not
    mapped = list(bench.authors_maps(model, dataset, "gradcam"))
    assert len(mapped) == every_gt
    assert sum(predicted for *_, predicted in mapped) == pairs


def test_compare_tables_rejects_different_scores(tiny_setup) -> None:
    model, dataset = tiny_setup
    table = bench.authors_localization(model, dataset, "gradcam", require_prediction=False)
    assert len(table) > 0
    shifted = table.assign(auc=table["auc"] + 1e-3)
    with pytest.raises(AssertionError, match="auc differs"):
        bench.compare_tables(table, shifted)
    with pytest.raises(AssertionError, match="different pairs"):
        bench.compare_tables(table, table.iloc[1:])


# ---------------------------------------------------------------- the authors' procedures


def random_model() -> nn.Module:
    """A float64 width/16 VGG at 48 px (3x3 attribution layer) with random BN and biases."""
    return random_vgg(num_classes=5, input_size=48, seed=3).double().eval()


def count_calls(module: nn.Module) -> tuple[list[int], object]:
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += 1

    return calls, module.register_forward_hook(hook)


@pytest.mark.parametrize("method", ["gradcam", "ebp"])
def test_authors_layer_methods_equal_attribute(method: str) -> None:
    """Their Grad-CAM / EBP procedure gives `attribute`'s maps, at their cost structure."""
    model = random_model()
    image = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(4)).double()
    targets = [0, 3, 1, 4, 2]  # every class, unordered
    calls, handle = count_calls(model.features[0])
    with (
        eval_mode(model),
        bench.parameters_require_grad(model),
        bench.authors_explainer(model, method) as explain,
    ):
        logits, maps = explain(image, targets)
        first_conv_grad = model.features[0].weight.grad
    handle.remove()
    if method == "gradcam":  # one forward per image, a full backward per class
        assert calls[0] == 1
        assert first_conv_grad is not None and first_conv_grad.abs().sum() > 0
    else:  # their explainer's own forward per class, no parameter gradients
        assert calls[0] == 1 + len(targets)
        assert first_conv_grad is None
    with torch.no_grad():
        torch.testing.assert_close(logits, model(image)[0], rtol=0, atol=0)
    expected = attribute(
        model, image.expand(len(targets), -1, -1, -1), torch.tensor(targets), method
    )  # (5, 48, 48)
    assert (expected.flatten(1).amax(1) > 0).sum() >= 3  # mostly non-degenerate maps
    for heatmap, one in zip(maps, expected, strict=True):
        np.testing.assert_allclose(heatmap, one.numpy(), rtol=1e-12, atol=1e-12 * one.abs().max())
    # the run leaves the model as it found it: no hooks, no gradients, no grad flags changed
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
