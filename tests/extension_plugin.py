"""A plugin, as a researcher would write one outside attrlib: three decorated functions.

Imported by name (`plugins=["tests.extension_plugin"]` in the notebooks), it registers an
attribution method, a matching map (and its grid word), a structured pruning criterion and
a faithfulness metric; tests/test_extension.py runs the smoke study with them selected by
notebook parameters only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attrlib.attribution import METHODS
from attrlib.distill import MATCHINGS
from attrlib.faithfulness import register_faithfulness
from attrlib.prune import STRUCTURED_CRITERIA
from attrlib.study import COMPRESSION, Method


@METHODS.register("gradient_x_input")
def gradient_x_input(model, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Gradient x input summed over colour channels, positive part: (B, H, W)."""
    images = images.detach().requires_grad_(True)
    selected = model(images).gather(1, classes[:, None]).sum()  # rows independent: one backward
    (grad,) = torch.autograd.grad(selected, images)
    return F.relu((grad * images).sum(dim=1)).detach()


@MATCHINGS.register("gxf")
def gradient_x_feature_map(feature, logits, classes, create_graph=False, channel_keep=None):
    """ReLU of the channel sum of gradient x feature at the matching layer: (B, h, w)."""
    selected = logits.gather(1, classes[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, feature, create_graph=create_graph)
    if channel_keep is not None:
        grad = grad * channel_keep[:, :, None, None]
    return F.relu((grad * feature).sum(dim=1))


# its word in a profile's grid (`distill_methods: [kd, gxf]`): make all trains it with the
# teacher store, which then holds its maps too
COMPRESSION.register("gxf")(Method("gxf", "GxF", "#2ca02c", matching="gxf"))


@STRUCTURED_CRITERIA.register("l2")
def l2_filter_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each filter: (C_out,)."""
    return weight.flatten(1).norm(dim=1)


@register_faithfulness("grey_fill", higher_is_better=False)
def grey_fill(images, top, baseline, generator=None):
    """Deletion to the data set's mean colour (0 in the normalised input), whatever the
    evaluation's baseline."""
    return images.masked_fill(top, 0.0)
