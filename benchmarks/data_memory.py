"""Memory of one DataLoader pass over a VOC-sized training split, cache on and off.

What is measured: the study's training data, `TrainViews(VOCClassification(root, "train"))`
with its collate (views at `--size` px), iterated once by a DataLoader as `attrlib.engine.fit`
builds it (shuffle, batch 64, `--workers` workers started by fork, persistent_workers=False),
with `cache=False` (every image decoded on each access) and `cache=True` (whatever
`attrlib.data` caches). Each variant runs in a fresh spawned process, so that no variant
inherits another's heap. A thread of that process samples every `--interval` s, from /proc:
- `main_rss_mib`: the main process's resident memory (VmRSS), peak, and its growth over
  the pass (`main_growth_mib`, peak minus the value before the loader starts);
- `workers_private_mib`: the sum over the workers of their private pages (Private_Clean +
  Private_Dirty of smaps_rollup: what each worker holds beyond what fork shares with the
  main process), peak of the sum; `workers_rss_mib` the same with their whole RSS, which
  counts every shared page once per worker;
- `total_mib`: peak of main RSS + workers' private pages, the machine's memory in use.
Also the pass's seconds and the number of images the main process's cache holds after it.

    python benchmarks/data_memory.py [--images 11540] [--image-size 433] [--workers 2 0]
        [--size 227] [--synth-root DIR] [--out runs/bench/data_memory.json]

The synthetic set: `--images` training images of synthvoc at `--image-size` (each side
0.85-1.15 x that, so 433 px gives VOC2012's mean of ~500 x 375 = 187,500 pixels); written in
a temporary folder, or kept in `--synth-root` (and reused when its parameters match).
Another version of `attrlib` (say, the commit before a change) is measured by putting its
checkout first: `PYTHONPATH=/path/to/checkout python benchmarks/data_memory.py`; the result
records which `attrlib.data` file was read and the cache it has.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty

import torch
from torch.utils.data import DataLoader

import attrlib.data
from attrlib.data import VOCClassification
from attrlib.io import write_json_atomic
from attrlib.synthvoc import generate
from attrlib.views import TrainViews, ViewSpec

BATCH_SIZE = 64  # every profile's
SHUFFLE_SEED = 0
MIB = 2**20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _private_kib(pid: int) -> int:
    """Pages only `pid` maps (smaps_rollup), in KiB."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (scanning /proc: not every kernel lists children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class PeakSampler(threading.Thread):
    """Peaks of this process's RSS and of its children's summed RSS and private pages (KiB)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.pid = interval, os.getpid()
        self.peak = {"main_rss": 0, "workers_rss": 0, "workers_private": 0, "total": 0}
        self.samples = 0
        self._done = threading.Event()

    def sample(self) -> None:
        main = _status_kib(self.pid, "VmRSS")
        rss = private = 0
        for child in _children(self.pid):
            try:
                rss += _status_kib(child, "VmRSS")
                private += _private_kib(child)
            except (OSError, KeyError):  # a worker that just exited
                continue
        now = {"main_rss": main, "workers_rss": rss, "workers_private": private}
        now["total"] = main + private
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
        self.samples += 1

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, float]:
        self._done.set()
        self.join()
        self.sample()
        return {f"{k}_mib": round(v / 1024, 1) for k, v in self.peak.items()}


def cache_kind() -> str:
    """The cache of the `attrlib.data` in use, in words."""
    if hasattr(attrlib.data, "ItemCache"):
        budget = attrlib.data.CACHE_BYTES / MIB
        return f"main process only, at most {budget:.0f} MiB per data set"
    return "every process its own, unbounded"


def cached_images(dataset: VOCClassification) -> int:
    """Images the main process's cache holds (either version of VOCClassification)."""
    if hasattr(dataset, "_images"):
        return sum(image is not None for image in dataset._images)
    return len(dataset.cache)


def one_pass(root: str, cache: bool, workers: int, size: int, interval: float) -> dict:
    """One DataLoader pass over the training split, as `engine.fit`'s; peaks of memory."""
    torch.set_num_threads(1)  # the main process only receives batches here
    dataset = VOCClassification(root, "train", cache=cache)
    train = TrainViews(dataset, ViewSpec(size, scale_min=0.08))  # the voc profile's crops
    loader = DataLoader(
        train,
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(SHUFFLE_SEED),
        persistent_workers=False,
        collate_fn=train.collate(0),
        # fork, as engine.fit's loader gets on Linux; this spawned process would default to spawn
        multiprocessing_context="fork" if workers else None,
    )
    before = _status_kib(os.getpid(), "VmRSS")
    sampler = PeakSampler(interval)
    sampler.start()
    t0 = time.perf_counter()
    images = 0
    for views, _, _ in loader:
        images += len(views)
    seconds = time.perf_counter() - t0
    peaks = sampler.stop()
    return {
        "cache": cache,
        "workers": workers,
        "images": images,
        "seconds": round(seconds, 1),
        **peaks,
        "main_growth_mib": round(peaks["main_rss_mib"] - before / 1024, 1),
        "cached_in_main": cached_images(dataset),
        "samples": sampler.samples,
    }


def _child(queue, *args) -> None:
    queue.put(one_pass(*args))


def measure(*args) -> dict:
    """`one_pass(*args)` in a fresh spawned process (not daemonic: it starts workers)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"the measuring process failed (exit code {proc.exitcode})"
                ) from None
    proc.join()
    return result


def decoded_mib(root: Path, n: int = 200) -> float:
    """Mean decoded size of the first `n` training images, MiB (uint8 RGB)."""
    dataset = VOCClassification(root, "train", cache=False)
    n = min(n, len(dataset))
    return sum(dataset.image(i).numel() for i in range(n)) / n / MIB


def report(result: dict) -> None:
    print(f"attrlib.data: {result['attrlib_data']} (cache: {result['cache_kind']})")
    print(
        f"{result['images']} images, mean decoded {result['decoded_mib_per_image']:.3f} MiB, "
        f"views {result['size']} px"
    )
    print("workers cache  seconds  main peak  main growth  workers private  total  cached")
    for r in result["passes"]:
        print(
            f"{r['workers']:7d} {str(r['cache']):5s} {r['seconds']:8.1f} {r['main_rss_mib']:10.0f} "
            f"{r['main_growth_mib']:12.0f} {r['workers_private_mib']:16.0f} {r['total_mib']:6.0f} "
            f"{r['cached_in_main']:7d}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=11540, help="training images")
    parser.add_argument("--image-size", type=int, default=433, help="synthvoc image_size, px")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    parser.add_argument("--size", type=int, default=227, help="view side, px (voc profile)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--synth-root", default="", help="keep the synthetic set here")
    parser.add_argument("--out", default="runs/bench/data_memory.json")
    args = parser.parse_args(argv)
    if args.images < 1 or min(args.workers) < 0:
        parser.error("--images must be >= 1 and --workers >= 0")
    with tempfile.TemporaryDirectory(prefix="data_memory-") as tmp:
        synth_root = Path(args.synth_root or tmp)
        root = generate(synth_root, args.images, 1, args.image_size, workers=1, progress=True)
        result = {
            "date": datetime.date.today().isoformat(),
            "attrlib_data": attrlib.data.__file__,
            "cache_kind": cache_kind(),
            "images": args.images,
            "image_size": args.image_size,
            "decoded_mib_per_image": round(decoded_mib(root), 4),
            "size": args.size,
            "batch_size": BATCH_SIZE,
            "passes": [
                measure(str(root), cache, workers, args.size, args.interval)
                for workers in args.workers
                for cache in (False, True)
            ],
        }
    report(result)
    write_json_atomic(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
