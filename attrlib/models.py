"""VGG16-BN for multi-label VOC classification, with every width a parameter.

The architecture is data: 13 conv widths (max-pools after convs 2, 4, 7, 10, 13), so a
student (widths divided by 2, 4, 8) or a structurally pruned network is just another list.
`model.features` keeps torchvision's `vgg16_bn` layer order, so for `width_div=1`
torchvision's `features.*` state-dict keys load unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from attrlib.widths import scale_widths

VGG16_WIDTHS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER: frozenset[int] = frozenset({1, 3, 6, 9, 12})  # conv indices followed by a max-pool
# Where attribution maps are matched: "pool" = the last max-pool's output, as the authors'
# code (`features[:44]`, 7x7 at 227 px); "attribution" = one step earlier, the attribution
# layer (14x14 at 227 px), where Grad-CAM and EBP are read.
MATCHING_LAYERS: tuple[str, ...] = ("attribution", "pool")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored in every checkpoint."""

    architecture: ClassVar[str] = "vgg16_bn"

    widths: tuple[int, ...] = VGG16_WIDTHS  # output channels of the 13 convs
    num_classes: int = 20
    input_size: int = 227  # pixels; fixes the classifier's input size
    dropout: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != len(VGG16_WIDTHS):
            raise ValueError(f"widths must list 13 conv widths, got {len(self.widths)}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"every conv width must be >= 1, got {self.widths}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.input_size < 32:
            raise ValueError(
                f"input_size must be >= 32 px (five 2x max-pools), got {self.input_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def feature_size(self) -> int:
        """Side of the final feature map after five floor-halving max-pools."""
        size = self.input_size
        for _ in range(5):
            size //= 2
        return size

    @property
    def attribution_size(self) -> int:
        """Side of the attribution feature (before the last max-pool)."""
        size = self.input_size
        for _ in range(4):
            size //= 2
        return size

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{**d, "widths": tuple(d["widths"])})

    def scaled(self, width_div: int) -> ModelConfig:
        """Every conv width // `width_div` (at least 1): a student of this network, or a
        teacher at its family's scale (`vgg16_bn_voc`); `attrlib.widths`."""
        return replace(self, widths=scale_widths(self.widths, width_div))


class VGGVOC(nn.Module):
    """VGG16-BN with a dropout + linear classifier on the flattened final feature map.

    Follows the authors' VOC variant (Park et al., 2020): no fully connected hidden layers,
    so the input size is fixed when the network is built.
    """

    architecture = "vgg16_bn"  # its name in attrlib.architectures, stored in checkpoints
    matching_layers = MATCHING_LAYERS

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = 3
        for i, width in enumerate(config.widths):
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=False),  # not in-place: hooks and attribution read these outputs
            ]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            in_ch = width
        self.features = nn.Sequential(*layers)
        side = config.feature_size
        self.classifier = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(config.widths[-1] * side * side, config.num_classes),
        )
        self._init_weights()

    config_from_dict = staticmethod(ModelConfig.from_dict)

    @classmethod
    def create(cls, width_div: int, num_classes: int, input_size: int) -> VGGVOC:
        return vgg16_bn_voc(width_div, num_classes, input_size)

    def load_pretrained_(self, weights: str | Path | dict) -> VGGVOC:
        return load_torchvision_features_(self, weights)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def attribution_layer(self) -> nn.Module:
        """Final ReLU of the last conv block, before the last max-pool (14x14 at 227 px)."""
        return self.features[-2]

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> attribution feature (B, C, h, w)."""
        return self.features[:-1](images)

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """Attribution feature (B, C, h, w) -> logits (B, K): last max-pool + classifier only."""
        pooled = self.features[-1](feature)  # (B, C, h/2, w/2)
        return self.classifier(torch.flatten(pooled, 1))  # (B, K)

    def forward(
        self, images: torch.Tensor, matching_layer: str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, K); with `matching_layer`, (feature at that layer
        (B, C, h, w), logits): one call, so a DistributedDataParallel replica sees the
        whole forward of a matching objective."""
        if matching_layer is None:
            return self.head(self.forward_features(images))
        feature = self.matching_feature(images, matching_layer)
        return feature, self.matching_head(feature, matching_layer)

    def matching_feature(self, images: torch.Tensor, layer: str) -> torch.Tensor:
        """(B, 3, H, W) -> the feature maps are matched at (B, C, h, w), `layer` in
        MATCHING_LAYERS."""
        feature = self.forward_features(images)  # (B, C, h, w) attribution layer
        return self.features[-1](feature) if _matching_layer(layer) == "pool" else feature

    def matching_head(self, feature: torch.Tensor, layer: str) -> torch.Tensor:
        """The layers after `matching_feature`: (B, C, h, w) -> logits (B, K)."""
        if _matching_layer(layer) == "pool":
            return self.classifier(torch.flatten(feature, 1))  # (B, K)
        return self.head(feature)


def _matching_layer(layer: str) -> str:
    if layer not in MATCHING_LAYERS:
        raise ValueError(f"matching layer must be one of {MATCHING_LAYERS}, got {layer!r}")
    return layer


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own training flag."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags.items():
            m.training = training  # per module: model.train() would overwrite them all


def vgg16_bn_voc(
    width_div: int = 1, num_classes: int = 20, input_size: int = 227, dropout: float = 0.5
) -> VGGVOC:
    """The VOC VGG16-BN with every conv width divided by `width_div` (a teacher's scale; a
    student divides its teacher's widths the same way: `attrlib.widths`)."""
    full = ModelConfig(VGG16_WIDTHS, num_classes, input_size, dropout)
    return VGGVOC(full.scaled(width_div))


def build_model(config: ModelConfig | dict) -> VGGVOC:
    """Rebuild a VGG from its stored config (students and pruned networks alike); any
    registered family: `attrlib.architectures.rebuild`."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return VGGVOC(config)


def read_weights(weights: str | Path | dict) -> tuple[dict, str]:
    """(state dict, its name for messages) of a local torchvision weights file or a dict."""
    if isinstance(weights, dict):
        return weights, "<state dict>"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"torchvision weights file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True), str(weights)


def load_torchvision_features_(model: VGGVOC, weights: str | Path | dict) -> VGGVOC:
    """Copy torchvision `vgg16_bn` `features.*` weights into `model` in place.

    `weights` is a local state-dict file (e.g. `vgg16_bn-6c64b313.pth`) or a state dict.
    The classifier stays freshly initialised: its shape differs from ImageNet's.
    """
    weights, source = read_weights(weights)
    feats = {k[len("features.") :]: v for k, v in weights.items() if k.startswith("features.")}
    if not feats:
        raise ValueError(f"{source}: no 'features.*' keys; is this a torchvision vgg16_bn file?")
    own = model.features.state_dict()
    missing = sorted(set(own) - set(feats))
    if missing:
        raise ValueError(f"{source}: missing feature keys {missing[:5]}...")
    for key, value in own.items():
        if feats[key].shape != value.shape:
            raise ValueError(
                f"{source}: features.{key} has shape {tuple(feats[key].shape)}, the model "
                f"expects {tuple(value.shape)} (ImageNet weights fit width_div=1 only)"
            )
    model.features.load_state_dict({k: feats[k] for k in own})
    return model
