"""End to end: `make all PROFILE=smoke` from data to the paper's tables (slow; run in CI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_all_smoke_builds_every_artefact(smoke_study):
    runs, make = smoke_study.runs, list(smoke_study.command)

    expected = [
        "teacher/01_teacher.ipynb",
        "teacher/best.pt",
        "teacher/eval.json",
        "distill/x2-kd-s0/02_distill.ipynb",
        "distill/x2-swa-s0/eval.json",
        "prune_oneshot/p0.5-naive-s0/eval.json",
        "prune_oneshot/p0.5-swa-s0/cost.json",
        "prune_iterative/naive-s0/iter_02/eval.json",
        "prune_iterative/swa-s0/final.pt",
        "evaluate/05_evaluate.ipynb",
        "paper/06_paper.ipynb",
        "paper/table_distillation.md",
        "paper/table_structured.csv",
        "paper/unstructured_auc.png",
        "paper/qualitative.pdf",
        "paper/summary.md",
        "paper/iterative_maps.gif",
    ]
    missing = [p for p in expected if not (runs / p).exists()]
    assert not missing, missing

    # the paper's tables contain every run
    all_runs = pd.read_csv(runs / "paper" / "all_runs.csv")
    evaluated = {str(p.parent.relative_to(runs)) for p in runs.glob("**/eval.json")}
    assert set(all_runs["run"]) == evaluated
    distill = (runs / "paper" / "table_distillation.md").read_text()
    for label in ("teacher", "KD", "KD+SWA"):
        assert f"| {label} " in distill

    # a second `make all` has nothing left to do
    again = subprocess.run(make + ["-q"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, "make -q: some target is out of date after a full run"
