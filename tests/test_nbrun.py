"""The strict notebook runner: parameters checked first, and the kernel dies with the runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attrlib.nbrun import parse_value
from tests.conftest import write_notebook

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "attrlib.nbrun", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie runs nothing


def test_values_are_read_like_papermill():
    assert [parse_value(v) for v in ("True", "None", "3", "0.5", "x2", "")] == [
        True,
        None,
        3,
        0.5,
        "x2",
        "",
    ]


def test_cli_runs_with_p_and_y_and_refuses_a_misspelling(tmp_path):
    nb = write_notebook(tmp_path / "nb.ipynb", "open(out, 'w').write(repr(n))")
    target = tmp_path / "result.txt"
    proc = _run(str(nb), str(tmp_path / "ran.ipynb"), "-p", "out", str(target), "-y", "n: [1, 2]")
    assert proc.wait(120) == 0, proc.stdout.read()
    assert target.read_text() == "[1, 2]"

    proc = _run(str(nb), str(tmp_path / "typo.ipynb"), "-p", "nn", "3")
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2
    assert "unknown parameter nn; the notebook's parameters are: out, n" in output
    assert not (tmp_path / "typo.ipynb").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name
)
def test_killing_the_runner_kills_its_kernel_at_once(tmp_path, signum):
    """A signal to the runner alone: its kernel stops writing within a fraction of a second,
    and no KeyboardInterrupt of the kernel's reaches the log."""
    beat = tmp_path / "beat"
    nb = write_notebook(
        tmp_path / "loop.ipynb",
        "import os, time\n"
        "open(out + '.pid', 'w').write(str(os.getpid()))\n"
        "while True:\n"
        "    with open(out, 'a') as f:\n"
        "        f.write('.')\n"
        "    time.sleep(0.01)",
    )
    proc = _run(str(nb), str(tmp_path / "ran.ipynb"), "-p", "out", str(beat))
    try:
        deadline = time.monotonic() + 120
        while not (beat.exists() and beat.stat().st_size > 5):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the kernel never started"
            time.sleep(0.05)
        kernel = int(Path(f"{beat}.pid").read_text())
        assert kernel != proc.pid and _alive(kernel)
        os.kill(proc.pid, signum)
        assert proc.wait(10) != 0
        time.sleep(0.3)
        assert not _alive(kernel), "the kernel outlived its runner"
        size = beat.stat().st_size
        time.sleep(0.3)
        assert beat.stat().st_size == size, "something still writes"
        assert "KeyboardInterrupt" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_kernel_that_dies_while_starting_is_started_again(tmp_path, monkeypatch):
    import papermill

    from attrlib import nbrun

    nb = write_notebook(tmp_path / "nb.ipynb", "x = 1")
    calls = []

    def dies_twice(*args, **kwargs):
        calls.append(kwargs["start_timeout"])
        if len(calls) <= 2:
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(papermill, "execute_notebook", dies_twice)
    monkeypatch.setattr(nbrun, "KERNEL_STARTS", 3)
    nbrun.execute(nb, tmp_path / "out.ipynb")
    assert calls == [nbrun.KERNEL_START_TIMEOUT] * 3
    calls.clear()
    monkeypatch.setattr(nbrun, "KERNEL_STARTS", 2)  # gives up after its last start
    with pytest.raises(RuntimeError, match="kernel_info"):
        nbrun.execute(nb, tmp_path / "out.ipynb")
    assert len(calls) == 2

    def failing_cell(*args, **kwargs):  # a cell's error is the notebook's, never retried
        calls.append(1)
        raise RuntimeError("boom")

    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook", failing_cell)
    with pytest.raises(RuntimeError, match="boom"):
        nbrun.execute(nb, tmp_path / "out.ipynb")
    assert calls == [1]
