"""One stage run for tests/test_distributed.py, under torchrun or as one process.

    torchrun --standalone --nproc_per_node=2 tests/ddp_run.py SPEC.json
    python tests/ddp_run.py SPEC.json

SPEC (JSON): "stage" (teacher, distill or evaluate), "config" (the stage config's fields),
and optionally "micro_batches" (one process computing each step as that many ranks),
"sync_bn" (the profile's batch norms synchronised across ranks, CUDA only),
"predict_batch_size" (batches of validation and evaluation prediction, so that a tiny
validation set still spreads over the ranks),
"stop_after" (every rank ends at once, as if killed, in the epoch after that one is saved)
and "audit" (a folder: each rank lists in audit/rank<r>.json every file it created, wrote,
renamed or removed below the config's out_dir).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import torch

from attrlib import config, distributed, engine, evaluate, predict, stages
from attrlib.config import DistillConfig, EvalConfig, TeacherConfig

CONFIGS = {"teacher": TeacherConfig, "distill": DistillConfig, "evaluate": EvalConfig}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree")


def watch_writes(root: Path, touched: list[str]) -> None:
    """Record in `touched` every path below `root` this process writes or changes."""

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if mode else bool(flags & WRITE_FLAGS)
            paths = [path] if writes else []
        elif event == "os.rename":  # os.rename and os.replace: both ends
            paths = list(args[:2])
        elif event in CHANGES:
            paths = [args[0]]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                resolved = Path(os.fsdecode(path)).resolve()
                if resolved.is_relative_to(root):
                    touched.append(str(resolved.relative_to(root)))

    sys.addaudithook(hook)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)  # two ranks on two cores
    if spec.get("sync_bn"):
        name = spec["config"]["profile"]
        config.PROFILES[name] = dataclasses.replace(config.PROFILES[name], sync_bn=True)
    cfg = CONFIGS[spec["stage"]](**spec["config"])
    touched: list[str] = []
    if spec.get("audit"):
        watch_writes(Path(spec["config"]["out_dir"]).resolve(), touched)
    if spec.get("predict_batch_size"):
        sized = functools.partial(predict.predict, batch_size=spec["predict_batch_size"])
        engine.predict = evaluate.predict = sized
    if spec.get("micro_batches", 1) > 1:
        stages.fit = functools.partial(engine.fit, micro_batches=spec["micro_batches"])
    if spec.get("stop_after"):
        curves = stages.EpochCurves.__call__

        def stop(self, epoch: int, record: dict) -> None:
            curves(self, epoch, record)
            # the curves of the next epoch are logged before its checkpoint: a kill there
            # leaves epoch stop_after as the last saved one
            if epoch == spec["stop_after"]:
                os._exit(3)  # no cleanup of any kind, as a kill

        stages.EpochCurves.__call__ = stop
    if spec["stage"] == "teacher":
        stages.train_teacher(cfg)
    elif spec["stage"] == "distill":
        stages.train_student(cfg)
    else:
        stages.evaluate_checkpoint(cfg, progress=False)
    if spec.get("audit"):
        rank = distributed.ranks().rank
        audit = Path(spec["audit"])
        audit.mkdir(parents=True, exist_ok=True)
        (audit / f"rank{rank}.json").write_text(json.dumps(touched))


if __name__ == "__main__":
    main(sys.argv[1])
