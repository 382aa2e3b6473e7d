"""Networks shared by the attribution tests."""

from __future__ import annotations

import torch
from torch import nn

from attrlib.models import vgg16_bn_voc


def random_vgg(num_classes: int, input_size: int, seed: int) -> nn.Module:
    """A width/16 VGG16-BN with random conv biases, batch-norm statistics and classifier.

    Freshly built networks have zero biases, unit BN statistics and a near-zero classifier:
    rules that mishandle any of those would pass unnoticed on them. Some BN scales are
    negative, so merging BN into a conv must flip signs.
    """
    torch.manual_seed(seed)
    return _randomised(vgg16_bn_voc(width_div=16, num_classes=num_classes, input_size=input_size))


@torch.no_grad()
def _randomised(model: nn.Module) -> nn.Module:
    """Random conv biases (where there are), batch-norm statistics and affine, classifier."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(-0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 0.3)
            m.bias.normal_(0.0, 0.1)
    return model


def random_resnet(num_classes: int, input_size: int, seed: int) -> nn.Module:
    """A width/16 ResNet-18 (last stage at stride 1) with random batch-norm statistics and
    classifier, for the same reason as `random_vgg`."""
    from attrlib.resnet import ResNetVOC

    torch.manual_seed(seed)
    return _randomised(ResNetVOC.create(16, num_classes, input_size))
