"""Pruning masks: the `torch.nn.utils.prune` reparametrisation `weight = weight_orig * weight_mask`.

Reading the weights a masked module really uses, re-attaching masks to a freshly built model
so a masked state dict loads, and making masks permanent. This sits below both the training
loop (`engine.load_state_` re-attaches masks) and pruning (`prune` creates them), so neither
has to import the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize, prune


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


def effective_parameters(model: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    """`(module, name, tensor)` of every parameter as the forward pass uses it, detached.

    A masked parameter is stored as `<name>_orig` plus a `<name>_mask` buffer; it is reported
    once, under its plain `<name>`, with the current `orig * mask` (`effective_weight`). A
    parametrized one (a quantized weight) is reported under its name, as parametrized.
    """
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its `original` is reported under the parametrized name, as used
        if parametrize.is_parametrized(module):  # a quantized weight (attrlib.quantize)
            for name in module.parametrizations:
                yield module, name, getattr(module, name).detach()
        for name, param in module.named_parameters(recurse=False):
            base = name.removesuffix("_orig")
            if base != name and hasattr(module, base + "_mask"):
                yield module, base, effective_weight(module, base)
            else:
                yield module, name, param.detach()


def has_masks(model: nn.Module) -> bool:
    """Whether any submodule carries a `torch.nn.utils.prune` reparametrisation."""
    return prune.is_pruned(model)


@contextmanager
def parameter_order_kept(modules: list[nn.Module], name: str = "weight") -> Iterator[None]:
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
        with parameter_order_kept([module], name):
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


def permanent_copy(model: nn.Module) -> nn.Module:
    """`model` itself when it has no masks, else a copy with the masks made permanent.

    Attribution rules that rewrite weights (zennit's canonizers) would be undone by the
    pruning pre-hook, which recomputes `weight = weight_orig * weight_mask` every forward.
    (A masked module cannot be deep-copied: its `weight` is not a graph leaf, so the copy is
    rebuilt from the config and the state.)
    """
    if not has_masks(model):
        return model
    device = next(model.parameters()).device
    fresh = type(model)(model.config).to(device)  # same family, same config
    state = model.state_dict()
    attach_masks_(fresh, state)
    fresh.load_state_dict(state)  # strict: same config, so every key fits
    return make_permanent_(fresh).train(model.training)
