"""The Makefile: `make -n all` lists every stage in order, for each profile."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(*args: str) -> str:
    out = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_make_all_lists_the_stages_in_order(profile, tmp_path):
    # a fresh runs folder so that finished stages of this checkout do not hide any rule
    text = _dry_run(
        "all", f"PROFILE={profile}", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data"
    )
    stages = [
        "attrlib.synthvoc",
        "01_teacher.ipynb",
        "02_distill.ipynb",
        "03_prune_oneshot.ipynb",
        "04_prune_iterative.ipynb",
        "05_evaluate.ipynb",
        "06_paper.ipynb",
    ]
    positions = [text.find(s) for s in stages]
    assert all(p >= 0 for p in positions), dict(zip(stages, positions, strict=True))
    assert positions == sorted(positions)


def test_default_grid_covers_the_study(tmp_path):
    text = _dry_run(
        "all", "PROFILE=default", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data"
    )
    for run in ("x2-kd-s0", "x2-ewa-s0", "x2-swa-s0", "x2-sswa-s0", "x4-swa-s0"):
        assert f"distill/{run}/" in text
    assert "-p matching swa -p drop_fraction 0.3" in text
    for run in ("p0.3-naive-s0", "p0.5-swa-s0", "p0.7-sswa-s0"):
        assert f"prune_oneshot/{run}/" in text
    for run in ("naive-s0", "swa-s0"):
        assert f"prune_iterative/{run}/" in text


def test_voc_profile_needs_a_real_tree(tmp_path):
    out = subprocess.run(
        ["make", "-n", "data", "PROFILE=voc", f"VOC_ROOT={tmp_path}/nothing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "ImageSets/Main/train.txt" in out.stderr


def test_grid_runs_get_their_thread_share(tmp_path):
    """Grid runs execute side by side with THREADS torch threads each; the teacher keeps all."""
    stamp = tmp_path / "data" / "VOCdevkit" / "VOC2012" / "synthvoc.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    log = tmp_path / "threads.log"
    fake = tmp_path / "python"  # stands in for papermill: logs its thread setting, writes OUT
    fake.write_text(
        f'#!/bin/sh\necho "$5 threads=${{OMP_NUM_THREADS:-unset}}" >> {log}\ntouch "$6"\n'
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MAKEFLAGS")}
    subprocess.run(
        [
            "make",
            "distill",
            "PROFILE=smoke",
            f"PY={fake}",
            f"RUNS={tmp_path}/runs",
            f"SYNTH_ROOT={tmp_path}/data",
            "JOBS=2",
            "THREADS=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = sorted(log.read_text().splitlines())
    assert lines == [
        "notebooks/01_teacher.ipynb threads=unset",
        "notebooks/02_distill.ipynb threads=1",
        "notebooks/02_distill.ipynb threads=1",
    ]


def test_stage_seeds_repeat_only_that_stage(tmp_path):
    text = _dry_run(
        "all",
        "PROFILE=smoke",
        "PRUNE_SEEDS=0 1",
        f"RUNS={tmp_path}/runs",
        f"SYNTH_ROOT={tmp_path}/data",
    )
    assert "prune_oneshot/p0.5-swa-s1/" in text and "prune_iterative/naive-s1/" in text
    assert "distill/x2-kd-s0/" in text and "distill/x2-kd-s1/" not in text
