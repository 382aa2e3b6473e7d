"""Distillation throughput with shared teacher targets, and the views data pipeline.

Two comparisons in one process, on the same images:

1. Training throughput (images/s) of a distillation run whose teacher runs in every step
   (`online`: `CompressionObjective(teacher, matching, targets=None)`) against one that
   reads the teacher's logits and maps from a `TeacherTargets` store built once beforehand
   by `attrlib.targets.build_targets` over the same views (`cached`: `targets=store`), for
   students x2 and x4 of the profile's teacher and matching "none" (KD) and "swa".
   Equal between the two variants of a (width, matching): the student's initial weights,
   the batches (a fixed list of `--batches` TrainViews batches of view epoch 0, drawn
   through a DataLoader with a seeded shuffle, made before any timing), the optimizer (the
   profile's distill recipe: AdamW on the default profile), the loss settings (lambda,
   matching layer, temperature) and the step, which mirrors `attrlib.engine.fit`'s:
   channels-last student and images, objective, zero_grad, backward, optimizer step. Each
   variant trains its own copy of the student. Before any timing the benchmark checks that
   both variants give the same loss on the same batch (`check_same_loss`).
   The store's build (teacher forward, SWA maps, and drawing the views it needs) is timed
   apart, never in a step, once per matching with only what that matching reads (logits
   alone for KD).
2. The data pipeline: seconds per epoch of `--batches` batches of the old per-image
   torchvision.transforms.v2 pipeline (`VOCClassification` with `train_transform`, default
   collate) against the views pipeline (`TrainViews` + its collate, what the study trains
   on), same images in the same seeded order, same batch size, num_workers=0, both
   decoded-image caches warmed first (so neither pays JPEG decoding).

Timing: after `--warmup` untimed rounds, every round runs one pass over the batches per
variant; the (width, matching) groups rotate from round to round and the two variants of a
group run back to back, in an order that alternates, so that load drift on a shared machine
hits both sides of a ratio alike. Medians over `--rounds` are reported.

    python benchmarks/distill_throughput.py [--profile default] [--data-root ...]
        [--checkpoint runs/default/teacher-s0/teacher/best.pt] [--batches 8] [--rounds 5] [--warmup 1]
        [--out runs/bench/distill_throughput.json]

How to read the ratios:
- `ratio_cached_vs_online[xW-m]`: images/s cached over images/s online (medians of wall
  time); 3.0 means the cached run trains three times as many images per second. Goal: >= 3
  at x4, where the teacher's forward is the largest share of a step. `ratio_cpu`: the same
  from this process's CPU time, steadier when another process shares the cores.
- `break_even_runs[xW-m]`: build seconds per view / seconds saved per view and run; after
  that many student runs reading the same view epochs the store has paid for itself (the
  number does not depend on epochs or data size, both sides scale with the views). The
  build includes drawing the views, which the timed steps do not (their batches are made
  beforehand), so this errs on the side of the online runs.
- `data.ratio_per_image_vs_views`: seconds per epoch of the per-image pipeline over the
  views pipeline's; 2.0 means the views pipeline makes batches twice as fast.
Without `--data-root` a synthetic set of exactly `--batches` x batch-size training images
(the profile's image size) is generated in a temporary folder; without `--checkpoint` the
teacher has seeded random weights, which time the same as trained ones.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from attrlib.config import get_profile
from attrlib.data import VOCClassification, load_classes, train_transform
from attrlib.distill import NO_MATCHING, CompressionObjective, teacher_outputs
from attrlib.engine import build_optimizer, make_checkpoint
from attrlib.io import save_torch_atomic, write_json_atomic
from attrlib.models import VGGVOC, build_model, vgg16_bn_voc
from attrlib.stages import build_datasets, load_reference
from attrlib.synthvoc import generate
from attrlib.targets import TeacherTargets, build_targets
from attrlib.views import TrainViews, ViewKeys

WIDTH_DIVS = (2, 4)  # students x2 and x4 of the profile's teacher
MATCHINGS = (NO_MATCHING, "swa")
VARIANTS = ("online", "cached")
GOAL_RATIO, GOAL_WIDTH = 3.0, 4  # cached / online images per second, at x4
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}
SHUFFLE_SEED, STUDENT_SEED, TEACHER_SEED = 0, 1, 0

Batch = tuple[torch.Tensor, torch.Tensor, ViewKeys]  # views, labels, which views


def first_batches(make_loader: Callable[[], DataLoader], n: int) -> Iterator:
    """The first `n` batches of `make_loader()`'s loaders, passes repeated if one is short."""
    done = 0
    while done < n:
        got = 0
        for batch in make_loader():
            yield batch
            done, got = done + 1, got + 1
            if done == n:
                return
        if got == 0:
            raise ValueError("the training split holds fewer images than one batch")


def shuffled_loader(dataset, batch_size: int, collate_fn=None) -> DataLoader:
    """Seeded shuffle and full batches: every pipeline and every pass sees the same images."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(SHUFFLE_SEED),
        collate_fn=collate_fn,
    )


def draw_batches(train: TrainViews, n: int, batch_size: int) -> list[Batch]:
    """`n` view-epoch-0 batches, made once so that no timed step pays for its data."""
    loader = functools.partial(shuffled_loader, train, batch_size, train.collate(0))
    return [(v, y, ViewKeys(0, i)) for v, y, i in first_batches(loader, n)]


def make_student(teacher: VGGVOC, width_div: int, seed: int = STUDENT_SEED) -> VGGVOC:
    """The x`width_div` student, as `attrlib.stages.train_student` builds it, seeded."""
    widths = tuple(max(1, w // width_div) for w in teacher.config.widths)
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(teacher.config, widths=widths))


def prepare(student: nn.Module, recipe) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A student copy in `fit`'s state: train mode, channels-last, its own optimizer."""
    student = copy.deepcopy(student).train()
    student.to(memory_format=torch.channels_last)
    return student, build_optimizer([p for p in student.parameters() if p.requires_grad], recipe)


def train_step(
    student: nn.Module, optimizer: torch.optim.Optimizer, objective, batch: Batch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step as `attrlib.engine.fit` runs it on the CPU (its grad scaler is off there)."""
    images, labels, views = batch
    images = images.contiguous(memory_format=torch.channels_last)
    loss, logs = objective(student, images, labels, views)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logs


def build_store(
    teacher: nn.Module,
    train: TrainViews,
    matching: str,
    layer: str,
    teacher_path: Path,
    batch_size: int = 128,
) -> tuple[TeacherTargets, float]:
    """(store of view epoch 0 with what `matching` reads, build seconds)."""
    kinds = [] if matching == NO_MATCHING else [(matching, 0.0)]
    t0 = time.perf_counter()
    store = build_targets(
        teacher,
        train,
        1,
        kinds,
        layer,
        teacher_path=teacher_path,
        batch_size=batch_size,
        progress=False,
    )
    return store, time.perf_counter() - t0


def objectives(
    teacher: nn.Module, matching: str, store: TeacherTargets, prof, view_seed: int
) -> dict[str, CompressionObjective]:
    """The two variants' objectives: identical but for where the teacher's outputs come from."""
    return {
        variant: CompressionObjective(
            teacher,
            matching,
            prof.matching_lambda,
            kd=True,
            layer=prof.matching_layer,
            targets=store if variant == "cached" else None,
            view_seed=view_seed,
        )
        for variant in VARIANTS
    }


def check_same_loss(student: nn.Module, recipe, objs: dict, batch: Batch) -> dict[str, float]:
    """Loss of each variant on one batch, from copies of `student`; AssertionError if unequal."""
    losses = {}
    for variant, objective in objs.items():
        torch.manual_seed(STUDENT_SEED)  # the same dropout mask in both students
        losses[variant] = train_step(*prepare(student, recipe), objective, batch)[0]
    torch.testing.assert_close(losses["cached"], losses["online"], **LOSS_TOL)
    return {variant: loss.item() for variant, loss in losses.items()}


def interleaved_order(groups: list[list[str]], r: int) -> list[str]:
    """Round `r`'s order: groups rotated by `r`, each group forward or reversed by parity."""
    shift = r % len(groups)
    order: list[str] = []
    for group in groups[shift:] + groups[:shift]:
        order += group if r % 2 == 0 else group[::-1]
    return order


def time_interleaved(
    passes: dict[str, Callable[[], None]], groups: list[list[str]], rounds: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of one pass per variant and round, `warmup` rounds untimed."""
    wall: dict[str, list[float]] = {name: [] for name in passes}
    cpu: dict[str, list[float]] = {name: [] for name in passes}
    for r in range(warmup + rounds):
        for name in interleaved_order(groups, r):
            t0, c0 = time.perf_counter(), time.process_time()
            passes[name]()
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    return wall, cpu


def warm_cache(dataset: VOCClassification) -> None:
    """Decode every image once, so that no timed pass (nor the build) pays JPEG decoding."""
    for index in range(len(dataset)):
        dataset.image(index)


def teacher_and_path(
    checkpoint: str | None, data_root: Path, prof, classes, tmp: Path
) -> tuple[VGGVOC, Path]:
    """The teacher and a file of it (the store records the teacher's hash)."""
    if checkpoint:
        teacher = load_reference(checkpoint, str(data_root), "cpu")[0]
        if teacher.config.input_size != prof.input_size:
            raise ValueError(
                f"{checkpoint} takes {teacher.config.input_size} px, the profile "
                f"{prof.input_size} px"
            )
        return teacher.eval(), Path(checkpoint)
    torch.manual_seed(TEACHER_SEED)
    teacher = vgg16_bn_voc(prof.teacher_width_div, len(classes), prof.input_size).eval()
    return teacher, save_torch_atomic(tmp / "teacher.pt", make_checkpoint(teacher, classes))


def distill_comparison(args, prof, data_root: Path, tmp: Path) -> dict:
    train, _, classes = build_datasets(str(data_root), args.profile)
    warm_cache(train.dataset)
    teacher, teacher_path = teacher_and_path(args.checkpoint, data_root, prof, classes, tmp)
    batch_size = prof.distill.batch_size
    batches = draw_batches(train, args.batches, batch_size)
    # first-call costs (oneDNN primitives for these shapes) belong to no build
    warm = torch.cat([b[0] for b in batches])[: args.build_batch]
    teacher_outputs(teacher, warm, [("swa", 0.0)], prof.matching_layer)
    stores, build_seconds = {}, {}
    for matching in MATCHINGS:
        stores[matching], build_seconds[matching] = build_store(
            teacher, train, matching, prof.matching_layer, teacher_path, args.build_batch
        )
    passes: dict[str, Callable[[], None]] = {}
    groups, loss_check, student_widths = [], {}, {}
    for div in WIDTH_DIVS:
        student = make_student(teacher, div)
        student_widths[f"x{div}"] = list(student.config.widths)
        for matching in MATCHINGS:
            objs = objectives(teacher, matching, stores[matching], prof, train.spec.seed)
            key = f"x{div}-{matching}"
            loss_check[key] = check_same_loss(student, prof.distill, objs, batches[0])
            group = []
            for variant, objective in objs.items():
                run = (*prepare(student, prof.distill), objective)

                def one_pass(run=run) -> None:
                    for batch in batches:
                        train_step(*run, batch)

                passes[f"{key}-{variant}"] = one_pass
                group.append(f"{key}-{variant}")
            groups.append(group)
    wall, cpu = time_interleaved(passes, groups, args.rounds, args.warmup)
    images = len(batches) * batch_size
    ips = {name: images / statistics.median(times) for name, times in wall.items()}
    ips_cpu = {name: images / statistics.median(times) for name, times in cpu.items()}
    views_built = len(train)
    ratios, ratios_cpu, break_even = {}, {}, {}
    for group in groups:
        key = group[0].rsplit("-", 1)[0]
        online, cached = f"{key}-online", f"{key}-cached"
        ratios[key] = ips[cached] / ips[online]
        ratios_cpu[key] = ips_cpu[cached] / ips_cpu[online]
        saved = 1.0 / ips[online] - 1.0 / ips[cached]  # seconds per view and run
        build = build_seconds[key.split("-", 1)[1]] / views_built  # seconds per view
        break_even[key] = build / saved if saved > 0 else None  # None: never pays off
    goal = {f"x{GOAL_WIDTH}-{m}": ratios[f"x{GOAL_WIDTH}-{m}"] for m in MATCHINGS}
    return {
        "teacher_widths": list(teacher.config.widths),
        "student_widths": student_widths,
        "checkpoint": args.checkpoint or "",
        "batch_size": batch_size,
        "images_per_pass": images,
        "optimizer": prof.distill.optimizer,
        "lr": prof.distill.lr,
        "weight_decay": prof.distill.weight_decay,
        "matching_layer": prof.matching_layer,
        "matching_lambda": prof.matching_lambda,
        "loss_check": loss_check,
        "images_per_second": ips,
        "images_per_second_cpu": ips_cpu,
        "seconds_per_pass_all": wall,
        "ratio_cached_vs_online": ratios,
        "ratio_cpu": ratios_cpu,
        "targets_build_seconds": build_seconds,
        "targets_views_built": views_built,
        "targets_build_batch": args.build_batch,
        "break_even_runs": break_even,
        "goal": {
            "ratio_at_least": GOAL_RATIO,
            "width": f"x{GOAL_WIDTH}",
            "ratios": goal,
            "met": all(r >= GOAL_RATIO for r in goal.values()),
        },
    }


def data_comparison(args, prof, data_root: Path, batch_size: int) -> dict:
    classes = load_classes(data_root)
    per_image = VOCClassification(
        data_root, "train", classes, train_transform(prof.input_size, prof.scale_min)
    )
    views = build_datasets(str(data_root), args.profile, classes)[0]
    warm_cache(per_image)
    warm_cache(views.dataset)
    epochs = itertools.count()  # each views pass reads a new view epoch, as training does

    def per_image_pass() -> None:
        loader = functools.partial(shuffled_loader, per_image, batch_size)
        for _ in first_batches(loader, args.batches):
            pass

    def views_pass() -> None:
        loader = functools.partial(shuffled_loader, views, batch_size, views.collate(next(epochs)))
        for _ in first_batches(loader, args.batches):
            pass

    passes = {"per_image": per_image_pass, "views": views_pass}
    wall, cpu = time_interleaved(passes, [list(passes)], args.rounds, args.warmup)
    seconds = {name: statistics.median(times) for name, times in wall.items()}
    seconds_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    return {
        "batches": args.batches,
        "batch_size": batch_size,
        "num_workers": 0,
        "seconds_per_epoch": seconds,
        "seconds_per_epoch_cpu": seconds_cpu,
        "seconds_all": wall,
        "ratio_per_image_vs_views": seconds["per_image"] / seconds["views"],
        "ratio_cpu": seconds_cpu["per_image"] / seconds_cpu["views"],
    }


def report(result: dict) -> None:
    d = result["distill"]
    for key, ratio in d["ratio_cached_vs_online"].items():
        online, cached = (
            d["images_per_second"][f"{key}-online"],
            d["images_per_second"][f"{key}-cached"],
        )
        runs = d["break_even_runs"][key]
        paid = "never" if runs is None else f"after {runs:.2f} student runs"
        print(
            f"distill {key:8s} online {online:7.1f} img/s  cached {cached:7.1f} img/s  "
            f"cached/online {ratio:.2f}x (cpu {d['ratio_cpu'][key]:.2f}x)  break-even {paid}"
        )
    for matching, seconds in d["targets_build_seconds"].items():
        print(
            f"targets build ({matching}): {seconds:.2f} s for {d['targets_views_built']} views "
            f"({1000 * seconds / d['targets_views_built']:.2f} ms/view, batch "
            f"{d['targets_build_batch']})"
        )
    goal = d["goal"]
    shown = ", ".join(f"{k} {r:.2f}x" for k, r in goal["ratios"].items())
    verdict = "met" if goal["met"] else "NOT met"
    print(
        f"goal: cached/online >= {goal['ratio_at_least']:g}x at {goal['width']}: {shown} -> {verdict}"
    )
    data = result["data"]
    s = data["seconds_per_epoch"]
    print(
        f"data: per-image v2 {s['per_image']:.3f} s, views {s['views']:.3f} s per epoch of "
        f"{data['batches']} x {data['batch_size']}: per-image/views "
        f"{data['ratio_per_image_vs_views']:.2f}x (cpu {data['ratio_cpu']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--data-root", default="", help="VOC2012 folder; default: synthetic")
    parser.add_argument("--checkpoint", default="", help="trained teacher; default: random")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per variant")
    parser.add_argument(
        "--build-batch", type=int, default=128, help="targets build batch (build_targets' default)"
    )
    parser.add_argument("--out", default="runs/bench/distill_throughput.json")
    args = parser.parse_args(argv)
    if min(args.batches, args.rounds, args.build_batch) < 1 or args.warmup < 0:
        parser.error("--batches, --rounds and --build-batch must be >= 1, --warmup >= 0")
    prof = get_profile(args.profile)
    batch_size = prof.distill.batch_size
    with tempfile.TemporaryDirectory(prefix="distill_throughput-") as tmp:
        tmp = Path(tmp)
        if args.data_root:
            data_root = Path(args.data_root)
        elif prof.synth is None:
            parser.error(f"profile {args.profile!r} has no synthetic data: pass --data-root")
        else:
            # exactly the images the timed batches read: the build then covers no others
            n_train = args.batches * batch_size
            data_root = generate(
                tmp / "data", n_train, 1, prof.synth.image_size, workers=1, progress=False
            )
        result = {
            "profile": args.profile,
            "data_root": args.data_root or "synthetic",
            "input_size": prof.input_size,
            "torch_threads": torch.get_num_threads(),
            "batches": args.batches,
            "batch_size": batch_size,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "width_divs": list(WIDTH_DIVS),
            "distill": distill_comparison(args, prof, data_root, tmp),
            "data": data_comparison(args, prof, data_root, batch_size),
        }
    report(result)
    write_json_atomic(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
