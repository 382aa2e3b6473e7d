"""Time the evaluation of many models: one at a time with every thread, against `--workers`
processes that score one model each with the threads shared out (`evaluate_checkpoints`).

Small networks use two threads poorly: the default study's evaluation scores 112 models one
after another with both cores of a 2-core machine, while its training stages run two
processes with one thread each. This measures, in one process and on the same checkpoints,
whether scoring two models at a time finishes sooner, and checks what the change of thread
count does to the scores (a thread count changes the order of CPU sums, so scores may differ
in their last bits; the report says by how much, key by key).

    python benchmarks/evaluate_workers.py --runs-dir runs/default/teacher-s0 \\
        --data-root data/synthvoc-default/VOCdevkit/VOC2012 [--models 16] [--workers 2] \\
        [--out runs/bench/evaluate_workers.json]

Every `--models`-th checkpoint under `--runs-dir` in sorted order is scored (its teacher's
`teacher/best.pt` gives the agreement columns); results go to a temporary folder, never
beside the checkpoints. `ratio` = sequential seconds / worker seconds (2.0: twice as fast).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from provenance import stamp

from attrlib.config import EvalConfig
from attrlib.io import write_json_atomic
from attrlib.stages import evaluate_checkpoints


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every number of an eval.json summary, keyed by its path (the config left out)."""
    if isinstance(tree, dict):
        out: dict[str, float] = {}
        for key, value in tree.items():
            if key != "config":
                out.update(numbers(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list):
        out = {}
        for i, value in enumerate(tree):
            out.update(numbers(value, f"{prefix}{i}."))
        return out
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix.rstrip("."): float(tree)}
    return {}


def compare(first: list[dict], second: list[dict]) -> dict:
    """Largest absolute difference per score name over the models, and how many differ."""
    largest: dict[str, float] = {}
    differing = 0
    for a, b in zip(first, second, strict=True):
        na, nb = numbers(a), numbers(b)
        if na.keys() != nb.keys():
            raise AssertionError(f"{a['checkpoint']}: the two summaries hold other scores")
        model_differs = False
        for key, value in na.items():
            other = nb[key]
            gap = 0.0 if (math.isnan(value) and math.isnan(other)) else abs(value - other)
            if gap > 0:
                model_differs = True
                name = key.split(".", 1)[-1] if key.startswith("localization.") else key
                largest[name] = max(largest.get(name, 0.0), gap)
        differing += model_differs
    return {"models_differing": differing, "largest_difference": largest}


def summary_line(result: dict) -> str:
    """What a result says, in one line."""
    n, sec = len(result["checkpoints"]), result["seconds"]
    return (
        f"{n} models: one at a time with {result['threads']} threads {sec['sequential']:.1f} s, "
        f"{result['workers']} at a time {sec['workers']:.1f} s ({result['ratio']:.2f}x); "
        f"{result['models_differing']} of {n} models differ in some score, largest "
        f"differences {result['largest_difference']}"
    )


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", required=True, help="a teacher's folder of a study")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--models", type=int, default=16, help="how many checkpoints")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/evaluate_workers.json")
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    teacher = str(runs / "teacher" / "best.pt")
    found = sorted(str(p) for p in runs.rglob("best.pt") if "evaluate" not in p.parts)
    if not found:
        raise SystemExit(f"--runs-dir {runs}: no best.pt below it")
    step = max(1, len(found) // args.models)
    checkpoints = found[::step][: args.models]
    threads = torch.get_num_threads()
    seconds, summaries = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, workers in (("sequential", 1), ("workers", args.workers)):
            cfgs = [
                EvalConfig(
                    profile=args.profile,
                    data_root=args.data_root,
                    checkpoint=c,
                    teacher=teacher,
                    out_dir=f"{tmp}/{mode}/{i}",
                )
                for i, c in enumerate(checkpoints)
            ]
            t0 = time.perf_counter()
            summaries[mode] = evaluate_checkpoints(cfgs, workers=workers)
            seconds[mode] = time.perf_counter() - t0
    result = {
        **stamp(),
        "checkpoints": checkpoints,
        "threads": threads,
        "workers": args.workers,
        "threads_per_worker": max(1, threads // args.workers),
        "seconds": seconds,
        "ratio": seconds["sequential"] / seconds["workers"],
        **compare(summaries["sequential"], summaries["workers"]),
    }
    write_json_atomic(Path(args.out), result)
    print(summary_line(result))
    return result


if __name__ == "__main__":
    main()
