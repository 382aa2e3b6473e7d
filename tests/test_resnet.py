"""The ResNet family: torchvision's layout and numbers, widths as data, and every part of the
study that works on any registered architecture (checkpoints, Grad-CAM, EBP, the head-only
SWA map, distillation, iterative pruning); the layer-by-layer rules refuse it by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import ExcitationBackprop

import attrlib.stages as stages
from attrlib import architectures
from attrlib.architectures import ARCHITECTURES, rebuild, register_architecture
from attrlib.attribution import METHODS, attribute
from attrlib.config import DistillConfig, PruneIterativeConfig, TeacherConfig
from attrlib.distill import attribution_maps, matching_loss, swa_map_full_backward
from attrlib.engine import check_compatible, load_checkpoint, load_model, make_checkpoint
from attrlib.masks import has_masks, permanent_copy
from attrlib.models import vgg16_bn_voc
from attrlib.prune import global_prune_
from attrlib.resnet import ResNetConfig, ResNetVOC
from tests.nets import random_resnet

SIZE = 64
NUM_CLASSES = 5


def batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen)
    return images, torch.randint(0, NUM_CLASSES, (n,), generator=gen)


# ---------------------------------------------------------------- the network


def test_torchvision_resnet18_state_dict_loads_and_computes_the_same_logits(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=1000).eval()
    with torch.no_grad():  # fresh BN statistics would hide a mis-wired layer
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    ours = ResNetVOC(ResNetConfig(num_classes=1000, input_size=224, last_stride=2)).eval()
    assert list(ours.state_dict()) == list(tv.state_dict())  # same keys, same order
    ours.load_pretrained_(tmp_path / "resnet18.pth")
    ours.fc.load_state_dict(tv.fc.state_dict())  # fc is left to the VOC head by design
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_pretrained_weights_of_the_wrong_shape_or_family_are_refused(tmp_path):
    tv = torchvision.models.resnet18()
    with pytest.raises(
        ValueError,
        match=r"conv1\.weight has shape \(64, 3, 7, 7\).*\(32, 3, 7, 7\).*width_div=1",
    ):
        ResNetVOC.create(2, 20, 96).load_pretrained_(tv.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        ResNetVOC.create(1, 20, 96).load_pretrained_(vgg16_bn_voc(1).state_dict())
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ResNetVOC.create(1, 20, 96).load_pretrained_(tmp_path / "nope.pth")


@pytest.mark.parametrize(("last_stride", "side"), [(1, 6), (2, 3)])
def test_attribution_feature_size_at_96_px(last_stride, side):
    model = ResNetVOC(ResNetConfig(input_size=96, last_stride=last_stride).scaled(8))
    feature = model.forward_features(torch.zeros(1, 3, 96, 96))
    assert feature.shape == (1, 64, side, side) and model.config.attribution_size == side


def test_students_divide_every_width_and_inner_widths_are_data():
    teacher = architectures.create("resnet", 4, NUM_CLASSES, SIZE)
    assert teacher.config.widths == (16, 32, 64, 128)
    student = rebuild("resnet", teacher.config.scaled(2))
    assert student.config.widths == (8, 16, 32, 64)
    assert student.config.inner == (8, 8, 16, 16, 32, 32, 64, 64)
    assert student.layer3[1].conv1.out_channels == 32 and student.fc.in_features == 64
    thin = rebuild("resnet", {**student.config.to_dict(), "inner": [1, 2, 3, 4, 5, 6, 7, 8]})
    assert [b.conv1.out_channels for s in thin.stages for b in s] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert thin(torch.randn(2, 3, SIZE, SIZE)).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="inner must list 8 block widths"):
        ResNetConfig(inner=(4, 4))
    with pytest.raises(ValueError, match="matches maps at .*'attribution'.* got 'pool'"):
        student(torch.randn(1, 3, SIZE, SIZE), matching_layer="pool")


def test_checkpoints_rebuild_the_family_and_name_a_mismatch(tmp_path):
    model = random_resnet(NUM_CLASSES, SIZE, seed=0).eval()
    classes = tuple("abcde")
    torch.save(make_checkpoint(model, classes), tmp_path / "r.pt")
    loaded, _ = load_model(tmp_path / "r.pt", classes=classes)
    assert isinstance(loaded, ResNetVOC) and loaded.config == model.config
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    ckpt = load_checkpoint(tmp_path / "r.pt")
    vgg = vgg16_bn_voc(16, NUM_CLASSES, SIZE).config
    with pytest.raises(ValueError, match="a resnet network vs model vgg16_bn"):
        check_compatible(ckpt, vgg, classes)
    with pytest.raises(ValueError, match=r"widths \[4, 8, 16, 32\] vs model \[2, 4, 8, 16\]"):
        check_compatible(ckpt, model.config.scaled(2), classes, source="r.pt")


def test_a_plugin_family_registers_by_name():
    class Tiny(nn.Module):
        pass

    register_architecture("tiny_test_family")(Tiny)
    try:
        assert ARCHITECTURES.get("tiny_test_family") is Tiny
        assert Tiny.architecture == "tiny_test_family"
        with pytest.raises(ValueError, match="already registered"):
            register_architecture("tiny_test_family")(Tiny)
    finally:
        ARCHITECTURES._entries.pop("tiny_test_family")
    with pytest.raises(ValueError, match="ResNetVOC.architecture is 'resnet', not 'other'"):
        register_architecture("other")(ResNetVOC)
    with pytest.raises(KeyError, match="unknown architecture 'nope'.*resnet.*vgg16_bn"):
        architectures.create("nope", 1, 20, 96)


# ---------------------------------------------------------------- maps on a ResNet


def test_gradcam_equals_captum_at_the_last_stage():
    model = random_resnet(NUM_CLASSES, SIZE, seed=1).eval()
    images, classes = batch(4)
    cam = LayerGradCam(model, model.attribution_layer).attribute(
        images, target=classes, relu_attributions=True
    )  # (B, 1, h, w)
    assert cam.abs().sum() > 0
    with torch.enable_grad():
        ours = METHODS.get("gradcam")(model, images, classes)
    torch.testing.assert_close(ours, cam[:, 0], rtol=1e-5, atol=1e-6)


def test_ebp_equals_zennit_on_the_pooled_head():
    model = random_resnet(NUM_CLASSES, SIZE, seed=2).eval()
    images, classes = batch(4)
    head = nn.Sequential(model.avgpool, nn.Flatten(), model.dropout, model.fc)
    with torch.no_grad():
        feature = model.forward_features(images)
    one_hot = F.one_hot(classes, NUM_CLASSES).float()
    with Gradient(head, ExcitationBackprop(zero_params=["bias"])) as attributor:
        _, relevance = attributor(feature.clone(), one_hot)
    expected = relevance.sum(1).clamp(min=0)
    assert expected.abs().sum() > 0
    with torch.enable_grad():
        ours = METHODS.get("ebp")(model, images, classes)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * expected.abs().max())


@pytest.mark.parametrize("blocks", [(2, 2, 2, 2), (3, 4, 6, 3)])
def test_lrp_equals_zennit_with_its_resnet_canonizer_on_torchvisions_resnets(blocks):
    """z+ on convs (batch norm merged) and the classifier, the residual sum and the average
    pooling split in proportion to their inputs (zennit's Norm rule), read at the image.

    zennit's MergeBatchNorm leaves each batch norm as weight 1, bias 0, mean 0, variance 1 but
    keeps its eps, so its "identity" divides by sqrt(1 + eps): about 5e-6 per batch norm,
    compounded over depth and moved around by the residual sums' proportional splits (6e-4 of
    the map's maximum on a ResNet-18 with eps 1e-5). With eps 0 both networks compute the same
    function and the maps agree to float64 rounding."""
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import AlphaBeta, Norm, Pass
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    torch.manual_seed(0)
    config = ResNetConfig(blocks=blocks, num_classes=NUM_CLASSES, input_size=48, last_stride=2)
    ours = ResNetVOC(config)
    with torch.no_grad():  # fresh BN statistics and a zero classifier would hide a wrong rule
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-0.5, 1.5)  # negative scales flip merged weights' signs
                m.bias.normal_(0.0, 0.1)
        ours.fc.weight.normal_(0.0, 0.1)
    tv = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, list(blocks), NUM_CLASSES)
    tv.load_state_dict(ours.state_dict())
    for m in [*ours.modules(), *tv.modules()]:
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    ours, tv = ours.double().eval(), tv.double().eval()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 48, 48, generator=gen, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1])
    rule = AlphaBeta(alpha=1.0, beta=0.0, zero_params=["bias"])
    composite = LayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (BatchNorm, Pass()),
            (Sum, Norm()),
            (AvgPool, Norm()),
            (Convolution, rule),
            (nn.Linear, rule),
        ],
        canonizers=[ResNetCanonizer()],
    )
    one_hot = F.one_hot(classes, NUM_CLASSES).double()
    with Gradient(tv, composite) as attributor:
        _, relevance = attributor(images.clone(), one_hot)  # (B, 3, H, W)
    expected = relevance.sum(1)
    assert expected.abs().sum() > 0
    got = attribute(ours, images, classes, "lrp")  # (B, H, W): at the input size already
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * expected.abs().max())


def test_lrp_on_a_resnet_conserves_relevance():
    model = random_resnet(NUM_CLASSES, SIZE, seed=0).eval()
    images, classes = batch(2)
    maps = attribute(model, images, classes, "lrp")
    assert maps.shape == (2, SIZE, SIZE)
    # no biases in the rules: what leaves the classifier reaches the image (up to the
    # stabilizers and relevance stranded where every contribution is zero)
    assert ((maps.sum((1, 2)) - 1).abs() < 0.05).all()


class _Branchy(nn.Module):
    """A family the layer-by-layer rules cannot walk: neither features + classifier nor a
    BasicBlock ResNet."""

    architecture = "branchy"

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        return self.fc((self.left(x) * self.right(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["lrp", "rap"])
def test_layer_by_layer_rules_refuse_a_family_they_cannot_walk_by_name(method):
    images, classes = batch(1)
    with pytest.raises(NotImplementedError, match=f"{method}: .*a branchy network"):
        attribute(_Branchy().eval(), images, classes, method)


def test_head_only_swa_equals_the_full_second_backward():
    model = random_resnet(NUM_CLASSES, SIZE, seed=3).eval()
    images, classes = batch(4)
    head_only = attribution_maps(model, images, classes, "swa", create_graph=True)
    full = swa_map_full_backward(model, images, classes)
    assert head_only.abs().sum() > 0
    torch.testing.assert_close(head_only, full, atol=1e-5, rtol=1e-5)
    target = torch.rand_like(head_only)
    params = list(model.parameters())
    g_head = torch.autograd.grad(matching_loss(head_only, target), params, allow_unused=True)
    full = swa_map_full_backward(model, images, classes)
    g_full = torch.autograd.grad(matching_loss(full, target), params, allow_unused=True)
    for a, b in zip(g_head, g_full, strict=True):
        if a is None or b is None:
            assert (a if b is None else b) is None or (a if b is None else b).abs().max() < 1e-7
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- stages on a ResNet


@pytest.fixture(scope="module")
def resnet_teacher(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("resnet-teacher")
    cfg = TeacherConfig(
        profile="smoke",
        data_root=str(synth_root),
        out_dir=str(out),
        device="cpu",
        overrides=("architecture=resnet",),
    )
    assert cfg.architecture == "resnet" and cfg.to_dict()["architecture"] == "resnet"
    stages.train_teacher(cfg)
    return out


def test_teacher_config_of_the_default_family_keeps_old_configs():
    assert "architecture" not in TeacherConfig(profile="smoke").to_dict()
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        TeacherConfig(profile="smoke", overrides=("architecture=nope",))


def test_a_resnet_teacher_and_its_swa_student_train_through_the_stages(
    synth_root, resnet_teacher, tmp_path
):
    teacher, _ = load_model(resnet_teacher / "best.pt")
    assert isinstance(teacher, ResNetVOC) and teacher.config.widths == (4, 8, 16, 32)
    cfg = DistillConfig(
        profile="smoke",
        data_root=str(synth_root),
        teacher=str(resnet_teacher / "best.pt"),
        matching="swa",
        out_dir=str(tmp_path / "s"),
        device="cpu",
    )
    student, metrics = stages.train_student(cfg)
    assert isinstance(student, ResNetVOC) and student.config.widths == (2, 4, 8, 16)
    assert load_checkpoint(tmp_path / "s" / "best.pt")["architecture"] == "resnet"
    history = metrics["history"]
    assert history and all(r["train_match"] > 0 for r in history)  # the SWA pull trained


def test_iterative_pruning_masks_every_resnet_conv(synth_root, resnet_teacher, tmp_path):
    model, _ = load_model(resnet_teacher / "best.pt")
    global_prune_(model, 0.5)
    convs = model.convs
    assert has_masks(model) and len(convs) == 1 + 8 * 2 + 3  # stem, blocks, projections
    zeros = sum(int((c.weight == 0).sum()) for c in convs)
    assert zeros == round(0.5 * sum(c.weight.numel() for c in convs))
    copy = permanent_copy(model)
    assert isinstance(copy, ResNetVOC) and not has_masks(copy)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(copy.eval()(x), model.eval()(x), rtol=0, atol=0)
    cfg = PruneIterativeConfig(
        profile="smoke",
        data_root=str(synth_root),
        model=str(resnet_teacher / "best.pt"),
        teacher=str(resnet_teacher / "best.pt"),
        matching="swa",
        iterations=1,
        out_dir=str(tmp_path / "it"),
        device="cpu",
    )
    final, records = stages.prune_iterative(cfg, progress=False)
    assert isinstance(final, ResNetVOC) and len(records) == 1
    assert load_checkpoint(tmp_path / "it" / "final.pt")["architecture"] == "resnet"


# ---------------------------------------------------------------- structured pruning


def test_block_internal_pruning_is_smaller_and_computes_the_masked_network():
    from attrlib.cost import count_macs, count_params
    from attrlib.prune import structured_prune
    from attrlib.prune.structured import block_conv_names, keep_indices

    model = random_resnet(NUM_CLASSES, SIZE, seed=4).eval()
    pruned = structured_prune(model, 0.5)
    assert pruned.config.inner == (2, 2, 4, 4, 8, 8, 16, 16)  # half of each block, round
    assert pruned.config.widths == model.config.widths  # tied through the sums: whole
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, SIZE) < count_macs(model, SIZE)
    # the masked network: removed inner channels zeroed after their batch norm + ReLU
    masked = rebuild("resnet", model.config).eval()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name in block_conv_names(model):
            block = masked.get_submodule(name.rpartition(".")[0])
            drop = torch.ones(block.conv1.out_channels, dtype=torch.bool)
            drop[keep_indices(model.get_submodule(name), 0.5)] = False
            block.bn1.weight[drop] = 0.0
            block.bn1.bias[drop] = 0.0
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-3)  # something was cut


def test_resnet_pruning_rates_name_block_convs_only():
    from attrlib.prune import structured_prune

    model = random_resnet(NUM_CLASSES, SIZE, seed=4)
    only = structured_prune(model, {"layer4.1.conv1": 0.75})
    assert only.config.inner == (4, 4, 8, 8, 16, 16, 32, 8)
    with pytest.raises(ValueError, match=r"first conv of each block only.*layer4\.1\.conv2"):
        structured_prune(model, {"layer4.1.conv2": 0.5})
    with pytest.raises(ValueError, match="layer1.0.conv1"):
        structured_prune(model, {"layer1.0.conv1": 1.0})
    global_prune_(model, 0.3)  # masks: copied as the zeros they are
    pruned = structured_prune(model, 0.25)
    assert not has_masks(pruned) and pruned.config.inner[0] == 3


def test_one_shot_pruning_of_a_resnet_teacher_through_the_stage(
    synth_root, resnet_teacher, tmp_path
):
    from attrlib.config import PruneOneShotConfig

    cfg = PruneOneShotConfig(
        profile="smoke",
        data_root=str(synth_root),
        model=str(resnet_teacher / "best.pt"),
        teacher=str(resnet_teacher / "best.pt"),
        matching="swa",
        rate=0.5,
        out_dir=str(tmp_path / "p"),
        device="cpu",
    )
    pruned, _ = stages.prune_oneshot(cfg)
    assert isinstance(pruned, ResNetVOC) and pruned.config.inner == (2, 2, 4, 4, 8, 8, 16, 16)
    reloaded, _ = load_model(tmp_path / "p" / "best.pt")
    assert reloaded.config == pruned.config


# ---------------------------------------------------------------- evaluation of a ResNet


def test_evaluation_leaves_out_and_names_the_methods_a_resnet_refuses(
    synth_root, resnet_teacher, monkeypatch
):
    """Every registered method draws a ResNet's maps; a method that declares it cannot (here
    RAP, made to refuse) is left out of every table and named in the summary."""
    from attrlib.data import VOCClassification, VOCLocalization, eval_transform, load_classes
    from attrlib.evaluate import evaluate_model, image_maps
    from attrlib.faithfulness import Faithfulness

    classes = load_classes(synth_root)
    model, _ = load_model(resnet_teacher / "best.pt", classes=classes)
    with torch.no_grad():
        model.fc.bias += 10.0  # every class predicted: every ground-truth pair is scored
    monkeypatch.setattr(
        METHODS.get("rap"), "refuses", lambda m: "a resnet network has residual sums (test)"
    )
    val = VOCClassification(synth_root, "val", classes, transform=eval_transform(32))
    loc = VOCLocalization(synth_root, "val", classes, size=32)
    summary, table, faith = evaluate_model(
        model,
        val,
        loc,
        methods=["gradcam", "lrp", "ebp", "rap"],
        progress=False,
        faithfulness=Faithfulness(pairs=3, steps=2),
    )
    assert set(summary["refused_methods"]) == {"rap"}
    assert "residual sums" in summary["refused_methods"]["rap"]
    assert set(table["method"]) == {"gradcam", "lrp", "ebp"}
    assert set(faith["method"]) <= {"gradcam", "lrp", "ebp"}
    assert set(summary["localization"]) == {"gradcam", "lrp", "ebp"}
    image, _, _ = loc[0]
    maps = image_maps({"teacher": model}, image, 0, ["gradcam", "rap"])
    assert list(maps["teacher"]) == ["gradcam"]


def test_block_pruning_equals_torch_prunings_dependency_graph_surgery():
    """Torch-Pruning's dependency graph, asked to remove the channels our L1 criterion drops
    from each block's first conv, cuts the same tensors: its group is the block's conv1,
    bn1 and conv2 inputs (nothing tied through a residual sum), and the networks agree."""
    import copy

    import torch_pruning as tp

    from attrlib.prune import structured_prune
    from attrlib.prune.structured import block_conv_names, keep_indices

    model = random_resnet(NUM_CLASSES, SIZE, seed=5).eval()
    ours = structured_prune(model, 0.5).eval()
    theirs = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(
        theirs, example_inputs=torch.randn(1, 3, SIZE, SIZE)
    )
    names = {id(module): name for name, module in theirs.named_modules()}
    for name in block_conv_names(model):
        conv = theirs.get_submodule(name)
        keep = set(keep_indices(model.get_submodule(name), 0.5).tolist())
        drop = [c for c in range(conv.out_channels) if c not in keep]
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop)
        assert graph.check_pruning_group(group)
        block = name.rpartition(".")[0]
        reached = {names.get(id(dep.target.module)) for dep, _ in group} - {None}
        assert reached == {f"{block}.{m}" for m in ("conv1", "bn1", "conv2")}  # and a ReLU
        group.prune()
    theirs_state = theirs.state_dict()
    assert ours.state_dict().keys() == theirs_state.keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs_state[key]), key
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
