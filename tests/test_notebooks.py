"""Notebooks: stored clean, parameters named like their config fields, and they run (smoke)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import nbformat
import pytest

from attrlib.config import (
    DistillConfig,
    EvalConfig,
    PruneIterativeConfig,
    PruneOneShotConfig,
    QuantizeConfig,
    TeacherConfig,
    get_profile,
)
from attrlib.cost import count_params
from attrlib.engine import load_model
from attrlib.nbrun import UnknownParameterError, execute, notebook_parameters
from attrlib.synthvoc import generate

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# notebook -> (config class, {config field: notebook parameter} where they differ)
CONFIGS = {
    "01_teacher": (TeacherConfig, {}),
    "02_distill": (DistillConfig, {}),
    "03_prune_oneshot": (PruneOneShotConfig, {}),
    "04_prune_iterative": (PruneIterativeConfig, {}),
    "05_evaluate": (EvalConfig, {"checkpoint": "checkpoints"}),
    "06_paper": (None, {}),
    "04b_quantize": (QuantizeConfig, {}),
}


# Parameters of a notebook's own: the plugin modules it imports first (their methods are
# then valid config values), and the evaluation's figure folder (each eval.json goes beside
# its model), how many models its map grid draws and how many it scores at a time.
NOTEBOOK_ONLY = {
    "02_distill": {"plugins"},
    "03_prune_oneshot": {"plugins"},
    "04_prune_iterative": {"plugins"},
    "04b_quantize": {"plugins"},
    "05_evaluate": {"out_dir", "runs_dir", "grid_models", "plugins", "workers"},
}
# Defaults a notebook resolves itself (attrlib.study.evaluation_inputs): 05 evaluates every
# best.pt under runs_dir ([]) against its teacher ("auto"), where the config takes one
# checkpoint and no reference.
OWN_DEFAULTS = {"05_evaluate": {"checkpoints": [], "teacher": "auto"}}


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
        if cell.cell_type == "code":
            nodes = ast.walk(ast.parse(cell.source))
            defs = [n for n in nodes if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda)]
            assert not defs, f"{path.name}: functions or classes belong in attrlib"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameters_match_config_fields(name):
    cls, renamed = CONFIGS[name]
    if cls is None:  # the paper notebook only reads results
        expected = {"profile", "overrides", "runs_dir", "out_dir", "plugins"}
    else:
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        expected = {renamed.get(f, f) for f in fields} | NOTEBOOK_ONLY.get(name, set())
    assert set(_parameters(name)) == expected
    # papermill reads each of them (it skips a line it cannot parse, with a warning only)
    assert set(notebook_parameters(NOTEBOOKS / f"{name}.ipynb")) == expected


@pytest.mark.parametrize("name", sorted(n for n, (cls, _) in CONFIGS.items() if cls))
def test_parameter_defaults_equal_config_defaults(name):
    """Opened in JupyterLab, a notebook runs the experiment its config would run."""
    cls, renamed = CONFIGS[name]
    defaults = notebook_parameters(NOTEBOOKS / f"{name}.ipynb")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        param = renamed.get(f.name, f.name)
        if param in NOTEBOOK_ONLY.get(name, ()):
            continue
        value = ast.literal_eval(defaults[param])
        if param in OWN_DEFAULTS.get(name, {}):
            assert value == OWN_DEFAULTS[name][param], f"{name}: {param} = {value!r}"
            continue
        expected = f.default
        if param != f.name:  # a list of the config's values: one run per entry
            expected = [expected]
        elif isinstance(expected, tuple):
            value = tuple(value)
        assert value == expected, f"{name}: {param} = {value!r}, {cls.__name__}: {expected!r}"


def test_unknown_parameter_is_refused_before_running(tmp_path):
    out = tmp_path / "out.ipynb"
    with pytest.raises(UnknownParameterError, match="matchng.*parameters are: profile, "):
        execute(NOTEBOOKS / "02_distill.ipynb", out, {"matchng": "ewa", "seed": 1})
    assert not out.exists()


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    spec = get_profile("smoke").synth
    root = tmp_path_factory.mktemp("smoke")
    return generate(
        root, spec.n_train, spec.n_val, spec.image_size, seed=0, workers=1, progress=False
    )


def _execute(name: str, out: Path, **parameters) -> None:
    out.mkdir(parents=True, exist_ok=True)
    execute(
        NOTEBOOKS / f"{name}.ipynb",
        out / f"{name}.ipynb",
        parameters,
        log_output=False,
        cwd=out,
    )


def test_every_notebook_runs_on_smoke(smoke_data, tmp_path):
    """The whole chain on the smoke profile: teacher, distill, both prunings, evaluate, paper."""
    runs = tmp_path / "runs"
    common = {"profile": "smoke", "data_root": str(smoke_data), "device": "cpu"}
    _execute("01_teacher", runs / "teacher", out_dir=str(runs / "teacher"), **common)
    teacher = runs / "teacher" / "best.pt"
    for name in ("best.pt", "last.pt", "metrics.json", "config.json", "curves.png", "samples.png"):
        assert (runs / "teacher" / name).is_file(), name
    metrics = json.loads((runs / "teacher" / "metrics.json").read_text())
    assert metrics["finished"] and len(metrics["history"]) == get_profile("smoke").teacher.epochs

    student = runs / "distill" / "x2-sswa-s0"
    _execute(
        "02_distill",
        student,
        out_dir=str(student),
        teacher=str(teacher),
        width_div=2,
        matching="swa",
        drop_fraction=0.3,
        **common,
    )
    history = json.loads((student / "metrics.json").read_text())["history"]
    assert "train_match" in history[0] and "train_kd" in history[0]

    oneshot = runs / "prune_oneshot" / "p0.5-swa-s0"
    _execute(
        "03_prune_oneshot",
        oneshot,
        out_dir=str(oneshot),
        model=str(teacher),
        rate=0.5,
        matching="swa",
        **common,
    )
    cost = json.loads((oneshot / "cost.json").read_text())
    assert cost["params"] < count_params(load_model(teacher)[0])

    iterative = runs / "prune_iterative" / "swa-s0"
    _execute(
        "04_prune_iterative",
        iterative,
        out_dir=str(iterative),
        model=str(teacher),
        matching="swa",
        **common,
    )
    schedule = json.loads((iterative / "schedule.json").read_text())["iterations"]
    steps = get_profile("smoke").iterative_steps
    assert [r["iteration"] for r in schedule] == list(range(1, steps + 1))
    assert abs(schedule[-1]["sparsity"] - (1 - 0.8**steps)) < 0.01
    assert (iterative / "final.pt").is_file()

    quantized = runs / "quantize" / "w8-swa-s0"
    _execute(
        "04b_quantize",
        quantized,
        out_dir=str(quantized),
        model=str(teacher),
        bits=8,
        matching="swa",
        **common,
    )
    cost = json.loads((quantized / "cost.json").read_text())
    assert cost["weight_bytes"] < 0.3 * 4 * cost["params"]
    int8 = json.loads((quantized / "int8.json").read_text())
    assert int8["bytes_int8"] < 0.4 * int8["bytes_float"]

    checkpoints = [str(p) for p in sorted(runs.glob("**/best.pt"))]
    _execute(
        "05_evaluate",
        runs / "evaluate",
        out_dir=str(runs / "evaluate"),
        teacher=str(teacher),
        checkpoints=checkpoints,
        batch_size=8,
        grid_models=2,
        **common,
    )
    executed = (runs / "evaluate" / "05_evaluate.ipynb").read_text()
    assert f"drawing 2 of {len(checkpoints)} models" in executed
    for ckpt in checkpoints:
        summary = json.loads((Path(ckpt).parent / "eval.json").read_text())
        assert {"map_class", "map_sample", "f1", "params", "macs", "sparsity"} <= set(summary)
    assert (runs / "evaluate" / "summary.csv").is_file()

    _execute(
        "06_paper", runs / "paper", profile="smoke", runs_dir=str(runs), out_dir=str(runs / "paper")
    )
    for name in (
        "table_distillation.md",
        "table_structured.tex",
        "table_quantization.md",
        "unstructured_auc.pdf",
        "qualitative.png",
        "summary.md",
        "effects.csv",
        "forest.png",
        "replicates_gradcam_auc.png",
    ):
        assert (runs / "paper" / name).is_file(), name
