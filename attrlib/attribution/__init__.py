"""Attribution maps behind one batched call: `attribute(model, images, classes, method)`.

Every method is a registry entry `(model, images (B,3,H,W), classes (B,)) -> maps (B,h,w)` at
its natural resolution (the attribution layer or the input); `attribute` upsamples layer maps
to the input size (bilinear, align_corners=False). Maps are returned before min-max
normalisation (see `attrlib.metrics.normalize_maps`).

Methods that start at the attribution layer (Grad-CAM, EBP; `register_layer_method`) are
also entries of `FEATURE_METHODS`, `(model, feature (B,C,h,w), classes (B,)) -> maps (B,h,w)`,
where `feature` is `model.forward_features(images)`: an evaluation that already ran the trunk
for the logits passes that feature to `attribute` instead of paying for the trunk once more
per method.
"""

from attrlib.attribution.base import (
    FEATURE_METHODS,
    METHODS,
    AttributionFn,
    attribute,
    refusal,
    register_layer_method,
    upsample,
)

# Importing the method modules fills the registry; their order is the registry's and so the
# order of the paper's columns (the import sorter must leave it).
# isort: off
from attrlib.attribution import gradcam  # noqa: F401
from attrlib.attribution import ebp  # noqa: F401
from attrlib.attribution import lrp  # noqa: F401
from attrlib.attribution import rap  # noqa: F401
# isort: on

__all__ = [
    "FEATURE_METHODS",
    "METHODS",
    "AttributionFn",
    "attribute",
    "refusal",
    "register_layer_method",
    "upsample",
]
