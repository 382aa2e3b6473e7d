"""Network families by name: what a checkpoint records and what a profile's teacher is.

An entry of `ARCHITECTURES` is an `nn.Module` class exposing what the stages use:
- `architecture` (its registered name) and `config`, a frozen dataclass with `to_dict()`,
  `scaled(width_div)` (a student: every width // width_div), `num_classes`, `input_size`;
- `config_from_dict(d)` and `create(width_div, num_classes, input_size)` (a teacher: the
  family's full widths // width_div; `attrlib.widths.scale_widths` divides and rounds for
  both, so `width_div` means the same for teachers and students);
- `forward_features(images)` -> the attribution feature (B, C, h, w) at `attribution_layer`,
  and `head(feature)` -> logits, so Grad-CAM, EBP and the head-only SWA map start there;
- `matching_layers` and `matching_feature` / `matching_head`, `forward(images,
  matching_layer)` -> (feature, logits);
- `convs` (iterative pruning masks them) and `load_pretrained_(weights)` (a torchvision
  state dict).
Layer-by-layer rules (LRP, RAP: sequential networks and BasicBlock ResNets) and structured
pruning need more of a network's structure; they say by name which families they support. A plugin registers a family of its own with
`register_architecture("name")` on its class.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from attrlib.models import VGGVOC
from attrlib.registry import Registry
from attrlib.resnet import ResNetVOC

ARCHITECTURES: Registry[type[nn.Module]] = Registry("architecture")
DEFAULT_ARCHITECTURE = VGGVOC.architecture  # what a checkpoint without the field holds


def register_architecture(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a network family (a class, see the module docstring) under `name`."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if getattr(cls, "architecture", name) != name:
            raise ValueError(f"{cls.__name__}.architecture is {cls.architecture!r}, not {name!r}")
        cls.architecture = name
        return ARCHITECTURES.register(name)(cls)

    return decorator


register_architecture(VGGVOC.architecture)(VGGVOC)
register_architecture(ResNetVOC.architecture)(ResNetVOC)


def rebuild(architecture: str, config) -> nn.Module:
    """A network of family `architecture` from its config object or stored dict."""
    family = ARCHITECTURES.get(architecture)
    return family(family.config_from_dict(config) if isinstance(config, dict) else config)


def create(architecture: str, width_div: int, num_classes: int, input_size: int) -> nn.Module:
    """A fresh network of family `architecture` at its full widths // `width_div` (teachers)."""
    return ARCHITECTURES.get(architecture).create(width_div, num_classes, input_size)
