"""Training views drawn from (epoch, image index), made for a whole batch at once.

SPEC, Data: train augmentation is RandomResizedCrop + horizontal flip. Here the crop box
and the flip of image `i` in epoch `e` come from a generator seeded by
(view seed, e, i) alone, not from a run's RNG stream: every run (teacher, each student,
method and seed, each pruning fine-tune) that reads epoch `e` sees the same view of image
`i`, whatever its batch order or batch mates. That is what lets the teacher's outputs for
a view be computed once and shared (`attrlib.targets`). Runs still differ by seed in their
initial weights, batch order and dropout.

The crop box is drawn by torchvision's RandomResizedCrop algorithm and resized by
torchvision on the uint8 image, in the DataLoader's collate step (so in its workers when
there are any). Measured on this project's CPU at 96 px, batch 64: one batched
crop-and-resize (separable antialiased resampling as two batched matmuls, or roi_align)
took 2-3x longer than torchvision's vectorised per-image uint8 kernel, so the views are
batched only after the crop (flip, scaling, normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from attrlib.data import MEAN, STD

CROP_STREAM, DROP_STREAM = 0, 1  # sub-streams of one (seed, epoch, image) generator


@dataclass(frozen=True)
class ViewSpec:
    """How training views are drawn: RandomResizedCrop(size, scale=(scale_min, 1)) + flip."""

    size: int  # pixels, side of the network input
    scale_min: float  # lower bound of the crop's area, fraction of the image
    seed: int = 0  # seed of the view schedule, shared by every run of a study
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect range of the crop box
    flip: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", tuple(float(r) for r in self.ratio))
        if self.size < 1:
            raise ValueError(f"view size must be >= 1 px, got {self.size}")
        if not 0.0 < self.scale_min <= 1.0:
            raise ValueError(f"scale_min must be in (0, 1], got {self.scale_min}")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": list(self.ratio)}


def view_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one (epoch, image) view; `stream` separates crops from channel drops."""
    return np.random.default_rng([seed, epoch, index, stream])


def _crop_box(rng: np.random.Generator, height: int, width: int, spec: ViewSpec) -> tuple:
    """(top, left, h, w) of torchvision's RandomResizedCrop.get_params, drawn from `rng`."""
    area = height * width
    log_ratio = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(spec.scale_min, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # fallback, as torchvision: the central crop with the aspect clamped into the range
    in_ratio = width / height
    if in_ratio < spec.ratio[0]:
        w, h = width, int(round(width / spec.ratio[0]))
    elif in_ratio > spec.ratio[1]:
        h, w = height, int(round(height * spec.ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_params(
    spec: ViewSpec, epoch: int, indices: Sequence[int], sizes: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes (B, 4) float as (x0, y0, x1, y1) pixel edges, and flips (B,) bool.

    Args:
        indices: image index of each row in the training split. sizes: (H, W) of each image.
    """
    boxes, flips = [], []
    for index, (height, width) in zip(indices, sizes, strict=True):
        rng = view_rng(spec.seed, epoch, int(index), CROP_STREAM)
        top, left, h, w = _crop_box(rng, height, width, spec)
        boxes.append((left, top, left + w, top + h))
        flips.append(bool(spec.flip and rng.uniform() < 0.5))
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(flips, dtype=torch.bool)


def channel_keep(
    seed: int, epoch: int, indices: Sequence[int], channels: int, drop_fraction: float
) -> torch.Tensor:
    """(B, C) 0/1 float: exactly round(drop_fraction * C) channels zeroed per (epoch, image).

    Stochastic SWA's drops, drawn like the views from (seed, epoch, image), so the teacher's
    stochastic map of a view is the same in every run and can be cached.
    """
    n_drop = round(drop_fraction * channels)
    keep = torch.ones(len(indices), channels)
    for row, index in enumerate(indices):
        rng = view_rng(seed, epoch, int(index), DROP_STREAM)
        keep[row, torch.from_numpy(rng.permutation(channels)[:n_drop])] = 0.0
    return keep


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> normalised with the authors' VOC mean and std."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def make_views(
    images: Sequence[torch.Tensor], indices: Sequence[int], epoch: int, spec: ViewSpec
) -> torch.Tensor:
    """Normalised training views (B, 3, S, S) of decoded uint8 images (3, H_i, W_i), one epoch.

    Each crop is resized on its uint8 image by torchvision (antialiased bilinear, its
    vectorised uint8 kernel); flip, scaling and normalisation run on the whole batch.
    """
    sizes = [tuple(im.shape[-2:]) for im in images]
    boxes, flips = view_params(spec, epoch, indices, sizes)
    crops = [
        TF.resized_crop(im, y0, x0, y1 - y0, x1 - x0, [spec.size, spec.size], antialias=True)
        for im, (x0, y0, x1, y1) in zip(images, boxes.int().tolist(), strict=True)
    ]
    views = torch.stack(crops)  # (B, 3, S, S) uint8
    views = torch.where(flips.view(-1, 1, 1, 1), views.flip(-1), views)
    return normalize_images(views.float().div_(255.0))


@dataclass(frozen=True)
class ViewKeys:
    """Which views a training batch holds: the view epoch and each row's image index."""

    epoch: int
    indices: torch.Tensor  # (B,) int64


class TrainViews(Dataset):
    """Items (decoded uint8 image (3, H, W), labels (K,), index) of a classification set.

    The images are turned into views a whole batch at a time by `ViewCollate`; `dataset`
    is a `VOCClassification` (without DataLoader workers its decoded-image cache makes later
    epochs cheap; workers decode beside training instead: see `attrlib.data.ItemCache`).
    """

    def __init__(self, dataset, spec: ViewSpec) -> None:
        self.dataset, self.spec = dataset, spec
        self.ids = dataset.ids
        self.labels = dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.dataset.image(index), self.dataset.labels[index], index

    def collate(self, epoch: int) -> ViewCollate:
        return ViewCollate(self.spec, epoch)


class ViewCollate:
    """DataLoader `collate_fn` of one epoch: (views (B,3,S,S), labels (B,K), indices (B,))."""

    def __init__(self, spec: ViewSpec, epoch: int) -> None:
        self.spec, self.epoch = spec, epoch

    def __call__(self, items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, indices = zip(*items, strict=True)
        views = make_views(images, indices, self.epoch, self.spec)
        return views, torch.stack(labels), torch.tensor(indices, dtype=torch.int64)
