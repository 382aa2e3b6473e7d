"""Mask handling against torch's own reparametrisation: current weights after an optimiser
step, each parameter counted once, permanent copies that compute what the masked net does.

Masks are made with `torch.nn.utils.prune` directly: `attrlib.masks` sits below
`attrlib.prune` and must work for any mask torch can attach."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from attrlib.masks import (
    effective_parameters,
    effective_weight,
    has_masks,
    make_permanent_,
    permanent_copy,
)

from nets import random_vgg

NUM_CLASSES = 5
SIZE = 32


def _masked(seed: int = 0) -> nn.Module:
    """A tiny VGG with half of every conv weight and a quarter of the classifier masked."""
    model = random_vgg(NUM_CLASSES, SIZE, seed)
    torch.manual_seed(seed)
    for conv in model.convs:
        prune.random_unstructured(conv, "weight", amount=0.5)
    prune.l1_unstructured(model.classifier[-1], "weight", amount=0.25)
    return model


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _train_step(model: nn.Module) -> None:
    """One SGD step: afterwards every masked module's derived `weight` is stale."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = F.multilabel_soft_margin_loss(model(_images()), torch.ones(3, NUM_CLASSES))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_effective_weight_is_current_after_an_optimiser_step() -> None:
    model = _masked().train()
    _train_step(model)
    conv = model.convs[0]
    current = conv.weight_orig.detach() * conv.weight_mask
    assert not torch.equal(conv.weight, current)  # torch's attribute waits for a forward
    assert torch.equal(effective_weight(conv), current)
    assert not effective_weight(conv).requires_grad
    assert torch.equal(effective_weight(conv, "bias"), conv.bias.detach())  # unmasked


def test_effective_parameters_name_each_parameter_once() -> None:
    model = _masked()
    plain = random_vgg(NUM_CLASSES, SIZE, 0)
    got = [(module, name) for module, name, _ in effective_parameters(model)]
    names = {id(m): prefix for prefix, m in model.named_modules()}
    qualified = [f"{names[id(m)]}.{n}" for m, n in got]
    assert sorted(qualified) == sorted(n for n, _ in plain.named_parameters())  # no `_orig`
    for module, name, tensor in effective_parameters(model):
        if hasattr(module, name + "_mask"):
            expected = getattr(module, name + "_orig") * getattr(module, name + "_mask")
            assert torch.equal(tensor, expected)


def test_permanent_copy_of_an_unmasked_model_is_the_model() -> None:
    model = random_vgg(NUM_CLASSES, SIZE, 0)
    assert permanent_copy(model) is model


def test_permanent_copy_computes_what_the_masked_model_does() -> None:
    model = _masked().train()
    _train_step(model)  # stale derived weights: the copy must read orig * mask
    model.eval()
    with torch.no_grad():
        expected = model(_images())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    copy = permanent_copy(model)
    assert copy is not model and not has_masks(copy) and not copy.training
    assert not any(k.endswith(("_orig", "_mask")) for k in copy.state_dict())
    assert all(isinstance(conv.weight, nn.Parameter) for conv in copy.convs)
    with torch.no_grad():
        assert torch.equal(copy(_images()), expected)
    assert has_masks(model)  # the original keeps its masks and values
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert permanent_copy(model.train()).training


def test_make_permanent_writes_orig_times_mask() -> None:
    model = _masked()
    expected = [effective_weight(conv) for conv in model.convs]
    make_permanent_(model)
    assert not has_masks(model)
    for conv, weight in zip(model.convs, expected, strict=True):
        assert torch.equal(conv.weight.detach(), weight)
