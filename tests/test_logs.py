"""Quiet, named logs: one line per epoch in an executed notebook, every terminal line of a
notebook run named after its run, no error where nothing failed, and the error where a
cell failed."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attrlib.config import EvalConfig, get_profile
from attrlib.nbrun import _RunLines, _worth_showing, run_name
from attrlib.progress import interactive, progress_bar
from attrlib.stages import evaluate_checkpoint
from tests.conftest import write_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _nbrun(notebook: Path, output: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m attrlib.nbrun` as make runs it: its terminal is stdout and stderr together."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "attrlib.nbrun", str(notebook), str(output), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def _stream_lines(cell) -> list[str]:
    """The lines a cell's stream outputs hold, each carriage-return redraw counted as one."""
    text = "".join(o.text for o in cell.outputs if o.output_type == "stream")
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


# ----------------------------------------------------------------------------- progress bars


def test_a_bar_is_drawn_on_a_terminal_only(monkeypatch):
    for stream, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert interactive() is drawn
        for _ in progress_bar(range(3), desc="steps", mininterval=0):
            pass
        assert ("steps" in stream.getvalue()) is drawn
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert list(progress_bar(range(3), desc="off", enabled=False)) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""
    closed = io.StringIO()
    closed.close()
    assert not interactive(closed) and not interactive(object())


# ----------------------------------------------------------------------------- the run's log


def test_run_names_come_from_the_runs_folder(tmp_path):
    runs = tmp_path / "runs" / "default"
    (runs / "distill" / "x2-kd-s0").mkdir(parents=True)
    (runs / "profile.yaml").write_text("")  # what make writes into every runs/<name>/
    output = runs / "distill" / "x2-kd-s0" / ".partial-02_distill.ipynb"
    assert run_name(output) == "distill/x2-kd-s0"
    assert run_name(runs / "teacher" / "01_teacher.ipynb") == "teacher"
    assert run_name(output, "0") == "distill/x2-kd-s0"
    assert run_name(output, "2") == "distill/x2-kd-s0 rank 2"
    assert run_name(tmp_path / "a" / "b" / "c" / "nb.ipynb") == "b/c"  # no runs folder


def test_every_logged_line_is_named_and_blank_records_are_dropped():
    lines = _RunLines("distill/x2-kd-s0")

    def shown(message: str) -> str | None:
        record = logging.LogRecord("papermill", logging.INFO, __file__, 1, message, None, None)
        return lines.format(record) if _worth_showing(record) else None

    assert shown("epoch 1/3  loss 0.5\n") == "[distill/x2-kd-s0] epoch 1/3  loss 0.5"
    assert shown("a\nb\n\nc\n") == "\n".join(
        [
            "[distill/x2-kd-s0] a",
            "[distill/x2-kd-s0] b",
            "[distill/x2-kd-s0]",
            "[distill/x2-kd-s0] c",
        ]
    )
    assert shown("\rbar 10%\rbar 20%\n") == "[distill/x2-kd-s0] bar 20%"
    assert shown("\n\n") is None
    # papermill's per-cell bookkeeping and a displayed figure's text form say nothing
    assert shown("Executing Cell 3---------------------------------------") is None
    assert shown("Ending Cell 12-----------------------------------------") is None
    assert shown("<Figure size 1000x350 with 2 Axes>") is None
    assert shown("Executing Cell 3 of a user's own message") is not None


@pytest.fixture(scope="module")
def teacher_run(synth_root, tmp_path_factory):
    """The teacher notebook executed by the runner on the smoke profile, as make runs it:
    (its terminal output, the executed notebook, its out_dir)."""
    runs = tmp_path_factory.mktemp("logs") / "runs" / "smoke"
    runs.mkdir(parents=True)
    (runs / "profile.yaml").write_text("")
    out_dir = runs / "teacher"
    executed = out_dir / "01_teacher.ipynb"
    done = _nbrun(
        NOTEBOOKS / "01_teacher.ipynb",
        executed,
        *("-p", "profile", "smoke", "-p", "data_root", str(synth_root)),
        *("-p", "out_dir", str(out_dir), "-p", "device", "cpu"),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout, nbformat.read(executed, as_version=4), out_dir


def test_training_leaves_one_line_per_epoch_in_thewrite_notebook(teacher_run):
    """No progress bar redraws in the executed notebook: the epochs' lines and the
    notebook's own summary line."""
    _, nb, _ = teacher_run
    training = [c for c in nb.cells if c.cell_type == "code" and "train_teacher(" in c.source]
    assert len(training) == 1
    lines = _stream_lines(training[0])
    epochs = get_profile("smoke").teacher.epochs
    assert [line for line in lines if line.startswith("epoch ")] == [
        line for line in lines if re.match(rf"epoch \d+/{epochs}  loss ", line)
    ]
    assert sum(line.startswith("epoch ") for line in lines) == epochs
    assert len(lines) <= epochs + 2, lines
    every = [line for c in nb.cells if c.cell_type == "code" for line in _stream_lines(c)]
    assert not any("it/s]" in line or "%|" in line for line in every), every


def test_the_terminal_names_the_run_and_shows_no_error(teacher_run):
    terminal, _, _ = teacher_run
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert lines, "the runner printed nothing"
    unnamed = [line for line in lines if not line.startswith("[teacher] ")]
    assert not unnamed, unnamed  # also the kernel's start-up warnings, which bypass the log
    assert "[teacher] epoch 1/" in terminal
    assert not [line for line in lines if "ERROR" in line or "KeyboardInterrupt" in line]
    assert "without encryption" not in terminal
    assert "Executing Cell" not in terminal and "Ending Cell" not in terminal
    # what a cell displays (the config's repr, tables, figures) stays in the notebook
    assert "TeacherConfig(" not in terminal


def test_the_evaluation_names_each_model(teacher_run, synth_root, tmp_path, capsys):
    _, _, out_dir = teacher_run
    checkpoint = str(out_dir / "best.pt")
    cfg = EvalConfig(
        profile="smoke",
        data_root=str(synth_root),
        device="cpu",
        checkpoint=checkpoint,
        out_dir=str(tmp_path),
        methods=("gradcam",),
        batch_size=8,
    )
    evaluate_checkpoint(cfg)
    evaluated = capsys.readouterr().out.splitlines()
    assert len(evaluated) == 1 and evaluated[0].startswith(f"{checkpoint}: class mAP "), evaluated
    evaluate_checkpoint(cfg)  # the stored result, named too
    assert capsys.readouterr().out.startswith(f"{checkpoint}: evaluated before")


def test_a_clean_shutdown_does_not_interrupt_the_kernel(tmp_path):
    """The cause of `[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.` after a run
    that succeeded: a SIGINT sent while the kernel shuts down. Here the kernel keeps a SIGINT
    handler of its own (ipykernel restores `saved_sigint_handler` after each request) that
    records any interrupt; the error itself appears only when the SIGINT meets the kernel
    inside a request, which is a race."""
    marker = tmp_path / "interrupted"
    nb = write_notebook(
        tmp_path / "idle.ipynb",
        "get_ipython().kernel.saved_sigint_handler = (\n"
        "    lambda signum, frame: open(out, 'w').write('SIGINT')\n"
        ")",
    )
    done = _nbrun(nb, tmp_path / "run" / "idle.ipynb", "-p", "out", str(marker))
    assert done.returncode == 0, done.stdout
    assert not marker.exists(), "the kernel was interrupted at shutdown"
    assert "ERROR" not in done.stdout


def test_a_failing_cell_still_shows_its_error(tmp_path):
    nb = write_notebook(
        tmp_path / "fails.ipynb", "print('before')", "raise ValueError('no such run')"
    )
    done = _nbrun(nb, tmp_path / "runs" / "bad" / "fails.ipynb")
    assert done.returncode != 0
    lines = done.stdout.splitlines()
    assert "[runs/bad] before" in lines
    assert "[runs/bad] ValueError: no such run" in lines, done.stdout
    assert any(line.startswith("[runs/bad] ----> 1 raise ValueError") for line in lines)
