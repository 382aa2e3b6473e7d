"""DDP training throughput of the teacher: images/s of n ranks sharing one global batch.

Run under torchrun, one rank per GPU (or per CPU process with gloo):

    torchrun --standalone --nproc_per_node=N benchmarks/ddp_step.py [--device cuda]
        [--width-div 1] [--input-size 227] [--batch 64] [--steps 10] [--warmup 3] --out F

Every rank builds the same seeded teacher (`vgg16_bn_voc`) and trains it as `attrlib.engine`
does under torchrun: a DistributedDataParallel replica (`attrlib.distributed.replica`),
channels-last, `mixed_precision`, the multi-label loss, an SGD step, on random images of its
share (`--batch` / N) of the global batch. Each timed step ends in a device synchronisation
and the ranks' all-reduce, so the step time is the slowest rank's. Rank 0 writes `--out`
(JSON): world size, the global batch, the median seconds per step and the global images/s.
`benchmarks/gpu.py` runs it for 1 and for every GPU and reports the scaling efficiency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from attrlib import distributed
from attrlib.engine import multilabel_objective
from attrlib.io import write_json_atomic
from attrlib.models import vgg16_bn_voc
from attrlib.predict import mixed_precision


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device: torch.device, width_div: int, input_size: int, batch: int, steps: int, warmup: int
) -> dict:
    """Seconds per DDP training step of this process group (see the module docstring)."""
    device = distributed.setup(device)
    rank = distributed.ranks()
    local = distributed.per_rank_batch(batch, rank.world)
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div, 20, input_size).train().to(device)
    model.to(memory_format=torch.channels_last)
    torch.manual_seed(1 + rank.rank)  # each rank its own images
    images = torch.randn(local, 3, input_size, input_size, device=device)  # (b, 3, S, S)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = (torch.rand(local, 20, device=device) > 0.8).float()  # (b, K)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    with distributed.replica(model, device) as replica:
        for step in range(warmup + steps):
            synchronize(device)
            start = time.perf_counter()
            with mixed_precision(device):
                loss, _ = multilabel_objective(replica, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "world": rank.world,
        "device": str(device),
        "width_div": width_div,
        "input_size": input_size,
        "batch": batch,
        "per_rank_batch": local,
        "steps": steps,
        "warmup": warmup,
        "seconds_per_step": seconds,
        "seconds_all": times,
        "images_per_s": batch / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--width-div", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=227)
    parser.add_argument("--batch", type=int, default=64, help="global batch of every step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = measure(
        torch.device(args.device),
        args.width_div,
        args.input_size,
        args.batch,
        args.steps,
        args.warmup,
    )
    write_json_atomic(args.out, result)  # rank 0 alone writes
    return 0


if __name__ == "__main__":
    sys.exit(main())
