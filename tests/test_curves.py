"""TensorBoard curves of a run: read back with TensorBoard's own event reader."""

from __future__ import annotations

import json
import time

import pytest
import torch.distributed as dist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_engine import _run

import attrlib.engine as engine
import attrlib.stages as stages
from attrlib.config import TeacherConfig
from attrlib.curves import EpochCurves, scalar_tag


def _curves(out_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the event files of `out_dir/tb`."""
    events = EventAccumulator(str(out_dir / "tb"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _expected(out_dir) -> dict[str, list[tuple[int, float]]]:
    """The same curves from the run's `metrics.json` history."""
    history = json.loads((out_dir / "metrics.json").read_text())["history"]
    return {
        scalar_tag(key): [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in history]
        for key in history[0]
        if key != "epoch"
    }


def test_tags_group_train_and_val_terms():
    assert [scalar_tag(k) for k in ("train_loss", "train_dead_maps", "val_map_class", "lr")] == [
        "train/loss",
        "train/dead_maps",
        "val/map_class",
        "lr",
    ]


def test_event_files_hold_every_epoch_of_the_history(tmp_path, one_thread):
    with EpochCurves(tmp_path) as curves:
        _run(tmp_path, on_epoch_end=curves)
    curves = _curves(tmp_path)
    assert {"train/loss", "train/ce", "val/loss", "val/map_class", "lr"} <= set(curves)
    assert curves == _expected(tmp_path)
    assert [step for step, _ in curves["val/map_class"]] == [1, 2, 3]


def _interrupted(out_dir) -> None:
    """A run stopped once its second epoch is logged, before that epoch's checkpoint."""
    curves = EpochCurves(out_dir)

    def stop(epoch, record):
        curves(epoch, record)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(out_dir, on_epoch_end=stop)
    curves.close()
    _next_second()


def _next_second() -> None:
    # TensorBoard reads a folder's event files in name order: time in whole seconds, host,
    # pid, then a per-process counter that sorts as text (10 < 9). A real resume is a new
    # process seconds later; a rerun in this process within the same second could sort first.
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_resumed_run_has_one_value_per_epoch(tmp_path, one_thread):
    _interrupted(tmp_path)
    assert [s for s, _ in _curves(tmp_path)["train/loss"]] == [1, 2]
    assert engine.load_checkpoint(tmp_path / "last.pt")["epoch"] == 0  # epoch 1's
    with EpochCurves(tmp_path) as curves:
        _run(tmp_path, on_epoch_end=curves)
    assert _curves(tmp_path) == _expected(tmp_path)


@pytest.mark.parametrize("written", [True, False], ids=["after-last.pt", "during-last.pt"])
def test_kill_at_the_checkpoint_loses_no_epoch(tmp_path, one_thread, monkeypatch, written):
    """Killed while or just after writing epoch 2's files: its curves are already logged."""
    save = engine._save_epoch

    def killed(out_dir, model, classes, fields, *rest):
        if fields["epoch"] != 1 or written:
            save(out_dir, model, classes, fields, *rest)
        if fields["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save_epoch", killed)
    with EpochCurves(tmp_path) as curves, pytest.raises(KeyboardInterrupt):
        _run(tmp_path, on_epoch_end=curves)
    monkeypatch.undo()  # the resumed run saves as usual
    assert [s for s, _ in _curves(tmp_path)["train/loss"]] == [1, 2]
    _next_second()
    with EpochCurves(tmp_path) as curves:
        _run(tmp_path, on_epoch_end=curves)
    assert _curves(tmp_path) == _expected(tmp_path)


def test_run_that_starts_over_replaces_its_old_curves(tmp_path, one_thread):
    _interrupted(tmp_path)
    (tmp_path / "last.pt").unlink()  # as an unreadable last.pt: training restarts at epoch 1
    with EpochCurves(tmp_path) as curves:
        _run(tmp_path, on_epoch_end=curves)
    # one value per step, the second run's: its epoch times differ from the first run's
    assert _curves(tmp_path) == _expected(tmp_path)


def test_finished_run_reloaded_writes_no_events(tmp_path, one_thread):
    _run(tmp_path)
    with EpochCurves(tmp_path) as curves:
        _run(tmp_path, on_epoch_end=curves)
    assert not (tmp_path / "tb").exists()


def test_other_ranks_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    with EpochCurves(tmp_path) as curves:
        curves(0, {"epoch": 1, "lr": 0.25, "train_loss": 0.5})
    assert not (tmp_path / "tb").exists()
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    with EpochCurves(tmp_path) as curves:
        curves(0, {"epoch": 1, "lr": 0.25, "train_loss": 0.5})
    assert _curves(tmp_path) == {"lr": [(1, 0.25)], "train/loss": [(1, 0.5)]}


def test_a_stage_writes_curves_beside_its_checkpoints(synth_root, tmp_path, one_thread):
    cfg = TeacherConfig(
        profile="smoke", data_root=str(synth_root), out_dir=str(tmp_path), device="cpu"
    )
    stages.train_teacher(cfg)
    assert _curves(tmp_path) == _expected(tmp_path)
    files = sorted((tmp_path / "tb").iterdir())
    stages.train_teacher(cfg)  # finished: reloaded, no new event file
    assert sorted((tmp_path / "tb").iterdir()) == files
