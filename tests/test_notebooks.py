"""Notebooks: stored clean, parameters named like their config fields, and they run (smoke)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from attrlib.config import DistillConfig, EvalConfig, TeacherConfig, get_profile
from attrlib.synthvoc import generate

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# notebook -> (config class, {config field: notebook parameter} where they differ)
CONFIGS = {
    "01_teacher": (TeacherConfig, {}),
    "02_distill": (DistillConfig, {}),
    "05_evaluate": (EvalConfig, {"checkpoint": "checkpoints"}),
}


def _parameters(name: str) -> list[str]:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse(cells[0].source)
    return [t.id for node in tree.body for t in node.targets]


def test_every_notebook_is_listed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CONFIGS)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs"
        source = cell.source if cell.cell_type == "code" else ""
        assert "def " not in source and "class " not in source, f"{path.name}: logic in notebook"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameters_match_config_fields(name):
    cls, renamed = CONFIGS[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    expected = {renamed.get(f, f) for f in fields}
    if name == "05_evaluate":
        expected.add("out_dir")  # the folder of the notebook's own figures; eval.json goes beside each model
    assert set(_parameters(name)) == expected


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    spec = get_profile("smoke").synth
    root = tmp_path_factory.mktemp("smoke")
    return generate(root, spec.n_train, spec.n_val, spec.image_size, seed=0, workers=1, progress=False)


def _execute(name: str, out: Path, **parameters) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
        parameters=parameters, progress_bar=False, cwd=str(out),
    )


def test_teacher_distill_evaluate_notebooks_run_on_smoke(smoke_data, tmp_path):
    runs = tmp_path / "runs"
    common = {"profile": "smoke", "data_root": str(smoke_data), "device": "cpu"}
    _execute("01_teacher", runs / "teacher", out_dir=str(runs / "teacher"), **common)
    teacher = runs / "teacher" / "best.pt"
    for name in ("best.pt", "last.pt", "metrics.json", "config.json", "curves.png", "samples.png"):
        assert (runs / "teacher" / name).is_file(), name
    metrics = json.loads((runs / "teacher" / "metrics.json").read_text())
    assert metrics["finished"] and len(metrics["history"]) == get_profile("smoke").teacher.epochs

    _execute(
        "02_distill", runs / "distill", out_dir=str(runs / "distill"), teacher=str(teacher),
        width_div=2, matching="swa", drop_fraction=0.3, **common,
    )
    history = json.loads((runs / "distill" / "metrics.json").read_text())["history"]
    assert "train_match" in history[0] and "train_kd" in history[0]

    _execute(
        "05_evaluate", runs / "evaluate", out_dir=str(runs / "evaluate"), teacher=str(teacher),
        checkpoints=[str(teacher), str(runs / "distill" / "best.pt")], batch_size=8, **common,
    )
    summary = json.loads((runs / "distill" / "eval.json").read_text())
    assert set(summary["localization"]) <= {"gradcam", "ebp", "lrp", "rap"}
    assert (runs / "evaluate" / "summary.csv").is_file()
