"""What faithfulness adds to a model's evaluation: its time as a ratio, in one process.

For each checkpoint, `attrlib.evaluate.evaluate_model` without faithfulness (prediction, cost
and localization of every method: what 05 did before), then the faithfulness table alone
with the evaluation's default settings and with ROAD added; each timed after one warm-up
evaluation, ratios against the first. The default settings (attrlib.faithfulness.Faithfulness)
were chosen from these ratios.

    python benchmarks/faithfulness.py --data-root DATA --checkpoints a.pt b.pt ...
        [--threads 2] [--out runs/bench/faithfulness.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attrlib.attribution import METHODS
from attrlib.data import VOCClassification, VOCLocalization, eval_transform
from attrlib.evaluate import evaluate_model
from attrlib.faithfulness import Faithfulness, faithfulness_table
from attrlib.io import write_text_atomic
from attrlib.stages import load_reference


def seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/faithfulness.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = METHODS.names()
    results = []
    for checkpoint in args.checkpoints:
        model, classes = load_reference(checkpoint, args.data_root, "cpu")
        size = model.config.input_size
        val = VOCClassification(args.data_root, "val", classes, eval_transform(size))
        loc = VOCLocalization(args.data_root, "val", classes, size=size)
        evaluate_model(model, val, loc, progress=False)  # warm-up: item cache, kernels
        base = seconds(evaluate_model, model, val, loc, progress=False)
        row = {"checkpoint": checkpoint, "evaluation_s": base}
        for name, settings in (
            ("default", Faithfulness()),
            ("with_road", Faithfulness(metrics=("deletion", "insertion", "road"))),
        ):
            t = seconds(faithfulness_table, model, loc, methods, settings)
            row[f"{name}_s"], row[f"{name}_ratio"] = t, t / base
        print(
            f"{checkpoint}: evaluation {base:.1f} s; faithfulness +{row['default_ratio']:.0%} "
            f"(deletion, insertion), +{row['with_road_ratio']:.0%} with ROAD"
        )
        results.append(row)
    out = {"threads": args.threads, "settings": Faithfulness().__dict__, "models": results}
    write_text_atomic(args.out, json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
