"""Adding a method is one decorated function, end to end (slow; run in CI).

`tests/extension_plugin.py` registers an attribution method, a matching map and a pruning
criterion from outside attrlib; the smoke study runs through the notebooks with them selected
by parameters only, and the paper's tables and figures show the new method and runs.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from attrlib.config import get_profile
from attrlib.paper import unstructured_curves
from attrlib.synthvoc import generate
from tests.conftest import ROOT
from tests.test_notebooks import _execute

PLUGIN = "tests.extension_plugin"


@pytest.mark.slow
def test_a_plugin_runs_through_the_study_by_parameters_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernels import the plugin by its name
    spec = get_profile("smoke").synth
    data = generate(
        tmp_path / "data", spec.n_train, spec.n_val, spec.image_size, workers=1, progress=False
    )
    runs = tmp_path / "runs"
    common = {"profile": "smoke", "data_root": str(data), "device": "cpu"}
    plugins = {"plugins": [PLUGIN]}
    _execute("01_teacher", runs / "teacher", out_dir=str(runs / "teacher"), **common)
    teacher = str(runs / "teacher" / "best.pt")
    for name, out, params in (
        ("02_distill", "distill/x2-kd-s0", {"teacher": teacher}),
        ("02_distill", "distill/x2-gxf-s0", {"teacher": teacher, "matching": "gxf"}),
        ("03_prune_oneshot", "prune_oneshot/p0.5-naive-s0", {"model": teacher, "rate": 0.5}),
        (
            "03_prune_oneshot",
            "prune_oneshot/p0.5-l2-s0",
            {"model": teacher, "rate": 0.5, "criterion": "l2"},
        ),
        ("04_prune_iterative", "prune_iterative/naive-s0", {"model": teacher}),
        ("04b_quantize", "quantize/w8-gxf-s0", {"model": teacher, "matching": "gxf"}),
    ):
        _execute(name, runs / out, out_dir=str(runs / out), **params, **common, **plugins)
    assert (
        json.loads((runs / "prune_oneshot/p0.5-l2-s0/config.json").read_text())["criterion"] == "l2"
    )
    checkpoints = [str(p) for p in sorted(runs.glob("**/best.pt"))]
    _execute(
        "05_evaluate",
        runs / "evaluate",
        out_dir=str(runs / "evaluate"),
        teacher=teacher,
        checkpoints=checkpoints,
        batch_size=8,
        **common,
        **plugins,
    )
    paper = runs / "paper"
    _execute("06_paper", paper, profile="smoke", runs_dir=str(runs), out_dir=str(paper), **plugins)

    frame = pd.read_csv(paper / "all_runs.csv")
    assert {"gradient_x_input auc", "gradient_x_input pointing"} <= set(frame.columns)
    assert frame["gradient_x_input auc"].notna().any()
    assert {"KD", "KD+GxF"} <= set(frame.loc[frame["stage"] == "distill", "method"])
    assert {"naive", "naive (l2)"} <= set(frame.loc[frame["stage"] == "prune_oneshot", "method"])
    distillation = (paper / "table_distillation.md").read_text()
    assert "gradient_x_input auc" in distillation and "| KD+GxF " in distillation
    assert "naive (l2)" in (paper / "table_structured.md").read_text()
    # the plugin's matching word quantizes too
    assert "GxF" in set(frame.loc[frame["stage"] == "quantize", "method"])
    assert "gradient_x_input" in (paper / "summary.md").read_text()
    # the plugin's faithfulness metric, scored for every method (a plugin method's too)
    assert {"gradcam grey_fill", "gradient_x_input grey_fill", "gradcam deletion"} <= set(frame)
    assert frame["gradient_x_input grey_fill"].notna().all()
    assert "gradcam grey_fill" in distillation
    effects = pd.read_csv(paper / "effects.csv")
    assert "gradcam grey_fill" in set(effects["metric"])
    curves = unstructured_curves(frame)  # the notebook's figure, from the same rows
    assert "gradient_x_input auc" in [ax.get_title() for ax in curves.axes]
    assert (paper / "unstructured_auc.png").is_file() and (paper / "qualitative.png").is_file()


def test_a_plugin_network_family_runs_through_the_stages_by_parameters_alone(
    synth_root, tmp_path, plugin_sandbox
):
    """A family registered by a plugin: teacher, an SWA student, iterative pruning and an
    evaluation by every method (LRP and RAP walk its sequential layers), chosen by profile
    overrides only."""
    from attrlib import stages
    from attrlib.config import DistillConfig, PruneIterativeConfig, TeacherConfig
    from attrlib.data import VOCClassification, VOCLocalization, eval_transform, load_classes
    from attrlib.engine import load_checkpoint, load_model
    from attrlib.evaluate import evaluate_model

    overrides = (f"plugins=[{PLUGIN}]", "architecture=tiny4")
    common = {"profile": "smoke", "data_root": str(synth_root), "device": "cpu"}
    teacher_dir = tmp_path / "teacher"
    stages.train_teacher(TeacherConfig(out_dir=str(teacher_dir), overrides=overrides, **common))
    teacher_pt = str(teacher_dir / "best.pt")
    assert load_checkpoint(teacher_pt)["architecture"] == "tiny4"
    student, _ = stages.train_student(
        DistillConfig(
            teacher=teacher_pt,
            matching="swa",
            out_dir=str(tmp_path / "s"),
            overrides=overrides,
            **common,
        )
    )
    teacher, _ = load_model(teacher_pt)
    assert type(student).__name__ == "Tiny"
    assert student.config.widths == tuple(w // 2 for w in teacher.config.widths)
    final, _ = stages.prune_iterative(
        PruneIterativeConfig(
            model=teacher_pt,
            teacher=teacher_pt,
            iterations=1,
            out_dir=str(tmp_path / "it"),
            overrides=overrides,
            **common,
        ),
        progress=False,
    )
    assert type(final).__name__ == "Tiny"
    classes = load_classes(synth_root)
    with torch.no_grad():
        teacher.classifier[-1].bias += 10.0  # every class predicted: every pair is scored
    summary, table, _ = evaluate_model(
        teacher,
        VOCClassification(synth_root, "val", classes, transform=eval_transform(32)),
        VOCLocalization(synth_root, "val", classes, size=32),
        progress=False,
    )
    assert "refused_methods" not in summary
    assert {"gradcam", "ebp", "lrp", "rap"} <= set(table["method"])
