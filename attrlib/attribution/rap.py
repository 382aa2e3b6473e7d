"""Relative Attributing Propagation (RAP) read at the input.

Follows Nam, Gur, Choi, Wolf, Lee, "Relative Attributing Propagation: Interpreting the
Comparative Contributions of Individual Units in Deep Neural Networks", AAAI 2020, as coded in
the authors' `modules/layers.py` (github.com/wjNam/Relative_Attributing_Propagation, the
`RAP_relprop` methods), which Park et al. (NeurIPS 2020) copied unchanged into
`pascal/explains/rap/modules/layers.py` of github.com/GeondoPark/attribute-preserve. Where the
paper is vague, the code's definitions are followed; the rule of each layer type is one
function below, driven by `rap` over the network's layers in reverse.

The propagation in one line per layer type (x = the layer's input, R = relevance at its output):
- top Linear (`_relprop_linear`): contributions x_i w_ci (plus a bias share) are turned into
  absolute values and rescaled to sum to the logit ("absolute influence normalisation");
- hidden Conv2d (`_relprop_conv`): positive and negative relevance are sent separately to the
  positive and negative contributions, proportionally, then the excess is subtracted evenly
  from every relevance-carrying input ("uncertain shifting"), so the total is conserved;
- input Conv2d (`_relprop_input_conv`): the z^B rule with the image's own min and max as bounds;
- BatchNorm2d, MaxPool2d, ReLU, Dropout, Flatten: pass relevance through (see each rule).

End to end, the input relevance of a sample sums to the target logit (up to rounding and the
rare dead ends noted in the rules); its positive part marks what drives the class and its
negative part what counts against it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attrlib.attribution import propagation
from attrlib.attribution.base import METHODS

# Masks are float tensors of 0 and 1 in the data's dtype, applied by multiplication: on CPU,
# `torch.where` and arithmetic with bool tensors are several times slower than float
# arithmetic, and these rules run on every activation of the network.


def _nonzero(b: torch.Tensor) -> torch.Tensor:
    """1 where b != 0, else 0, in b's dtype."""
    return torch.ne(b, 0, out=torch.empty_like(b))


def _safe_div(
    a: torch.Tensor, b: torch.Tensor, nonzero: torch.Tensor | None = None
) -> torch.Tensor:
    """a / b where b != 0, else 0 (the official `safe_divide`, without its 1e-9 detour).

    Bit for bit a / b where b != 0: the denominator is b + 0 there (and 1 elsewhere, so no
    inf or NaN arises to be masked). `nonzero` is `_nonzero(b)` when the caller has it.
    """
    nonzero = _nonzero(b) if nonzero is None else nonzero
    denominator = (1 - nonzero).add_(b)  # b where b != 0, 1 where b == 0
    return (a / denominator).mul_(nonzero)


def _shift(contrib: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Uncertain shifting: subtract the excess evenly from the non-zero entries of each sample.

    `contrib` (B, ...) is the proportional redistribution of `relevance` (B, ...); after the
    shift, `contrib.sum()` equals `relevance.sum()` per sample (official `shift_rel`). Inputs
    that received no relevance stay exactly zero.
    """
    dims = tuple(range(1, contrib.ndim))
    carrying = _nonzero(contrib)  # (B, ...)
    excess = contrib.sum(dims, keepdim=True) - relevance.sum(dims, keepdim=True)  # (B, 1, ...)
    shift = _safe_div(excess, carrying.sum(dims, keepdim=True))  # (B, 1, ...) per carrier
    return contrib.addcmul(carrying, shift, value=-1)  # contrib - shift where carrying


def _relative_prop(
    conv: nn.Conv2d,
    x: torch.Tensor,
    w_first: torch.Tensor,
    w_second: torch.Tensor,
    relevance: torch.Tensor,
) -> torch.Tensor:
    """One sign branch of the hidden-layer rule (official `Conv2d.RAP_relprop.pos_prop`).

    With z1 = conv(x, w_first) >= 0 and z2 = conv(x, w_second) >= 0 (the two groups of
    contributions of this input sign, as magnitudes), each output j with R_j != 0 hands out,
    proportionally to the contributions x_i w_ij of a group:
      R+_j                      to group 1 ("relevant": pushes the unit up),
      R-_j                      to group 2,
      (R+_j + R-_j) z2/(z1+z2)  to group 2 again (its relative share),
    and `_shift` then removes the surplus so the branch conserves sum(R). Per output that is
    one factor per group: s1 = R+/z1 and s2 = R-/z2 + R/(z1+z2) (each 0 where its z is 0; the
    official code's four gradients and its `(z1+z2)/(z1+z2)` factor reduce to these, equal
    up to rounding). Outputs with R_j = 0 get s = 0, so the official masking of z by R != 0
    is implied. Both groups run as one conv and one transposed conv on stacked weights.
    """
    weight = torch.cat([w_first, w_second])  # (2 C_out, C_in, k, k): both groups at once
    z1, z2 = propagation.conv(conv, x, weight).chunk(2, dim=1)  # (B, C_out, h, w) each, >= 0
    rel_pos, rel_neg = relevance.clamp(min=0), relevance.clamp(max=0)
    s1 = _safe_div(rel_pos, z1)  # (B, C_out, h, w)
    has_z2 = _nonzero(z2)  # (B, C_out, h, w); z2 != 0 implies z1 + z2 > 0
    s2 = (_safe_div(rel_neg, z2, has_z2) + _safe_div(relevance, z1 + z2)).mul_(has_z2)
    grad = propagation.conv_input_grad(conv, x, weight, torch.cat([s1, s2], dim=1))
    return _shift(x * grad, relevance)


def _relprop_conv(conv: nn.Conv2d, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Hidden conv: relevant/irrelevant split of contributions, then uncertain shifting.

    Contributions x_i w_ij are grouped by sign: for x >= 0, group 1 = x w+ (raises the unit)
    and group 2 = x |w-| (lowers it); for x < 0 the roles of w+ and w- swap. Each branch runs
    `_relative_prop` and is shifted to conserve sum(R) on its own (as the official code does:
    a layer with inputs of both signs would return 2 * sum(R); in VGG every hidden conv reads a
    ReLU output, so only the x >= 0 branch exists and the layer conserves sum(R) exactly).
    The conv bias receives nothing (the official bias handling is commented out).

    Args: conv layer; x (B, C_in, H, W) its input; relevance (B, C_out, h, w) at its output.
    Returns: (B, C_in, H, W) relevance at its input.
    """
    propagation.check_conv(conv)
    w = conv.weight.detach()
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    signed = bool(x.amin() < 0)  # False behind a ReLU: no x < 0 branch, no clamp of x
    out = _relative_prop(conv, x.clamp(min=0) if signed else x, w_pos, -w_neg, relevance)
    if signed:  # the x < 0 branch is exactly zero otherwise; skip its cost
        out = out + _relative_prop(conv, x.clamp(max=0), -w_pos, w_neg, relevance)
    return out


def _relprop_input_conv(conv: nn.Conv2d, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """First conv (reads the image): the z^B rule with per-image bounds (`final_backward`).

    With L, H the min and max of each image over channels and pixels (not the data range),
    z_j = sum_i x_i w_ij - L w+_ij - H w-_ij >= 0 and R_i = sum_j (x_i w_ij - L w+_ij
    - H w-_ij) R_j / z_j. Conserves sum(R) wherever z_j != 0. Padded pixels contribute nothing.
    The three terms run as one conv and one transposed conv: the image, L and H stacked as
    channels, against w, -w+ and -w- stacked likewise.
    """
    propagation.check_conv(conv)
    w = conv.weight.detach()
    x = x.detach()
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)  # (B, C_in, H, W), per image
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)  # (B, C_in, H, W)
    inputs = torch.cat([x, low, high], dim=1)  # (B, 3 C_in, H, W)
    weight = torch.cat([w, -w.clamp(min=0), -w.clamp(max=0)], dim=1)  # (C_out, 3 C_in, k, k)
    z = propagation.conv(conv, inputs, weight)  # (B, C_out, h, w) = x*w - L*w+ - H*w-
    s = _safe_div(relevance, z)  # (B, C_out, h, w)
    grad = propagation.conv_input_grad(conv, inputs, weight, s)  # (B, 3 C_in, H, W)
    terms = (inputs * grad).unflatten(1, (3, x.shape[1]))  # (B, 3, C_in, H, W)
    return terms.sum(dim=1)  # (B, C_in, H, W)


def _relprop_linear(linear: nn.Linear, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Top linear layer: absolute influence normalisation (official `Linear.first_prop`).

    For target c: contributions x_i w_ci; the bias b_c is split between the positive
    (x+ w+ and x- w-) and negative (x+ w- and x- w+) totals P and N as b_c P/(P+N) spread
    over the x+ w+ contributions and b_c N/(P+N) over the x+ w-, so the contributions sum to
    the logit z_c. Then `redistribute`: R_i = |r_i| / sum_k |r_k| * z_c, so every unit gets
    relevance of the logit's sign, in proportion to how strongly it influenced the output.

    Args: linear layer; x (B, D) its input; classes (B,) target class per row.
    Returns: (B, D) relevance at its input, summing to the logits z_c.
    """
    w = linear.weight.detach()[classes]  # (B, D): each row's target-class weights
    bias = linear.bias.detach()[classes, None] if linear.bias is not None else 0.0  # (B, 1)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    z_pp = (x_pos * w_pos).sum(-1, keepdim=True)  # (B, 1)
    z_pn = (x_pos * w_neg).sum(-1, keepdim=True)  # (B, 1)
    pos = z_pp + (x_neg * w_neg).sum(-1, keepdim=True)  # (B, 1), >= 0
    neg = z_pn + (x_neg * w_pos).sum(-1, keepdim=True)  # (B, 1), <= 0
    bias_pos = bias * _safe_div(pos, pos + neg)  # (B, 1)
    bias_neg = bias * _safe_div(neg, pos + neg)  # (B, 1)
    contrib = (
        x * w  # = the four sign groups' contributions, each entry lies in exactly one
        + x_pos * w_pos * _safe_div(bias_pos, z_pp)
        + x_pos * w_neg * _safe_div(bias_neg, z_pn)
    )  # (B, D)
    magnitude = contrib.abs().sum(-1, keepdim=True)  # (B, 1)
    return _safe_div(contrib.abs(), magnitude) * contrib.sum(-1, keepdim=True)  # (B, D)


def _relprop_batchnorm(
    bn: nn.BatchNorm2d, x: torch.Tensor, relevance: torch.Tensor
) -> torch.Tensor:
    """BatchNorm: relevance passes unchanged except at exact zeros (official rule, simplified).

    The official rule subtracts a bias share beta_c / n_c from each of the n_c positions with
    R != 0, sends (R - share) and share back through R_i = x_i w_c * S_i / (x_i w_c) with
    w_c = gamma_c / sqrt(var_c^2 + eps) (sic), and adds them: algebraically R_i * [x_i w_c != 0].
    So BN is an identity that drops relevance at inputs equal to 0 or in channels with
    gamma = 0 (checked against the literal formula in the tests). Not folded into the conv:
    folding is equivalent only when every BN scale is positive (a negative scale swaps w+
    and w- in the conv rule).
    """
    keep = _nonzero(x)  # (B, C, H, W)
    if bn.weight is not None and bool((bn.weight == 0).any()):
        keep = keep * _nonzero(bn.weight.detach())[None, :, None, None]
    return relevance * keep


def _relprop_maxpool(
    pool: nn.MaxPool2d,
    x: torch.Tensor,
    relevance: torch.Tensor,
    z: torch.Tensor,
    winners: torch.Tensor,
) -> torch.Tensor:
    """MaxPool: winner takes all (official `RelPropSimple`: R_i = x_i * d z/d x_i * R / z).

    Each window's relevance goes to its arg-max input (the one autograd routes to, through
    the same backward kernel); windows whose max is 0 pass nothing on. `z` and `winners` are
    the pool's output and arg-max from the forward pass (`propagation.record_inputs`): the
    routing is the forward's, not that of a second pooling.
    """
    grad = propagation.unpool(pool, x, _safe_div(relevance, z), winners)  # (B, C, H, W)
    return x * grad  # R at each window's arg-max (x = z there), 0 elsewhere


def _relprop_identity(layer: nn.Module, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """ReLU and (eval-mode) Dropout pass relevance through unchanged (official `RelProp`)."""
    return relevance


def _relprop_flatten(layer: nn.Module, x: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Flatten: give the relevance back its feature-map shape."""
    return relevance.reshape(x.shape)


# max-pools are not here: their rule also takes the forward's output and arg-max (see `rap`)
_RULES: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.Conv2d: _relprop_conv,
    nn.BatchNorm2d: _relprop_batchnorm,
    nn.ReLU: _relprop_identity,
    nn.Dropout: _relprop_identity,
    nn.Flatten: _relprop_flatten,
}


def _rule(layer: nn.Module) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    for kind, rule in _RULES.items():
        if isinstance(layer, kind):
            return rule
    raise TypeError(f"RAP has no rule for {type(layer).__name__}")


def _relprop_proportional(
    parts: list[torch.Tensor], total: torch.Tensor, relevance: torch.Tensor
) -> list[torch.Tensor]:
    """A sum's rule (official `RelPropSimple` on `Add`, and on average pooling): each input
    x_i gets x_i * R / z of the output z it feeds, 0 where z == 0; `total` is z already
    broadcast to the parts' shape."""
    scaled = _safe_div(relevance, total)
    return [part * scaled for part in parts]


def _rap_residual(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """RAP through a BasicBlock ResNet (attrlib.resnet), its input relevance (B, 3, H, W).

    The authors' ResNet modules (wjNam/Relative_Attributing_Propagation, `modules/resnet.py`,
    `RAP_relprop`): the top-linear rule on `fc`, average pooling and each residual sum split in
    proportion to their inputs (their `RelPropSimple`), batch norms passing relevance on, the
    hidden-conv rule on every conv of a block and of its downsample, the branches' relevance
    added where the block's input forks (their Bottleneck's `x1 + x`; their BasicBlock's
    `Clone.RAP_relprop` cannot run as written, and `Clone.relprop` of LRP adds too), the
    max-pool winner takes all and the z^B rule on the stem's conv.
    """
    rec = propagation.record_residual(model, images)
    x = rec.features  # (B, C, h, w)
    relevance = _relprop_linear(model.fc, rec.pooled, classes)  # (B, C)
    mean = rec.pooled[:, :, None, None].expand_as(x)  # each position's pooled output
    (relevance,) = _relprop_proportional([x / x[0, 0].numel()], mean, relevance[:, :, None, None])
    for b in reversed(rec.blocks):
        block = b.block
        r_main, r_short = _relprop_proportional(
            [b.main, b.shortcut], b.main + b.shortcut, relevance
        )
        r = _relprop_batchnorm(block.bn2, b.conv2_out, r_main)
        r = _relprop_conv(block.conv2, b.inner, r)
        r = _relprop_batchnorm(block.bn1, b.conv1_out, r)  # relu1 passes
        r_in = _relprop_conv(block.conv1, b.x, r)
        if block.downsample is not None:
            conv, bn = block.downsample
            r_short = _relprop_conv(conv, b.x, _relprop_batchnorm(bn, b.down_out, r_short))
        relevance = r_in + r_short  # (B, C_in, h, w)
    relevance = _relprop_maxpool(model.maxpool, rec.stem, relevance, rec.pooled_stem, rec.winners)
    relevance = _relprop_batchnorm(model.bn1, rec.stem_conv, relevance)  # the ReLU passes
    return _relprop_input_conv(model.conv1, images, relevance)


@METHODS.register("rap")
def rap(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """RAP relevance of `classes` at the input, summed over colour channels.

    One forward pass records every layer's input (and every max-pool's arg-max) for the whole
    batch; one reverse pass applies the layer rules above (batched tensor ops; the only Python
    loop is over layers). The model is evaluated in eval mode and left unchanged (no hooks, no
    parameter gradients).

    Args:
        model: a `VGGVOC`-like network: `features` (Conv2d/BatchNorm2d/ReLU/MaxPool2d) and
            `classifier` (Dropout + one Linear on the flattened final feature map), or a
            BasicBlock ResNet (`_rap_residual`).
        images: (B, 3, H, W) normalised images.
        classes: (B,) int64 target class per row, on the images' device.
    Returns:
        (B, H, W) signed relevance; each map sums to the logit of its class (up to rounding).

    Paper: Nam et al., AAAI 2020, as coded in wjNam/Relative_Attributing_Propagation
    `modules/layers.py` (`RAP_relprop`), reused by Park et al. 2020.
    Deviations from the official code (none changes the result on VGGVOC):
    - the top-linear rule is chosen by position (the classifier's Linear), not by the
      official test `R.max() == 1` on the whole batch; the z^B rule by position (the first
      conv), not by `x.shape[1] == 3`, which would also catch a hidden conv pruned to 3
      channels; a classifier with several Linears (whose official non-top rule differs from
      the conv rule) is rejected;
    - the top linear layer uses the target row of the weights directly instead of the
      gradient trick, the BN rule is written in its simplified closed form, and the hidden
      conv rule runs one conv and one transposed conv per branch (stacked weights, two
      factors s1, s2) instead of four convs and four gradients: equal up to float rounding;
    - the authors' evaluation flips the map's sign when the logit is negative and clips
      negatives before scoring; that is post-processing, left to the caller.
    """
    if propagation.residual_network(model):
        return _rap_residual(model, images, classes).sum(dim=1).detach()  # (B, H, W)
    layers = propagation.flat_layers(model)
    inputs, winners = propagation.record_inputs(model, layers, images)  # whole batch
    relevance = _relprop_linear(layers[-1], inputs[-1], classes)  # (B, D)
    for k in reversed(range(len(layers) - 1)):
        layer, x = layers[k], inputs[k]
        if k == 0 and isinstance(layer, nn.Conv2d):  # the conv that reads the image
            relevance = _relprop_input_conv(layer, x, relevance)  # (B, 3, H, W)
        elif isinstance(layer, nn.MaxPool2d):
            relevance = _relprop_maxpool(layer, x, relevance, inputs[k + 1], winners[k])
        else:
            relevance = _rule(layer)(layer, x, relevance)
    return relevance.sum(dim=1).detach()  # (B, H, W)


# the rules follow sequential networks and BasicBlock ResNets (attrlib.attribution.base.refusal)
rap.refuses = propagation.walk_refusal
