"""The one training loop every stage uses: seeded epochs, validation, checkpoints, resume.

A stage supplies an `Objective` (images, labels -> loss and logged values); the loop owns
optimisation, the learning-rate schedule, mixed precision and channels-last on CUDA,
per-epoch validation (class mAP), atomic `last.pt` / `best.pt` checkpoints and resume.
One epoch reads on its own (`epoch_loader`, `train_epoch`, `validate`); `fit` strings epochs
together with resuming (`_reload_finished_`, `_resume_`) and saving (`_save_epoch`).

Determinism: every epoch reseeds torch's global RNG (augmentation, dropout) and the data
order from (seed, epoch), so a run resumed from `last.pt` ends with exactly the numbers of an
uninterrupted run on the CPU.

Under torchrun (attrlib.distributed) the model trains as a DistributedDataParallel replica per
process: the ranks share each epoch's one-process order, every step's global batch is the
recipe's, the ranks validate a share each, and rank 0 alone writes.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attrlib import distributed
from attrlib.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE, rebuild
from attrlib.config import Recipe
from attrlib.distributed import Ranks, RngStreams
from attrlib.io import as_stored, read_json, save_torch_atomic, write_json_atomic
from attrlib.masks import attach_masks_, has_masks
from attrlib.predict import mixed_precision, predict, prediction_metrics
from attrlib.progress import progress_bar
from attrlib.quantize import QuantSpec, quantization_of, quantize_
from attrlib.views import ViewKeys

CHECKPOINT_VERSION = 1


class Objective(Protocol):
    """Training loss of a stage: `(model, images, labels, views) -> (loss, {name: value})`.

    `views` (attrlib.views.ViewKeys) names the batch's (view epoch, image indices) when the
    training set draws views per (epoch, image), else None.
    """

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, views=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def multilabel_objective(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, views=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's loss: multi-label soft-margin (SPEC: Training recipes)."""
    logits = model(images)  # (B, K)
    loss = F.multilabel_soft_margin_loss(logits, labels)
    return loss, {"ce": loss.detach()}


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch, independent of how many epochs ran before in this process."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def _lr_factor(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step multiplier of the base lr for the recipe's schedule."""
    total = recipe.epochs * steps_per_epoch
    warmup = max(1, int(0.15 * total))

    def factor(step: int) -> float:
        if recipe.schedule == "constant":
            return 1.0
        if recipe.schedule == "multistep":
            epoch = step // steps_per_epoch
            return recipe.gamma ** sum(m <= epoch for m in recipe.milestones)
        # onecycle: linear warm-up, then cosine decay to ~0 (fast and robust from scratch)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def build_training(
    model: nn.Module, recipe: Recipe, steps_per_epoch: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """The optimiser of the trainable parameters, its per-step lr schedule and grad scaler.

    The scaler is on only where `mixed_precision` autocasts to float16 (CUDA without
    bfloat16): float16 gradients underflow without loss scaling, bfloat16 ones do not.
    """
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, steps_per_epoch))
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    return optimizer, scheduler, scaler


# ----------------------------------------------------------------------------- one epoch


def epoch_loader(
    train_set: Dataset,
    batch_size: int,
    seed: int,
    view_epoch: int | None,
    num_workers: int = 0,
    rank: Ranks | None = None,
) -> DataLoader:
    """One epoch's shuffled loader, its order drawn from `seed`.

    With `view_epoch` the set draws views (a `collate(epoch)` method, attrlib.views.TrainViews)
    and the batches are (views, labels, image indices) of that view epoch.
    With several ranks, this rank's share of the one-process order (`batch_size` is the global
    batch; each rank's is batch_size / world, see attrlib.distributed.shard_indices).
    """
    collate = None if view_epoch is None else train_set.collate(view_epoch)
    sampler = None
    if rank is not None and rank.world > 1:
        order = distributed.epoch_order(len(train_set), seed)
        sampler = distributed.shard_indices(order, rank)
        batch_size = distributed.per_rank_batch(batch_size, rank.world)
    return DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        # workers start afresh every epoch: each epoch has its own collate and worker seeds
        persistent_workers=False,
        collate_fn=collate,
    )


class NonFiniteLossError(FloatingPointError):
    """A training step's loss is NaN or infinite; raised before that step changes a weight."""

    def __init__(self, loss: float, step: int) -> None:
        super().__init__(f"non-finite loss ({loss}) at step {step}")
        self.loss, self.step = loss, step


def train_epoch(
    model: nn.Module,
    objective: Objective,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    *,
    view_epoch: int | None = None,
    desc: str = "train",
    progress: bool = True,
    streams: RngStreams | None = None,
) -> dict[str, float]:
    """One pass over `loader` in train mode: an optimiser step and a schedule step per batch.

    Args:
        model: the network, or its DistributedDataParallel replica (what `objective` calls).
        loader: batches (images (B,3,S,S), labels (B,K)) or, from a set that draws views,
            (views, labels, image indices (B,)) of `view_epoch` (see `epoch_loader`).
        view_epoch: passed to `objective` with the batch's indices as `ViewKeys`; None for a
            set without views.
        streams: with n streams, each batch is n micro-batches (rows k, k + n, ...), micro-
            batch k on stream k, their gradients averaged into one step, the batch norms'
            running statistics from micro-batch 0: what n DDP ranks compute for this batch
            (attrlib.distributed). None: the batch at once.
    Returns:
        {"loss": ..., **the objective's logged values}, each the mean over the epoch's images
        of every rank (a batch counts by its size, so a short last batch weighs less).
    Raises:
        NonFiniteLossError at the first NaN or infinite loss, before it reaches the weights.
    """
    model.train()
    sums: dict[str, float] = {}
    count = 0
    parts = 1 if streams is None else len(streams.states)
    # a live bar on a terminal only: fit prints the epoch's one line in logs and notebooks
    bar = progress_bar(loader, desc=desc, enabled=progress, leave=False)
    for step, batch in enumerate(bar):
        optimizer.zero_grad(set_to_none=True)
        for k in range(parts):
            rows = slice(k, None, parts)
            images, labels = batch[0][rows], batch[1][rows]
            views = ViewKeys(view_epoch, batch[2][rows]) if view_epoch is not None else None
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            images = images.contiguous(memory_format=torch.channels_last)  # (b, 3, S, S)
            rank_k = nullcontext() if streams is None else streams.stream(k)
            others = nullcontext() if k == 0 else distributed.frozen_running_stats(model)
            with rank_k, others:
                with mixed_precision(device):
                    loss, logs = objective(model, images, labels, views)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(loss.item(), step + 1)
                scaler.scale(loss if parts == 1 else loss / parts).backward()
            n = images.shape[0]
            count += n
            for name, value in {"loss": loss.detach(), **logs}.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    totals = distributed.sum_over_ranks({**sums, "": count})
    count = totals.pop("")
    return {name: total / count for name, total in totals.items()}


def validate(model: nn.Module, val_set: Dataset, device: torch.device) -> dict[str, float]:
    """The validation numbers logged every epoch: val_loss, val_map_class, val_map_sample."""
    metrics = prediction_metrics(*predict(model, val_set, device))
    return {f"val_{name}": metrics[name] for name in ("loss", "map_class", "map_sample")}


# ----------------------------------------------------------------------------- checkpoints


def make_checkpoint(model: nn.Module, classes: tuple[str, ...], **extra: Any) -> dict:
    """A checkpoint dict that can rebuild the model on its own (config + class list, and
    its `quantization` when fake-quantized)."""
    quantization = quantization_of(model)
    return {
        "version": CHECKPOINT_VERSION,
        "architecture": model.architecture,
        "model_config": model.config.to_dict(),
        "classes": list(classes),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **({"quantization": quantization.to_dict()} if quantization else {}),
        **extra,
    }


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; `reason` is "unreadable", "unsafe" or "foreign"."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# stage folder -> the make target that rebuilds its runs
_STAGE_TARGETS = {
    "teacher": "teacher",
    "distill": "distill",
    "prune_oneshot": "prune-oneshot",
    "prune_iterative": "prune-iterative",
    "quantize": "quantize",
}
_KINDS = {"last.pt": "last-epoch checkpoint", "best.pt": "best checkpoint", "final.pt": "model"}


def describe_checkpoint(path: str | Path) -> tuple[str, str]:
    """What a checkpoint is and how to rebuild it: ("best checkpoint of the distill run
    runs/p/distill/x2-kd-s0", "delete runs/p/distill/x2-kd-s0 and rerun `make distill`")."""
    path = Path(path)
    kind = _KINDS.get(path.name, "checkpoint")
    if path.name == "last.pt":  # see fit: a run whose last.pt is unreadable starts over
        fix = "rerun its stage: it moves the file aside and trains the run from the start"
    parts = path.parts[:-1]
    stages = [i for i, part in enumerate(parts) if part in _STAGE_TARGETS]
    if not stages:
        return kind, fix if kind == _KINDS["last.pt"] else "delete it and rerun its stage"
    i = stages[-1]
    stage = parts[i]
    # the unit make rebuilds: the teacher folder, or one run below a compression stage
    run = Path(*parts[: i + (1 if stage == "teacher" else 2)])
    what = f"{kind} of the teacher in {run}" if stage == "teacher" else f"{kind} of {run}"
    if kind != _KINDS["last.pt"]:
        fix = f"delete {run} and rerun `make {_STAGE_TARGETS[stage]}`"
    return what, fix


def _who_writes(path: Path) -> str:
    """What makes a missing checkpoint: a notebook run first (runs/lab/...) or a make target."""
    stages = [part for part in path.parts[:-1] if part in _STAGE_TARGETS]
    if not stages:
        return ""
    stage = stages[-1]
    if "lab" in path.parts:  # runs/lab/<profile>/: the notebooks' runs with empty paths
        return f" (the {stage} notebook writes it with its defaults: run it first, same profile)"
    return f" (`make {_STAGE_TARGETS[stage]}` writes it)"


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict, read with `weights_only=True`: a file that carries anything but
    tensors and plain values (e.g. a pickle that would run code) is refused, not executed.

    Every failure is one `CheckpointError` naming the file, what it is (the best checkpoint of
    which run) and how to rebuild it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}{_who_writes(path)}")
    what, fix = describe_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load this {what}: it holds objects other than tensors and "
            f"plain values, which attrlib never writes ({str(e).splitlines()[0]})",
            "unsafe",
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(
            f"{path}: unreadable {what} (truncated or corrupt: {str(e).splitlines()[0]}); {fix}",
            "unreadable",
        ) from None
    missing = [k for k in ("model_config", "classes", "model_state") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path}: not an attrlib checkpoint (no {missing[0]!r} field)", "foreign"
        )
    return ckpt


def check_compatible(
    ckpt: dict, config, classes: tuple[str, ...], source: str = "checkpoint"
) -> None:
    """Raise ValueError saying what differs between a checkpoint and a model's config (its
    family's config object) / class list."""
    problems = []
    family = ckpt.get("architecture", DEFAULT_ARCHITECTURE)
    if family != config.architecture:
        problems.append(f"a {family} network vs model {config.architecture}")
    else:
        stored = ckpt["model_config"]
        own = config.to_dict()
        for name in sorted(set(stored) | set(own)):
            if name != "dropout" and stored.get(name) != own.get(name):
                problems.append(f"{name} {stored.get(name)} vs model {own.get(name)}")
    if tuple(ckpt["classes"]) != tuple(classes):
        problems.append(f"classes {list(ckpt['classes'])} vs {list(classes)}")
    if problems:
        raise ValueError(f"{source} does not fit: " + "; ".join(problems))


def load_model(
    path: str | Path, classes: tuple[str, ...] | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model stored in a checkpoint; check its class list when `classes` given."""
    ckpt = load_checkpoint(path)
    architecture = ckpt.get("architecture", DEFAULT_ARCHITECTURE)
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: a {architecture!r} network, which no registered architecture builds "
            f"(registered: {', '.join(ARCHITECTURES.names())}; a plugin may register it)",
            "foreign",
        )
    model = rebuild(architecture, ckpt["model_config"])
    if "quantization" in ckpt:  # its state holds the rounding's parametrizations and ranges
        quantize_(model, QuantSpec.from_dict(ckpt["quantization"]))
    if classes is not None:
        check_compatible(ckpt, model.config, classes, source=str(path))
    load_state_(model, ckpt["model_state"], source=str(path))
    return model.to(device), ckpt


def load_state_(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """`load_state_dict` with an error that names the file and the mismatching keys.

    A state saved from an unstructurally pruned model (`*.weight_orig` / `*.weight_mask`) first
    gets its masks re-attached to an unmasked model (`attrlib.prune.attach_masks_`).
    """
    if any(key.endswith("weight_mask") for key in state):
        if not has_masks(model):
            attach_masks_(model, state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not fit the model: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, shape mismatches {shapes[:4]}"
        )
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    objective: Objective,
    train_set: Dataset,
    val_set: Dataset,
    recipe: Recipe,
    *,
    out_dir: str | Path,
    classes: tuple[str, ...],
    seed: int,
    device: torch.device,
    stage_config: dict,
    num_workers: int = 0,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    view_offset: int = 0,
    stage: str = "",
    sync_bn: bool = False,
    micro_batches: int = 1,
) -> dict:
    """Train `model` in place with `objective`; checkpoints and history under `out_dir`.

    Writes `last.pt` after every epoch, `best.pt` at the best val class mAP, and
    `metrics.json` (history, best, finished) and `config.json` (`stage_config`, plus the
    `stage` name when given: what the paper reads a run's stage from). If `last.pt` exists for the same
    `stage_config`, training resumes after its epoch; if the stage already finished, the
    stored metrics are returned and nothing is retrained or overwritten. A different
    `stage_config` in an existing `out_dir` is an error (results are never silently replaced).

    A training set with a `collate(epoch)` method (attrlib.views.TrainViews) yields
    (views, labels, image indices); epoch `e` of this fit reads view epoch `view_offset + e`
    (iterative pruning's iterations read successive view epochs).

    Started by torchrun (attrlib.distributed.setup has formed the process group), every rank
    calls `fit` alike: the model trains as a DistributedDataParallel replica on its shard of
    each global batch (`sync_bn`: batch norms over the global batch, CUDA only); every rank
    validates its share of the validation batches with rank 0's batch-norm statistics, rank 0
    writes every file and tells the others the epoch's record; a resumed run reads `last.pt`
    on every rank. `micro_batches=n` makes one process compute each step as
    n ranks would (attrlib.distributed: the reference of the distributed tests).

    `on_epoch_end(epoch, record)` runs on every rank once an epoch is validated, before its
    checkpoint is written (attrlib.curves.EpochCurves logs the record there).

    Returns the metrics dict (also in `metrics.json`).
    """
    rank = distributed.ranks()
    if micro_batches < 1 or (micro_batches > 1 and rank.world > 1):
        raise ValueError(
            f"micro_batches must be 1 in a run of {rank.world} processes and >= 1 in one "
            f"process, got {micro_batches}"
        )
    distributed.per_rank_batch(recipe.batch_size, max(rank.world, micro_batches))
    out_dir = Path(out_dir)
    if rank.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    stage_config = {**stage_config, "recipe": asdict(recipe)}
    stage_config = as_stored(stage_config)

    model.to(device)
    # channels-last on every device: on this project's CPU it trains the small students
    # 1.7-2x faster than NCHW (batch norm and convs over few channels), on GPUs it feeds cuDNN
    model.to(memory_format=torch.channels_last)
    finished = _reload_finished_(model, out_dir, classes, stage_config)
    if finished is not None:
        return finished
    # built on the model as given, before resuming: the saved optimiser state is matched
    # to its parameters by position
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    optimizer, scheduler, scaler = build_training(model, recipe, steps_per_epoch, device)
    start_epoch, history, best = _resume_(
        model, optimizer, scheduler, scaler, out_dir, classes, stage_config
    )

    write_json_atomic(
        out_dir / "config.json", {"stage": stage, **stage_config} if stage else stage_config
    )
    with distributed.replica(model, device, sync_bn) as replica:
        for epoch in range(start_epoch, recipe.epochs):
            # rank r draws dropout from stream r of the epoch; rank 0's is the epoch's seed
            torch.manual_seed(distributed.shard_seed(epoch_seed(seed, epoch), rank.rank))
            streams = None
            if micro_batches > 1:
                streams = RngStreams(epoch_seed(seed, epoch), micro_batches, device)
            view_epoch = view_offset + epoch if hasattr(train_set, "collate") else None
            loader = epoch_loader(
                train_set,
                recipe.batch_size,
                epoch_seed(seed, epoch),
                view_epoch,
                num_workers,
                rank,
            )
            t0 = time.perf_counter()
            try:
                logs = train_epoch(
                    replica,
                    objective,
                    loader,
                    optimizer,
                    scheduler,
                    scaler,
                    device,
                    view_epoch=view_epoch,
                    desc=f"epoch {epoch + 1}/{recipe.epochs}",
                    progress=progress and rank.is_main,
                    streams=streams,
                )
            except NonFiniteLossError as e:
                raise FloatingPointError(
                    f"non-finite loss ({e.loss}) at epoch {epoch + 1}, step {e.step}; "
                    f"stopped, last good checkpoint kept at {out_dir / 'last.pt'}"
                ) from None
            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            record.update({f"train_{name}": value for name, value in logs.items()})
            # every rank validates its share with rank 0's model (DDP keeps the weights
            # equal; the batch-norm statistics are rank 0's once broadcast)
            distributed.broadcast_buffers_(model)
            record.update(validate(model, val_set, device))
            if rank.is_main:
                record["seconds"] = time.perf_counter() - t0
                print(
                    f"epoch {epoch + 1}/{recipe.epochs}  loss {record['train_loss']:.4f}  "
                    f"val mAP {record['val_map_class']:.4f}  ({record['seconds']:.1f}s)"
                )
            record = distributed.broadcast(record)
            history.append(record)
            improved = record["val_map_class"] > best["val_map_class"]
            if improved:
                best = {"val_map_class": record["val_map_class"], "epoch": epoch + 1}
            fields = {
                "stage_config": stage_config,
                "seed": seed,
                "epoch": epoch,
                "history": history,
                "best": best,
                "processes": rank.world,
            }
            # the callback runs before the checkpoint: a kill between the two leaves last.pt an
            # epoch behind, so the resume redoes that epoch and its curves (EpochCurves purges
            # from its first new step); the other order would lose the epoch from the curves
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            if rank.is_main:
                _save_epoch(out_dir, model, classes, fields, improved, optimizer, scheduler, scaler)

    result = {"history": history, "best": best, "finished": True, "config": stage_config}
    write_json_atomic(out_dir / "metrics.json", result)
    distributed.barrier()  # every rank reads the best.pt rank 0 wrote
    # Downstream stages use the best epoch, so the caller's model ends as best.pt too.
    best_path = out_dir / "best.pt"
    load_state_(model, load_checkpoint(best_path)["model_state"], str(best_path))
    return result


def _reload_finished_(
    model: nn.Module, out_dir: Path, classes: tuple[str, ...], stage_config: dict
) -> dict | None:
    """The stored metrics of the finished run in `out_dir`, its best.pt loaded into `model`;
    None if no run there has finished."""
    metrics_path, best_path = out_dir / "metrics.json", out_dir / "best.pt"
    stored = read_json(metrics_path) if metrics_path.exists() else {}
    if not stored.get("finished"):
        return None
    # a finished run needs only its best.pt: a damaged last.pt must not block reloading it
    _refuse_other_config(out_dir, stored.get("config", {}), stage_config)
    best_ckpt = load_checkpoint(best_path)
    check_compatible(best_ckpt, model.config, classes, source=str(best_path))
    load_state_(model, best_ckpt["model_state"], str(best_path))
    print(f"{out_dir}: finished run found; loaded best.pt, nothing retrained")
    return stored


def _resume_(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    out_dir: Path,
    classes: tuple[str, ...],
    stage_config: dict,
) -> tuple[int, list[dict], dict]:
    """(first epoch to run, history, best) of the unfinished run in `out_dir`.

    Model, optimiser, schedule and scaler are restored from its `last.pt`; without one
    (or after moving an unreadable one aside) the run starts at epoch 0.
    """
    last_path = out_dir / "last.pt"
    ckpt = _resume_checkpoint(last_path)
    if ckpt is None:
        return 0, [], {"val_map_class": -1.0, "epoch": -1}
    _refuse_other_config(out_dir, ckpt.get("stage_config", {}), stage_config)
    check_compatible(ckpt, model.config, classes, source=str(last_path))
    load_state_(model, ckpt["model_state"], source=str(last_path))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    print(f"{out_dir}: resuming after epoch {ckpt['epoch']} from last.pt")
    return ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]


def _save_epoch(
    out_dir: Path,
    model: nn.Module,
    classes: tuple[str, ...],
    fields: dict,
    improved: bool,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """An epoch's files: best.pt if `improved`, last.pt, metrics.json (finished: False).

    `fields` (stage_config, seed, epoch, history, best) go into both checkpoints; last.pt
    also holds what resuming needs. Each file is replaced atomically, so a kill at any point
    leaves the previous epoch's files whole.
    """
    if improved:
        save_torch_atomic(out_dir / "best.pt", make_checkpoint(model, classes, **fields))
    save_torch_atomic(
        out_dir / "last.pt",
        make_checkpoint(
            model,
            classes,
            **fields,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(),
        ),
    )
    write_json_atomic(
        out_dir / "metrics.json",
        {
            "history": fields["history"],
            "best": fields["best"],
            "finished": False,
            "config": fields["stage_config"],
        },
    )


def _resume_checkpoint(path: Path) -> dict | None:
    """The unfinished run's `last.pt`, or None. An unreadable one (a kill mid-write cannot
    make one, a full disk or a copy can) is moved aside to `last.pt.corrupt` and the run
    starts over: nothing finished is lost, and the rerun is not blocked forever."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path)
    except FileNotFoundError:  # rank 0 moved an unreadable one aside meanwhile
        return None
    except CheckpointError as e:
        if e.reason != "unreadable":
            raise
        if not distributed.is_main():  # rank 0 moves it; every rank starts over alike
            return None
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        print(f"{e}\n{path.parent}: moved it to {aside.name}; training starts from epoch 1")
        return None


def _refuse_other_config(out_dir: Path, stored: dict, stage_config: dict) -> None:
    if stored != stage_config:
        raise FileExistsError(
            f"{out_dir} holds a run with a different config ({_diff(stored, stage_config)}); "
            "choose another out_dir or delete it"
        )


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))
