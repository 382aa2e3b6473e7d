"""Data parallelism: one run split over the processes `torchrun` starts (`make NPROC=n`).

torchrun starts n copies of a stage; `setup` joins them into one process group (NCCL on
CUDA, gloo on the CPU) and gives each its device. Training then runs one replica per
process (`DistributedDataParallel`): each epoch's one-process order is sharded over the
ranks by `DistributedSampler`, so the ranks' batches together are exactly the one-process
run's batch of the recipe's size, and the gradients are averaged across ranks (the only
collective of a step). The frozen teacher is replicated: every rank computes its own shard's
maps and matching loss.

What a rank computes differs from one process in two places, both standard DDP semantics:
batch norm normalises each rank's shard by the shard's statistics (`sync_bn` makes them the
global batch's, on GPUs), and each rank draws dropout from its own random stream
(`shard_seed`). A single process reproduces both with `micro_batches=n` in `engine.fit`,
which is what tests/test_distributed.py compares a DDP run with.

Prediction (validation, evaluation) and the localization evaluation deal a data set's
batches over the ranks (`shard_batches`) and gather the results in batch order, so they
equal the one-process results item for item; every rank must take part.

Every file is written by rank 0 alone (attrlib.io and plots.save_figure skip the others);
`barrier` makes the other ranks wait before they read what rank 0 wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: `rank` of `world` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ranks() -> Ranks:
    """This process's rank and the number of processes: the process group's, else the ones
    torchrun gave this process (a notebook may write before its stage forms the group),
    else 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    if dist.is_available() and dist.is_torchelastic_launched():
        # torchrun's own protocol, read as init_process_group will read it
        return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    return Ranks()


def is_main() -> bool:
    """True on rank 0, and in every process that is not part of a group."""
    return ranks().is_main


def setup(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun, and return this rank's device.

    Outside torchrun nothing happens and `device` is returned. Under torchrun the group is
    formed once per process from torchrun's rendezvous (NCCL when `device` is CUDA, else
    gloo) and a CUDA device becomes the GPU of this process's node-local rank.
    """
    if not dist.is_torchelastic_launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist.get_node_local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's `obj` on every rank (`obj` itself outside a process group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] outside a process group)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (an epoch's loss sums and image counts)."""
    if not active() or not values:
        return dict(values)
    names = list(values)
    total = torch.tensor([values[n] for n in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    return dict(zip(names, total.cpu().tolist(), strict=True))


def shard_batches(size: int, batch_size: int, rank: Ranks) -> tuple[range, list[range]]:
    """This rank's share of a `size`-item data set read in order by `batch_size`: batch
    numbers rank, rank + world, ... and each one's items, the very batches one process reads
    (so every item's result is the one-process result)."""
    numbers = range(rank.rank, math.ceil(size / batch_size), rank.world)
    return numbers, [range(b * batch_size, min(size, (b + 1) * batch_size)) for b in numbers]


def gather_batches(results: Sequence[tuple[int, object]]) -> list:
    """Every rank's (batch number, result) pairs of `shard_batches`, as results in batch
    order, on every rank."""
    pairs = [pair for share in gather(list(results)) for pair in share]
    return [result for _, result in sorted(pairs, key=lambda pair: pair[0])]


def broadcast_buffers_(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics): DDP broadcasts them at each
    forward, but after the last training step each rank has updated its own."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


# ----------------------------------------------------------------------------- training


def shard_seed(seed: int, shard: int) -> int:
    """Seed of shard `shard`'s random stream (dropout) from the epoch's seed: shard 0 keeps
    the epoch's own, so one process with one shard draws what it always drew."""
    return (seed + shard * 104_729) % (2**63 - 1)


def epoch_order(size: int, seed: int) -> list[int]:
    """The order in which one process's epoch loader (`shuffle=True`, a generator seeded
    with `seed`) visits `size` items: the order the ranks then share."""
    loader = DataLoader(
        range(size),
        batch_size=max(1, size),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.cat(list(loader)).tolist() if size else []


def shard_indices(order: Sequence[int], rank: Ranks) -> list[int]:
    """This rank's items of an epoch `order`: positions rank, rank + world, ... as
    `DistributedSampler` deals them (padded by repeating the first items when `world` does
    not divide the epoch). With a per-rank batch of B / world, step s of every rank then
    holds together exactly positions s*B ... s*B + B - 1 of `order`."""
    positions = DistributedSampler(order, num_replicas=rank.world, rank=rank.rank, shuffle=False)
    return [order[p] for p in positions]


def per_rank_batch(batch_size: int, world: int) -> int:
    """The recipe's (global) batch split over `world` ranks; it must divide evenly."""
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} does not split over {world} processes: give a batch "
            f"size divisible by NPROC={world} (the recipe's batch is the global batch)"
        )
    return batch_size // world


@contextmanager
def replica(model: nn.Module, device: torch.device, sync_bn: bool = False) -> Iterator[nn.Module]:
    """`model` as this rank's DDP replica while training (`model` itself outside a process
    group). `sync_bn` makes its batch norms `SyncBatchNorm` for that time, so they normalise
    by the global batch; they are plain `BatchNorm2d` again afterwards. The replica shares
    `model`'s parameters and buffers: an optimiser built on `model` trains it."""
    if not active():
        yield model
        return
    if sync_bn and device.type != "cuda":
        raise ValueError(
            "sync_bn=True needs CUDA: torch's SyncBatchNorm runs on GPUs only; turn it off "
            "for a CPU run"
        )
    if sync_bn:
        swap_batch_norms_(model, nn.SyncBatchNorm)
    try:
        yield nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    finally:
        if sync_bn:
            swap_batch_norms_(model, nn.BatchNorm2d)


def swap_batch_norms_(model: nn.Module, kind: type[nn.modules.batchnorm._BatchNorm]) -> None:
    """Make every batch norm of `model` a `kind` (BatchNorm2d or SyncBatchNorm) holding the
    same parameter and buffer tensors (so an optimiser's references stay valid)."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            if type(child) is not kind:
                setattr(model, name, _rebuilt_batch_norm(child, kind))
        else:
            swap_batch_norms_(child, kind)


def _rebuilt_batch_norm(old: nn.Module, kind: type) -> nn.Module:
    new = kind(
        old.num_features,
        old.eps,
        old.momentum,
        old.affine,
        old.track_running_stats,
        device="meta",
    )
    new.weight, new.bias = old.weight, old.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(old, name))
    new.train(old.training)
    return new


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Batch norms still normalise by the batch but leave their running statistics as they
    are: a DDP run keeps rank 0's (broadcast to every replica at each forward), so one
    process reproducing n ranks updates them from micro-batch 0 alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged, bit for bit
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class RngStreams:
    """One random stream per micro-batch of a step, so one process draws what `n` DDP
    ranks would: micro-batch k always runs on stream k, seeded with `shard_seed(seed, k)`.

    Streams are torch's default generators (CPU and, on CUDA, the device's) swapped in and
    out around each micro-batch.
    """

    def __init__(self, seed: int, count: int, device: torch.device) -> None:
        self.device = device
        self.states = []
        for k in range(count):
            torch.manual_seed(shard_seed(seed, k))
            self.states.append(self._get())
        torch.manual_seed(shard_seed(seed, 0))

    def _get(self):
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextmanager
    def stream(self, k: int) -> Iterator[None]:
        self._set(self.states[k])
        try:
            yield
        finally:
            self.states[k] = self._get()
