"""scripts/claim.sh: one writer per target, whoever else asks for it at the same time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, smoke_make

CLAIM = str(ROOT / "scripts" / "claim.sh")


def _claim(*args: str, cwd: Path, wait: bool = True):
    proc = subprocess.Popen(
        [CLAIM, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if wait:
        out, err = proc.communicate(timeout=60)
        return proc.returncode, err
    return proc


def _until(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_second_claim_waits_and_does_not_make_the_target_again(tmp_path):
    (tmp_path / "pre").write_text("")
    log = tmp_path / "ran.log"
    slow = f"touch started; sleep 1; echo a >> {log}; echo a > out"
    first = _claim(
        "-t", "timings.log make a", "out", "pre", "--", "sh", "-c", slow, cwd=tmp_path, wait=False
    )
    _until(tmp_path / "started")
    rc, err = _claim(
        "-t", "timings.log make b", "out", "pre", "--", "sh", "-c", f"echo b >> {log}", cwd=tmp_path
    )
    assert first.wait(timeout=60) == 0 and rc == 0
    assert "waiting for it" in err and "not made again" in err
    assert log.read_text() == "a\n"  # the command ran once
    # only the process that made it is timed
    events = [line.split() for line in (tmp_path / "timings.log").read_text().splitlines()]
    assert [(e[0], e[1], e[3], e[4]) for e in events] == [
        ("start", "make", "a", "out"),
        ("end", "make", "a", "out"),
    ]


def test_a_target_older_than_a_prerequisite_is_made_again(tmp_path):
    (tmp_path / "out").write_text("old")
    os.utime(tmp_path / "out", (1, 1))
    (tmp_path / "pre").write_text("")
    rc, _ = _claim("out", "pre", "--", "sh", "-c", "echo new > out", cwd=tmp_path)
    assert rc == 0 and (tmp_path / "out").read_text() == "new\n"
    # newer than every prerequisite: made meanwhile by someone else, not again
    rc, err = _claim("out", "pre", "--", "sh", "-c", "echo newer > out", cwd=tmp_path)
    assert rc == 0 and (tmp_path / "out").read_text() == "new\n" and "not made again" in err


def test_the_partial_file_becomes_the_target_only_on_success(tmp_path):
    rc, _ = _claim("-m", "part", "out", "--", "sh", "-c", "echo x > part; exit 3", cwd=tmp_path)
    assert rc == 3 and not (tmp_path / "out").exists()
    rc, _ = _claim("-m", "part", "out", "--", "sh", "-c", "echo y > part", cwd=tmp_path)
    assert rc == 0 and (tmp_path / "out").read_text() == "y\n" and not (tmp_path / "part").exists()


def test_a_killed_holder_frees_the_lock(tmp_path):
    holder = subprocess.Popen(
        [CLAIM, "out", "--", "sh", "-c", "touch started; sleep 60"],
        cwd=tmp_path,
        start_new_session=True,
    )
    _until(tmp_path / "started")
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    rc, _ = _claim("out", "--", "sh", "-c", "echo made > out", cwd=tmp_path)
    assert rc == 0 and (tmp_path / "out").read_text() == "made\n"


def test_a_lock_outside_the_targets_folder_leaves_it_untouched(tmp_path):
    rc, _ = _claim("-l", "tree.lock", "tree/out", "--", "true", cwd=tmp_path)
    assert rc == 0 and (tmp_path / "tree.lock").exists() and not (tmp_path / "tree").exists()


def test_usage_errors_name_what_is_missing(tmp_path):
    rc, err = _claim("out", "pre", cwd=tmp_path)
    assert rc == 2 and "usage" in err
    rc, err = _claim("out", "pre", "cmd", cwd=tmp_path)
    assert rc == 2 and "no command after --" in err


@pytest.mark.slow
def test_two_makes_on_one_runs_folder_run_each_notebook_once(smoke_study, tmp_path):
    """A resubmitted job while the first still runs: both finish, every notebook and the
    teacher's targets are made once, and the table is the single run's."""
    runs = tmp_path / "runs"
    command = smoke_make(runs, smoke_study.data)
    procs = [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=1800) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert any("not made again" in err for _, err in outputs), "the two makes never met"

    # the timings log holds one start per made target: each was made by one process only
    starts = [
        line.split()[4]
        for line in (runs / ".timings.log").read_text().splitlines()
        if line.startswith("start ")
    ]
    made = [s for s in starts if s.endswith((".ipynb", "targets.pt"))]
    assert len(made) == len(set(made)), pd.Series(made).value_counts().head()

    def executed(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("[!.]*.ipynb"))

    notebooks, single = executed(runs), executed(smoke_study.runs)
    assert notebooks == single and len(made) == len(single) + 1  # + the targets
    reference = smoke_study.runs / "paper" / "all_runs.csv"
    assert (runs / "paper" / "all_runs.csv").read_bytes() == reference.read_bytes()
