"""Network pruning: one-shot structured (filters removed) and iterative unstructured (masks).

Three separate things, as in Torch-Pruning:
- scoring: `CRITERIA` maps a name to `(conv) -> (C_out,) scores`; adding a criterion is one
  decorated function;
- cutting: `structured_l1` builds a new, physically smaller `VGGVOC` (the architecture is data,
  so a pruned VGG is just another list of widths); `global_magnitude_` attaches
  `torch.nn.utils.prune` masks (weight = weight_orig * weight_mask), so pruned weights stay
  exactly zero through fine-tuning;
- scheduling: `spec_rates` (which convs, which rate) and `remaining_fraction` (0.8^k); the
  loop over iterations and fine-tuning lives with the stages.

Paper: Park et al. (2020), "Attribution Preservation in Network Compression" (SPEC: Training
recipes), built on Li et al. (2017) L1-norm filter pruning and Han et al. (2015) global
magnitude pruning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune

from attrlib.models import VGGVOC, build_model
from attrlib.registry import Registry

Criterion = Callable[[nn.Conv2d], torch.Tensor]
CRITERIA: Registry[Criterion] = Registry("pruning criterion")

SPEC_FIRST_CONVS = 1  # the paper prunes the first conv ...
SPEC_LAST_CONVS = 6  # ... and the last six convs, nothing in between


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor a module's forward pass uses, detached: `orig * mask` when masked.

    `torch.nn.utils.prune` refreshes the plain `module.weight` attribute only in a forward
    pre-hook, so after an optimiser step or `load_state_dict` it is stale until the next
    forward; reading `weight_orig * weight_mask` is always current.
    """
    if hasattr(module, name + "_mask"):
        orig = getattr(module, name + "_orig")
        mask = getattr(module, name + "_mask")
        return (orig * mask.to(orig.dtype)).detach()
    return getattr(module, name).detach()


# ----------------------------------------------------------------------------- scoring


@CRITERIA.register("l1")
def l1_criterion(conv: nn.Conv2d) -> torch.Tensor:
    """L1 norm of each filter: `(C_out, C_in, k, k)` weights -> `(C_out,)` scores.

    Paper: Park et al. (2020) rank each conv's filters by the L1 norm of their weights
    (Li et al., 2017). Masked weights (unstructured pruning) count as zeros.
    """
    return effective_weight(conv).abs().sum(dim=(1, 2, 3))  # (C_out,)


def num_kept(c_out: int, rate: float) -> int:
    """Filters kept out of `c_out` at prune rate `rate`: `max(1, round((1 - rate) * c_out))`.

    Python's `round` (half to even), the rule `torch.nn.utils.prune` uses for amounts; at
    least one filter so that the network stays connected.
    Deviation: the authors' code keeps `int((1 - rate) * c_out)` (floor); the two differ by
    at most one filter per layer (e.g. 64 filters at rate 0.3: 45 here, 44 there). `round`
    is the count closest to the requested rate and, unlike `ceil`, does not jump on
    floating-point noise such as `(1 - 0.7) * 10 = 3.0000000000000004`.
    """
    _check_rate(rate)
    return max(1, round((1.0 - rate) * c_out))


def keep_indices(conv: nn.Conv2d, rate: float, criterion: str = "l1") -> torch.Tensor:
    """Indices of the filters of `conv` that survive pruning at `rate`.

    Args:
        conv: the layer to score, weights `(C_out, C_in, k, k)`.
        rate: fraction of filters to remove, in [0, 1).
        criterion: name in `CRITERIA`.
    Returns:
        `(n_keep,)` int64 indices on the weights' device, sorted ascending, of the `n_keep =
        num_kept(C_out, rate)` filters with the largest scores; ties go to the lower index
        (a stable sort), so the choice is deterministic.
    """
    score_fn = CRITERIA.get(criterion)
    n_keep = num_kept(conv.out_channels, rate)
    scores = score_fn(conv)  # (C_out,)
    if scores.shape != (conv.out_channels,):
        raise ValueError(
            f"criterion {criterion!r} returned shape {tuple(scores.shape)}, "
            f"expected ({conv.out_channels},)"
        )
    order = torch.sort(scores, descending=True, stable=True).indices  # (C_out,)
    return order[:n_keep].sort().values  # (n_keep,)


# ----------------------------------------------------------------------------- scheduling


def conv_names(model: nn.Module) -> list[str]:
    """Qualified names of the convs in forward order, e.g. `["features.0", "features.3", ...]`."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def spec_rates(model: nn.Module, p: float) -> dict[str, float]:
    """The paper's layer-wise rates: `p` on the first conv and the last six, 0 elsewhere.

    Paper: Park et al. (2020) one-shot structured pruning (authors' `layerwise_prune_rate`).
    Returns:
        `{conv name: rate}` for every conv (zeros included), so the schedule is explicit.
    """
    _check_rate(p)
    names = conv_names(model)
    pruned = set(names[:SPEC_FIRST_CONVS]) | set(names[-SPEC_LAST_CONVS:])
    return {name: (float(p) if name in pruned else 0.0) for name in names}


def remaining_fraction(k: int, fraction: float = 0.2) -> float:
    """Fraction of conv weights left after `k` rounds removing `fraction` of the rest: 0.8^k.

    Exact counts differ by rounding: each round removes `round(fraction * remaining)` weights
    (see `global_magnitude_`), so after `k` rounds the count is within `k / 2` of
    `total * remaining_fraction(k)`.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return (1.0 - fraction) ** k


# ----------------------------------------------------------------------------- structured


def _check_rate(rate: float, layer: str | None = None) -> None:
    if not 0.0 <= rate < 1.0:  # also rejects NaN
        where = f" of layer {layer!r}" if layer is not None else ""
        raise ValueError(f"prune rate{where} must be in [0, 1), got {rate}")


def _resolve_rates(model: VGGVOC, rates: dict[str, float] | float) -> dict[str, float]:
    """Per-conv rates from a float (the paper's schedule) or a partial dict; validated."""
    if isinstance(rates, (int, float)) and not isinstance(rates, bool):
        return spec_rates(model, float(rates))
    names = conv_names(model)
    unknown = sorted(set(rates) - set(names))
    if unknown:
        raise ValueError(f"unknown conv layer(s) {unknown}; valid names: {', '.join(names)}")
    for name, rate in rates.items():
        _check_rate(rate, layer=name)
    return {name: float(rates.get(name, 0.0)) for name in names}


@torch.no_grad()
def structured_l1(model: VGGVOC, rates: dict[str, float] | float, criterion: str = "l1") -> VGGVOC:
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
        criterion: name in `CRITERIA`.
    Returns:
        `build_model(config with the new widths)` holding the kept weights, on the model's
        device, in the model's training mode. Its `ModelConfig` stores the widths, so
        checkpoints rebuild it with `attrlib.engine.load_model`. In eval mode its outputs
        equal the original's with the removed channels zeroed after their ReLU.
    Paper: Park et al. (2020) one-shot structured pruning (L1 filter ranking, channels
        removed physically). Deviation: filter counts use `round`, not `int` (`num_kept`).
        Masked (unstructurally pruned) weights are copied as zeros; the result has no masks.
    Raises:
        ValueError: a rate outside [0, 1) (names the layer) or an unknown conv name.
    """
    per_conv = _resolve_rates(model, rates)
    CRITERIA.get(criterion)  # fail early, listing valid names
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


# ----------------------------------------------------------------------------- unstructured


@contextmanager
def _parameter_order_kept(modules: list[nn.Module], name: str = "weight") -> Iterator[None]:
    """Inside, `torch.nn.utils.prune` may mask `name`; after, `<name>_orig` sits where it was.

    torch re-registers a newly pruned parameter last (`bias, weight_orig`), so an optimiser
    built on a fresh model (`weight, bias`) would not match a state saved by the masked one
    (optimiser states are matched by position). Keeping the order lets `engine.fit` resume
    from `last.pt` into a masked or a freshly built model alike.
    """
    orders = [
        [key + "_orig" if key == name else key for key in module._parameters] for module in modules
    ]
    yield
    for module, order in zip(modules, orders, strict=True):
        params = module._parameters
        reordered = [(key, params[key]) for key in order if key in params]
        reordered += [(key, value) for key, value in params.items() if key not in order]
        params.clear()
        params.update(reordered)


def global_magnitude_(model: nn.Module, amount: float) -> nn.Module:
    """Mask the smallest-magnitude `amount` of the REMAINING conv weights, globally (in place).

    One call of `torch.nn.utils.prune.global_unstructured(L1Unstructured)` over every conv's
    weight. Already masked weights are excluded (torch's `PruningContainer` computes the new
    mask on the entries where the old mask is 1), so a call removes exactly
    `round(amount * remaining)` weights (Python `round`, torch's `_compute_nparams_toprune`),
    and `k` calls at 0.2 leave ~0.8^k of them. Biases, batch norm and the classifier are not
    pruned.

    Args:
        model: network with Conv2d layers; gets `weight_orig` parameters, `weight_mask`
            buffers and forward pre-hooks (weight = weight_orig * weight_mask).
        amount: fraction in [0, 1] of the remaining conv weights to prune.
    Returns:
        `model` itself. Masks keep pruned weights exactly zero through any optimiser
        (momentum, weight decay): the gradient and the forward see only `orig * mask`.
    Paper: Park et al. (2020) iterative unstructured pruning, 20 % of the remaining weights
        per iteration, 16 iterations. Deviation: the authors threshold all conv weights at
        `int(total * percent)`, counting already-zero weights; this prunes the remaining ones.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount}")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layers to prune")
    # torch's pruning flattens weights and masks with `.view(-1)`, which channels-last
    # tensors (the training loop's layout) refuse; training converts them back
    model.to(memory_format=torch.contiguous_format)
    params = [(conv, "weight") for conv in convs]
    # current magnitudes: `conv.weight` of a masked conv is stale after an optimiser step
    scores = {(conv, "weight"): effective_weight(conv).contiguous() for conv in convs}
    with _parameter_order_kept(convs):
        prune.global_unstructured(
            params,
            pruning_method=prune.L1Unstructured,
            importance_scores=scores,
            amount=float(amount),
        )
    return model


def has_masks(model: nn.Module) -> bool:
    """Whether any submodule carries a `torch.nn.utils.prune` reparametrisation."""
    return prune.is_pruned(model)


def attach_masks_(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Re-create the pruning reparametrisation stored in `state` so `load_state_dict` fits.

    For every `<module>.<name>_mask` key with a matching `<module>.<name>_orig` key, apply
    `prune.custom_from_mask` with that mask to the freshly built module (after copying
    `_orig` in, so the derived `<name>` attribute is current before the first forward).
    Modules already masked are left alone; keys that name no module are left for
    `load_state_dict` to report.

    Args:
        model: freshly built network (e.g. `build_model(ckpt["model_config"])`), in place.
        state: a state dict saved from a masked model.
    Returns:
        `model`.
    Raises:
        ValueError: a mask whose shape differs from the module's parameter.
    """
    for key, mask in state.items():
        if not key.endswith("_mask") or key[: -len("_mask")] + "_orig" not in state:
            continue
        path, _, name = key[: -len("_mask")].rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        param = module._parameters.get(name)
        if param is None:  # already masked (weight_orig exists) or no such parameter
            continue
        if mask.shape != param.shape:
            raise ValueError(
                f"{key}: mask shape {tuple(mask.shape)} vs parameter {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(state[key[: -len("_mask")] + "_orig"])
        with _parameter_order_kept([module], name):
            prune.custom_from_mask(module, name, mask=mask.to(param.device, param.dtype))
    return model


def make_permanent_(model: nn.Module) -> nn.Module:
    """Remove every pruning reparametrisation in place, leaving plain weights with zeros.

    `prune.remove` writes `orig * mask` into the parameter and drops `_orig`, `_mask` and the
    hook; the state dict then has plain `weight` keys that load into an unmasked model.
    Returns `model`.
    """
    for module in model.modules():
        names = [
            hook._tensor_name
            for hook in module._forward_pre_hooks.values()
            if isinstance(hook, prune.BasePruningMethod)
        ]
        for name in names:
            prune.remove(module, name)
    return model


def permanent_copy(model: VGGVOC) -> VGGVOC:
    """`model` itself when it has no masks, else a copy with the masks made permanent.

    Attribution rules that rewrite weights (zennit's canonizers) would be undone by the
    pruning pre-hook, which recomputes `weight = weight_orig * weight_mask` every forward.
    (A masked module cannot be deep-copied: its `weight` is not a graph leaf.)
    """
    if not has_masks(model):
        return model
    from attrlib.engine import load_state_  # here: prune sits below engine

    device = next(model.parameters()).device
    fresh = build_model(model.config).to(device)
    load_state_(fresh, model.state_dict(), source="masked model")
    return make_permanent_(fresh).train(model.training)
