"""Stages wired from their configs: seeded, resumable, and strict about their inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmod import load_benchmark

import attrlib.stages as stages
from attrlib.config import DistillConfig, PruneIterativeConfig, TeacherConfig
from attrlib.data import load_classes
from attrlib.engine import load_checkpoint, make_checkpoint
from attrlib.io import save_torch_atomic

bench = load_benchmark("evaluate_workers.py")


def _history(out_dir):
    history = json.loads((out_dir / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def teacher(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    stages.train_teacher(
        TeacherConfig(profile="smoke", data_root=str(synth_root), out_dir=str(out), device="cpu")
    )
    return out


def test_teacher_same_seed_same_numbers(synth_root, teacher, tmp_path):
    stages.train_teacher(
        TeacherConfig(
            profile="smoke", data_root=str(synth_root), out_dir=str(tmp_path), device="cpu"
        )
    )
    assert _history(tmp_path) == _history(teacher)
    a, b = (load_checkpoint(d / "best.pt")["model_state"] for d in (teacher, tmp_path))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_student_rejects_a_teacher_with_another_class_list(synth_root, teacher, tmp_path):
    ckpt = load_checkpoint(teacher / "best.pt")
    model, _ = stages.load_model(teacher / "best.pt")
    other = list(ckpt["classes"])
    other[0] = "zebra"
    save_torch_atomic(tmp_path / "other.pt", make_checkpoint(model, tuple(other)))
    cfg = DistillConfig(
        profile="smoke",
        data_root=str(synth_root),
        teacher=str(tmp_path / "other.pt"),
        out_dir=str(tmp_path / "s"),
        device="cpu",
    )
    with pytest.raises(ValueError, match=r"other\.pt does not fit: classes \['zebra'"):
        stages.train_student(cfg)


def test_iterative_schedule_resumes_at_the_right_iteration(
    synth_root, teacher, tmp_path, monkeypatch
):
    def config(out):
        return PruneIterativeConfig(
            profile="smoke",
            data_root=str(synth_root),
            model=str(teacher / "best.pt"),
            out_dir=str(out),
            device="cpu",
            matching="swa",
            iterations=3,
        )

    _, full = stages.prune_iterative(config(tmp_path / "full"), progress=False)

    real_fit, calls = stages.fit, []

    def interrupted_fit(*args, **kwargs):
        calls.append(kwargs["out_dir"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped while starting the second iteration
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(stages, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        stages.prune_iterative(config(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(stages, "fit", real_fit)
    assert not (tmp_path / "cut" / "iter_02").exists()
    _, resumed = stages.prune_iterative(config(tmp_path / "cut"), progress=False)
    assert resumed == full
    for k in (1, 2, 3):
        assert _history(tmp_path / "cut" / f"iter_{k:02d}") == _history(
            tmp_path / "full" / f"iter_{k:02d}"
        )
    a = load_checkpoint(tmp_path / "full" / "final.pt")["model_state"]
    b = load_checkpoint(tmp_path / "cut" / "final.pt")["model_state"]
    assert "features.0.weight_mask" not in a  # final.pt holds plain weights with zeros
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_loader_workers_leave_a_core_to_training(monkeypatch):
    from attrlib import stages

    monkeypatch.setattr(stages.os, "cpu_count", lambda: 2)
    assert stages.loader_workers(4) == 1 and stages.loader_workers(0) == 0
    monkeypatch.setattr(stages.os, "cpu_count", lambda: 1)
    assert stages.loader_workers(4) == 0
    monkeypatch.setattr(stages.os, "cpu_count", lambda: 16)
    assert stages.loader_workers(4) == 4


def test_mask_samples_take_what_exists(synth_root, tiny_voc_tree):
    classes = load_classes(synth_root)
    split, (images, masks, labels) = stages.mask_samples(str(synth_root), classes, count=100)
    listed = (synth_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    assert split == "train" and images.shape[0] == masks.shape[0] == labels.shape[0] == len(listed)
    root = tiny_voc_tree
    seg = root / "ImageSets" / "Segmentation"
    (seg / "train.txt").unlink()
    split, (images, _, _) = stages.mask_samples(str(root), classes, count=3)
    assert split == "val" and images.shape[0] == 3
    (seg / "val.txt").write_text("")
    assert stages.mask_samples(str(root), classes) is None


def test_stage_device_outside_torchrun_joins_no_group():
    import torch.distributed as dist

    assert stages.stage_device("cpu") == torch.device("cpu")
    assert not dist.is_initialized()


def test_models_scored_in_worker_processes_equal_the_one_process_loop(
    synth_root, teacher, tmp_path, capsys
):
    """Two models at a time, each in its own process with one thread: the same summaries
    in the configs' order (up to the rounding of a thread count), every model named once."""
    from attrlib.config import EvalConfig

    # the smoke teacher predicts few classes: one that predicts them all is scored on every pair
    model, _ = stages.load_model(teacher / "best.pt")
    with torch.no_grad():
        model.classifier[-1].bias += 10.0
    checkpoint = str(tmp_path / "all.pt")
    save_torch_atomic(
        checkpoint, make_checkpoint(model, load_checkpoint(teacher / "best.pt")["classes"])
    )

    def configs(mode):
        return [
            EvalConfig(
                profile="smoke",
                data_root=str(synth_root),
                device="cpu",
                checkpoint=checkpoint,
                teacher=checkpoint,
                out_dir=str(tmp_path / mode / str(i)),
                methods=methods,
                batch_size=8,
                faith_pairs=2,
                faith_steps=2,
            )
            for i, methods in enumerate([("gradcam",), ("ebp", "gradcam"), ("lrp",)])
        ]

    alone = stages.evaluate_checkpoints(configs("alone"))
    capsys.readouterr()
    pooled = stages.evaluate_checkpoints(configs("pooled"), workers=2)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3
    assert all(line.startswith(f"{checkpoint}: class mAP ") for line in printed), printed
    # every score equal up to the rounding of a thread count (the benchmark's comparison)
    assert all(gap < 1e-6 for gap in bench.compare(alone, pooled)["largest_difference"].values())
    for cfg, other in zip(configs("pooled"), pooled, strict=True):
        assert sorted(other["localization"]) == sorted(cfg.methods)  # in the configs' order
        stored = json.loads((Path(cfg.out_dir) / "eval.json").read_text())
        assert stored["localization"] == other["localization"]
        assert other["pairs_scored"] > 0
        assert "cosine_teacher" in other["localization"][cfg.methods[0]]  # the teacher's maps


def test_a_model_that_fails_in_a_worker_stops_the_evaluation_by_name(synth_root, teacher, tmp_path):
    from attrlib.config import EvalConfig

    cfgs = [
        EvalConfig(
            profile="smoke",
            data_root=str(synth_root),
            device="cpu",
            checkpoint=str(path),
            out_dir=str(tmp_path / str(i)),
            methods=("gradcam",),
            faith_pairs=0,
        )
        for i, path in enumerate([tmp_path / "missing" / "best.pt", teacher / "best.pt"])
    ]
    with pytest.raises(FileNotFoundError, match="missing/best.pt"):
        stages.evaluate_checkpoints(cfgs, workers=2)


def test_worker_processes_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(stages.distributed, "active", lambda: True)
    with pytest.raises(ValueError, match="workers=2"):
        stages.evaluate_checkpoints([object(), object()], workers=2)
