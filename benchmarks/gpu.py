"""GPU readiness: teacher training throughput, distillation step and evaluation ratios on CUDA.

Three figures, each a ratio within this one process, on the first CUDA device:
1. Teacher training at 227 px (`teacher_throughput`): images/s of a real training step
   (forward, multi-label soft-margin loss, backward, SGD step) of the VGG16-BN-VOC teacher on
   a random batch, mixed precision (`attrlib.predict.mixed_precision`, bfloat16 autocast on
   CUDA, float16 where bfloat16 is unsupported) with channels-last model and images, as
   `attrlib.engine` trains, against float32 NCHW. Each variant trains its own copy of the
   same initial weights; steps interleaved as in `benchmarks/distill_step.py`.
2. Distillation step (`benchmarks/distill_step.py`'s `measure`, profile `--profile`):
   KD + SWA with the head-only gradient against the authors' full backward passes.
3. Localization evaluation (`benchmarks/evaluate.py`'s `measure`): the batched path against
   the authors' per-pair loop, after its float64 check (run on the GPU too); goal >= 20x.
   Model: `--checkpoint`, else a seeded random teacher of the profile (its widths and input
   size, every ground-truth pair scored); data: `--data-root`, else `--images` synthetic
   validation images generated in a temporary folder.

4. With two or more GPUs, DDP scaling of teacher training (`ddp_scaling`): images/s of
   `benchmarks/ddp_step.py` under torchrun on 1 GPU and on all of them, same global batch.

From these it estimates the device-hours of each stage of the profile's `make all`
(`stage_hours`, VOC2012's split sizes), when the teacher figure was measured on the profile's
own teacher (width and input size).

    python benchmarks/gpu.py [--profile voc] [--batch 64] [--steps 10] [--warmup 3]
        [--images 64] [--data-root ...] [--checkpoint ...] [--out runs/bench/gpu.json]
        [--device cpu]

Prints one summary line per figure and writes `--out` with the device name, torch version,
date, commit and every figure's full result. Without a CUDA device it says so, measures
nothing, writes nothing and exits 0. Timing on CUDA: every timed step or run ends in
`torch.cuda.synchronize()` or in host values, so its kernels are inside its time.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from provenance import git_commit
from torch import nn

from attrlib import study
from attrlib.attribution import METHODS
from attrlib.config import Profile, get_profile
from attrlib.data import VOCLocalization, load_classes
from attrlib.engine import multilabel_objective
from attrlib.io import write_json_atomic
from attrlib.models import vgg16_bn_voc
from attrlib.predict import mixed_precision
from attrlib.synthvoc import generate

NO_CUDA = (
    "bench-gpu: no CUDA device on this machine; nothing measured "
    "(run it where `nvidia-smi` lists a GPU)"
)
EVAL_GOAL = 20.0  # batched evaluation over the authors' per-pair loop, on a GPU
SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16"}
SYNTH_IMAGE_SIZE = 128  # px of generated validation images (resized to the model's input)
VOC_TRAIN_IMAGES = 5717  # VOC2012 classification train split: one training epoch
VOC_EVAL_IMAGES = 1449  # VOC2012 segmentation val split: the localization evaluation


def sibling(filename: str) -> ModuleType:
    """`benchmarks/<filename>` as module `bench_<stem>` (once per process)."""
    path = Path(__file__).resolve().with_name(filename)
    name = f"bench_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


distill_step = sibling("distill_step.py")
evaluate_bench = sibling("evaluate.py")


def amp_channels_last_objective(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """The teacher's loss as `attrlib.engine` trains it: channels-last images, autocast."""
    images = images.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
    with mixed_precision(images.device):
        return multilabel_objective(model, images, labels)


def teacher_throughput(
    device: torch.device | str,
    width_div: int = 1,
    num_classes: int = 20,
    input_size: int = 227,
    batch: int = 64,
    steps: int = 10,
    warmup: int = 3,
) -> dict:
    """Training images/s of the teacher, mixed precision + channels-last against float32 NCHW.

    Args:
        device: where both variants train (mixed precision is off on the CPU, where only the
            memory layout differs).
        width_div, num_classes, input_size: the network (`vgg16_bn_voc`); 1, 20, 227 is the
            paper's teacher.
        batch: images per step, random (B, 3, S, S) with random multi-hot labels (B, K).
        steps, warmup: timed and untimed rounds of `distill_step.time_interleaved`.
    Returns:
        images_per_s and seconds_per_step (medians) per variant, `ratio` (mixed precision +
        channels-last over float32), the autocast dtype, and the sizes.
    """
    device = torch.device(device)
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div, num_classes, input_size).train().to(device)
    images = torch.randn(batch, 3, input_size, input_size, device=device)  # (B, 3, S, S)
    labels = (torch.rand(batch, num_classes, device=device) > 0.8).float()  # (B, K)
    runs = {}
    for name, layout, objective in (
        ("amp_channels_last", torch.channels_last, amp_channels_last_objective),
        ("fp32", torch.contiguous_format, multilabel_objective),
    ):
        own = copy.deepcopy(model).to(memory_format=layout)
        runs[name] = (own, torch.optim.SGD(own.parameters(), lr=1e-3, momentum=0.9), objective)
    wall, _ = distill_step.time_interleaved(runs, images, labels, steps, warmup)
    seconds = {name: statistics.median(times) for name, times in wall.items()}
    # what `mixed_precision` autocasts to: bfloat16 or float16 on CUDA, nothing on the CPU
    dtype = mixed_precision(device).fast_dtype if device.type == "cuda" else None
    return {
        "device": str(device),
        "width_div": width_div,
        "input_size": input_size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "autocast_dtype": str(dtype).removeprefix("torch.") if dtype else None,
        "seconds_per_step": seconds,
        "images_per_s": {name: batch / s for name, s in seconds.items()},
        "seconds_all": wall,
        "ratio": seconds["fp32"] / seconds["amp_channels_last"],
    }


def evaluation_ratio(
    device: torch.device | str,
    profile: str,
    images: int,
    batch_size: int,
    repeats: int,
    data_root: str = "",
    checkpoint: str = "",
    seed: int = 0,
) -> dict:
    """`evaluate_bench.measure` on `device` for the profile's teacher (see the module docstring)."""
    prof = get_profile(profile)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = data_root or generate(
            Path(tmp) / "data", 1, images, SYNTH_IMAGE_SIZE, seed=seed, workers=1, progress=False
        )
        classes = load_classes(root)
        if checkpoint:
            model = evaluate_bench.build_network(checkpoint, classes, seed)
        else:
            torch.manual_seed(seed)
            model = vgg16_bn_voc(prof.teacher_width_div, len(classes), prof.input_size).eval()
        size = model.config.input_size
        dataset = evaluate_bench.first_images(VOCLocalization(root, "val", classes, size), images)
        result = {"data_root": str(data_root) or None, "checkpoint": checkpoint or None}
        result |= evaluate_bench.measure(
            model, dataset, METHODS.names(), batch_size, repeats, bool(checkpoint), device
        )
    return result


def ddp_scaling(
    device: str,
    counts: list[int],
    width_div: int,
    input_size: int,
    batch: int,
    steps: int,
    warmup: int,
) -> dict:
    """`benchmarks/ddp_step.py` under torchrun for each process count in `counts` (the first
    is the baseline): images/s per count and `efficiency` = images/s / (count x baseline's)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    script = Path(__file__).resolve().with_name("ddp_step.py")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for count in counts:
            out = Path(tmp) / f"ddp-{count}.json"
            command = [str(torchrun), "--standalone", f"--nproc_per_node={count}", str(script)]
            command += ["--device", device, "--width-div", str(width_div)]
            command += ["--input-size", str(input_size), "--batch", str(batch)]
            command += ["--steps", str(steps), "--warmup", str(warmup), "--out", str(out)]
            subprocess.run(command, check=True, capture_output=True, text=True)
            runs[count] = json.loads(out.read_text())
    base = runs[counts[0]]["images_per_s"] / counts[0]
    return {
        "counts": counts,
        "images_per_s": {n: r["images_per_s"] for n, r in runs.items()},
        "efficiency": {n: r["images_per_s"] / (n * base) for n, r in runs.items()},
        "runs": runs,
    }


def scaling_line(ddp: dict, input_size: int) -> str:
    """The summary line of a `ddp_scaling` result."""
    n, ips = ddp["counts"][-1], ddp["images_per_s"]
    return (
        f"DDP teacher train {input_size} px: {ips[1]:.0f} img/s on 1 GPU,"
        f" {ips[n]:.0f} img/s on {n} ({100 * ddp['efficiency'][n]:.0f}% scaling)"
    )


def stage_hours(
    result: dict,
    prof: Profile,
    train_images: int = VOC_TRAIN_IMAGES,
    eval_images: int = VOC_EVAL_IMAGES,
) -> dict[str, float]:
    """Estimated device-hours per stage of the profile's `make all`, from measured figures.

    Training steps and the evaluation only (validation passes and data loading are left
    out), one device per run:
    - teacher, both prunings: the teacher's mixed-precision training images/s. A pruning
      run's network is at most the teacher; its matching adds the frozen reference's pass,
      which this leaves out.
    - distillation: the head-only KD+SWA step of the profile's first student width, for
      every run of the grid (narrower students step faster).
    - evaluation: the batched evaluation's seconds per image, for the teacher and every
      grid run's checkpoint (every iteration of iterative pruning).
    """
    g = study.grid(prof.name)
    seeds = len(g.seeds)
    teacher_s = 1.0 / result["teacher_train"]["images_per_s"]["amp_channels_last"]
    step = result["distill_step"]
    distill_s = step["seconds_per_step"]["kd_swa_head_only"] / step["batch"]
    loc = result["evaluate"]
    eval_s = loc["seconds_batched_total"] / loc["images"]
    runs = {
        "distill": len(g.widths) * len(g.distill) * seeds,
        "prune_oneshot": len(g.rates) * len(g.oneshot) * seeds,
        "prune_iterative": len(g.iterative) * seeds * prof.iterative_steps,  # fine-tunes
    }
    seconds = {
        "teacher": prof.teacher.epochs * train_images * teacher_s,
        "distill": sum(prof.distill_recipe(w).epochs for w in g.widths)
        * len(g.distill)
        * seeds
        * train_images
        * distill_s,
        "prune_oneshot": runs["prune_oneshot"]
        * prof.prune_oneshot.epochs
        * train_images
        * teacher_s,
        "prune_iterative": runs["prune_iterative"]
        * prof.prune_iterative.epochs
        * train_images
        * teacher_s,
        "evaluate": (1 + sum(runs.values())) * eval_images * eval_s,
    }
    return {stage: s / 3600 for stage, s in seconds.items()}


def teacher_matches(result: dict, prof: Profile) -> bool:
    """Whether the teacher figure was measured on the profile's own teacher."""
    teacher = result["teacher_train"]
    return (teacher["width_div"], teacher["input_size"]) == (
        prof.teacher_width_div,
        prof.input_size,
    )


def summary_lines(result: dict) -> list[str]:
    """One line per figure of a `run` result."""
    teacher, step, loc = result["teacher_train"], result["distill_step"], result["evaluate"]
    ips = teacher["images_per_s"]
    amp = SHORT_DTYPES.get(teacher["autocast_dtype"], "fp32")
    seconds = step["seconds_per_step"]
    speedup = step["speedup_head_only_vs_authors"]
    goal = "met" if loc["ratio_total"] >= EVAL_GOAL else "NOT met"
    methods = ", ".join(f"{m} {r:.1f}x" for m, r in loc["ratio_per_method"].items())
    ddp = result.get("ddp_teacher_train")
    scaling = [scaling_line(ddp, teacher["input_size"])] if ddp else []
    hours = result.get("stage_hours")
    estimate = (
        [
            f"estimated {result['profile']} device-hours (training steps and evaluation): "
            + ", ".join(f"{stage} {h:.1f}" for stage, h in hours.items())
            + f"; total {sum(hours.values()):.1f}"
        ]
        if hours
        else []
    )
    return [
        f"teacher train {teacher['input_size']} px: {ips['amp_channels_last']:.0f} img/s"
        f" {amp}+CL vs {ips['fp32']:.0f} img/s fp32"
        f" ({teacher['ratio']:.2f}x)",
        f"distill step ({result['profile']}, x{step['width_div']}, batch {step['batch']}):"
        f" head-only SWA {1000 * seconds['kd_swa_head_only']:.1f} ms vs authors' full backward"
        f" {1000 * seconds['kd_swa_authors']:.1f} ms ({speedup:.2f}x faster)",
        f"localization evaluation ({loc['images']} images, {sum(loc['pairs'].values())} pairs,"
        f" {loc['input_size']} px): batched vs authors' per-pair loop {loc['ratio_total']:.1f}x"
        f" (goal >= {EVAL_GOAL:.0f}x {goal}; {methods})",
        *scaling,
        *estimate,
    ]


def run(args: argparse.Namespace, device: torch.device | str) -> dict:
    """Every figure on `device`, printed one line each and written to `args.out`."""
    device = torch.device(device)
    result = {
        "cuda": device.type == "cuda",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(short=False),
        "profile": args.profile,
    }
    result["teacher_train"] = teacher_throughput(
        device, args.width_div, 20, args.input_size, args.batch, args.steps, args.warmup
    )
    prof = get_profile(args.profile)
    result["distill_step"] = distill_step.measure(prof, None, args.steps, args.warmup, device)
    result["evaluate"] = evaluation_ratio(
        device,
        args.profile,
        args.images,
        args.eval_batch_size,
        args.repeats,
        args.data_root,
        args.checkpoint,
    )
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus >= 2:
        batch = args.batch // gpus * gpus  # a global batch every rank gets an equal share of
        result["ddp_teacher_train"] = ddp_scaling(
            "cuda", [1, gpus], args.width_div, args.input_size, batch, args.steps, args.warmup
        )
    if teacher_matches(result, prof):
        result["stage_hours"] = stage_hours(result, prof)
    for line in summary_lines(result):
        print(line)
    write_json_atomic(Path(args.out), result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="voc", help="distillation step and evaluation model")
    parser.add_argument("--width-div", type=int, default=1, help="teacher throughput network")
    parser.add_argument("--input-size", type=int, default=227, help="teacher throughput, px")
    parser.add_argument("--batch", type=int, default=64, help="teacher throughput batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--images", type=int, default=64, help="evaluation images")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="evaluation runs after a warm-up")
    parser.add_argument("--data-root", default="", help="VOC2012 folder; default: synthetic")
    parser.add_argument("--checkpoint", default="", help="evaluated model; default: random")
    parser.add_argument("--out", default="runs/bench/gpu.json")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), or cpu to measure this CPU instead"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.images < 1 or args.repeats < 1:
        parser.error("--steps, --images, --repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    run(args, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
