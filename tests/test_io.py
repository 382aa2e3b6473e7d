"""Atomic writes: byte-identical checkpoints, stale temp files swept."""

from __future__ import annotations

import torch

from attrlib.io import save_torch_atomic, write_json_atomic


def test_identical_contents_give_identical_checkpoint_bytes(tmp_path):
    state = {"model_state": {"w": torch.arange(12.0).view(3, 4)}, "classes": ["a", "b"]}
    a = save_torch_atomic(tmp_path / "one" / "best.pt", state)
    b = save_torch_atomic(tmp_path / "two" / "last.pt", state)
    assert a.read_bytes() == b.read_bytes()
    assert torch.equal(
        torch.load(a, weights_only=True)["model_state"]["w"], state["model_state"]["w"]
    )


def test_temp_files_left_by_a_killed_writer_are_swept(tmp_path):
    stale = [tmp_path / ".metrics.json.abc123.tmp", tmp_path / ".metrics.json.zz.tmp"]
    other = tmp_path / ".best.pt.abc123.tmp"  # another target's: not this writer's to sweep
    for path in [*stale, other]:
        path.write_text("half written")
    write_json_atomic(tmp_path / "metrics.json", {"finished": True})
    assert not any(p.exists() for p in stale)
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.abc123.tmp", "metrics.json"]


def test_locked_lets_one_process_in_at_a_time(tmp_path):
    import subprocess
    import sys

    from attrlib.io import locked

    target, done = tmp_path / "runs" / "profile.yaml", tmp_path / "holder-done"
    holder = (
        "import time; from attrlib.io import locked\n"
        f"with locked({str(target)!r}):\n"
        "    print('in', flush=True); time.sleep(0.5)\n"
        f"    open({str(done)!r}, 'w').close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "in\n"
    with locked(target):
        assert done.exists()  # in only after the holder had finished and let go
    proc.wait()
    assert (tmp_path / "runs" / ".profile.yaml.lock").is_file()
