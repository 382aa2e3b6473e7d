"""Grad-CAM at the attribution layer, back-propagating through the head only.

Follows Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017: channel weights are the spatial mean of the target
logit's gradient at a conv feature map, the map is the ReLU of the weighted channel sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attrlib.attribution.base import register_layer_method


@register_layer_method("gradcam")
def gradcam(model: nn.Module, feature: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps of `classes` at `model.attribution_layer`: one head forward and backward.

    The graph starts at the attribution feature, so the backward pass runs through the head
    only (last max-pool + dropout + linear): the gradient at the attribution layer needs
    nothing below it. Equals Captum's `LayerGradCam(model, model.attribution_layer)` with
    `relu_attributions=True` (checked in the tests).

    Args:
        model: a network of a registered family in eval mode (its `head`).
        feature: (B, C, h, w) `model.forward_features(images)`; not modified.
        classes: (B,) int64 target class per row, on the feature's device.
    Returns:
        (B, h, w) non-negative maps at the attribution layer's resolution (h = H // 16).

    Paper: Selvaraju et al. 2017, as used by Park et al. 2020 (Grad-CAM at the last conv ReLU).
    Deviation: the authors' code weights channels by the spatial *sum* of the gradient; we use
    the paper's spatial mean. The two differ by the constant h * w per map, which min-max
    normalisation removes.
    """
    feature = feature.detach().requires_grad_(True)  # a fresh leaf: the graph starts here
    logits = model.head(feature)  # (B, K)
    target = logits.gather(1, classes[:, None]).sum()  # rows are independent: sum = one backward
    (grads,) = torch.autograd.grad(target, feature)  # (B, C, h, w)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return F.relu((weights * feature).sum(dim=1)).detach()  # (B, h, w)
