"""Layer-by-layer relevance propagation: the plumbing shared by LRP and RAP.

Both methods run one forward that records every layer's input (and every max-pool's arg-max),
then walk the layers in reverse, one rule per layer type: through a sequential network
(`flat_layers`, `record_inputs`: VGG) or through a BasicBlock ResNet (`record_residual`:
the stem, each block's two branches and the head). The kernels below are the backward
halves of conv and max-pool, called directly instead of through autograd: a rule needs the
input-gradient of a conv with *other* weights (w+, w-, ...), and a pool's routing is the one
its forward chose, so neither needs a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def residual_network(model: nn.Module) -> bool:
    """Whether `model` is a BasicBlock ResNet (attrlib.resnet), walked by `record_residual`."""
    return getattr(model, "architecture", None) == "resnet"


def walk_refusal(model: nn.Module) -> str | None:
    """Why the rules cannot walk `model` (neither sequential nor a BasicBlock ResNet), or None."""
    return None if residual_network(model) else sequential_refusal(model)


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


@dataclass
class BlockRecord:
    """One BasicBlock's forward: every tensor a rule reads, (B, C, h, w) each."""

    block: nn.Module
    x: torch.Tensor  # the block's input (conv1's and the shortcut's)
    conv1_out: torch.Tensor  # bn1's input
    inner: torch.Tensor  # conv2's input (relu1's output)
    conv2_out: torch.Tensor  # bn2's input
    main: torch.Tensor  # bn2's output: the residual branch's summand
    down_out: torch.Tensor | None  # the downsample conv's output (its batch norm's input)
    shortcut: torch.Tensor  # the other summand: x, or its projection


@dataclass
class ResidualRecord:
    """A BasicBlock ResNet's forward without a graph, for a walk back through it."""

    images: torch.Tensor  # (B, 3, H, W)
    stem_conv: torch.Tensor  # conv1's output (bn1's input)
    stem: torch.Tensor  # the stem's ReLU output (the max-pool's input)
    pooled_stem: torch.Tensor  # the max-pool's output (the first block's input)
    winners: torch.Tensor  # the max-pool's flat arg-max, like pooled_stem
    blocks: list[BlockRecord]
    features: torch.Tensor  # the last block's output (B, C, h, w)
    pooled: torch.Tensor  # its global average (B, C): the classifier's input


def record_residual(model: nn.Module, images: torch.Tensor) -> ResidualRecord:
    """One forward of a BasicBlock ResNet in eval mode, keeping what the rules read.

    Every module is called as in `model.forward` (its ReLU modules too), so hooks on them,
    e.g. a quantized network's activation rounding, act as in the network's own forward.
    """
    with eval_mode(model), torch.no_grad():
        stem_conv = model.conv1(images)
        stem = model.relu(model.bn1(stem_conv))
        x, winners = maxpool(model.maxpool, stem)
        pooled_stem, blocks = x, []
        for block in (b for stage in model.stages for b in stage):
            conv1_out = block.conv1(x)
            inner = block.relu1(block.bn1(conv1_out))
            conv2_out = block.conv2(inner)
            main = block.bn2(conv2_out)
            down_out, shortcut = None, x
            if block.downsample is not None:
                conv, bn = block.downsample
                down_out = conv(x)
                shortcut = bn(down_out)
            blocks.append(
                BlockRecord(block, x, conv1_out, inner, conv2_out, main, down_out, shortcut)
            )
            x = block.relu2(main + shortcut)
        pooled = torch.flatten(model.avgpool(x), 1)
    return ResidualRecord(images, stem_conv, stem, pooled_stem, winners, blocks, x, pooled)
