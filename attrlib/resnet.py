"""ResNets of BasicBlocks (ResNet-18 / 34 layouts) for multi-label VOC, every width a parameter.

The state-dict layout is torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer2.0.downsample.0`, `fc`), so a torchvision `resnet18` weights file loads unchanged
(`load_pretrained_`, all but `fc`). Three departures from torchvision, none of which changes
a key or, with the defaults of `torchvision_like`, a number:
- every ReLU is a module of its own (torchvision applies one in-place `relu` twice per
  block): hooks and attribution rules read each activation;
- `last_stride`: the last stage may keep its input's resolution (stride 1, as in dilated or
  "last stride 1" ResNets). At 96 px the last stage is then 6x6, the size of the VGG
  teacher's attribution layer, instead of 3x3, where Grad-CAM's arg-max has nine cells;
- `inner`: each block's inner width (its first conv's output) is a field of its own, so a
  block-internal structured pruning (Li et al., 2017) is just another config. The stage
  widths are tied through the residual sums and stay whole.
The attribution and matching layer is the output of the last stage (`layer4`); the head is
global average pooling, dropout and `fc`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from attrlib.models import read_weights
from attrlib.widths import scale_widths

RESNET18_BLOCKS: tuple[int, ...] = (2, 2, 2, 2)
RESNET34_BLOCKS: tuple[int, ...] = (3, 4, 6, 3)
RESNET_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything needed to rebuild a ResNet; stored in every checkpoint."""

    architecture: ClassVar[str] = "resnet"

    blocks: tuple[int, ...] = RESNET18_BLOCKS  # BasicBlocks per stage
    widths: tuple[int, ...] = RESNET_WIDTHS  # each stage's output width (the stem's = first)
    inner: tuple[int, ...] | None = None  # each block's inner width; None: its stage's width
    num_classes: int = 20
    input_size: int = 224  # pixels (the head pools globally: any size >= 32 works)
    last_stride: int = 1  # 1: the last stage keeps its input's resolution; torchvision's: 2
    dropout: float = 0.0  # before fc (torchvision has none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.blocks) != 4 or any(b < 1 for b in self.blocks):
            raise ValueError(f"blocks must list 4 stage depths >= 1, got {self.blocks}")
        if len(self.widths) != 4 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must list 4 stage widths >= 1, got {self.widths}")
        if self.inner is None:
            inner = tuple(
                w for w, b in zip(self.widths, self.blocks, strict=True) for _ in range(b)
            )
        else:
            inner = tuple(int(w) for w in self.inner)
        if len(inner) != sum(self.blocks) or any(w < 1 for w in inner):
            raise ValueError(
                f"inner must list {sum(self.blocks)} block widths >= 1 (one per block), "
                f"got {self.inner}"
            )
        object.__setattr__(self, "inner", inner)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.input_size < 32:
            raise ValueError(f"input_size must be >= 32 px, got {self.input_size}")
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def attribution_size(self) -> int:
        """Side of the last stage's output: stem /4, stages 2-3 /2 each, the last /last_stride."""
        size = self.input_size
        for stride in (2, 2, 2, 2, self.last_stride):  # stem conv, max-pool, layer2, layer3, 4
            size = (size - 1) // stride + 1  # ceil: every stride here pads to keep it
        return size

    def scaled(self, width_div: int) -> ResNetConfig:
        """Every width // `width_div` (at least 1): a student of this network, or a teacher
        at its family's scale (`create`); `attrlib.widths`."""
        return replace(
            self,
            widths=scale_widths(self.widths, width_div),
            inner=scale_widths(self.inner, width_div),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, **{k: list(d[k]) for k in ("blocks", "widths", "inner")}}

    @classmethod
    def from_dict(cls, d: dict) -> ResNetConfig:
        return cls(**d)  # lists become tuples in __post_init__


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU (torchvision's keys)."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class ResNetVOC(nn.Module):
    """A BasicBlock ResNet with global average pooling, dropout and a linear classifier."""

    architecture = "resnet"  # its name in attrlib.architectures, stored in checkpoints
    matching_layers: tuple[str, ...] = ("attribution",)

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        stem = config.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch, block = stem, 0
        for s, (depth, width) in enumerate(zip(config.blocks, config.widths, strict=True)):
            stride = 1 if s == 0 else (config.last_stride if s == 3 else 2)
            stage = []
            for b in range(depth):
                stage.append(BasicBlock(in_ch, config.inner[block], width, stride if b == 0 else 1))
                in_ch, block = width, block + 1
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.widths[-1], config.num_classes)
        self._init_weights()

    config_from_dict = staticmethod(ResNetConfig.from_dict)

    @classmethod
    def create(cls, width_div: int, num_classes: int, input_size: int) -> ResNetVOC:
        """ResNet-18 at widths // `width_div`, last stage at stride 1."""
        config = ResNetConfig(num_classes=num_classes, input_size=input_size)
        return cls(config.scaled(width_div))

    def _init_weights(self) -> None:
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @property
    def attribution_layer(self) -> nn.Module:
        """The last stage: its output is the attribution feature (6x6 at 96 px, stride 1)."""
        return self.layer4

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> attribution feature (B, C, h, w): the last stage's output."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for stage in self.stages:
            x = stage(x)
        return x

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """Attribution feature (B, C, h, w) -> logits (B, K): pooling, dropout, fc."""
        return self.fc(self.dropout(torch.flatten(self.avgpool(feature), 1)))

    def forward(
        self, images: torch.Tensor, matching_layer: str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> logits (B, K); with `matching_layer`, (feature, logits) in one
        call (see `attrlib.models.VGGVOC.forward`)."""
        if matching_layer is None:
            return self.head(self.forward_features(images))
        feature = self.matching_feature(images, matching_layer)
        return feature, self.matching_head(feature, matching_layer)

    def _check_layer(self, layer: str) -> None:
        if layer not in self.matching_layers:
            raise ValueError(
                f"a {self.architecture} network matches maps at {self.matching_layers} only, "
                f"got {layer!r} (its global average pool leaves no map; set the profile's "
                "matching_layer to attribution)"
            )

    def matching_feature(self, images: torch.Tensor, layer: str) -> torch.Tensor:
        self._check_layer(layer)
        return self.forward_features(images)

    def matching_head(self, feature: torch.Tensor, layer: str) -> torch.Tensor:
        self._check_layer(layer)
        return self.head(feature)

    def load_pretrained_(self, weights: str | Path | dict) -> ResNetVOC:
        """Copy a torchvision ResNet state dict (file or dict) into this network in place,
        all but `fc`, whose shape is ImageNet's."""
        weights, source = read_weights(weights)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("fc.")}
        missing = sorted(set(own) - set(weights))
        if missing:
            raise ValueError(
                f"{source}: missing keys {missing[:5]}; is this a torchvision ResNet of "
                f"blocks {list(self.config.blocks)}?"
            )
        for key, value in own.items():
            if weights[key].shape != value.shape:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(weights[key].shape)}, the model expects "
                    f"{tuple(value.shape)} (ImageNet weights fit width_div=1 only)"
                )
        self.load_state_dict({**self.state_dict(), **{k: weights[k] for k in own}})
        return self
