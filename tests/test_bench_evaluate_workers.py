"""`benchmarks/evaluate_workers.py` end to end on a tiny study folder: both ways score every
model, the report compares them, and what it reports holds (no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmod import load_benchmark

from attrlib.data import load_classes
from attrlib.engine import make_checkpoint
from attrlib.io import save_torch_atomic

from nets import random_vgg

bench = load_benchmark("evaluate_workers.py")


def test_a_changed_score_is_named_and_the_rest_is_not():
    one = {"checkpoint": "a", "map_class": 0.5, "localization": {"gradcam": {"auc": 0.9}}}
    other = {"checkpoint": "a", "map_class": 0.5, "localization": {"gradcam": {"auc": 0.8}}}
    same = bench.compare([one, one], [one, other])
    assert same["models_differing"] == 1
    assert same["largest_difference"] == {"gradcam.auc": pytest.approx(0.1)}
    assert bench.compare([one], [one]) == {"models_differing": 0, "largest_difference": {}}
    with pytest.raises(AssertionError, match="other scores"):
        bench.compare([one], [{"checkpoint": "a", "map_class": 0.5}])


def test_benchmark_scores_every_model_both_ways(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    classes = load_classes(synth_root)
    runs = tmp_path / "teacher-s0"
    for i, name in enumerate(["teacher", "distill/a", "distill/b"]):
        model = random_vgg(len(classes), 48, i)
        save_torch_atomic(runs / name / "best.pt", make_checkpoint(model, classes))
    out = tmp_path / "bench.json"
    argv = ["evaluate_workers.py", "--runs-dir", str(runs), "--data-root", str(synth_root)]
    argv += ["--profile", "smoke", "--models", "3", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    result = bench.main()
    assert json.loads(out.read_text()) == result
    assert len(result["checkpoints"]) == 3 and result["workers"] == 2
    assert result["seconds"]["sequential"] > 0 and result["seconds"]["workers"] > 0
    # the two ways agree up to the rounding of a thread count
    assert all(gap < 1e-6 for gap in result["largest_difference"].values())
    assert result["date"] and "commit" in result
    assert not list(runs.rglob("eval.json")), "results go to a temporary folder"
