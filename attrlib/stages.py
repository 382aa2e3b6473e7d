"""Each study stage wired from its config: data, model, objective, the shared loop."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from attrlib import architectures, distributed
from attrlib.config import (
    DistillConfig,
    EvalConfig,
    Profile,
    PruneIterativeConfig,
    PruneOneShotConfig,
    QuantizeConfig,
    TeacherConfig,
    get_profile,
    resolve_device,
)
from attrlib.cost import sparsity
from attrlib.curves import EpochCurves
from attrlib.data import (
    VOCClassification,
    VOCLocalization,
    eval_transform,
    load_classes,
    read_split,
)
from attrlib.distill import NO_MATCHING, CompressionObjective, target_key
from attrlib.engine import epoch_loader, fit, load_model, make_checkpoint, multilabel_objective
from attrlib.evaluate import ReferenceMaps, evaluate_model
from attrlib.io import as_stored, read_json, save_torch_atomic, write_json_atomic, write_text_atomic
from attrlib.masks import permanent_copy
from attrlib.progress import progress_bar
from attrlib.prune import global_prune_, remaining_fraction, structured_prune
from attrlib.quantize import calibrate_, deployment_report, int8_refusal, quantize_
from attrlib.registry import load_plugins
from attrlib.targets import TeacherTargets, build_targets, profile_epochs, profile_kinds
from attrlib.views import TrainViews, ViewSpec


def stage_device(device: str) -> torch.device:
    """The device a stage runs on: `device` ("auto", "cpu", "cuda", ...) resolved, and under
    torchrun (`make NPROC=n`) the process group joined and this rank's GPU chosen."""
    return distributed.setup(resolve_device(device))


def loader_workers(wanted: int) -> int:
    """DataLoader workers: the profile's number, but at most one fewer than the cores (the
    main process trains), so a 2-core machine gets 1 however many the profile asks for."""
    return max(0, min(wanted, (os.cpu_count() or 1) - 1))


def view_spec(profile: str | Profile) -> ViewSpec:
    """The profile's training views: RandomResizedCrop + flip, drawn per (epoch, image)."""
    prof = get_profile(profile)
    return ViewSpec(prof.input_size, prof.scale_min, prof.view_seed)


def build_datasets(data_root: str, profile: str | Profile, classes: tuple[str, ...] | None = None):
    """(train, val, classes) for a profile: train split as views, resized val split."""
    prof = get_profile(profile)
    classes = tuple(classes) if classes is not None else load_classes(data_root)
    train = TrainViews(VOCClassification(data_root, "train", classes), view_spec(prof))
    val = VOCClassification(data_root, "val", classes, eval_transform(prof.input_size))
    return train, val, classes


def mask_samples(
    data_root: str, classes: tuple[str, ...], count: int = 6, size: int = 96
) -> tuple[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """Up to `count` images with their masks, for a look at the data: (split, (images,
    masks, labels)) from the first segmentation split listing any (train, then val), or None
    when the data set has no segmentation split (classification-only trees)."""
    for split in ("train", "val"):
        try:
            read_split(data_root, split, "Segmentation")
        except (FileNotFoundError, ValueError):  # no such listing, or an empty one
            continue
        samples = VOCLocalization(data_root, split, classes, size=size)
        items = [samples[i] for i in range(min(count, len(samples)))]
        images, labels, masks = (torch.stack(t) for t in zip(*items, strict=True))
        return split, (images, masks, labels)
    return None


def load_reference(path: str, data_root: str, device) -> tuple[nn.Module, tuple[str, ...]]:
    """A trained reference network (teacher / unpruned) checked against the data's classes."""
    classes = load_classes(data_root)
    model, _ = load_model(path, classes=classes, device=device)
    return model, classes


def _fit_stage(
    model: nn.Module,
    objective,
    data: tuple,
    cfg,
    out_dir: Path | None = None,
    seed: int | None = None,
    stage_config: dict | None = None,
    progress: bool = True,
    view_offset: int = 0,
) -> dict:
    """`engine.fit` with what every stage config provides (recipe, device, seed, out_dir);
    its curves go to TensorBoard in `out_dir/tb/` (attrlib.curves)."""
    train, val, classes = data
    out_dir = Path(out_dir or cfg.out_dir)
    with EpochCurves(out_dir) as curves:
        return fit(
            model,
            objective,
            train,
            val,
            cfg.recipe,
            out_dir=out_dir,
            classes=classes,
            seed=cfg.seed if seed is None else seed,
            device=stage_device(cfg.device),
            stage_config=stage_config or cfg.to_dict(),
            num_workers=loader_workers(cfg.profile_spec.num_workers),
            on_epoch_end=curves,
            progress=progress,
            view_offset=view_offset,
            stage=cfg.stage,
            sync_bn=cfg.profile_spec.sync_bn,
        )


def train_teacher(cfg: TeacherConfig) -> tuple[nn.Module, dict]:
    """Train (or resume, or reload when finished) the teacher; returns (model at best, metrics)."""
    data = build_datasets(cfg.data_root, cfg.profile_spec)
    input_size = cfg.profile_spec.input_size
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    model = architectures.create(cfg.architecture, cfg.width_div, len(data[2]), input_size)
    if cfg.weights:
        model.load_pretrained_(cfg.weights)
    return model, _fit_stage(model, multilabel_objective, data, cfg)


def train_student(cfg: DistillConfig) -> tuple[nn.Module, dict]:
    """Distil a student (KD, optionally + EWA / SWA / stochastic SWA matching)."""
    teacher, classes = load_reference(cfg.teacher, cfg.data_root, stage_device(cfg.device))
    t_cfg = teacher.config
    if t_cfg.input_size != cfg.profile_spec.input_size:
        raise ValueError(
            f"teacher {cfg.teacher} takes {t_cfg.input_size} px inputs, profile "
            f"{cfg.profile!r} uses {cfg.profile_spec.input_size} px"
        )
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes
    student = architectures.rebuild(teacher.architecture, t_cfg.scaled(cfg.width_div))
    data = build_datasets(cfg.data_root, cfg.profile_spec, classes)
    objective = CompressionObjective(
        teacher,
        cfg.matching,
        cfg.matching_lambda,
        cfg.drop_fraction,
        kd=True,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        layer=cfg.matching_layer,
        targets=_targets(cfg, data[0], cfg.recipe.epochs),
        view_seed=data[0].spec.seed,
        warmup_epochs=cfg.matching_warmup,
    )
    return student, _fit_stage(student, objective, data, cfg)


def _targets(cfg, train: TrainViews, epochs: int) -> TeacherTargets | None:
    """The cached outputs of `cfg.teacher` named by `cfg.teacher_targets`, checked to fit."""
    if not cfg.teacher_targets:
        return None
    store = TeacherTargets.load(cfg.teacher_targets)
    keys = [] if cfg.matching == NO_MATCHING else [target_key(cfg.matching, cfg.drop_fraction)]
    store.check(
        teacher=cfg.teacher, dataset=train, layer=cfg.matching_layer, keys=keys, epochs=epochs
    )
    return store


def _pruning_inputs(cfg) -> tuple[nn.Module, CompressionObjective, tuple]:
    """(network to prune, CE + matching objective against the reference, datasets)."""
    device = stage_device(cfg.device)
    model, classes = load_reference(cfg.model, cfg.data_root, device)
    # a copy of its own: iterative pruning masks `model` in place, the reference stays intact
    reference = load_reference(cfg.teacher, cfg.data_root, device)[0]
    data = build_datasets(cfg.data_root, cfg.profile_spec, classes)
    epochs = cfg.recipe.epochs * getattr(cfg, "iterations", 1)
    targets = _targets(cfg, data[0], epochs) if cfg.matching != NO_MATCHING else None
    objective = CompressionObjective(
        reference,
        cfg.matching,
        cfg.matching_lambda,
        cfg.drop_fraction,
        kd=False,
        layer=cfg.matching_layer,
        targets=targets,
        view_seed=data[0].spec.seed,
    )
    return model, objective, data


def prune_oneshot(cfg: PruneOneShotConfig) -> tuple[nn.Module, dict]:
    """Structured pruning (`cfg.criterion`, L1 by default) at `cfg.rate`, then fine-tuning
    with CE (+ matching)."""
    model, objective, data = _pruning_inputs(cfg)
    pruned = structured_prune(model, cfg.rate, cfg.criterion)  # a new, smaller network
    return pruned, _fit_stage(pruned, objective, data, cfg)


def quantize(cfg: QuantizeConfig) -> tuple[nn.Module, dict]:
    """Quantization-aware fine-tuning (attrlib.quantize): the network's weights rounded to
    `cfg.bits`, activations to `cfg.act_bits` with ranges calibrated on the first
    `cfg.calibration_batches` training batches (view epoch 0), then CE (+ matching) as in
    pruning's fine-tuning."""
    model, objective, data = _pruning_inputs(cfg)
    quantize_(model, cfg.spec())
    loader = epoch_loader(data[0], cfg.recipe.batch_size, cfg.seed, view_epoch=0)
    calibrate_(model, (views for views, *_ in islice(loader, cfg.calibration_batches)))
    return model, _fit_stage(model, objective, data, cfg)


def quantized_deployment(cfg: QuantizeConfig, model: nn.Module) -> dict | None:
    """For an 8-bit VGG run: its int8 CPU network against the fake-quantized one and the
    float network it started from (attrlib.quantize.deployment_report, on the validation
    set); None where no int8 network exists (lower widths, other families)."""
    if int8_refusal(cfg.spec(), model.architecture):
        return None
    float_model, classes = load_reference(cfg.model, cfg.data_root, torch.device("cpu"))
    val = VOCClassification(cfg.data_root, "val", classes, eval_transform(model.config.input_size))
    return deployment_report(model, float_model, val)


def prune_iterative(
    cfg: PruneIterativeConfig, progress: bool = True
) -> tuple[nn.Module, list[dict]]:
    """Global pruning (`cfg.criterion`, magnitude by default) of `cfg.fraction` of the
    remaining conv weights per iteration, each followed by fine-tuning; iteration k lives in
    `out_dir/iter_{k:02d}/`.

    Finished iterations are reloaded (masks included), an interrupted one resumes from its
    `last.pt`, so the schedule restarts where it stopped. After the last iteration the
    masks are made permanent in `final.pt`. Returns (final model, one record per iteration),
    also written to `out_dir/schedule.json`.
    """
    model, objective, data = _pruning_inputs(cfg)
    out_dir = Path(cfg.out_dir)
    records = []
    for k in range(1, cfg.iterations + 1):
        # Same masks as the interrupted or finished run: pruning is deterministic given the
        # previous iteration's best weights, and fit() reloads the stored masks anyway.
        global_prune_(model, cfg.fraction, cfg.criterion)
        metrics = _fit_stage(
            model,
            objective,
            data,
            cfg,
            out_dir=out_dir / f"iter_{k:02d}",
            seed=cfg.seed + k,
            stage_config={**cfg.to_dict(), "iteration": k},
            progress=progress,
            view_offset=(k - 1) * cfg.recipe.epochs,  # each iteration reads new views
        )
        records.append(
            {
                "iteration": k,
                "remaining_target": remaining_fraction(k, cfg.fraction),
                "sparsity": sparsity(model),
                "best": metrics["best"],
            }
        )
        write_json_atomic(
            out_dir / "schedule.json", {"config": cfg.to_dict(), "iterations": records}
        )
    final = permanent_copy(model)
    save_torch_atomic(
        out_dir / "final.pt", make_checkpoint(final, data[2], stage_config=cfg.to_dict())
    )
    return final, records


def evaluate_checkpoint(
    cfg: EvalConfig, reference: ReferenceMaps | None = None, progress: bool = True
) -> dict:
    """Score a checkpoint; writes `eval.json`, `eval_pairs.csv` and (unless `cfg.faith_pairs`
    is 0) `eval_faithfulness.csv` in `cfg.out_dir`.

    An existing `eval.json` made with the same config is returned as it is; one made with
    another config is an error unless `cfg.overwrite`. `reference` shares the teacher's maps
    between the checkpoints of one evaluation (it must come from `cfg.teacher`).
    """
    out_dir = Path(cfg.out_dir)
    summary_path = out_dir / "eval.json"
    config = as_stored(cfg.to_dict())
    if summary_path.exists():
        stored = read_json(summary_path)
        if stored.get("config") == config:
            if distributed.is_main():
                print(f"{cfg.checkpoint}: evaluated before with this config ({summary_path})")
            return stored
        if not cfg.overwrite:
            raise FileExistsError(
                f"{summary_path} was made with another config ({stored.get('config')}); "
                "pass overwrite=True to replace it (make: EVAL_OVERWRITE=1)"
            )
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = stage_device(cfg.device)
    model, classes = load_reference(cfg.checkpoint, cfg.data_root, device)
    if reference is not None and reference.source != cfg.teacher:
        raise ValueError(
            f"shared reference maps come from {reference.source!r}, not {cfg.teacher!r}"
        )
    if reference is None and cfg.teacher:
        reference = ReferenceMaps(
            load_reference(cfg.teacher, cfg.data_root, device)[0], cfg.teacher
        )
    size = model.config.input_size
    val = VOCClassification(cfg.data_root, "val", classes, eval_transform(size))
    loc = VOCLocalization(cfg.data_root, "val", classes, size=size)
    summary, table, faith = evaluate_model(
        model,
        val,
        loc,
        cfg.methods,
        reference,
        cfg.batch_size,
        device,
        progress,
        label=cfg.checkpoint,
        faithfulness=cfg.faithfulness(),
    )
    if distributed.is_main():  # one line per model: which one, and what it scored
        print(
            f"{cfg.checkpoint}: class mAP {summary['map_class']:.4f}, "
            f"{summary['pairs_scored']} pairs scored ({time.perf_counter() - t0:.1f}s)"
        )
    summary = {"checkpoint": cfg.checkpoint, "teacher": cfg.teacher, **summary, "config": config}
    write_text_atomic(out_dir / "eval_pairs.csv", table.to_csv(index=False))
    if not faith.empty:
        write_text_atomic(out_dir / "eval_faithfulness.csv", faith.to_csv(index=False))
    write_json_atomic(summary_path, summary)
    distributed.barrier()  # rank 0 has written both files before any rank reads them
    return summary


def _shared_reference(cfg: EvalConfig, cache: dict[str, ReferenceMaps]) -> ReferenceMaps | None:
    """The teacher's maps of `cfg`, computed once per `cache` and shared by its checkpoints."""
    if not cfg.teacher:
        return None
    if cfg.teacher not in cache:
        model = load_reference(cfg.teacher, cfg.data_root, stage_device(cfg.device))[0]
        cache[cfg.teacher] = ReferenceMaps(model, cfg.teacher)
    return cache[cfg.teacher]


# A worker process of evaluate_checkpoints keeps its teachers' maps for the checkpoints it
# scores; the process, and with it the cache, ends with the evaluation.
_WORKER_REFERENCES: dict[str, ReferenceMaps] = {}


def _start_eval_worker(threads: int, plugins: tuple[str, ...]) -> None:
    torch.set_num_threads(threads)
    load_plugins(plugins)


def _evaluate_in_worker(cfg: EvalConfig) -> tuple[dict, str]:
    reference = _shared_reference(cfg, _WORKER_REFERENCES)
    # the worker's stdout is not the notebook's: its lines travel back with the result
    with contextlib.redirect_stdout(io.StringIO()) as out:
        summary = evaluate_checkpoint(cfg, reference, progress=False)
    return summary, out.getvalue()


def evaluate_checkpoints(
    cfgs: Sequence[EvalConfig], workers: int = 1, threads: int = 0, plugins: Sequence[str] = ()
) -> list[dict]:
    """`evaluate_checkpoint` of every config, in order; their summaries. Each teacher's maps
    (the agreement columns' reference) are computed once and shared by its checkpoints.

    `workers` > 1 scores that many checkpoints at a time, each in a process of its own with
    `threads` torch threads (0: this process's threads shared out among them), which imports
    `plugins` and computes the teacher's maps once. Small networks use two threads poorly:
    on a 2-core CPU two models at a time finish sooner than one model with both cores
    (benchmarks/evaluate_workers.py). The scores equal the one-process loop's up to float
    rounding (a thread count changes the order of CPU sums; over the default study's 112
    models the agreement cosines and the RAP AUC moved by at most 3e-9, no other score).
    """
    if workers <= 1 or len(cfgs) <= 1:
        cache: dict[str, ReferenceMaps] = {}
        return [evaluate_checkpoint(cfg, _shared_reference(cfg, cache)) for cfg in cfgs]
    if distributed.active():
        raise ValueError(
            f"workers={workers}: a distributed (torchrun) evaluation shares each model "
            "between its ranks already; give workers=1"
        )
    threads = threads or max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(
        min(workers, len(cfgs)),
        mp_context=torch.multiprocessing.get_context("spawn"),
        initializer=_start_eval_worker,
        initargs=(threads, tuple(plugins)),
    )
    try:
        futures = {pool.submit(_evaluate_in_worker, cfg): i for i, cfg in enumerate(cfgs)}
        summaries: list[dict] = [{}] * len(cfgs)
        for future in progress_bar(as_completed(futures), desc="models", total=len(cfgs)):
            summary, printed = future.result()
            print(printed, end="")
            summaries[futures[future]] = summary
    finally:  # after an error the checkpoints not yet started are dropped, not scored
        pool.shutdown(cancel_futures=True)
    return summaries


def targets_main(argv: Sequence[str] | None = None) -> Path:
    """`python -m attrlib.stages targets` (make targets): the profile's teacher store, written
    once. A store at `--out` that already fits the profile (same teacher file, views,
    matching layer, every map the grid needs) is kept untouched: make re-runs this step
    whenever the teacher's notebook re-executes (after any edit of the profile's recipes,
    runs/<name>/.recipes.yaml), and a store rewritten for nothing would make every run that
    reads it stale."""
    parser = argparse.ArgumentParser(
        prog="python -m attrlib.stages targets",
        description="Compute the teacher's logits and matching maps for every training view "
        "of the profile once (runs/<profile>/teacher-s<seed>/teacher/targets.pt), so that distillation and "
        "pruning runs read them instead of running the teacher in each step.",
    )
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt)")
    parser.add_argument("--data-root", required=True, help="the VOC2012-layout folder")
    parser.add_argument("--profile", default="default", help="a name or a .yaml file")
    parser.add_argument(
        "--set", default="", help="overrides of the profile's fields: 'distill.epochs=10 ...'"
    )
    parser.add_argument("--out", required=True, help="file to write (e.g. .../targets.pt)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    prof = get_profile(args.profile, args.set)
    device = resolve_device(args.device)
    teacher, classes = load_reference(args.teacher, args.data_root, device)
    train = build_datasets(args.data_root, prof, classes)[0]
    kinds, epochs = profile_kinds(prof), profile_epochs(prof)
    out = Path(args.out)
    if out.is_file():
        try:
            TeacherTargets.load(out).check(
                teacher=args.teacher,
                dataset=train,
                layer=prof.matching_layer,
                keys=[target_key(m, d) for m, d in kinds],
                epochs=epochs,
            )
        except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            print(f"rebuilding: {err}")  # a misfit, or a file torch cannot read
        else:
            print(f"{out}: up to date (same teacher, views and maps): kept")
            return out
    store = build_targets(
        teacher,
        train,
        epochs,
        kinds,
        prof.matching_layer,
        teacher_path=args.teacher,
        device=device,
    )
    path = store.save(args.out)
    print(f"{path}: {store.epochs} view epochs x {len(train)} images, maps {sorted(store.maps)}")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m attrlib.stages COMMAND ...`: the stages' command-line steps (make's)."""
    parser = argparse.ArgumentParser(
        prog="python -m attrlib.stages",
        description="A stage's command-line step: `targets` computes a teacher's logits and "
        "matching maps for every training view once (make targets; `targets --help`).",
    )
    parser.add_argument("command", choices=["targets"])
    argv = sys.argv[1:] if argv is None else list(argv)
    parser.parse_args(argv[:1])  # the command (or --help); the rest is the command's
    targets_main(argv[1:])


if __name__ == "__main__":
    main()
