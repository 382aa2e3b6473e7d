"""`make all` killed with SIGKILL, three times, then rerun: the same tables as an uninterrupted
run, and no trace of the kills (slow; run in CI)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, smoke_make


def _any(runs: Path, pattern: str) -> bool:
    return next(runs.glob(pattern), None) is not None


# (where, true once the run is inside that stage); the predicates see only finished writes
KILL_POINTS: list[tuple[str, Callable[[Path], bool]]] = [
    (
        "teacher training",
        lambda runs: (
            (runs / "teacher-s0" / "teacher" / "last.pt").exists()
            and not (runs / "teacher-s0" / "teacher" / "01_teacher.ipynb").exists()
        ),
    ),
    (
        "compression grid",
        lambda runs: _any(runs, "*/distill/*/last.pt") or _any(runs, "*/prune_*/**/last.pt"),
    ),
    ("evaluation", lambda runs: _any(runs, "**/eval.json")),
]


def _kill_when(command: list[str], runs: Path, ready: Callable[[Path], bool], where: str):
    """Start `command` in a process group of its own; SIGKILL the whole group once `ready`."""
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        while not ready(runs):
            assert proc.poll() is None, f"make ended (rc {proc.returncode}) before {where}"
            assert time.monotonic() < deadline, f"{where} never reached"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_three_times_ends_like_an_uninterrupted_run(smoke_study, tmp_path):
    runs = tmp_path / "runs"
    # the data set is the uninterrupted run's (regenerating it would make the same bytes)
    command = smoke_make(runs, smoke_study.data)
    for where, ready in KILL_POINTS:
        _kill_when(command, runs, ready, where)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    reference = smoke_study.runs / "paper" / "all_runs.csv"
    assert (runs / "paper" / "all_runs.csv").read_bytes() == reference.read_bytes()
    litter = [p for p in runs.rglob(".*") if p.name.startswith(".partial-") or p.suffix == ".tmp"]
    assert not litter, litter
