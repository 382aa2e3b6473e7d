"""Cost figures against closed forms: MACs of the VOC VGG, parameter counts, sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from attrlib.cost import count_macs, count_nonzero_params, count_params, model_cost, sparsity
from attrlib.models import vgg16_bn_voc

POOLS_AFTER_CONV = (2, 4, 7, 10, 13)  # 1-based: VGG16's max-pools, written out independently


def closed_form_macs(widths: tuple[int, ...], num_classes: int, size: int) -> int:
    """sum over convs of H*W*Cin*Cout*9 (3x3, padding 1) + the linear layer's in*out."""
    macs, side, c_in = 0, size, 3
    for i, c_out in enumerate(widths, start=1):
        macs += side * side * c_in * c_out * 9
        c_in = c_out
        if i in POOLS_AFTER_CONV:
            side //= 2  # 2x2 max-pool, stride 2, floor
    return macs + c_in * side * side * num_classes


@pytest.mark.parametrize("width_div", [1, 4])
@pytest.mark.parametrize("size", [227, 64])
def test_count_macs_matches_closed_form(width_div: int, size: int) -> None:
    # meta tensors: FlopCounterMode sees the same ops, nothing is computed (fast)
    with torch.device("meta"):
        model = vgg16_bn_voc(width_div, num_classes=20, input_size=size)
    expected = closed_form_macs(model.config.widths, 20, size)
    assert count_macs(model) == expected
    assert count_macs(model, input_size=size) == expected


def test_count_macs_runs_on_real_weights_and_restores_modes() -> None:
    torch.manual_seed(0)
    model = vgg16_bn_voc(16, num_classes=5, input_size=32)
    model.train()
    model.classifier[0].eval()  # mixed flags must come back exactly
    flags = [m.training for m in model.modules()]
    assert count_macs(model) == closed_form_macs(model.config.widths, 5, 32)
    assert [m.training for m in model.modules()] == flags


def test_count_macs_needs_an_input_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 4))
    with pytest.raises(ValueError, match="input_size"):
        count_macs(model)
    assert count_macs(model, input_size=8) == 6 * 6 * 3 * 2 * 9 + 72 * 4


def test_count_params_is_sum_of_numel() -> None:
    with torch.device("meta"):
        model = vgg16_bn_voc(1)
    convs = sum(
        c_out * c_in * 9 + c_out
        for c_in, c_out in zip((3, *model.config.widths[:-1]), model.config.widths, strict=True)
    )
    bns = 2 * sum(model.config.widths)
    linear = 512 * 7 * 7 * 20 + 20
    assert count_params(model) == convs + bns + linear == sum(p.numel() for p in model.parameters())


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return vgg16_bn_voc(16, num_classes=3, input_size=32)


def test_sparsity_after_zeroing_known_weights() -> None:
    model = _small_model()
    convs = model.convs
    total = sum(c.weight.numel() for c in convs)
    assert sparsity(model) == 0.0  # kaiming-normal weights are never exactly zero
    nonzero_before = count_nonzero_params(model)
    with torch.no_grad():
        convs[0].weight.zero_()
        convs[5].weight[:2] = 0.0
        convs[5].bias.zero_()  # biases do not count towards conv sparsity
    zeroed = convs[0].weight.numel() + convs[5].weight[:2].numel()
    assert sparsity(model) == pytest.approx(zeroed / total)
    assert count_nonzero_params(model) == nonzero_before - zeroed
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_sparsity_with_prune_reparametrisation() -> None:
    model = _small_model()
    params_before, nonzero_before = count_params(model), count_nonzero_params(model)
    for conv in model.convs:
        prune.l1_unstructured(conv, "weight", amount=0.3)
    pruned = sum(int((c.weight_mask == 0).sum()) for c in model.convs)
    total = sum(c.weight.numel() for c in model.convs)
    assert 0.29 < pruned / total < 0.31
    assert sparsity(model) == pytest.approx(pruned / total)
    assert count_nonzero_params(model) == nonzero_before - pruned  # read through the masks
    assert count_params(model) == params_before  # weight_orig is stored in full
    cost = model_cost(model)
    assert cost == {
        "params": params_before,
        "nonzero_params": nonzero_before - pruned,
        "macs": closed_form_macs(model.config.widths, 3, 32),
        "sparsity": pytest.approx(pruned / total),
        "weight_bytes": 4 * params_before,  # float32, zeros stored in full
    }
    for conv in model.convs:  # making the pruning permanent changes nothing
        prune.remove(conv, "weight")
    assert sparsity(model) == pytest.approx(pruned / total)
    assert count_nonzero_params(model) == nonzero_before - pruned
