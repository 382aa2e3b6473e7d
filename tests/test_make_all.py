"""End to end: `make all PROFILE=smoke` from data to the paper's tables (slow; run in CI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import smoke_make

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_all_smoke_builds_every_artefact(smoke_study):
    runs, make = smoke_study.runs, list(smoke_study.command)

    expected = [
        "teacher-s0/teacher/01_teacher.ipynb",
        "teacher-s0/teacher/best.pt",
        "teacher-s0/teacher/eval.json",
        "teacher-s0/distill/x2-kd-s0/02_distill.ipynb",
        "teacher-s0/distill/x2-swa-s0/eval.json",
        "teacher-s0/prune_oneshot/p0.5-naive-s0/eval.json",
        "teacher-s0/prune_oneshot/p0.5-swa-s0/cost.json",
        "teacher-s0/prune_iterative/naive-s0/iter_02/eval.json",
        "teacher-s0/prune_iterative/swa-s0/final.pt",
        "teacher-s0/evaluate/05_evaluate.ipynb",
        "paper/06_paper.ipynb",
        "paper/table_distillation.md",
        "paper/table_structured.csv",
        "paper/unstructured_auc.png",
        "paper/qualitative.pdf",
        "paper/summary.md",
        "paper/effects.csv",
        "paper/forest.png",
        "paper/replicates_gradcam_auc.png",
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


@pytest.mark.slow
def test_make_all_smoke_on_two_processes_per_run(smoke_study, tmp_path):
    """`make all NPROC=2`: every training stage and the evaluation as 2-rank DDP runs under
    torchrun (gloo here), the paper from their results; the same runs as one process."""
    import torch

    runs = tmp_path / "runs"
    command = smoke_make(runs, smoke_study.data, "NPROC=2")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torchrun --standalone --nproc_per_node=2" in done.stdout

    ours = pd.read_csv(runs / "paper" / "all_runs.csv")
    single = pd.read_csv(smoke_study.runs / "paper" / "all_runs.csv")
    assert sorted(ours["run"]) == sorted(single["run"])
    trained = sorted(runs.glob("**/last.pt"))
    # teacher, students, one-shot, iterations, quantized
    assert len(trained) == 1 + 2 + 2 + 2 * 2 + 2
    for last in trained:
        assert torch.load(last, weights_only=True)["processes"] == 2, last
    # only rank 0's executed notebooks, and nothing half-written
    leftovers = [p for p in runs.rglob(".*") if p.name.startswith((".rank", ".partial-"))]
    assert not leftovers, leftovers
    notebooks = sorted(p.name for p in runs.rglob("*.ipynb"))
    assert notebooks.count("02_distill.ipynb") == 2 and "05_evaluate.ipynb" in notebooks
    again = subprocess.run([*command, "-q"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, "make -q: some target is out of date after a full run"


@pytest.mark.slow
def test_make_all_with_a_users_profile_and_overrides(tmp_path):
    """A profile file of one's own plus SET overrides, through every stage of `make all`:
    each run's config.json records both, and the runs follow them."""
    import yaml

    from attrlib.io import read_json

    fields = yaml.safe_load((ROOT / "attrlib" / "profiles" / "smoke.yaml").read_text())
    profile = tmp_path / "quick.yaml"
    profile.write_text(yaml.safe_dump({**fields, "iterative_steps": 1}))
    runs, data = tmp_path / "runs", tmp_path / "data"
    overrides = "distill.epochs=2 oneshot_methods=[naive]"
    command = ["make", "all", f"PROFILE={profile}", f"SET={overrides}"]
    done = subprocess.run(
        [*command, f"RUNS={runs}", f"SYNTH_ROOT={data}"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    tree = runs / "teacher-s0"
    student = read_json(tree / "distill" / "x2-kd-s0" / "config.json")
    assert student["profile"] == str(profile)
    assert student["overrides"] == ["distill.epochs=2", "oneshot_methods=[naive]"]
    assert student["recipe"]["epochs"] == 2
    assert len(read_json(tree / "distill" / "x2-kd-s0" / "metrics.json")["history"]) == 2
    teacher = read_json(tree / "teacher" / "config.json")
    assert teacher["recipe"]["epochs"] == fields["teacher"]["epochs"]  # untouched by SET
    assert sorted(p.name for p in (tree / "prune_oneshot").iterdir()) == ["p0.5-naive-s0"]
    assert sorted(p.name for p in (tree / "prune_iterative" / "swa-s0").glob("iter_*")) == [
        "iter_01"
    ]
    resolved = yaml.safe_load((runs / "profile.yaml").read_text())
    assert resolved["name"] == "quick" and resolved["distill"]["epochs"] == 2
    assert (runs / "paper" / "all_runs.csv").is_file()


@pytest.mark.slow
def test_a_grid_without_iterative_pruning_still_gets_its_paper(smoke_study, tmp_path):
    runs = tmp_path / "runs"
    command = smoke_make(runs, smoke_study.data, "SET=iterative_methods=[]")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = pd.read_csv(runs / "paper" / "all_runs.csv")
    assert set(frame["stage"]) == {"teacher", "distill", "prune_oneshot", "quantize"}
    assert (runs / "paper" / "effects.csv").is_file()
    assert not (runs / "paper" / "unstructured_auc.png").exists()


@pytest.mark.slow
def test_make_all_smoke_on_the_resnet_family(smoke_study, tmp_path):
    """`make all SET="architecture=resnet"`: the whole study on ResNet teachers, by one
    profile field; every attribution method follows the residual sums."""
    import torch

    runs = tmp_path / "runs"
    command = smoke_make(runs, smoke_study.data, "SET=architecture=resnet")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    all_runs = pd.read_csv(runs / "paper" / "all_runs.csv")
    assert len(all_runs) == 11
    for column in ("gradcam auc", "ebp auc", "lrp auc", "rap auc"):
        assert column in all_runs and all_runs[column].notna().all()
    assert "refused_methods" not in all_runs or all_runs["refused_methods"].isna().all()
    assert "Not evaluated" not in (runs / "paper" / "summary.md").read_text()
    for ckpt in ("teacher-s0/teacher/best.pt", "teacher-s0/prune_oneshot/p0.5-swa-s0/best.pt"):
        assert torch.load(runs / ckpt, weights_only=False)["architecture"] == "resnet"


@pytest.mark.slow
def test_widening_a_profile_runs_only_the_runs_it_adds(smoke_study, tmp_path):
    """An edited profile that only adds runs executes only those, their evaluation and the
    paper: the teachers and runs depend on the profile's recipes, not on its grid."""
    text = (ROOT / "attrlib" / "profiles" / "smoke.yaml").read_text()
    assert "quantize_bits: [8]" in text
    profile, runs = tmp_path / "mine.yaml", tmp_path / "runs"
    profile.write_text(text)
    command = ["make", "all", f"PROFILE={profile}", f"RUNS={runs}"]
    command.append(f"SYNTH_ROOT={smoke_study.data}")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tree = runs / "teacher-s0"
    kept = [tree / "teacher" / "targets.pt", tree / "teacher" / "best.pt"]
    kept += [p for p in tree.rglob("*.ipynb") if "evaluate" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in kept}
    assert len(before) > 5  # the store, the teacher and its notebook, every compression run
    profile.write_text(text.replace("quantize_bits: [8]", "quantize_bits: [8, 4]"))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    changed = [str(p.relative_to(tree)) for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert changed == []
    for method in ("naive", "swa"):
        assert (tree / "quantize" / f"w4-{method}-s0" / "04b_quantize.ipynb").is_file()
    frame = pd.read_csv(runs / "paper" / "all_runs.csv")
    assert set(frame.loc[frame["stage"] == "quantize", "bits"]) == {8, 4}
    # a recipe edit reaches the finished runs, which refuse what was made otherwise
    text = profile.read_text()
    profile.write_text(text.replace("matching_lambda:", "matching_lambda: 7.0 #", 1))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "holds a run with a different config" in done.stdout + done.stderr
