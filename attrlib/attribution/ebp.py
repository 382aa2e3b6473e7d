"""Excitation backprop read at the attribution layer, with zennit's ExcitationBackprop rules.

Follows Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016: the
marginal winning probability of a unit is passed down to the units below in proportion to
their positive excitation, P(a_i | a_j) = a_i w_ij^+ / sum_i' a_i' w_i'j^+, starting from a
one-hot distribution on the target output unit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zennit.composites import ExcitationBackprop

from attrlib.attribution.base import register_layer_method
from attrlib.quantize import plain_weights

STABILIZER = 1e-6  # added to each denominator (zennit's default); the authors' code uses 1e-10


def ebp_composite() -> ExcitationBackprop:
    """zennit's ExcitationBackprop composite with the biases left out (Zhang et al.'s rule).

    Every linear and conv layer gets zennit's z+ rule without bias: relevance of unit j goes to
    input i in proportion to a_i w_ij^+ / sum_i' a_i' w_i'j^+ (zennit's ZPlus also counts
    negative inputs times negative weights; the head's inputs are post-ReLU, so none occur).
    Max-pool keeps its gradient (winner takes all); average pooling (a ResNet's head) passes
    relevance in proportion to its inputs (zennit's Norm rule); dropout is the identity in
    eval mode. No batch-norm canonizer: relevance is only read at the attribution layer, so
    the propagation never reaches a batch norm (the head is pooling + dropout + linear).
    """
    return ExcitationBackprop(stabilizer=STABILIZER, zero_params=["bias"])


@register_layer_method("ebp")
def ebp(model: nn.Module, feature: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Excitation-backprop maps of `classes` at `model.attribution_layer`.

    One forward of the head from the attribution feature and one backward of a one-hot output
    relevance through it with the excitation rules registered; the relevance arriving at the
    attribution feature is summed over channels, negatives clipped.

    Args:
        model: a network of a registered family in eval mode (its `head`); a quantized one
            is read through `quantize.plain_weights`, whose weights zennit can modify.
        feature: (B, C, h, w) `model.forward_features(images)`; not modified.
        classes: (B,) int64 target class per row, on the feature's device.
    Returns:
        (B, h, w) non-negative maps at the attribution layer's resolution (h = H // 16); each
        map sums to 1 (a probability distribution over positions) unless the target logit has
        no positive excitation.

    Paper: Zhang et al. 2016, read at the attribution layer as in Park et al. 2020.
    Deviations: none from the rule (no bias, positive weights, one-hot prior, winner-take-all
    max-pool); the non-contrastive variant, as in the authors' code. Denominators are
    stabilised by +1e-6 instead of the authors' +1e-10.
    """
    feature = feature.detach().requires_grad_(True)  # a fresh leaf: the graph starts here
    model = plain_weights(model)  # zennit's rules cannot see a parametrized (rounded) weight
    with ebp_composite().context(model):
        logits = model.head(feature)  # (B, K)
        one_hot = F.one_hot(classes, logits.shape[1]).to(logits.dtype)  # (B, K) start relevance
        (relevance,) = torch.autograd.grad(logits, feature, grad_outputs=one_hot)  # (B, C, h, w)
    return relevance.sum(dim=1).clamp(min=0).detach()  # (B, h, w)
