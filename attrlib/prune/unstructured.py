"""Unstructured pruning: single conv weights masked to zero under one global threshold.

`global_prune_` scores every conv weight (`criteria.UNSTRUCTURED_CRITERIA`) and attaches
`torch.nn.utils.prune` masks (weight = weight_orig * weight_mask, see `attrlib.masks`), so
pruned weights stay exactly zero through fine-tuning.

Paper: Park et al. (2020), iterative unstructured pruning, after Han et al. (2015) global
magnitude pruning.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from attrlib.masks import effective_weight, parameter_order_kept
from attrlib.prune.criteria import UNSTRUCTURED_CRITERIA, lookup


def global_prune_(model: nn.Module, fraction: float, criterion: str = "magnitude") -> nn.Module:
    """Mask the lowest-scoring `fraction` of the REMAINING conv weights, globally (in place).

    One call of `torch.nn.utils.prune.global_unstructured` over every conv's weight, ranking
    the criterion's scores. Already masked weights are excluded (torch's `PruningContainer`
    computes the new mask on the entries where the old mask is 1), so a call removes exactly
    `round(fraction * remaining)` weights (Python `round`, torch's
    `_compute_nparams_toprune`), and `k` calls at 0.2 leave ~0.8^k of them. Biases, batch
    norm and the classifier are not pruned. Ties go the way of `torch.topk`.

    Args:
        model: network with Conv2d layers; gets `weight_orig` parameters, `weight_mask`
            buffers and forward pre-hooks (weight = weight_orig * weight_mask).
        fraction: fraction in [0, 1] of the remaining conv weights to prune.
        criterion: name in `UNSTRUCTURED_CRITERIA` ("magnitude": the paper's |w|).
    Returns:
        `model` itself. Masks keep pruned weights exactly zero through any optimiser
        (momentum, weight decay): the gradient and the forward see only `orig * mask`.
    Paper: Park et al. (2020) iterative unstructured pruning, 20 % of the remaining weights
        per iteration, 16 iterations. Deviation: the authors threshold all conv weights at
        `int(total * percent)`, counting already-zero weights; this prunes the remaining ones.
    Raises:
        ValueError: `fraction` outside [0, 1], no conv, an unknown criterion, or scores that
            are not finite, >= 0 and of the weight's shape.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    score_fn = lookup(UNSTRUCTURED_CRITERIA, criterion)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layers to prune")
    # torch's pruning flattens weights and masks with `.view(-1)`, which channels-last
    # tensors (the training loop's layout) refuse; training converts them back
    model.to(memory_format=torch.contiguous_format)
    scores = {}
    for conv in convs:
        # current weights: `conv.weight` of a masked conv is stale after an optimiser step
        weight = effective_weight(conv)  # (C_out, C_in, k, k)
        score = score_fn(weight)  # (C_out, C_in, k, k)
        if score.shape != weight.shape:
            raise ValueError(
                f"criterion {criterion!r} returned shape {tuple(score.shape)}, "
                f"expected {tuple(weight.shape)}"
            )
        # torch's L1Unstructured ranks |score|: a negative score would rank as important
        if not bool((torch.isfinite(score) & (score >= 0)).all()):
            raise ValueError(
                f"criterion {criterion!r} returned scores that are not finite and >= 0"
            )
        scores[(conv, "weight")] = score.contiguous()
    with parameter_order_kept(convs):
        prune.global_unstructured(
            list(scores),
            pruning_method=prune.L1Unstructured,
            importance_scores=scores,
            amount=float(fraction),
        )
    return model


def global_magnitude_(model: nn.Module, amount: float) -> nn.Module:
    """`global_prune_(model, amount, "magnitude")`: the paper's global magnitude pruning."""
    return global_prune_(model, amount, criterion="magnitude")
