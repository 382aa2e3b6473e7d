"""RAP: layer rules against slow naive loops, conservation, sign separation, contracts.

No library implements RAP, so the rules are checked against independent loop versions of the
official `RAP_relprop` definitions (wjNam/Relative_Attributing_Propagation, modules/layers.py)
and against properties the method guarantees.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from attrlib.attribution import METHODS, attribute
from attrlib.attribution.propagation import maxpool
from attrlib.attribution.rap import (
    _relprop_batchnorm,
    _relprop_conv,
    _relprop_input_conv,
    _relprop_linear,
    _relprop_maxpool,
    rap,
)
from attrlib.models import vgg16_bn_voc


def _tiny_model(seed: int = 0) -> nn.Module:
    """Tiny VGG (widths 4..32, 32 px, 5 classes) with non-trivial BN statistics and logits."""
    torch.manual_seed(seed)
    model = vgg16_bn_voc(width_div=16, num_classes=5, input_size=32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.3)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.3)
                m.bias.normal_(0.0, 0.1)
    return model.eval()


# ---------------------------------------------------------------- naive loop references


def _naive_hidden_conv(x, w, rel, pad):
    """Official hidden-conv rule (`pos_prop` + `shift_rel`, both sign branches), with loops.

    x (C_in, H, W), w (C_out, C_in, k, k), rel (C_out, H', W'); stride 1; numpy float64.
    """
    c_in, height, width = x.shape
    c_out, _, k, _ = w.shape
    w_pos, w_neg = np.maximum(w, 0), np.minimum(w, 0)
    out = np.zeros_like(x)
    for sign in (1.0, -1.0):
        x1 = np.where(sign * x > 0, x, 0.0)
        w1, w2 = (w_pos, -w_neg) if sign > 0 else (-w_pos, w_neg)
        contrib = np.zeros_like(x)
        for o in range(c_out):
            for i in range(rel.shape[1]):
                for j in range(rel.shape[2]):
                    r = rel[o, i, j]
                    if r == 0:
                        continue
                    terms = []  # (c, row, col, group-1 part, group-2 part)
                    for c in range(c_in):
                        for ki in range(k):
                            for kj in range(k):
                                row, col = i + ki - pad, j + kj - pad
                                if 0 <= row < height and 0 <= col < width:
                                    a = x1[c, row, col]
                                    terms.append(
                                        (c, row, col, a * w1[o, c, ki, kj], a * w2[o, c, ki, kj])
                                    )
                    z1 = sum(t[3] for t in terms)
                    z2 = sum(t[4] for t in terms)
                    if z1 + z2 == 0:
                        continue
                    r_pos, r_neg = max(r, 0.0), min(r, 0.0)
                    for c, row, col, a1, a2 in terms:
                        if z1 != 0:  # R+ in full to group 1
                            contrib[c, row, col] += r_pos * a1 / z1
                        if z2 != 0:  # R- in full, and R * z2 / (z1 + z2), to group 2
                            contrib[c, row, col] += r_neg * a2 / z2
                            contrib[c, row, col] += r * (z2 / (z1 + z2)) * a2 / z2
        carrying = contrib != 0
        if carrying.any():  # uncertain shifting: conserve sum(R) per branch
            contrib[carrying] -= (contrib.sum() - rel.sum()) / carrying.sum()
        out += contrib
    return out


def _naive_input_conv(x, w, rel, pad):
    """Official z^B rule of the first conv (`final_backward`) with loops; per-image L and H."""
    c_in, height, width = x.shape
    c_out, _, k, _ = w.shape
    low, high = x.min(), x.max()
    out = np.zeros_like(x)
    for o in range(c_out):
        for i in range(rel.shape[1]):
            for j in range(rel.shape[2]):
                terms = []
                for c in range(c_in):
                    for ki in range(k):
                        for kj in range(k):
                            row, col = i + ki - pad, j + kj - pad
                            if 0 <= row < height and 0 <= col < width:
                                wv = w[o, c, ki, kj]
                                part = x[c, row, col] * wv - low * max(wv, 0) - high * min(wv, 0)
                                terms.append((c, row, col, part))
                z = sum(t[3] for t in terms)
                if z != 0:
                    for c, row, col, part in terms:
                        out[c, row, col] += part * rel[o, i, j] / z
    return out


def _naive_top_linear(x, w, b, cls):
    """Official `first_prop` + `redistribute` for one sample, with a loop over inputs."""
    pos = neg = z_pp = z_pn = 0.0
    for xi, wi in zip(x, w[cls], strict=True):
        c = xi * wi
        if (xi > 0) == (wi > 0) and c != 0:
            pos += c
        elif c != 0:
            neg += c
        if xi > 0 and wi > 0:
            z_pp += c
        if xi > 0 and wi < 0:
            z_pn += c
    bias_pos = b[cls] * pos / (pos + neg)
    bias_neg = b[cls] * neg / (pos + neg)
    r = []
    for xi, wi in zip(x, w[cls], strict=True):
        ri = xi * wi
        if xi > 0 and wi > 0:
            ri += xi * wi * bias_pos / z_pp
        if xi > 0 and wi < 0:
            ri += xi * wi * bias_neg / z_pn
        r.append(ri)
    r = np.array(r)
    return np.abs(r) / np.abs(r).sum() * r.sum()


def _official_batchnorm_literal(bn, x, rel):
    """The official `BatchNorm2d.RAP_relprop`, transcribed term by term (with its var**2)."""

    def safe_divide(a, b):
        return a / (b + b.eq(0).type(b.type()) * 1e-9) * b.ne(0).type(b.type())

    weight = bn.weight[None, :, None, None] / (
        (bn.running_var[None, :, None, None].pow(2) + bn.eps).pow(0.5)
    )
    bias = bn.bias[:, None, None]
    nonzero = rel.ne(0).type(rel.type())
    bias_p = safe_divide(bias * nonzero, nonzero.sum(dim=[2, 3], keepdim=True))
    rel = rel - bias_p
    out = x * (safe_divide(rel, x * weight) * weight)
    return out + x * (safe_divide(bias_p, x * weight) * weight)


# ---------------------------------------------------------------- layer rules


def _random_conv(seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, kernel_size=3, padding=1).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    rel = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    rel[rel.abs() < 0.3] = 0.0  # some outputs carry no relevance
    return conv, x, rel


@pytest.mark.parametrize("signed_input", [False, True], ids=["relu-input", "signed-input"])
def test_hidden_conv_rule_equals_naive_loops(signed_input):
    conv, x, rel = _random_conv(0)
    if not signed_input:
        x = x.clamp(min=0)  # a ReLU output, as in VGG
    fast = _relprop_conv(conv, x, rel)
    w = conv.weight.detach().numpy()
    for b in range(x.shape[0]):
        slow = _naive_hidden_conv(x[b].numpy(), w, rel[b].numpy(), pad=1)
        np.testing.assert_allclose(fast[b].numpy(), slow, rtol=1e-9, atol=1e-12)


def test_hidden_conv_conserves_relevance_per_sample():
    conv, x, rel = _random_conv(1)
    x = x.clamp(min=0)
    out = _relprop_conv(conv, x, rel)
    torch.testing.assert_close(out.sum((1, 2, 3)), rel.sum((1, 2, 3)), rtol=1e-10, atol=1e-12)
    assert (out[x == 0] == 0).all()  # dead inputs receive nothing, not even a shift
    assert (out > 0).any() and (out < 0).any()


def test_input_conv_rule_equals_naive_loops_and_conserves():
    _, _, rel = _random_conv(2)
    conv = nn.Conv2d(3, 3, kernel_size=3, padding=1).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    fast = _relprop_input_conv(conv, x, rel)
    w = conv.weight.detach().numpy()
    for b in range(x.shape[0]):
        slow = _naive_input_conv(x[b].numpy(), w, rel[b].numpy(), pad=1)
        np.testing.assert_allclose(fast[b].numpy(), slow, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fast.sum((1, 2, 3)), rel.sum((1, 2, 3)))


def test_top_linear_rule_equals_naive_loop_and_normalises_to_the_logit():
    torch.manual_seed(3)
    linear = nn.Linear(12, 4).double()
    x = torch.randn(3, 12, dtype=torch.float64)  # signed inputs exercise all four groups
    classes = torch.tensor([0, 2, 3])
    fast = _relprop_linear(linear, x, classes)
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    for i, cls in enumerate(classes.tolist()):
        np.testing.assert_allclose(fast[i].numpy(), _naive_top_linear(x[i].numpy(), w, b, cls))
    logits = linear(x).gather(1, classes[:, None]).detach()  # (B, 1)
    torch.testing.assert_close(fast.sum(1, keepdim=True), logits)
    assert (fast * logits.sign() >= 0).all()  # every unit carries the logit's sign


def test_batchnorm_rule_equals_official_literal_formula():
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.copy_(torch.tensor([1.3, 0.0, -0.7]))  # a dead and a negative channel
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    x[x.abs() < 0.2] = 0.0
    rel = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    rel[rel.abs() < 0.3] = 0.0
    expected = _official_batchnorm_literal(bn, x, rel).detach()
    torch.testing.assert_close(_relprop_batchnorm(bn, x, rel), expected)


def test_maxpool_rule_sends_each_window_to_its_argmax():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    rel = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    pool = nn.MaxPool2d(2, 2)
    fast = _relprop_maxpool(pool, x, rel, *maxpool(pool, x))
    slow = torch.zeros_like(x)
    for b in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    window = x[b, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    r, s = divmod(int(window.argmax()), 2)
                    slow[b, c, 2 * i + r, 2 * j + s] = rel[b, c, i, j]
    torch.testing.assert_close(fast, slow)


# ---------------------------------------------------------------- end to end


def test_rap_is_registered():
    assert METHODS.get("rap") is rap


def test_maps_sum_to_the_target_logit():
    model = _tiny_model(0).double()
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 4])
    maps = attribute(model, images, classes, "rap")
    logits = model(images).gather(1, classes[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum((1, 2)), logits, rtol=1e-9, atol=1e-9)


def test_float32_maps_are_finite_signed_and_conserve():
    model = _tiny_model(1)
    images = torch.randn(3, 3, 32, 32)
    classes = torch.tensor([0, 3, 4])
    maps = attribute(model, images, classes, "rap")
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert ((maps > 0).flatten(1).any(1) & (maps < 0).flatten(1).any(1)).all()  # both signs
    logits = model(images).gather(1, classes[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum((1, 2)), logits, rtol=1e-3, atol=1e-4)


def test_relevance_stays_in_the_receptive_field_of_the_used_features():
    """Class 0 reads only the 3 left columns of the 8x8 final map: input cols <= 14 only."""
    torch.manual_seed(6)
    features = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    model = nn.Module()
    model.features = features
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(4 * 8 * 8, 2))
    with torch.no_grad():
        weight = torch.randn(2, 4, 8, 8)
        weight[0, :, :, 3:] = 0.0  # class 0: left columns only
        model.classifier[1].weight.copy_(weight.flatten(1))
    model.eval()
    images = torch.randn(2, 3, 32, 32) + 0.5
    maps = rap(model, images, torch.tensor([0, 0]))
    assert (maps[:, :, 15:] == 0).all()  # receptive field of final cols 0..2 ends at col 14
    assert (maps[:, :, :16] > 0).flatten(1).any(1).all()


def _left_right_detector() -> nn.Module:
    """Hand-set net: class 0 = brightness in the left half, class 1 = in the right half."""
    conv1 = nn.Conv2d(3, 1, 3, padding=1)
    conv2 = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv1.weight.fill_(1.0 / 27)  # local mean brightness
        conv1.bias.zero_()
        conv2.weight.zero_()
        conv2.weight[0, 0, 1, 1] = 1.0  # identity
        conv2.bias.zero_()
    features = nn.Sequential(
        conv1, nn.BatchNorm2d(1), nn.ReLU(), nn.MaxPool2d(2),
        conv2, nn.BatchNorm2d(1), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    linear = nn.Linear(8 * 8, 2)
    with torch.no_grad():
        weight = torch.zeros(2, 8, 8)
        weight[0, :, :3] = 1.0  # final cols 0..2 see input cols 0..14
        weight[1, :, 5:] = 1.0  # final cols 5..7 see input cols 17..31
        linear.weight.copy_(weight.flatten(1))
        linear.bias.zero_()
    model = nn.Module()
    model.features = features
    model.classifier = nn.Sequential(nn.Dropout(), linear)
    return model.eval()


def test_positive_relevance_lies_on_the_object_that_drives_the_class():
    model = _left_right_detector()
    torch.manual_seed(7)
    image = -1.0 + 0.1 * torch.randn(3, 32, 32)  # dark, noisy background
    image[:, 10:16, 3:9] = 2.0  # bright square in the left half
    image[:, 20:26, 22:28] = 2.0  # bright square in the right half
    images = image.expand(2, -1, -1, -1)
    maps = rap(model, images, torch.tensor([0, 1]))  # class 0 and class 1 in one batch
    left, right = maps[0], maps[1]
    assert (left.clamp(min=0)[:, 16:] == 0).all() and (left.clamp(min=0)[:, :16] > 0).any()
    assert (right.clamp(min=0)[:, :16] == 0).all() and (right.clamp(min=0)[:, 16:] > 0).any()
    squares = torch.zeros(2, 32, 32, dtype=torch.bool)
    squares[0, 10:16, 3:9] = True
    squares[1, 20:26, 22:28] = True
    for m, square in zip(maps, squares, strict=True):
        r, c = divmod(int(m.argmax()), m.shape[1])
        assert square[r, c]  # the strongest positive relevance is on the object
        assert m.clamp(min=0)[square].sum() > 0.5 * m.clamp(min=0).sum()


def test_batched_equals_one_at_a_time():
    model = _tiny_model(2)
    images = torch.randn(4, 3, 32, 32)
    classes = torch.tensor([1, 1, 0, 3])
    batched = rap(model, images, classes)
    single = torch.cat([rap(model, images[i : i + 1], classes[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)


def test_model_is_left_unchanged():
    model = _tiny_model(3).train()  # called directly in train mode: still eval semantics
    before = copy.deepcopy(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    maps_train = rap(model, images, torch.tensor([0, 1]))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN running stats included
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    torch.testing.assert_close(maps_train, attribute(model, images, torch.tensor([0, 1]), "rap"))


def test_rejects_a_classifier_with_several_linears():
    model = _tiny_model(4)
    model.classifier = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 5))
    with pytest.raises(ValueError, match="one Linear"):
        rap(model, torch.randn(1, 3, 32, 32), torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_input_device():
    model = _tiny_model(5)
    images, classes = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    expected = rap(model, images, classes)
    maps = rap(model.cuda(), images.cuda(), classes.cuda())
    assert maps.device.type == "cuda"
    torch.testing.assert_close(maps.cpu(), expected, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- through a BasicBlock ResNet


def _tiny_resnet(seed: int = 0) -> nn.Module:
    """A BasicBlock ResNet (two blocks in its first stage, a downsample in the others), 32 px,
    5 classes, with negative batch-norm scales among its random statistics."""
    from attrlib.resnet import ResNetConfig, ResNetVOC

    torch.manual_seed(seed)
    config = ResNetConfig(blocks=(2, 1, 1, 1), widths=(4, 8, 8, 12), num_classes=5, input_size=32)
    model = ResNetVOC(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-0.5, 1.5)
                m.bias.uniform_(-0.1, 0.3)
        model.fc.weight.normal_(0.0, 0.3)
        model.fc.bias.normal_(0.0, 0.1)
    return model.eval()


def _official_divide(a, b):
    return a / (b + b.eq(0).to(b.dtype) * 1e-9) * b.ne(0).to(b.dtype)


def _grad(z, x, s):
    return torch.autograd.grad(z, x, s, retain_graph=True)[0]


def _official_simple(fn, inputs, rel):
    """`RelPropSimple.RAP_relprop` (sums, average and max pooling): x_i * d z / d x_i * R / z,
    the gradient taken at the first input for every input, as the official code does."""
    xs = [t.detach().clone().requires_grad_() for t in inputs]
    z = fn(*xs)
    c = _grad(z, xs[0], _official_divide(rel, z))
    return [x.detach() * c for x in xs]


def _official_hidden_conv(conv, x, rel):
    """The official hidden `Conv2d.RAP_relprop` term by term: four gradients per input sign
    (`pos_prop`), then `shift_rel`; any stride."""

    def c(inp, weight):
        return torch.nn.functional.conv2d(inp, weight, None, conv.stride, conv.padding)

    w = conv.weight.detach()
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    keep = rel.ne(0).to(rel.dtype)
    dims = (1, 2, 3)

    def branch(za1, za2, x1):
        rp, rn, tot = rel.clamp(min=0), rel.clamp(max=0), za1 + za2
        c1 = x1 * _grad(za1, x1, _official_divide(rp * _official_divide(tot, tot), za1))
        c1n = x1 * _grad(za2, x1, _official_divide(rn * _official_divide(tot, tot), za2))
        c2 = x1 * _grad(za2, x1, _official_divide(rp * _official_divide(za2, tot), za2))
        c2n = x1 * _grad(za2, x1, _official_divide(rn * _official_divide(za2, tot), za2))
        out = c1 + c2 + c2n + c1n
        excess = out.sum(dims, keepdim=True) - rel.sum(dims, keepdim=True)
        carrying = out.ne(0).to(out.dtype)
        return out - _official_divide(excess, carrying.sum(dims, keepdim=True)) * carrying

    px = x.detach().clamp(min=0).requires_grad_()
    nx = x.detach().clamp(max=0).requires_grad_()
    pos = branch(c(px, pw) * keep, -c(px, nw) * keep, px)
    neg = branch(-c(nx, pw) * keep, c(nx, nw) * keep, nx)
    return (pos + neg).detach()


def _official_input_conv(conv, x, rel):
    """The official `final_backward` (z^B with the image's own min and max), any stride."""

    def c(inp, weight):
        return torch.nn.functional.conv2d(inp, weight, None, conv.stride, conv.padding)

    w = conv.weight.detach()
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    low = x * 0 + x.amin(dim=(1, 2, 3), keepdim=True)
    high = x * 0 + x.amax(dim=(1, 2, 3), keepdim=True)
    s = _official_divide(rel, c(x, w) - c(low, pw) - c(high, nw))
    probe = torch.zeros_like(x, requires_grad=True)
    back = [_grad(c(probe, weight), probe, s) for weight in (w, pw, nw)]
    return x * back[0] - low * back[1] - high * back[2]


def _official_resnet_rap(model, images, classes):
    """The authors' `ResNet.RAP_relprop` / `BasicBlock.RAP_relprop` walk, each layer by its
    official formula; the block's fork adds its branches (their Bottleneck's `x1 + x`)."""
    with torch.no_grad():
        stem_conv = model.conv1(images)
        stem = model.relu(model.bn1(stem_conv))
        x = model.maxpool(stem)
        records = []
        for block in (b for stage in model.stages for b in stage):
            c1 = block.conv1(x)
            inner = block.relu1(block.bn1(c1))
            c2 = block.conv2(inner)
            main = block.bn2(c2)
            dc = block.downsample[0](x) if block.downsample is not None else None
            short = block.downsample[1](dc) if dc is not None else x
            records.append((block, x, c1, inner, c2, main, dc, short))
            x = block.relu2(main + short)
        pooled = model.avgpool(x)  # (B, C, 1, 1)
    fc = model.fc
    top = [
        _naive_top_linear(p.numpy(), fc.weight.detach().numpy(), fc.bias.detach().numpy(), int(k))
        for p, k in zip(pooled.flatten(1), classes, strict=True)
    ]
    rel = torch.from_numpy(np.stack(top)).reshape_as(pooled)
    (rel,) = _official_simple(model.avgpool, [x], rel)
    for block, x_in, c1, inner, c2, main, dc, short in reversed(records):
        r_main, r_short = _official_simple(torch.add, [main, short], rel)
        if dc is not None:
            r_short = _official_batchnorm_literal(block.downsample[1], dc, r_short)
            r_short = _official_hidden_conv(block.downsample[0], x_in, r_short)
        r = _official_batchnorm_literal(block.bn2, c2, r_main)
        r = _official_hidden_conv(block.conv2, inner, r)
        r = _official_batchnorm_literal(block.bn1, c1, r)
        rel = _official_hidden_conv(block.conv1, x_in, r) + r_short
    (rel,) = _official_simple(model.maxpool, [stem], rel)
    rel = _official_batchnorm_literal(model.bn1, stem_conv, rel)
    return _official_input_conv(model.conv1, images, rel).sum(1).detach()


def test_resnet_maps_equal_the_official_walk_layer_formula_by_formula():
    model = _tiny_resnet(0).double()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    classes = torch.tensor([0, 2, 4])
    expected = _official_resnet_rap(model, images, classes)
    got = attribute(model, images, classes, "rap")
    assert (got > 0).any() and (got < 0).any()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * expected.abs().max())


def test_resnet_maps_sum_to_the_target_logit_and_batch_like_single_images():
    model = _tiny_resnet(1).double()
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 4])
    maps = attribute(model, images, classes, "rap")
    logits = model(images).gather(1, classes[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum((1, 2)), logits, rtol=1e-9, atol=1e-9)
    single = torch.cat([rap(model, images[i : i + 1], classes[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(maps, single, rtol=1e-9, atol=1e-12)
