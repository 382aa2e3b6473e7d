"""The attribution registries and the one entry point that computes maps (`attribute`).

The method modules (gradcam, ebp, lrp, rap) register themselves here; importing
`attrlib.attribution` imports them all.
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
# (model, feature (B, C, h, w), classes (B,)) -> maps (B, h, w); a subset of METHODS' names
FEATURE_METHODS: Registry[AttributionFn] = Registry("feature-level attribution method")


def register_layer_method(name: str) -> Callable[[AttributionFn], AttributionFn]:
    """Register a method that starts at the attribution layer, in both registries.

    The decorated function maps (model, feature (B, C, h, w), classes (B,)) -> (B, h, w) and
    becomes the `FEATURE_METHODS` entry; the `METHODS` entry runs the trunk without a graph
    first (nothing below the attribution layer needs a gradient), then calls it.
    """

    def decorator(from_feature: AttributionFn) -> AttributionFn:
        def from_images(
            model: nn.Module, images: torch.Tensor, classes: torch.Tensor
        ) -> torch.Tensor:
            with torch.no_grad():
                feature = model.forward_features(images)  # (B, C, h, w), no graph below
            return from_feature(model, feature, classes)

        from_images.__name__ = from_images.__qualname__ = f"{from_feature.__name__}_from_images"
        from_images.__doc__ = f"`{from_feature.__name__}` of images (B, 3, H, W): trunk, then it."

        FEATURE_METHODS.register(name)(from_feature)
        METHODS.register(name)(from_images)
        return from_feature

    return decorator


def refusal(model: nn.Module, method: str) -> str | None:
    """Why `method` cannot explain `model` (a network family its rules cannot follow), or
    None. A method declares it with a `refuses(model) -> str | None` attribute."""
    check = getattr(METHODS.get(method), "refuses", None)
    return check(model) if check is not None else None


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear with align_corners=False (as Captum and the authors)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    method: str,
    feature: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maps of `method` for target `classes` on `images`, at the input resolution.

    Args:
        model: a `attrlib.models.VGGVOC` (needs `forward_features`, `head`, `features`).
        images: (B, 3, H, W) normalised images.
        classes: (B,) integer target class per row; several classes of one image are
            repeated rows.
        method: a name in `METHODS` (gradcam, ebp, lrp, rap).
        feature: optional (B, C, h, w) `model.forward_features(images)` in eval mode, row for
            row. Methods in `FEATURE_METHODS` start from it instead of re-running the trunk
            (same maps); the others need the whole network's forward and ignore it.
    Returns:
        (B, H, W) float maps, not normalised.
    """
    fn = METHODS.get(method)
    why = refusal(model, method)
    if why:
        raise NotImplementedError(f"{method}: {why}")
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
    if feature is not None and (feature.ndim != 4 or feature.shape[0] != images.shape[0]):
        raise ValueError(
            f"feature must be (B, C, h, w) with B={images.shape[0]}, got {tuple(feature.shape)}"
        )
    classes = classes.to(images.device, torch.int64)
    with eval_mode(model), torch.enable_grad():
        if feature is not None and method in FEATURE_METHODS:
            maps = FEATURE_METHODS.get(method)(model, feature, classes)  # (B, h, w)
        else:
            maps = fn(model, images, classes)  # (B, h, w)
    if maps.shape[-2:] != images.shape[-2:]:
        maps = upsample(maps, tuple(images.shape[-2:]))
    return maps.detach()
