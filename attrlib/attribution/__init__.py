"""Attribution maps behind one batched call: `attribute(model, images, classes, method)`.

Every method is a registry entry `(model, images (B,3,H,W), classes (B,)) -> maps (B,h,w)` at
its natural resolution (the attribution layer or the input); `attribute` upsamples layer maps
to the input size (bilinear, align_corners=False). Maps are returned before min-max
normalisation (see `attrlib.metrics.normalize_maps`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attrlib.models import eval_mode
from attrlib.registry import Registry

AttributionFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
METHODS: Registry[AttributionFn] = Registry("attribution method")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear with align_corners=False (as Captum and the authors)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def attribute(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str
) -> torch.Tensor:
    """Maps of `method` for target `classes` on `images`, at the input resolution.

    Args:
        model: a `attrlib.models.VGGVOC` (needs `forward_features`, `head`, `features`).
        images: (B, 3, H, W) normalised images.
        classes: (B,) integer target class per row; several classes of one image are
            repeated rows.
        method: a name in `METHODS` (gradcam, ebp, lrp, rap).
    Returns:
        (B, H, W) float maps, not normalised.
    """
    fn = METHODS.get(method)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if classes.ndim != 1 or classes.shape[0] != images.shape[0]:
        raise ValueError(
            f"classes must be (B,) with B={images.shape[0]}, got {tuple(classes.shape)}"
        )
    if classes.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"classes must be an integer tensor, got {classes.dtype}")
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if classes.numel() and (classes.min() < 0 or (num_classes and classes.max() >= num_classes)):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {classes.tolist()}")
    classes = classes.to(images.device, torch.int64)
    with eval_mode(model), torch.enable_grad():
        maps = fn(model, images, classes)  # (B, h, w)
    if maps.shape[-2:] != images.shape[-2:]:
        maps = upsample(maps, tuple(images.shape[-2:]))
    return maps.detach()


# Importing the method modules fills the registry.
from attrlib.attribution import ebp, gradcam, lrp, rap  # noqa: E402, F401
