"""Layer-by-layer relevance propagation through a VGG: the plumbing shared by LRP and RAP.

Both methods run one forward that records every layer's input (and every max-pool's arg-max),
then walk the layers in reverse, one rule per layer type. The kernels below are the backward
halves of conv and max-pool, called directly instead of through autograd: a rule needs the
input-gradient of a conv with *other* weights (w+, w-, ...), and a pool's routing is the one
its forward chose, so neither needs a graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from attrlib.models import eval_mode


def sequential_refusal(model: nn.Module) -> str | None:
    """Why the layer-by-layer rules cannot walk `model`, or None when they can (a network of
    `features` then `classifier`: vgg16_bn, or a plugin family built the same way)."""
    if hasattr(model, "features") and hasattr(model, "classifier"):
        return None
    family = getattr(model, "architecture", type(model).__name__)
    return (
        f"its layer-by-layer rules walk a sequential network (features, classifier: "
        f"vgg16_bn); a {family} network has residual sums they would not follow"
    )


def flat_layers(model: nn.Module) -> list[nn.Module]:
    """The network as one flat list: features, flatten, classifier (ending in its one Linear)."""
    refusal = sequential_refusal(model)
    if refusal:
        raise NotImplementedError(f"{refusal}. Evaluate it with other methods (e.g. gradcam).")
    layers = [*model.features, nn.Flatten(1), *model.classifier]
    if not isinstance(layers[-1], nn.Linear) or any(isinstance(m, nn.Linear) for m in layers[:-1]):
        raise ValueError("relevance propagation here expects one Linear, the classifier's last")
    return layers


def record_inputs(
    model: nn.Module, layers: list[nn.Module], images: torch.Tensor
) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """One forward without a graph, in eval mode: every layer's input and every pool's arg-max.

    Args:
        model: the network `layers` come from (put in eval mode for the pass).
        layers: `flat_layers(model)`.
        images: (B, 3, H, W).
    Returns:
        inputs, with inputs[k] the input of layers[k] (the logits are not kept), and winners,
        with winners[k] the flat arg-max index (B, C, h, w) of the max-pool layers[k].
    """
    inputs: list[torch.Tensor] = []
    winners: dict[int, torch.Tensor] = {}
    with eval_mode(model), torch.no_grad():
        x = images
        for k, layer in enumerate(layers):
            inputs.append(x)
            if isinstance(layer, nn.MaxPool2d):
                x, winners[k] = maxpool(layer, x)
            else:
                x = layer(x)
    return inputs, winners


def check_conv(conv: nn.Conv2d) -> None:
    """The rules stack weights along a channel axis to run several convs as one."""
    if conv.padding_mode != "zeros" or conv.groups != 1:
        raise ValueError(
            "relevance propagation supports zero-padded, ungrouped convs only, got "
            f"padding_mode={conv.padding_mode!r}, groups={conv.groups}"
        )


def conv(layer: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`layer`'s geometry (stride, padding, dilation) with another weight and no bias."""
    return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation)


def conv_input_grad(
    layer: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """Gradient of `conv(layer, x, weight)` w.r.t. x (B, C_in, H, W) for output gradient `grad`."""
    return torch.nn.grad.conv2d_input(
        x.shape, weight, grad, layer.stride, layer.padding, layer.dilation
    )


def maxpool(pool: nn.MaxPool2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`pool(x)` (B, C, h, w) and the flat index of each window's arg-max (B, C, h, w)."""
    return F.max_pool2d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True
    )


def unpool(
    pool: nn.MaxPool2d, x: torch.Tensor, grad: torch.Tensor, winners: torch.Tensor
) -> torch.Tensor:
    """Send each window's `grad` (B, C, h, w) to its arg-max in x (B, C, H, W): autograd's kernel."""
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad,
        x,
        _pair(pool.kernel_size),
        _pair(pool.stride),
        _pair(pool.padding),
        _pair(pool.dilation),
        pool.ceil_mode,
        winners,
    )
