import pytest
import torch
import torch.nn.functional as F

from attrlib.config import DistillConfig
from attrlib.distill import (
    MATCHINGS,
    CompressionObjective,
    attribution_maps,
    ewa_map,
    kd_loss,
    matching_loss,
    random_channel_keep,
    swa_map,
    swa_map_full_backward,
)
from attrlib.models import vgg16_bn_voc


def test_kd_loss_matches_direct_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7) * 3, torch.randn(5, 7) * 3
    y = (torch.rand(5, 7) > 0.5).float()
    T, alpha = 4.0, 0.9
    ps, pt = torch.sigmoid(s / T), torch.sigmoid(t / T)
    kl = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
    ce = -(y * torch.log(torch.sigmoid(s)) + (1 - y) * torch.log(1 - torch.sigmoid(s))).mean()
    expected = alpha * T * T * kl.mean() + (1 - alpha) * ce
    torch.testing.assert_close(kd_loss(s, t, y, T, alpha), expected)
    # identical logits: only the CE part remains
    torch.testing.assert_close(kd_loss(s, s, y, T, alpha), (1 - alpha) * ce)


def test_ewa_map_direct():
    feature = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    expected = torch.tensor([[[(1 + 9) / 2, (4 + 0) / 2]]])
    torch.testing.assert_close(ewa_map(feature, None, None), expected)


def test_swa_map_direct_on_linear_head():
    torch.manual_seed(0)
    B, C, h, w, K = 3, 4, 2, 2, 5
    feature = torch.randn(B, C, h, w, requires_grad=True)
    W = torch.randn(K, C * h * w)
    logits = feature.flatten(1) @ W.T  # (B, K)
    classes = torch.tensor([0, 3, 4])
    maps = swa_map(feature, logits, classes)
    grads = W[classes].view(B, C, h, w)  # d logit_c / d feature
    weights = grads.sum(dim=(2, 3))  # (B, C)
    expected = F.relu((weights[:, :, None, None] * feature).sum(1))
    torch.testing.assert_close(maps, expected.detach())
    keep = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
    dropped = swa_map(feature, feature.flatten(1) @ W.T, classes, channel_keep=keep)
    expected = F.relu(((weights * keep)[:, :, None, None] * feature).sum(1))
    torch.testing.assert_close(dropped, expected.detach())


def test_matching_loss_is_normalised_mse():
    a, b = torch.rand(2, 3, 3), torch.rand(2, 3, 3)
    na = a.flatten(1) / a.flatten(1).norm(dim=1, keepdim=True)
    nb = b.flatten(1) / b.flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(matching_loss(a, b), ((na - nb) ** 2).mean())
    assert matching_loss(a, 5 * a).item() < 1e-12  # scale-free


def _pair():
    torch.manual_seed(0)
    teacher = vgg16_bn_voc(8, num_classes=6, input_size=32).eval()
    student = vgg16_bn_voc(16, num_classes=6, input_size=32).train()
    images = torch.randn(4, 3, 32, 32)
    return teacher, student, images


def test_head_only_swa_equals_full_backward_construction():
    _, student, images = _pair()
    classes = torch.tensor([0, 2, 5, 1])
    student.eval()  # dropout off so both constructions see one network
    head_only = attribution_maps(student, images, classes, "swa", create_graph=True)
    full = swa_map_full_backward(student, images, classes)
    torch.testing.assert_close(head_only, full, atol=1e-5, rtol=1e-5)
    target = torch.rand_like(head_only)
    params = [p for p in student.parameters()]
    g_head = torch.autograd.grad(matching_loss(head_only, target), params, allow_unused=True)
    full = swa_map_full_backward(student, images, classes)
    g_full = torch.autograd.grad(matching_loss(full, target), params, allow_unused=True)
    for a, b in zip(g_head, g_full, strict=False):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() < 1e-7
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_random_channel_keep_fraction_and_seed():
    torch.manual_seed(3)
    keep = random_channel_keep(8, 20, 0.3, torch.device("cpu"))
    assert keep.shape == (8, 20)
    assert torch.all((1 - keep).sum(1) == 6)
    assert len({tuple(r.tolist()) for r in keep}) > 1  # fresh per row
    torch.manual_seed(3)
    torch.testing.assert_close(random_channel_keep(8, 20, 0.3, torch.device("cpu")), keep)


@pytest.mark.parametrize("matching", ["none", *MATCHINGS.names()])
@pytest.mark.parametrize("kd", [True, False])
def test_objective_step_trains_student_only(matching, kd):
    teacher, student, images = _pair()
    labels = (torch.rand(4, 6) > 0.5).float()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = CompressionObjective(
        teacher, matching, 100.0, 0.3 if matching == "swa" else 0.0, kd=kd
    )
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    s_before = [p.clone() for p in student.parameters()]
    loss, logs = objective(student, images, labels)
    assert torch.isfinite(loss)
    assert ("kd" if kd else "ce") in logs and (("match" in logs) == (matching != "none"))
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert any(not torch.equal(a, b) for a, b in zip(s_before, student.parameters(), strict=False))


@pytest.mark.parametrize(
    ("matching", "kd", "reference_runs"),
    [
        ("none", False, False),  # plain fine-tuning: CE alone
        ("none", True, True),
        ("swa", False, True),
    ],
)
def test_reference_runs_only_when_its_output_is_used(matching, kd, reference_runs):
    teacher, student, images = _pair()
    labels = (torch.rand(4, 6) > 0.5).float()
    calls = []
    handle = teacher.features[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        torch.manual_seed(0)
        loss, logs = CompressionObjective(teacher, matching, 100.0, kd=kd)(student, images, labels)
    finally:
        handle.remove()
    assert bool(calls) == reference_runs
    if not kd and matching == "none":
        torch.manual_seed(0)  # the same dropout draw as the objective's student forward
        expected = F.multilabel_soft_margin_loss(student(images), labels)
        torch.testing.assert_close(loss, expected, rtol=0, atol=0)
        assert set(logs) == {"ce"}


def test_matching_gradient_reaches_student_through_the_map():
    teacher, student, images = _pair()
    labels = torch.zeros(4, 6)
    with_match = CompressionObjective(teacher, "swa", 100.0, kd=True)
    without = CompressionObjective(teacher, "none", kd=True)
    first_conv = student.features[0].weight
    (g1,) = torch.autograd.grad(with_match(student, images, labels)[0], first_conv)
    (g0,) = torch.autograd.grad(without(student, images, labels)[0], first_conv)
    assert not torch.allclose(g1, g0)


def test_bad_distill_configs_rejected():
    with pytest.raises(ValueError, match="width_div must be one of"):
        DistillConfig(width_div=3)
    with pytest.raises(ValueError, match="matching_lambda must be >= 0"):
        DistillConfig(matching="swa", matching_lambda=-1.0)
    with pytest.raises(ValueError, match="one of \\['ewa', 'swa'\\]"):
        DistillConfig(matching="gradcam")
    with pytest.raises(ValueError, match="drop_fraction"):
        DistillConfig(matching="swa", drop_fraction=1.5)
    with pytest.raises(ValueError, match="matching must be 'none' or one of .*got 'foo'"):
        CompressionObjective(vgg16_bn_voc(16, 3, 32), "foo")


def test_dead_student_maps_are_counted_and_get_no_matching_gradient():
    """A student SWA map that is zero everywhere receives no gradient from the matching term;
    `dead_maps` reports the share of such maps in the batch."""
    teacher, student, images = _pair()
    labels = torch.zeros(4, 6)
    objective = CompressionObjective(teacher, "swa", 100.0, kd=True)
    _, logs = objective(student, images, labels)
    assert 0.0 <= float(logs["dead_maps"]) < 1.0  # a random student has live maps
    with torch.no_grad():  # a head that ignores the feature: every weight w_k = 0, map = 0
        student.classifier[-1].weight.zero_()
    _, logs = objective(student, images, labels)
    assert float(logs["dead_maps"]) == 1.0

    dead = torch.zeros(4, 2, 3, 3, requires_grad=True)  # feature whose map is ReLU(0) = 0
    maps = F.relu(-(dead + 1).sum(1))  # (4, 3, 3) all zero, graph through a ReLU
    loss = matching_loss(maps, torch.rand(4, 3, 3))
    (grad,) = torch.autograd.grad(loss, dead)
    assert torch.count_nonzero(grad) == 0
    assert loss.item() == pytest.approx(1 / 9)  # mean of a unit vector squared over 3x3


def test_matching_warmup_is_plain_kd_until_its_epoch():
    from attrlib.views import ViewKeys

    teacher, student, images = _pair()
    labels = (torch.rand(4, 6) > 0.5).float()
    student.eval()  # no dropout: the same batch gives the same KD loss on every call
    rows = torch.arange(4)
    warm = CompressionObjective(teacher, "swa", 100.0, warmup_epochs=2)
    kd_only = CompressionObjective(teacher, "none")
    loss_kd, _ = kd_only(student, images, labels, ViewKeys(0, rows))
    for epoch in (0, 1):
        loss, logs = warm(student, images, labels, ViewKeys(epoch, rows))
        assert "match" not in logs
        torch.testing.assert_close(loss, loss_kd, rtol=0, atol=0)
    loss, logs = warm(student, images, labels, ViewKeys(2, rows))
    assert logs["match"] > 0 and loss > loss_kd
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        CompressionObjective(teacher, "swa", warmup_epochs=-1)
