"""LRP alpha=1, beta=0 read at the input: zennit's z+ rule, batch norm merged into the conv.

Follows Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE 2015 (the alpha-beta rule), in the bias-free form
of Montavon et al., "Explaining nonlinear classification decisions with deep Taylor
decomposition", Pattern Recognition 2017 (alpha=1, beta=0 is their z+ rule).

The rules are those of zennit's `ZPlus` composite with the `SequentialMergeBatchNorm`
canonizer (the tests check equality with zennit's `AlphaBeta(1, 0)` attributor), applied
layer by layer (`attrlib.attribution.propagation`) instead of through zennit's hooks: zennit
also runs the network's own backward and a second, all-zero z+ term (x^- w^-) at every layer
whose input is a ReLU output, each costing about as much as the rule and changing nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from attrlib.attribution import propagation
from attrlib.attribution.base import METHODS

STABILIZER = 1e-6  # added to each (non-negative) denominator, zennit's default


def _merged_weight(conv: nn.Conv2d, bn: nn.Module | None) -> torch.Tensor:
    """The conv's weight with the batch norm after it merged in: w * gamma / sqrt(var + eps).

    As zennit's `MergeBatchNorm`; the merged bias is not needed (the rule ignores biases).
    """
    weight = conv.weight.detach()
    if not isinstance(bn, nn.BatchNorm2d):
        return weight
    gamma = bn.weight.detach() if bn.weight is not None else 1.0
    scale = gamma / (bn.running_var + bn.eps) ** 0.5  # (C_out,)
    return weight * scale[:, None, None, None]  # (C_out, C_in, k, k)


def _relprop_conv(
    conv: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor, relevance: torch.Tensor
) -> torch.Tensor:
    """z+ rule of a conv: R_i = sum_j (x_i w_ij)^+ / (sum_i' (x_i' w_i'j)^+ + eps) R_j.

    (x w)^+ = x^+ w^+ + x^- w^-: a conv reading a ReLU output has no x^- term, and the
    image-reading conv gets both terms as one conv over [x^+, x^-] stacked as channels.

    Args: conv (its geometry); weight (C_out, C_in, k, k) merged weight; x (B, C_in, H, W) its
        input; relevance (B, C_out, h, w) at its output.
    Returns: (B, C_in, H, W) relevance at its input.
    """
    propagation.check_conv(conv)
    signed = bool(x.amin() < 0)
    if signed:
        inputs = torch.cat([x.clamp(min=0), x.clamp(max=0)], dim=1)  # (B, 2 C_in, H, W)
        weight = torch.cat([weight.clamp(min=0), weight.clamp(max=0)], dim=1)
    else:
        inputs, weight = x, weight.clamp(min=0)
    z = propagation.conv(conv, inputs, weight)  # (B, C_out, h, w), >= 0
    grad = propagation.conv_input_grad(conv, inputs, weight, relevance / (z + STABILIZER))
    out = inputs * grad  # (B, C_in, H, W), or (B, 2 C_in, H, W) if signed
    if signed:
        from_pos, from_neg = out.chunk(2, dim=1)  # the x^+ w^+ and x^- w^- shares
        out = from_pos + from_neg  # (B, C_in, H, W)
    return out


def _relprop_linear(linear: nn.Linear, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """z+ rule of the top linear layer for a one-hot start on `classes`: only the target row.

    Args: linear layer; x (B, D) its input; classes (B,) target class per row.
    Returns: (B, D) relevance at its input, summing to 1 per row (up to the stabilizer).
    """
    w = linear.weight.detach()[classes]  # (B, D): each row's target-class weights
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    contrib = x_pos * w.clamp(min=0) + x_neg * w.clamp(max=0)  # (B, D), (x w)^+
    return contrib / (contrib.sum(dim=1, keepdim=True) + STABILIZER)


def _stabilized(z: torch.Tensor) -> torch.Tensor:
    """z moved away from 0 by the stabilizer, keeping its sign (0 counts as positive): zennit's
    `Stabilizer` for rules whose denominator may be negative."""
    return z + ((z == 0).to(z.dtype) + z.sign()) * STABILIZER


def _relprop_sum(parts: list[torch.Tensor], relevance: torch.Tensor) -> list[torch.Tensor]:
    """The residual sum's rule (zennit's `Norm` on its `Sum`): each summand gets the share of
    the relevance that its value is of the sum, R_i = x_i / (sum_j x_j) R."""
    scaled = relevance / _stabilized(sum(parts))  # (B, C, h, w)
    return [part * scaled for part in parts]


def _lrp_residual(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """LRP z+ through a BasicBlock ResNet (attrlib.resnet), its input relevance (B, 3, H, W).

    zennit's rules with its `ResNetCanonizer`: z+ on every conv (batch norm merged) and on the
    classifier, the residual sum split in proportion to its two summands, global average
    pooling likewise in proportion to its inputs, max-pool winner takes all, ReLU passes.
    """
    rec = propagation.record_residual(model, images)
    x = rec.features  # (B, C, h, w)
    relevance = _relprop_linear(model.fc, rec.pooled, classes)  # (B, C)
    # average pooling: each position's share of its channel's mean
    relevance = x * (relevance / _stabilized(rec.pooled))[:, :, None, None] / x[0, 0].numel()
    for b in reversed(rec.blocks):
        block = b.block
        r_main, r_short = _relprop_sum([b.main, b.shortcut], relevance)
        r_inner = _relprop_conv(
            block.conv2, _merged_weight(block.conv2, block.bn2), b.inner, r_main
        )
        r_in = _relprop_conv(block.conv1, _merged_weight(block.conv1, block.bn1), b.x, r_inner)
        if block.downsample is not None:
            conv, bn = block.downsample
            r_short = _relprop_conv(conv, _merged_weight(conv, bn), b.x, r_short)
        relevance = r_in + r_short  # (B, C_in, h, w): the fork adds its branches' shares
    relevance = propagation.unpool(model.maxpool, rec.stem, relevance, rec.winners)
    return _relprop_conv(model.conv1, _merged_weight(model.conv1, model.bn1), images, relevance)


@METHODS.register("lrp")
def lrp(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """LRP alpha=1, beta=0 maps of `classes`, read at the input and summed over colour channels.

    One forward records every layer's input for the whole batch; the relevance of a one-hot
    output then goes back layer by layer:
    - Linear and Conv2d: the z+ rule (biases ignored), each batch norm merged into the conv
      before it: w' = w * gamma / sqrt(var + eps);
    - BatchNorm2d (merged), ReLU, Dropout (eval mode): relevance passes unchanged;
    - MaxPool2d: winner takes all, to the arg-max the forward chose (zennit leaves max-pool
      to its gradient, which routes the same way).
    The model is left unchanged (no hooks, no parameter changes or gradients).

    Args:
        model: a `VGGVOC`-like network: `features` (Conv2d/BatchNorm2d/ReLU/MaxPool2d) and
            `classifier` (Dropout + one Linear on the flattened final feature map).
        images: (B, 3, H, W) normalised images (not modified).
        classes: (B,) int64 target class per row, on the images' device.
    Returns:
        (B, H, W) non-negative maps; each sums to 1 (relevance is conserved without bias
        terms) up to relevance stranded at units whose positive contributions are all zero.

    Paper: Bach et al. 2015 alpha-beta rule with alpha=1, beta=0 (Montavon et al. 2017 z+), as
    evaluated in Park et al. 2020.
    Deviations from the authors' code (which runs the RAP repository's `relprop` on
    `R = logit * one_hot` and flips the map's sign when the logit is negative):
    - start relevance one-hot instead of |logit| * one-hot: a positive factor per map, removed
      by min-max normalisation;
    - batch norm merged into the conv before applying the rule (theirs passes relevance
      through batch norm and applies the rule to the raw conv weights: the same unless a BN
      scale is negative);
    - alpha-beta on the first conv too (theirs uses the z^B rule with the image's min/max),
      as the specification asks for alpha=1, beta=0 throughout.
    """
    if propagation.residual_network(model):
        return _lrp_residual(model, images, classes).sum(dim=1).detach()  # (B, H, W)
    layers = propagation.flat_layers(model)
    inputs, winners = propagation.record_inputs(model, layers, images)  # whole batch
    relevance = _relprop_linear(layers[-1], inputs[-1], classes)  # (B, D)
    for k in reversed(range(len(layers) - 1)):
        layer, x = layers[k], inputs[k]
        if isinstance(layer, nn.Conv2d):
            weight = _merged_weight(layer, layers[k + 1])
            relevance = _relprop_conv(layer, weight, x, relevance)
        elif isinstance(layer, nn.MaxPool2d):
            relevance = propagation.unpool(layer, x, relevance, winners[k])
        elif isinstance(layer, nn.Flatten):
            relevance = relevance.reshape(x.shape)
        elif not isinstance(layer, (nn.BatchNorm2d, nn.ReLU, nn.Dropout)):
            raise TypeError(f"LRP has no rule for {type(layer).__name__}")
    return relevance.sum(dim=1).detach()  # (B, H, W)


# the rules follow sequential networks and BasicBlock ResNets (attrlib.attribution.base.refusal)
lrp.refuses = propagation.walk_refusal
