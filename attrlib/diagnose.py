"""What separates the runs of one setting: per-run facts beside their scores.

Replicates of one setting and method differ only in their teacher and seed, yet their maps
can localise very differently (the x4 KD students of the default study). This module lines
up, per run, what could explain it: its teacher and seed, the epoch validation mAP selected,
its agreement with the teacher's maps, and the share of dead channels at the attribution
layer (channels zero on every image carry no gradient to Grad-CAM); `rank_correlations`
says how each goes with a score over the runs.

    python -m attrlib.diagnose runs/pilot --stage distill --setting 4 --method KD
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from attrlib.data import VOCLocalization
from attrlib.engine import load_checkpoint, load_model
from attrlib.evaluate import trunk_forward
from attrlib.study import STAGES

FACTS = (
    "teacher_seed",
    "seed",
    "best_epoch",
    "map_class",
    "gradcam cosine_teacher",
    "dead_channels",
)


def dead_channels(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> float:
    """Share of the attribution layer's channels that are zero on every one of `images`
    (B, 3, H, W): ReLUs that never fire, so no map can use them."""
    alive = None
    for batch in images.split(batch_size):
        feature, _ = trunk_forward(model, batch)  # (B, C, h, w)
        fired = (feature > 0).flatten(2).any(2).any(0)  # (C,)
        alive = fired if alive is None else alive | fired
    return 1.0 - alive.float().mean().item()


def _best_epoch(folder: Path) -> float:
    path = folder / "metrics.json"
    if not path.is_file():
        return np.nan
    return json.loads(path.read_text()).get("best", {}).get("epoch", np.nan)


def run_facts(
    frame: pd.DataFrame,
    runs_dir: str | Path,
    images: torch.Tensor,
    stage: str,
    setting: float,
    method: str,
) -> pd.DataFrame:
    """One row per run of `stage` at `setting` with `method` (all_runs.csv rows `frame`):
    its scores, the epoch validation mAP selected and its dead attribution channels."""
    key = STAGES.get(stage).setting
    runs = frame[(frame["stage"] == stage) & (frame[key] == setting) & (frame["method"] == method)]
    if runs.empty:
        raise ValueError(f"no {method!r} runs of {stage} at {key}={setting} in all_runs.csv")
    rows = []
    for _, run in runs.iterrows():
        folder = Path(runs_dir) / run["run"]
        model, _ = load_model(folder / "best.pt")
        rows.append(
            {
                "run": run["run"],
                **{c: run[c] for c in run.index if c in FACTS or c.startswith("gradcam ")},
                "best_epoch": _best_epoch(folder),
                "dead_channels": dead_channels(model, images),
            }
        )
    return pd.DataFrame(rows).sort_values(["teacher_seed", "seed"], ignore_index=True)


def rank_correlations(facts: pd.DataFrame, score: str = "gradcam auc") -> pd.DataFrame:
    """Spearman's rho (and its p) of each fact with `score` over the runs."""
    rows = []
    for fact in FACTS:
        if fact == score or fact not in facts or facts[fact].nunique() < 2:
            continue
        rho, p = stats.spearmanr(facts[fact], facts[score])
        rows.append({"fact": fact, "score": score, "n": len(facts), "rho": rho, "p": p})
    return pd.DataFrame(rows)


def val_images(runs_dir: str | Path, run: str, count: int) -> torch.Tensor:
    """The first `count` images of the val split a run was trained on, at its input size."""
    ckpt = load_checkpoint(Path(runs_dir) / run / "best.pt")
    loc = VOCLocalization(
        ckpt["stage_config"]["data_root"],
        "val",
        tuple(ckpt["classes"]),
        size=ckpt["model_config"]["input_size"],
    )
    return torch.stack([loc[i][0] for i in range(min(count, len(loc)))])  # (N, 3, S, S)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        prog="python -m attrlib.diagnose",
        description="Per-run facts (teacher, seed, selected epoch, teacher agreement, dead "
        "attribution channels) beside the scores of one setting's runs, and their rank "
        "correlations with Grad-CAM AUC.",
    )
    parser.add_argument("runs_dir", help="a finished study (runs/<name>) with paper/all_runs.csv")
    parser.add_argument("--stage", default="distill")
    parser.add_argument("--setting", type=float, default=4.0, help="width_div, rate or iteration")
    parser.add_argument("--method", default="KD", help="as all_runs.csv names it")
    parser.add_argument("--images", type=int, default=256, help="val images for dead channels")
    args = parser.parse_args(argv)
    frame = pd.read_csv(Path(args.runs_dir) / "paper" / "all_runs.csv")
    key = STAGES.get(args.stage).setting
    first = frame[(frame["stage"] == args.stage) & (frame[key] == args.setting)]["run"]
    if first.empty:
        parser.error(f"no {args.stage} runs at {key}={args.setting} in {args.runs_dir}")
    images = val_images(args.runs_dir, first.iloc[0], args.images)
    facts = run_facts(frame, args.runs_dir, images, args.stage, args.setting, args.method)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(facts.round(3).to_string(index=False))
        print()
        print(rank_correlations(facts).round(3).to_string(index=False))
    return facts


if __name__ == "__main__":
    main()
