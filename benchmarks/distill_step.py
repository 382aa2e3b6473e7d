"""Time one distillation training step: KD alone, KD + SWA (head-only), KD + SWA (authors' way).

The authors build the SWA map with a full `backward(create_graph=True)` to a retained
attribution feature, for teacher and student; `attrlib.distill` takes the gradient through
the head only. Same batch, same process, median of repeated steps; writes the ratios to
`runs/bench/distill_step.json`.

    python benchmarks/distill_step.py [--profile default] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from attrlib.config import get_profile
from attrlib.distill import (
    CompressionObjective,
    kd_loss,
    matching_loss,
    swa_map_full_backward,
)
from attrlib.io import write_json_atomic
from attrlib.models import ModelConfig, build_model, vgg16_bn_voc


class AuthorsSWAObjective:
    """KD + SWA with both maps made by full backward passes (the authors' construction)."""

    def __init__(self, teacher, matching_lambda: float = 100.0) -> None:
        self.teacher, self.matching_lambda = teacher.eval().requires_grad_(False), matching_lambda

    def __call__(self, student, images, labels):
        with torch.no_grad():
            classes = self.teacher(images).argmax(1)
        # frozen teacher: an input that requires grad gives its full backward something to reach
        t_maps = swa_map_full_backward(self.teacher, images.detach().requires_grad_(), classes)
        s_maps = swa_map_full_backward(student, images, classes)
        with torch.no_grad():
            t_logits = self.teacher(images)
        loss = kd_loss(student(images), t_logits, labels)
        return loss + self.matching_lambda * matching_loss(s_maps, t_maps.detach()), {}


def time_steps(student, objective, images, labels, steps: int) -> float:
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss, _ = objective(student, images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="runs/bench/distill_step.json")
    args = parser.parse_args()
    prof = get_profile(args.profile)
    torch.manual_seed(0)
    teacher = vgg16_bn_voc(prof.teacher_width_div, 10, prof.input_size).eval()
    div = prof.student_width_divs[0]
    s_cfg = ModelConfig(tuple(w // div for w in teacher.config.widths), 10, prof.input_size)
    batch = prof.distill.batch_size
    images = torch.randn(batch, 3, prof.input_size, prof.input_size)
    labels = (torch.rand(batch, 10) > 0.7).float()
    variants = {
        "kd": CompressionObjective(teacher, "none"),
        "kd_swa_head_only": CompressionObjective(teacher, "swa"),
        "kd_swa_authors": AuthorsSWAObjective(teacher),
    }
    seconds = {}
    for name, objective in variants.items():
        torch.manual_seed(1)
        student = build_model(s_cfg).train()
        seconds[name] = time_steps(student, objective, images, labels, args.steps)
        print(f"{name:18s} {1000 * seconds[name]:8.1f} ms/step")
    result = {
        "profile": args.profile,
        "batch": batch,
        "input_size": prof.input_size,
        "teacher_widths": list(teacher.config.widths),
        "student_widths": list(s_cfg.widths),
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": seconds,
        "ratio_swa_head_only_vs_kd": seconds["kd_swa_head_only"] / seconds["kd"],
        "ratio_swa_authors_vs_kd": seconds["kd_swa_authors"] / seconds["kd"],
        "speedup_head_only_vs_authors": seconds["kd_swa_authors"] / seconds["kd_swa_head_only"],
    }
    for key in (
        "ratio_swa_head_only_vs_kd",
        "ratio_swa_authors_vs_kd",
        "speedup_head_only_vs_authors",
    ):
        print(f"{key}: {result[key]:.2f}")
    write_json_atomic(Path(args.out), result)


if __name__ == "__main__":
    main()
