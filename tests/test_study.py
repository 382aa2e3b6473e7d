"""The study as data: stages, compression-method words and the grid the Makefile reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attrlib import stages
from attrlib.config import PROFILES, get_profile
from attrlib.distill import NO_MATCHING
from attrlib.study import (
    COMPRESSION,
    STAGES,
    colour,
    grid,
    makefile_grid,
    method_label,
    method_labels,
)
from attrlib.study import NO_MATCHING as STUDY_NO_MATCHING


def test_the_light_constant_equals_the_library_one():
    assert STUDY_NO_MATCHING == NO_MATCHING


def test_stages_are_registered_in_pipeline_order_with_their_settings():
    assert STAGES.names() == ["teacher", "distill", "prune_oneshot", "prune_iterative", "quantize"]
    settings = {s: STAGES.get(s).setting for s in STAGES}
    assert settings == {
        "teacher": None,
        "distill": "width_div",
        "prune_oneshot": "rate",
        "prune_iterative": "iteration",
        "quantize": "bits",
    }
    assert STAGES.get("quantize").label(4.0) == "4-bit"
    labels = [STAGES.get(s).label(v) for s, v in (("distill", 4.0), ("prune_oneshot", 0.7))]
    assert labels == ["x4", "rate 0.7"]
    assert STAGES.get("prune_iterative").label(8.0) == "iteration 8"
    for name in STAGES:  # each config class takes its own defaults
        stage = STAGES.get(name)
        stage.config()
        assert callable(getattr(stages, stage.function))


@pytest.mark.parametrize(
    ("stage", "config", "label"),
    [
        ("teacher", {}, "teacher"),
        ("distill", {"matching": "none"}, "KD"),
        ("distill", {"matching": "swa", "drop_fraction": 0.3}, "KD+stochastic SWA"),
        ("distill", {"matching": "unlisted"}, "KD+unlisted"),  # a plugin's, with no table entry
        ("prune_oneshot", {"matching": "none"}, "naive"),
        ("prune_oneshot", {"matching": "ewa"}, "EWA"),
        ("prune_oneshot", {"matching": "none", "criterion": "l2"}, "naive (l2)"),
        ("prune_iterative", {"matching": "swa", "drop_fraction": 0.0}, "SWA"),
    ],
)
def test_method_labels(stage, config, label):
    assert method_label(stage, config) == label


def test_labels_have_colours_and_table_order():
    # built-ins first (a plugin imported by another test may add its own after them)
    assert method_labels("distill")[:4] == ["KD", "KD+EWA", "KD+SWA", "KD+stochastic SWA"]
    assert method_labels("prune_oneshot")[:4] == ["naive", "EWA", "SWA", "stochastic SWA"]
    assert colour("KD") == colour("naive") and colour("SWA") == colour("KD+SWA")
    assert colour("teacher") and colour("KD+unlisted") is None


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_grid_comes_from_the_profile(profile):
    prof, g = get_profile(profile), grid(profile)
    assert (g.seeds, g.widths, g.rates) == (prof.seeds, prof.student_width_divs, prof.prune_rates)
    for words in (g.distill, g.oneshot, g.iterative):
        assert all(w in COMPRESSION for w in words)


def test_makefile_grid_is_read_without_torch():
    """make reads the grid on every run: it must not pay for importing torch."""
    code = (
        "import sys; from attrlib.study import makefile_grid; makefile_grid('default'); "
        "print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    text = makefile_grid("smoke")
    assert "DISTILL_METHODS := kd swa\n" in text
    assert "MATCH_sswa := -p matching swa -p drop_fraction 0.3\n" in text


def test_grid_stages_leave_out_a_stage_without_methods():
    from attrlib.study import grid_stages

    every = ["teacher", "distill", "prune_oneshot", "prune_iterative", "quantize"]
    assert grid_stages("smoke") == every
    assert grid_stages("smoke", "iterative_methods=[] oneshot_methods=[]") == [
        "teacher",
        "distill",
        "quantize",
    ]
    # quantization needs both its widths and its methods
    assert grid_stages("smoke", "quantize_bits=[]") == every[:-1]
    assert grid_stages("smoke", "quantize_methods=[]") == every[:-1]


def test_make_renders_each_runs_name_and_parameters_from_its_config():
    """make writes one rule per run from study's functions: the folder name is the config's
    run_name, and the parameters rebuild that config."""
    import re

    from attrlib.config import DistillConfig, PruneIterativeConfig, PruneOneShotConfig

    text = makefile_grid("smoke")
    functions = dict(re.findall(r"^(\w+) :?= (.*)$", text, flags=re.M))

    def call(name: str, *args: str) -> str:
        out = functions[name]
        for i, arg in enumerate(args, 1):
            out = out.replace(f"$({i})", arg)
        return re.sub(r"\$\((MATCH_\w+)\)", lambda m: functions[m.group(1)], out)

    cases = [
        ("distill", ("2", "sswa", "1"), DistillConfig, {"width_div": 2}),
        ("oneshot", ("0.5", "swa", "0"), PruneOneShotConfig, {"rate": 0.5}),
        ("iterative", ("naive", "2"), PruneIterativeConfig, {}),
    ]
    for prefix, args, cls, setting in cases:
        params = dict(re.findall(r"-p (\w+) (\S+)", call(f"{prefix}_params", *args)))
        values = {k: type(getattr(cls(profile="smoke"), k))(v) for k, v in params.items()}
        cfg = cls(profile="smoke", **values)
        assert call(f"{prefix}_run", *args) == cfg.run_name(), prefix
        assert {k: values[k] for k in setting} == setting
        assert functions[f"{prefix}_notebook"] == STAGES.get(cfg.stage).notebook
    assert functions["distill_start"] == "teacher" and functions["oneshot_start"] == "model"
