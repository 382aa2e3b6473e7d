"""LRP alpha=1, beta=0 read at the input, with zennit's rules and batch-norm canonizer.

Follows Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE 2015 (the alpha-beta rule), in the bias-free form
of Montavon et al., "Explaining nonlinear classification decisions with deep Taylor
decomposition", Pattern Recognition 2017 (alpha=1, beta=0 is their z+ rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.rules import Pass, ZPlus
from zennit.types import Activation, BatchNorm, Convolution

from attrlib.attribution import METHODS

STABILIZER = 1e-6  # added to each (non-negative) denominator, zennit's default


def lrp_composite() -> LayerMapComposite:
    """zennit composite for LRP alpha=1, beta=0 on a conv/BN/ReLU/max-pool/linear network.

    - Canonizer: `SequentialMergeBatchNorm` folds every batch norm into the conv before it
      (w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta),
      and turns the batch norm into the identity; the composite's context restores both.
    - Conv2d and Linear: zennit's `ZPlus` without bias, which is `AlphaBeta(alpha=1, beta=0)`
      computed with two modified forwards instead of four (the beta term is multiplied by 0):
      R_i = sum_j (x_i w_ij)^+ / sum_i' (x_i' w_i'j)^+ * R_j. Both sign pairs count as
      positive contributions ((x w)^+ = x^+ w^+ + x^- w^-), which matters at the first layer
      where the normalised pixels are negative. The tests check equality with `AlphaBeta`.
    - ReLU and the (identity) merged batch norm: `Pass`, relevance goes through unchanged.
    - Max-pool: no rule, so the gradient routes relevance to the arg-max (winner takes all);
      dropout is the identity in eval mode.
    """
    return LayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (BatchNorm, Pass()),
            (Convolution, ZPlus(stabilizer=STABILIZER, zero_params=["bias"])),
            (nn.Linear, ZPlus(stabilizer=STABILIZER, zero_params=["bias"])),
        ],
        canonizers=[SequentialMergeBatchNorm()],
    )


@METHODS.register("lrp")
def lrp(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """LRP alpha=1, beta=0 maps of `classes`, read at the input and summed over colour channels.

    One forward and one backward of the whole network with the rules of `lrp_composite`
    registered (hooks and batch-norm merge are removed/reverted on exit, also on error).
    Start relevance: the one-hot vector of the target class (zennit's attributors take the
    output relevance as the backward's `grad_outputs`).

    Args:
        model: a `VGGVOC` in eval mode.
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
    inputs = images.detach().requires_grad_(True)  # fresh leaf: the caller's tensor is untouched
    with lrp_composite().context(model):
        logits = model(inputs)  # (B, K)
        one_hot = F.one_hot(classes, logits.shape[1]).to(logits.dtype)  # (B, K) start relevance
        (relevance,) = torch.autograd.grad(logits, inputs, grad_outputs=one_hot)  # (B, 3, H, W)
    return relevance.sum(dim=1).detach()  # (B, H, W)
