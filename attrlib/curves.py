"""Live training curves: a run's per-epoch record as TensorBoard scalars in `<out_dir>/tb/`.

`EpochCurves(out_dir)` is an `on_epoch_end` callback of `attrlib.engine.fit`: each epoch's
record (`train_loss`, `train_kd`, `val_map_class`, `lr`, ...) becomes scalars tagged
`train/loss`, `train/kd`, `val/map_class`, `lr`, at the record's 1-based epoch as the step,
flushed at once so `make tensorboard` shows a running stage as it trains.

A resumed run reopens the folder with `purge_step` at its first new epoch: TensorBoard then
hides whatever an interrupted process logged from that epoch on, so every step keeps exactly
one value (the one `metrics.json` holds). `fit` calls it before writing the epoch's checkpoint,
so a kill between the two leaves the epoch logged and redone, never missing. The writer opens
on the first epoch, so a finished run reloaded without training writes no file; in a
distributed run only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from attrlib.distributed import is_main

# record keys "<group>_<name>" shown as "<group>/<name>"; other keys keep their name ("lr")
GROUPS = ("train", "val")
# not a curve: the step itself
SKIPPED = ("epoch",)


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a record key: "train_kd" -> "train/kd", "lr" -> "lr"."""
    group, _, name = key.partition("_")
    return f"{group}/{name}" if group in GROUPS and name else key


class EpochCurves:
    """`fit(..., on_epoch_end=EpochCurves(out_dir))`: every epoch's numbers into `out_dir/tb/`.

    Call `close()` when the run ends (or use it as a context manager).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.log_dir = Path(out_dir) / "tb"
        self._writer: SummaryWriter | None = None

    def __call__(self, epoch: int, record: dict) -> None:
        """Log one epoch's `record` at step `record["epoch"]` (`epoch` is fit's 0-based one)."""
        if not is_main():
            return
        step = int(record["epoch"])
        if self._writer is None:
            # the first epoch this process trains: hide what an earlier process logged from here
            self._writer = SummaryWriter(str(self.log_dir), purge_step=step)
        for key, value in record.items():
            if key not in SKIPPED and isinstance(value, int | float):
                self._writer.add_scalar(scalar_tag(key), value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> EpochCurves:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
