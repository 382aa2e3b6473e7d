"""Time one distillation training step: KD alone, KD + SWA (head-only), KD + SWA (authors' way).

What is compared, on the same batch, teacher and student initialisation, in one process:
- `kd`: `CompressionObjective(teacher, "none")`, KD loss only;
- `kd_swa_head_only`: `CompressionObjective(teacher, "swa")`, the gradient behind each SWA
  map taken with `torch.autograd.grad` through the head only (the layers after the
  attribution feature);
- `kd_swa_authors`: `AuthorsSWAObjective`, the step of the authors' `VOC2012_distill_trainer`
  with `model/vgg.py` (GeondoPark/attribute-preserve): per step one teacher forward and one
  full teacher backward, one student forward and one full student `backward(create_graph=True)`,
  then the loss backward. It gives the same loss and student gradients as `kd_swa_head_only`
  (tests/test_bench_distill.py).
Each variant trains its own copy of the student with its own optimizer. The variants are
interleaved: every round times one step of each, in an order rotated from round to round,
after `--warmup` untimed rounds; the median per variant is reported. Timed in sequence
instead, the first variant pays the process's warm-up and the ratios drift with the load.

Differences from the authors' code, each making their step cost at least what is timed here:
- Teacher parameters are frozen; the authors' are not (their teacher only runs in eval mode).
  To keep their full backward, the teacher's input requires grad, so the backward of the
  selected logit still runs through every layer down to the input (their backward stops at
  the first conv's input but also computes every teacher weight's gradient, about as much
  work again, cleared by their `teacher_model.zero_grad()`).
- The KD term uses the teacher's logits detached. Theirs are not (`retain_graph=True` keeps
  the teacher's graph): with a torch whose `F.kl_div` is differentiable in its target, as the
  one installed here, their loss backward runs through the whole teacher once more, for
  teacher gradients nobody uses.
- Losses are `attrlib.distill`'s `kd_loss` (log-sigmoids where they take log(p + 1e-7)) and
  `matching_loss`, the same values up to that epsilon; no DataParallel, no per-step metrics
  (mAP, F1) or logging; SGD with momentum and no weight decay (theirs: weight decay, no
  momentum), the same for every variant.

    python benchmarks/distill_step.py [--profile default] [--width-div 2] [--steps 10]
        [--warmup 3] [--out runs/bench/distill_step.json]

Ratios: seconds per step of one variant over another's (medians of wall time); 1.3 means 30%
slower. `ratio_cpu` gives the same from this process's CPU time, steadier when another
process shares the cores.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attrlib.config import Profile, get_profile
from attrlib.distill import CompressionObjective, kd_loss, matching_loss
from attrlib.io import write_json_atomic
from attrlib.models import ModelConfig, build_model, vgg16_bn_voc

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]
RATIOS = {  # name: (numerator variant, denominator variant)
    "ratio_swa_head_only_vs_kd": ("kd_swa_head_only", "kd"),
    "ratio_swa_authors_vs_kd": ("kd_swa_authors", "kd"),
    "speedup_head_only_vs_authors": ("kd_swa_authors", "kd_swa_head_only"),
}


def swa_map_from_grad(feature: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k * feature_k), w_k = sum over space of `grad` (B, C, h, w) -> (B, h, w)."""
    weights = grad.sum(dim=(2, 3))  # (B, C)
    return F.relu((weights[:, :, None, None] * feature).sum(dim=1))  # (B, h, w)


class AuthorsSWAObjective:
    """KD + SWA as the authors' training step computes it: both maps from full backward passes.

    Teacher: one forward of an input that requires grad, the attribution feature retained,
    then `logits.backward(one_hot)` of its top-1 class through the whole network; its logits
    give the KD target and the class. Student: one forward, feature retained,
    `logits.backward(one_hot, create_graph=True)` through the whole network, the map from the
    feature's graph-carrying `.grad`. Same value and student gradients as
    `CompressionObjective(teacher, "swa", matching_lambda, kd=True)`.
    """

    def __init__(
        self,
        teacher: nn.Module,
        matching_lambda: float = 100.0,
        temperature: float = 4.0,
        alpha: float = 0.9,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.matching_lambda, self.temperature, self.alpha = matching_lambda, temperature, alpha

    def __call__(
        self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.teacher.eval()
        with torch.enable_grad():
            # frozen parameters: without an input that requires grad there would be no graph
            # below the feature, and the backward would stop where the head-only one does
            t_feature = self.teacher.forward_features(images.detach().requires_grad_())
            t_feature.retain_grad()
            t_logits = self.teacher.head(t_feature)  # (B, K)
            classes = t_logits.detach().argmax(dim=1)  # (B,)
            one_hot = F.one_hot(classes, t_logits.shape[1]).to(t_logits.dtype)  # (B, K)
            t_logits.backward(one_hot)
            t_maps = swa_map_from_grad(t_feature.detach(), t_feature.grad)  # (B, h, w)

            s_feature = student.forward_features(images)  # (B, C_s, h, w)
            s_feature.retain_grad()
            s_logits = student.head(s_feature)  # (B, K)
            with warnings.catch_warnings():
                # the parameter <-> .grad cycle it warns about is broken by zero_grad below
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
                s_logits.backward(one_hot, create_graph=True)
            s_maps = swa_map_from_grad(s_feature, s_feature.grad)  # (B, h, w)
            # the full backward left graph-carrying gradients on every student parameter; the
            # authors' student_model.zero_grad() drops them before the loss backward
            student.zero_grad(set_to_none=True)
            kd = kd_loss(s_logits, t_logits.detach(), labels, self.temperature, self.alpha)
            match = matching_loss(s_maps, t_maps)
        return kd + self.matching_lambda * match, {"kd": kd.detach(), "match": match.detach()}


def train_step(
    student: nn.Module,
    opt: torch.optim.Optimizer,
    objective: Objective,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    loss, _ = objective(student, images, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_interleaved(
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer, Objective]],
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    warmup: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of `steps` steps per variant, one step of each per round.

    The order of the variants rotates by one every round, so that none always runs first or
    right after the same other one; `warmup` untimed rounds come first. On CUDA each step is
    bracketed by `torch.cuda.synchronize()`, so that its kernels are inside its time.
    """
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    names = list(runs)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + steps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(*runs[name], images, labels)
            sync()
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    return wall, cpu


def measure(
    prof: Profile, width_div: int | None, steps: int, warmup: int, device: str = "cpu"
) -> dict:
    """Seconds per step of every variant and their `RATIOS`, on `device`.

    Teacher and students as the profile's (`width_div`: students' widths = teacher's / this,
    None = the profile's first), 10 classes, a random batch of the profile's distillation
    batch size; `steps` timed rounds after `warmup` (`time_interleaved`).
    """
    div = width_div if width_div is not None else prof.student_width_divs[0]
    torch.manual_seed(0)
    teacher = vgg16_bn_voc(prof.teacher_width_div, 10, prof.input_size).eval().to(device)
    s_cfg = ModelConfig(tuple(w // div for w in teacher.config.widths), 10, prof.input_size)
    batch = prof.distill.batch_size
    images = torch.randn(batch, 3, prof.input_size, prof.input_size)  # (B, 3, H, W)
    labels = (torch.rand(batch, 10) > 0.7).float()  # (B, K)
    images, labels = images.to(device), labels.to(device)
    lam = prof.matching_lambda
    objectives: dict[str, Objective] = {
        "kd": CompressionObjective(teacher, "none", lam),
        "kd_swa_head_only": CompressionObjective(teacher, "swa", lam),
        "kd_swa_authors": AuthorsSWAObjective(teacher, lam),
    }
    torch.manual_seed(1)
    student = build_model(s_cfg).train().to(device)
    runs = {}
    for name, objective in objectives.items():
        own = copy.deepcopy(student)
        runs[name] = (own, torch.optim.SGD(own.parameters(), lr=1e-3, momentum=0.9), objective)
    wall, cpu = time_interleaved(runs, images, labels, steps, warmup)
    seconds = {name: statistics.median(times) for name, times in wall.items()}
    seconds_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    result = {
        "device": str(device),
        "batch": batch,
        "input_size": prof.input_size,
        "width_div": div,
        "teacher_widths": list(teacher.config.widths),
        "student_widths": list(s_cfg.widths),
        "torch_threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "seconds_per_step": seconds,
        "seconds_per_step_cpu": seconds_cpu,
        "seconds_all": wall,
    }
    for key, (num, den) in RATIOS.items():
        result[key] = seconds[num] / seconds[den]
    result["ratio_cpu"] = {
        key: seconds_cpu[num] / seconds_cpu[den] for key, (num, den) in RATIOS.items()
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument(
        "--width-div", type=int, default=None, help="student widths = teacher's / this"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--out", default="runs/bench/distill_step.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    result = {"profile": args.profile}
    result |= measure(get_profile(args.profile), args.width_div, args.steps, args.warmup)
    for name in result["seconds_per_step"]:
        print(
            f"{name:18s} {1000 * result['seconds_per_step'][name]:8.1f} ms/step wall"
            f" {1000 * result['seconds_per_step_cpu'][name]:8.1f} ms/step cpu"
        )
    for key in RATIOS:
        print(f"{key}: {result[key]:.2f} (cpu {result['ratio_cpu'][key]:.2f})")
    write_json_atomic(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
