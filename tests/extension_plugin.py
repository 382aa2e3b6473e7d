"""A plugin, as a researcher would write one outside attrlib: three decorated functions.

Imported by name (`plugins=["tests.extension_plugin"]` in the notebooks), it registers an
attribution method, a matching map (and its grid word), a structured pruning criterion,
a faithfulness metric and a network family (a 4-conv network); tests/test_extension.py runs
the smoke study with them selected by parameters only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attrlib.architectures import register_architecture
from attrlib.attribution import METHODS
from attrlib.distill import MATCHINGS
from attrlib.faithfulness import register_faithfulness
from attrlib.prune import STRUCTURED_CRITERIA
from attrlib.study import COMPRESSION, Method
from attrlib.widths import scale_widths


@METHODS.register("gradient_x_input")
def gradient_x_input(model, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Gradient x input summed over colour channels, positive part: (B, H, W)."""
    images = images.detach().requires_grad_(True)
    selected = model(images).gather(1, classes[:, None]).sum()  # rows independent: one backward
    (grad,) = torch.autograd.grad(selected, images)
    return F.relu((grad * images).sum(dim=1)).detach()


@MATCHINGS.register("gxf")
def gradient_x_feature_map(feature, logits, classes, create_graph=False, channel_keep=None):
    """ReLU of the channel sum of gradient x feature at the matching layer: (B, h, w)."""
    selected = logits.gather(1, classes[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, feature, create_graph=create_graph)
    if channel_keep is not None:
        grad = grad * channel_keep[:, :, None, None]
    return F.relu((grad * feature).sum(dim=1))


# its word in a profile's grid (`distill_methods: [kd, gxf]`): make all trains it with the
# teacher store, which then holds its maps too
COMPRESSION.register("gxf")(Method("gxf", "GxF", "#2ca02c", matching="gxf"))


@STRUCTURED_CRITERIA.register("l2")
def l2_filter_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each filter: (C_out,)."""
    return weight.flatten(1).norm(dim=1)


@register_faithfulness("grey_fill", higher_is_better=False)
def grey_fill(images, top, baseline, generator=None):
    """Deletion to the data set's mean colour (0 in the normalised input), whatever the
    evaluation's baseline."""
    return images.masked_fill(top, 0.0)


@dataclass(frozen=True)
class TinyConfig:
    """Four 3x3 convs (a max-pool after the second and the fourth) and a linear classifier."""

    architecture: ClassVar[str] = "tiny4"
    widths: tuple[int, ...] = (32, 64, 64, 128)
    num_classes: int = 20
    input_size: int = 32

    def scaled(self, width_div: int) -> TinyConfig:
        return replace(self, widths=scale_widths(self.widths, width_div))

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> TinyConfig:
        return cls(**{**d, "widths": tuple(d["widths"])})


@register_architecture("tiny4")
class Tiny(nn.Module):
    """Sequential like VGG (`features`, `classifier`), so LRP and RAP walk it too."""

    matching_layers = ("attribution",)
    config_from_dict = staticmethod(TinyConfig.from_dict)

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        layers, in_ch = [], 3
        for i, width in enumerate(config.widths):
            layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if i in (1, 3) else []
            in_ch = width
        self.features = nn.Sequential(*layers)
        side = config.input_size // 4
        self.classifier = nn.Sequential(nn.Linear(in_ch * side * side, config.num_classes))

    @classmethod
    def create(cls, width_div: int, num_classes: int, input_size: int) -> Tiny:
        return cls(TinyConfig(num_classes=num_classes, input_size=input_size).scaled(width_div))

    def load_pretrained_(self, weights) -> Tiny:
        raise NotImplementedError("tiny4 has no pretrained weights")

    @property
    def attribution_layer(self) -> nn.Module:
        return self.features[-2]

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features[:-1](images)

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features[-1](feature), 1))

    def matching_feature(self, images: torch.Tensor, layer: str) -> torch.Tensor:
        return self.forward_features(images)

    def matching_head(self, feature: torch.Tensor, layer: str) -> torch.Tensor:
        return self.head(feature)

    def forward(self, images: torch.Tensor, matching_layer: str | None = None):
        feature = self.forward_features(images)
        logits = self.head(feature)
        return logits if matching_layer is None else (feature, logits)
