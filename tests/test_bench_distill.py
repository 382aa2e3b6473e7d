"""The correctness half of `benchmarks/distill_step.py`: the authors' step is the same step.

No timing here: the benchmark times; this checks that its re-creation of the authors' KD + SWA
step gives `CompressionObjective`'s loss and student gradients, with the authors' cost
structure (one forward per network, full backward passes), and that the benchmark runs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from benchmod import load_benchmark
from torch import nn

from attrlib.config import get_profile
from attrlib.distill import CompressionObjective
from attrlib.models import ModelConfig, build_model

from nets import random_vgg

NUM_CLASSES = 6

bench = load_benchmark("distill_step.py")

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pair() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """Smoke-profile teacher (random BN and biases, so its maps are not degenerate), x2 student."""
    prof = get_profile("smoke")
    teacher = random_vgg(NUM_CLASSES, prof.input_size, seed=0).eval()
    assert teacher.config.widths[0] == 64 // prof.teacher_width_div  # the smoke teacher
    div = prof.student_width_divs[0]
    torch.manual_seed(1)
    s_cfg = ModelConfig(tuple(w // div for w in teacher.config.widths), NUM_CLASSES, 32)
    student = build_model(s_cfg).train()
    with torch.no_grad():  # a near-zero classifier would leave most student maps dead
        student.classifier[-1].weight.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(8, 3, prof.input_size, prof.input_size, generator=g)  # (B, 3, H, W)
    labels = (torch.rand(8, NUM_CLASSES, generator=g) > 0.6).float()  # (B, K)
    return teacher, student, images, labels


def loss_and_grads(objective, student, images, labels) -> tuple[torch.Tensor, dict, list]:
    torch.manual_seed(5)  # the same dropout mask in the student's one forward
    loss, logs = objective(student, images, labels)
    for p in student.parameters():
        assert p.grad is None  # nothing left over from building the maps
    loss.backward()
    return loss.detach(), logs, [p.grad for p in student.parameters()]


def test_authors_step_equals_head_only_objective() -> None:
    teacher, student, images, labels = tiny_pair()
    head_only = CompressionObjective(teacher, "swa", 100.0)
    authors = bench.AuthorsSWAObjective(teacher, 100.0)
    loss_h, logs_h, grads_h = loss_and_grads(head_only, copy.deepcopy(student), images, labels)
    loss_a, logs_a, grads_a = loss_and_grads(authors, copy.deepcopy(student), images, labels)
    # the comparison means something only if the matching term acts
    assert logs_h["dead_maps"] < 0.5 and logs_h["match"] > 1e-3
    torch.testing.assert_close(logs_a["match"], logs_h["match"], rtol=1e-5, atol=0)
    torch.testing.assert_close(loss_a, loss_h, rtol=1e-5, atol=0)
    # one scale for all: a conv bias before batch norm has a gradient of rounding noise only
    scale = max(g.abs().max().item() for g in grads_h)
    for name, (g_a, g_h) in zip(
        [n for n, _ in student.named_parameters()], zip(grads_a, grads_h, strict=True), strict=True
    ):
        assert g_a is not None and g_a.grad_fn is None, name
        torch.testing.assert_close(g_a, g_h, rtol=1e-5, atol=1e-5 * scale)
    kd_only = CompressionObjective(teacher, "none")
    _, _, grads_kd = loss_and_grads(kd_only, copy.deepcopy(student), images, labels)
    assert any(not torch.allclose(a, k) for a, k in zip(grads_a, grads_kd, strict=True))


@contextmanager
def counting(model: nn.Module) -> Iterator[dict[str, int]]:
    """Counts forwards of the first conv and the classifier, and gradients reaching the first conv."""
    counts = {"trunk_forward": 0, "head_forward": 0, "backward_to_first_conv": 0}

    def on_first_conv(module, inputs, output):
        counts["trunk_forward"] += 1
        if output.requires_grad:
            output.register_hook(
                lambda grad: counts.__setitem__(
                    "backward_to_first_conv", counts["backward_to_first_conv"] + 1
                )
            )

    def on_classifier(module, inputs, output):
        counts["head_forward"] += 1

    handles = [
        model.features[0].register_forward_hook(on_first_conv),
        model.classifier.register_forward_hook(on_classifier),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def test_authors_step_runs_each_network_once_and_backward_through_it() -> None:
    teacher, student, images, labels = tiny_pair()
    variants = {
        "authors": (bench.AuthorsSWAObjective(teacher), 1, 2),
        "head_only": (CompressionObjective(teacher, "swa"), 0, 1),
    }
    for name, (objective, teacher_backwards, student_backwards) in variants.items():
        own = copy.deepcopy(student)
        opt = torch.optim.SGD(own.parameters(), lr=1e-3)
        for _ in range(2):  # a second step starts with the first one's gradients in place
            with counting(teacher) as t_counts, counting(own) as s_counts:
                bench.train_step(own, opt, objective, images, labels)
            assert t_counts == {
                "trunk_forward": 1,
                "head_forward": 1,
                "backward_to_first_conv": teacher_backwards,
            }, name
            assert s_counts == {
                "trunk_forward": 1,
                "head_forward": 1,
                "backward_to_first_conv": student_backwards,
            }, name
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_main_writes_every_variant_and_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "distill_step.json"
    argv = ["--profile", "smoke", "--width-div", "4", "--steps", "2", "--warmup", "1"]
    result = bench.main([*argv, "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    variants = {"kd", "kd_swa_head_only", "kd_swa_authors"}
    assert set(written["seconds_per_step"]) == variants
    assert set(written["seconds_per_step_cpu"]) == variants
    assert all(len(times) == 2 for times in written["seconds_all"].values())
    assert all(s > 0 for s in written["seconds_per_step"].values())
    for key in bench.RATIOS:
        assert written[key] > 0 and written["ratio_cpu"][key] > 0
    assert written["width_div"] == 4 and written["steps"] == 2 and written["warmup"] == 1
    teacher_widths = written["teacher_widths"]
    assert written["student_widths"] == [w // 4 for w in teacher_widths]
