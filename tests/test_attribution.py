"""Attribution methods: contracts over every registered method, oracles for each one.

Grad-CAM is checked against Captum; LRP and EBP against slow, naive, layer-by-layer relevance
propagation written out below (batch norm folded by hand, rules as sums over explicit
contributions) and against zennit's own `Gradient` attributor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import ExcitationBackprop, LayerMapComposite
from zennit.rules import AlphaBeta, Pass
from zennit.types import Activation, BatchNorm, Convolution

from attrlib.attribution import FEATURE_METHODS, METHODS, attribute, register_layer_method

from nets import random_vgg

# 56 px: attribution layer 3x3; the 7->3 and 3->1 max-pools drop a row and a column, as the
# 227->113 pool does at full size.
SIZE = 56
NUM_CLASSES = 5
EPS = 1e-6  # zennit's stabilizer, added to the non-negative denominators


def tiny_model(seed: int = 0) -> nn.Module:
    """A width/16 VGG16-BN with random weights, biases and batch-norm statistics."""
    return random_vgg(NUM_CLASSES, SIZE, seed)


def batch(n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen)  # (B, 3, H, W)
    classes = torch.randint(0, NUM_CLASSES, (n,), generator=gen)  # (B,)
    return images, classes


def no_hooks_left(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        and not getattr(m, "_backward_pre_hooks", None)
        for m in model.modules()
    )


# ---------------------------------------------------------------- contracts, every method


@pytest.mark.parametrize("method", METHODS.names())
def test_contract(method: str) -> None:
    model = tiny_model().train()  # attribute() must switch to eval and back
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, classes = batch()
    images_before = images.clone()

    maps = attribute(model, images, classes, method)

    assert maps.shape == (3, SIZE, SIZE)
    assert maps.dtype == images.dtype and not maps.requires_grad
    assert torch.isfinite(maps).all()
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks_left(model)
    for key, value in model.state_dict().items():  # canonizers reverted exactly
        assert torch.equal(value, state[key]), key
    assert torch.equal(images, images_before)

    rows = torch.cat(
        [attribute(model, images[i : i + 1], classes[i : i + 1], method) for i in range(3)]
    )
    scale = maps.abs().max().clamp(min=1e-12)
    torch.testing.assert_close(maps, rows, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("method", METHODS.names())
def test_repeated_rows_of_one_image(method: str) -> None:
    model = tiny_model()
    images, _ = batch(1)
    repeated = images.expand(3, -1, -1, -1)  # one image, three rows (a stride-0 view)
    maps = attribute(model, repeated, torch.tensor([2, 0, 2]), method)  # (3, H, W)
    torch.testing.assert_close(maps[0], maps[2], rtol=0, atol=0)
    single = attribute(model, images, torch.tensor([0]), method)[0]
    torch.testing.assert_close(maps[1], single, rtol=1e-4, atol=1e-5 * single.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", METHODS.names())
def test_cuda_matches_cpu(method: str) -> None:
    model = tiny_model().eval()
    images, classes = batch()
    cpu = attribute(model, images, classes, method)
    gpu = attribute(model.cuda(), images.cuda(), classes.cuda(), method)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * cpu.abs().max())


def test_unknown_method_lists_valid_names() -> None:
    images, classes = batch()
    with pytest.raises(KeyError) as info:
        attribute(tiny_model(), images, classes, "saliency")
    for name in METHODS.names():
        assert name in str(info.value)


@pytest.mark.parametrize(
    "images, classes",
    [
        (torch.randn(3, SIZE, SIZE), torch.tensor([0])),  # no batch dimension
        (torch.randn(2, 1, SIZE, SIZE), torch.tensor([0, 1])),  # grey images
        (torch.randn(2, 3, SIZE, SIZE), torch.tensor([[0], [1]])),  # (B, 1) classes
        (torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1, 2])),  # B mismatch
        (torch.randn(2, 3, SIZE, SIZE), torch.tensor([0.0, 1.0])),  # float classes
    ],
)
def test_wrong_shapes_raise(images: torch.Tensor, classes: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        attribute(tiny_model(), images, classes, "gradcam")


# ---------------------------------------------------------------- the feature path


def test_feature_methods_are_registered_methods() -> None:
    assert FEATURE_METHODS.names()
    assert set(FEATURE_METHODS.names()) <= set(METHODS.names())


def test_register_layer_method_fills_both_registries() -> None:
    """One decorated feature-level function is a method of images and of the trunk feature."""
    calls = []

    @register_layer_method("test_channel_max")
    def channel_max(model, feature, classes):
        calls.append(feature.shape)
        return feature.amax(dim=1)  # (B, h, w)

    try:
        assert "test_channel_max" in METHODS and "test_channel_max" in FEATURE_METHODS
        model = tiny_model().eval()
        images, classes = batch(3)
        with torch.no_grad():
            feature = model.forward_features(images)  # (B, C, h, w)
        from_images = attribute(model, images, classes, "test_channel_max")
        from_feature = attribute(model, images, classes, "test_channel_max", feature=feature)
        torch.testing.assert_close(from_images, from_feature, rtol=0, atol=0)
        assert calls == [feature.shape, feature.shape]  # the images path ran the trunk itself
        assert from_images.shape == (3, SIZE, SIZE)
    finally:
        del METHODS._entries["test_channel_max"], FEATURE_METHODS._entries["test_channel_max"]


@pytest.mark.parametrize("method", METHODS.names())
def test_feature_path_equals_image_path(method: str) -> None:
    """A precomputed trunk feature gives the same maps (layer methods) or is ignored (others)."""
    model = tiny_model().eval()
    images, classes = batch(4)
    with torch.no_grad():
        feature = model.forward_features(images)  # (B, C, h, w)
    from_feature = attribute(model, images, classes, method, feature=feature)
    from_images = attribute(model, images, classes, method)
    torch.testing.assert_close(from_feature, from_images, rtol=0, atol=0)


@pytest.mark.parametrize("method", FEATURE_METHODS.names())
def test_feature_rows_of_a_larger_batch(method: str) -> None:
    """Rows of one batch's feature (as `localization_table` picks them) give their images' maps."""
    model = tiny_model().eval()
    images, _ = batch(3)
    rows, classes = torch.tensor([0, 2, 2, 1]), torch.tensor([1, 0, 4, 3])
    with torch.no_grad():
        feature = model.forward_features(images)  # (3, C, h, w)
    ours = attribute(model, images[rows], classes, method, feature=feature[rows])
    expected = attribute(model, images[rows], classes, method)
    assert (expected.flatten(1).amax(1) > 0).any()
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6 * expected.abs().max())


def test_feature_of_another_batch_size_raises() -> None:
    model = tiny_model().eval()
    images, classes = batch(3)
    with torch.no_grad():
        feature = model.forward_features(images[:2])
    with pytest.raises(ValueError, match="feature"):
        attribute(model, images, classes, "gradcam", feature=feature)


# ---------------------------------------------------------------- Grad-CAM vs Captum


def test_gradcam_matches_captum() -> None:
    model = tiny_model().eval()
    images, classes = batch(4)
    cam = LayerGradCam(model, model.attribution_layer).attribute(
        images, target=classes, relu_attributions=True
    )  # (B, 1, h, w)
    assert cam.abs().sum() > 0  # not a degenerate all-zero comparison
    with torch.enable_grad():
        natural = METHODS.get("gradcam")(model, images, classes)  # (B, h, w)
    torch.testing.assert_close(natural, cam[:, 0], rtol=1e-5, atol=1e-5)
    upsampled = LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear")
    ours = attribute(model, images, classes, "gradcam")
    torch.testing.assert_close(ours, upsampled[:, 0], rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- naive LRP / EBP reference


def folded_layers(model: nn.Module) -> list[tuple]:
    """The network as plain float64 ops, every batch norm folded by hand into its conv."""
    layers: list[tuple] = []
    modules = list(model.features)
    i = 0
    while i < len(modules):
        m = modules[i]
        if isinstance(m, nn.Conv2d):
            bn = modules[i + 1]
            assert isinstance(bn, nn.BatchNorm2d)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
            weight = m.weight * scale[:, None, None, None]  # (C, Cin, 3, 3)
            bias = (m.bias - bn.running_mean) * scale + bn.bias  # (C,)
            layers.append(("conv", weight.detach().double(), bias.detach().double()))
            i += 2
        elif isinstance(m, nn.ReLU):
            layers.append(("relu",))
            i += 1
        elif isinstance(m, nn.MaxPool2d):
            layers.append(("pool",))
            i += 1
        else:
            raise AssertionError(f"unexpected layer {m}")
    linear = model.classifier[1]  # classifier[0] is dropout: identity in eval mode
    layers += [
        ("flatten",),
        ("linear", linear.weight.detach().double(), linear.bias.detach().double()),
    ]
    return layers


def naive_forward(layers: list[tuple], images: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of every layer, then the logits (float64)."""
    acts = [images.double()]
    for layer in layers:
        x = acts[-1]
        if layer[0] == "conv":
            acts.append(F.conv2d(x, layer[1], layer[2], padding=1))
        elif layer[0] == "relu":
            acts.append(x.clamp(min=0))
        elif layer[0] == "pool":
            acts.append(F.max_pool2d(x, 2, 2))
        elif layer[0] == "flatten":
            acts.append(x.flatten(1))
        else:
            acts.append(x @ layer[1].T + layer[2])
    return acts


def zplus_linear(a: torch.Tensor, weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_i = sum_j (a_i w_ji)^+ / (sum_i' (a_i' w_ji')^+ + eps) * R_j; a (B,D), w (K,D), r (B,K)."""
    z = (a[:, None, :] * weight[None]).clamp(min=0)  # (B, K, D) positive contributions
    return (z / (z.sum(-1, keepdim=True) + EPS) * r[:, :, None]).sum(1)  # (B, D)


def zplus_conv(x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The same rule for a 3x3 conv with padding 1, contributions spelled out by unfold."""
    _, _, h, w = x.shape
    patches = F.unfold(x, 3, padding=1)  # (B, Cin*9, L)
    z = (patches[:, None] * weight.flatten(1)[None, :, :, None]).clamp(min=0)  # (B, C, Cin*9, L)
    shares = z / (z.sum(2, keepdim=True) + EPS) * r.flatten(2)[:, :, None, :]  # (B, C, Cin*9, L)
    return F.fold(shares.sum(1), (h, w), 3, padding=1)  # overlapping patches add up


def unpool(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Max-pool: all relevance of a pooled unit goes to its arg-max."""
    _, index = F.max_pool2d(x, 2, 2, return_indices=True)
    return F.max_unpool2d(r, index, 2, 2, output_size=x.shape[-2:])


def naive_lrp(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    layers = folded_layers(model)
    acts = naive_forward(layers, images)
    r = F.one_hot(classes, NUM_CLASSES).double()  # (B, K)
    for layer, x in zip(reversed(layers), reversed(acts[:-1]), strict=True):
        if layer[0] == "linear":
            r = zplus_linear(x, layer[1], r)
        elif layer[0] == "flatten":
            r = r.view_as(x)
        elif layer[0] == "pool":
            r = unpool(x, r)
        elif layer[0] == "conv":
            r = zplus_conv(x, layer[1], r)
        # relu: relevance passes unchanged
    return r.sum(1)  # (B, H, W)


def naive_ebp(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Zhang et al.: P(a_i) = sum_j a_i w_ji^+ / sum_i' a_i' w_ji'^+ * P(a_j), one-hot prior."""
    layers = folded_layers(model)
    acts = naive_forward(layers, images)
    feature = acts[-4]  # input of the last max-pool = attribution feature, (B, C, h, w)
    pooled = acts[-2]  # flattened, (B, D)
    weight = layers[-1][1].clamp(min=0)  # (K, D), positive weights only
    excitation = pooled[:, None, :] * weight[None]  # (B, K, D)
    prior = F.one_hot(classes, NUM_CLASSES).double()  # (B, K)
    p = (excitation / (excitation.sum(-1, keepdim=True) + EPS) * prior[:, :, None]).sum(1)
    p = unpool(feature, p.view_as(acts[-3]))  # (B, C, h, w)
    return p.sum(1).clamp(min=0)  # (B, h, w)


def test_folded_network_reproduces_the_model() -> None:
    model = tiny_model().eval()
    images, _ = batch()
    logits = naive_forward(folded_layers(model), images)[-1]
    torch.testing.assert_close(logits.float(), model(images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, naive", [("lrp", naive_lrp), ("ebp", naive_ebp)])
def test_matches_naive_reference(method: str, naive) -> None:
    model = tiny_model().eval()
    images, classes = batch(4)
    with torch.enable_grad():
        ours = METHODS.get(method)(model, images, classes)  # natural resolution
    reference = naive(model, images, classes)
    assert (reference.flatten(1).abs().sum(1) > 0).all()  # every row non-trivial
    assert ours.shape == reference.shape
    scale = reference.abs().max()
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("method", ["lrp", "ebp"])
def test_relevance_is_conserved(method: str) -> None:
    """Without bias terms each map is a redistribution of the one-hot start: it sums to 1."""
    model = tiny_model().eval()
    images, classes = batch(4)
    with torch.enable_grad():
        maps = METHODS.get(method)(model, images, classes)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(4), rtol=0, atol=1e-3)


def test_lrp_matches_zennit_alpha_beta() -> None:
    """Our ZPlus composite equals zennit's Gradient attributor with AlphaBeta(1, 0) rules."""
    model = tiny_model().eval()
    images, classes = batch(4)
    rule = AlphaBeta(alpha=1.0, beta=0.0, zero_params=["bias"])
    composite = LayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (BatchNorm, Pass()),
            (Convolution, rule),
            (nn.Linear, rule),
        ],
        canonizers=[SequentialMergeBatchNorm()],
    )
    one_hot = F.one_hot(classes, NUM_CLASSES).float()
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(images.clone(), one_hot)  # (B, 3, H, W)
    expected = relevance.sum(1)
    with torch.enable_grad():
        ours = METHODS.get("lrp")(model, images, classes)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * expected.abs().max())
    assert no_hooks_left(model)


def test_ebp_matches_zennit_attributor() -> None:
    """zennit's Gradient attributor with ExcitationBackprop on the head, read at the feature."""
    model = tiny_model().eval()
    images, classes = batch(4)
    head = nn.Sequential(model.features[-1], nn.Flatten(), model.classifier)
    with torch.no_grad():
        feature = model.forward_features(images)  # (B, C, h, w)
    one_hot = F.one_hot(classes, NUM_CLASSES).float()
    with Gradient(head, ExcitationBackprop(zero_params=["bias"])) as attributor:
        _, relevance = attributor(feature.clone(), one_hot)  # (B, C, h, w)
    expected = relevance.sum(1).clamp(min=0)
    with torch.enable_grad():
        ours = METHODS.get("ebp")(model, images, classes)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * expected.abs().max())


def test_layer_maps_have_the_attribution_layer_size() -> None:
    model = tiny_model().eval()
    images, classes = batch(2)
    side = model.config.attribution_size
    with torch.enable_grad():
        assert METHODS.get("gradcam")(model, images, classes).shape == (2, side, side)
        assert METHODS.get("ebp")(model, images, classes).shape == (2, side, side)
        assert METHODS.get("lrp")(model, images, classes).shape == (2, SIZE, SIZE)


def test_registry_order_is_the_papers_column_order() -> None:
    """Evaluation defaults and the paper's columns follow the registry; built-ins come first."""
    assert METHODS.names()[:4] == ["gradcam", "ebp", "lrp", "rap"]
