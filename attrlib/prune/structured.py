"""Structured pruning: whole filters cut out, giving a physically smaller network.

The architecture is data, so a pruned network is just another config: `structured_prune`
scores each prunable conv's filters (`criteria.STRUCTURED_CRITERIA`), builds the network
with the kept widths and copies the kept slices of every tensor into it.
- VGG16-BN: any conv (the paper's schedule: the first and the last six), its batch norm, the
  next conv's inputs and, after the last conv, the classifier's columns.
- ResNet: the inner width of each residual block (its first conv, batch norm, and the second
  conv's inputs), as Li et al. prune ResNets. The stage widths are tied through the residual
  sums (a block's output is added to its input), so cutting one would mean cutting every
  tensor of the sum together; block-internal pruning needs no dependency graph: the surgery
  is three slices per block (hence no Torch-Pruning here).

Paper: Park et al. (2020), one-shot structured pruning, after Li et al. (2017) L1-norm
filter pruning.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from attrlib.masks import effective_weight, permanent_copy
from attrlib.models import VGGVOC, build_model
from attrlib.prune.criteria import STRUCTURED_CRITERIA, lookup
from attrlib.prune.schedule import check_rate, conv_names, resolve_rates
from attrlib.resnet import ResNetVOC


def num_kept(c_out: int, rate: float) -> int:
    """Filters kept out of `c_out` at prune rate `rate`: `max(1, round((1 - rate) * c_out))`.

    Python's `round` (half to even), the rule `torch.nn.utils.prune` uses for amounts; at
    least one filter so that the network stays connected.
    Deviation: the authors' code keeps `int((1 - rate) * c_out)` (floor); the two differ by
    at most one filter per layer (e.g. 64 filters at rate 0.3: 45 here, 44 there). `round`
    is the count closest to the requested rate and, unlike `ceil`, does not jump on
    floating-point noise such as `(1 - 0.7) * 10 = 3.0000000000000004`.
    """
    check_rate(rate)
    return max(1, round((1.0 - rate) * c_out))


def keep_indices(conv: nn.Conv2d, rate: float, criterion: str = "l1") -> torch.Tensor:
    """Indices of the filters of `conv` that survive pruning at `rate`.

    Args:
        conv: the layer to score, weights `(C_out, C_in, k, k)`; masked weights (unstructured
            pruning) are scored as zeros.
        rate: fraction of filters to remove, in [0, 1).
        criterion: name in `STRUCTURED_CRITERIA`.
    Returns:
        `(n_keep,)` int64 indices on the weights' device, sorted ascending, of the `n_keep =
        num_kept(C_out, rate)` filters with the largest scores; ties go to the lower index
        (a stable sort), so the choice is deterministic.
    Raises:
        ValueError: an unknown criterion, or one whose scores are not `(C_out,)`.
    """
    score_fn = lookup(STRUCTURED_CRITERIA, criterion)
    n_keep = num_kept(conv.out_channels, rate)
    scores = score_fn(effective_weight(conv))  # (C_out,)
    if scores.shape != (conv.out_channels,):
        raise ValueError(
            f"criterion {criterion!r} returned shape {tuple(scores.shape)}, "
            f"expected ({conv.out_channels},)"
        )
    order = torch.sort(scores, descending=True, stable=True).indices  # (C_out,)
    return order[:n_keep].sort().values  # (n_keep,)


@torch.no_grad()
def structured_prune(
    model: nn.Module, rates: dict[str, float] | float, criterion: str = "l1"
) -> nn.Module:
    """A new, physically smaller copy of `model` with the lowest-scoring filters removed.

    For every conv with rate r, keep `num_kept(C_out, r)` filters (`keep_indices`); slice its
    weights and bias, its batch norm (weight, bias, running_mean, running_var,
    num_batches_tracked), the next conv's input channels and, after the last conv, the
    classifier's input columns: the classifier reads the flattened `(C, s, s)` map, so a kept
    channel c keeps the `s * s` columns `c * s * s ... (c + 1) * s * s - 1`.

    Args:
        model: the network to prune; not modified.
        rates: `{conv name: rate in [0, 1)}` (missing convs: 0), or a float p meaning
            `spec_rates(model, p)`.
        criterion: name in `STRUCTURED_CRITERIA` ("l1": the paper's filter L1 norm).
    Returns:
        `build_model(config with the new widths)` holding the kept weights, on the model's
        device, in the model's training mode. Its `ModelConfig` stores the widths, so
        checkpoints rebuild it with `attrlib.engine.load_model`. In eval mode its outputs
        equal the original's with the removed channels zeroed after their ReLU.
    Paper: Park et al. (2020) one-shot structured pruning (L1 filter ranking, channels
        removed physically). Deviation: filter counts use `round`, not `int` (`num_kept`).
        Masked (unstructurally pruned) weights are copied as zeros; the result has no masks.
    Raises:
        ValueError: a rate outside [0, 1) (names the layer), an unknown conv name or an
            unknown criterion (lists the registered ones).
    """
    if isinstance(model, ResNetVOC):
        return _prune_resnet_blocks(model, rates, criterion)
    if not isinstance(model, VGGVOC):
        family = getattr(model, "architecture", type(model).__name__)
        raise NotImplementedError(
            f"structured pruning cuts vgg16_bn and resnet networks; a {family} network needs "
            "its own surgery here (iterative unstructured pruning works on any family)"
        )
    per_conv = resolve_rates(model, rates)
    lookup(STRUCTURED_CRITERIA, criterion)  # fail before any work
    keeps = [
        keep_indices(conv, per_conv[name], criterion)
        for name, conv in zip(conv_names(model), model.convs, strict=True)
    ]
    widths = tuple(len(keep) for keep in keeps)
    param = next(model.parameters())
    pruned = build_model(dataclasses.replace(model.config, widths=widths))
    pruned.to(device=param.device, dtype=param.dtype)

    keep_in = torch.arange(3, device=param.device)  # RGB input: nothing to remove
    conv_id = -1
    for old, new in zip(model.features, pruned.features, strict=True):
        if isinstance(old, nn.Conv2d):
            conv_id += 1
            keep_out = keeps[conv_id]
            weight = effective_weight(old)[keep_out][:, keep_in]  # (C_out', C_in', k, k)
            new.weight.copy_(weight)
            new.bias.copy_(effective_weight(old, "bias")[keep_out])  # (C_out',)
            keep_in = keep_out
        elif isinstance(old, nn.BatchNorm2d):
            for name in ("weight", "bias"):
                getattr(new, name).copy_(effective_weight(old, name)[keep_in])  # (C',)
            new.running_mean.copy_(old.running_mean[keep_in])  # (C',)
            new.running_var.copy_(old.running_var[keep_in])  # (C',)
            new.num_batches_tracked.copy_(old.num_batches_tracked)

    side = model.config.feature_size
    offsets = torch.arange(side * side, device=param.device)  # (s*s,)
    columns = (keep_in[:, None] * side * side + offsets[None, :]).reshape(-1)  # (C'*s*s,)
    old_fc, new_fc = model.classifier[-1], pruned.classifier[-1]
    new_fc.weight.copy_(effective_weight(old_fc)[:, columns])  # (K, C'*s*s)
    new_fc.bias.copy_(effective_weight(old_fc, "bias"))  # (K,)
    pruned.train(model.training)
    return pruned


def block_conv_names(model: ResNetVOC) -> list[str]:
    """The prunable convs of a ResNet: each block's first conv, `layer1.0.conv1`, ..."""
    return [
        f"layer{s + 1}.{b}.conv1" for s, stage in enumerate(model.stages) for b in range(len(stage))
    ]


def _prune_resnet_blocks(
    model: ResNetVOC, rates: dict[str, float] | float, criterion: str
) -> ResNetVOC:
    """`structured_prune` of a ResNet: a float rate prunes every block's inner width; a
    dict names blocks' first convs (`block_conv_names`, missing ones: 0)."""
    names = block_conv_names(model)
    rates = resolve_rates(
        model,
        rates,
        names,
        schedule=lambda p: dict.fromkeys(names, p),
        unknown_hint="a resnet prunes the first conv of each block only; unknown or tied conv(s)",
    )
    lookup(STRUCTURED_CRITERIA, criterion)  # fail before any work
    blocks = [block for stage in model.stages for block in stage]
    keeps = [
        keep_indices(block.conv1, rates.get(name, 0.0), criterion)
        for name, block in zip(names, blocks, strict=True)
    ]
    param = next(model.parameters())
    config = dataclasses.replace(model.config, inner=tuple(len(k) for k in keeps))
    pruned = ResNetVOC(config).to(device=param.device, dtype=param.dtype)
    # masked (unstructurally pruned) weights are copied as the zeros they are
    state = {k: v.detach() for k, v in permanent_copy(model).state_dict().items()}
    for name, keep in zip(names, keeps, strict=True):
        block = name.rpartition(".")[0]  # layerS.B
        state[f"{block}.conv1.weight"] = state[f"{block}.conv1.weight"][keep]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            state[f"{block}.bn1.{attr}"] = state[f"{block}.bn1.{attr}"][keep]
        state[f"{block}.conv2.weight"] = state[f"{block}.conv2.weight"][:, keep]
    pruned.load_state_dict(state)  # strict: every tensor of the new shapes, nothing else
    pruned.train(model.training)
    return pruned


# the name the stages and notebooks have used since L1 was the only criterion
structured_l1 = structured_prune
