"""The teacher's outputs for every training view, computed once and shared by every run.

In distillation and in matched pruning fine-tunes the reference network (the teacher) is
frozen and in eval mode, so its logits and matching maps for a view depend only on the view.
Views are drawn from (epoch, image index) (`attrlib.views`), and stochastic SWA's channel
drops too, so one pass of the teacher over each view epoch serves every student, method and
seed: the runs then skip the teacher's forward, which by MAC count is most of a small
student's step. One function serves both the online objective and the
store use (`attrlib.distill.teacher_outputs`), so the cached values are the online ones (equal up to the last bits of batched
convolutions, which may differ with batch composition).

Store layout (`torch.save`, tensors and plain values only): logits (E, N, K) and one map
tensor (E, N, h, w) per matching key ("ewa", "swa", "swa-drop0.3", ...), plus `meta` that
says what they were made from (teacher file hash, view spec, image ids, matching layer).

    python -m attrlib.stages targets --teacher runs/default/teacher-s0/teacher/best.pt --profile default \
        --data-root data/synthvoc-default/VOCdevkit/VOC2012 --out runs/default/teacher-s0/teacher/targets.pt
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from attrlib.distill import teacher_outputs
from attrlib.io import as_stored, save_torch_atomic
from attrlib.progress import progress_bar
from attrlib.study import COMPRESSION, NO_MATCHING
from attrlib.views import TrainViews, ViewKeys

STORE_VERSION = 1


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TeacherTargets:
    """Cached teacher logits and maps per (view epoch, training image)."""

    def __init__(self, logits: torch.Tensor, maps: dict[str, torch.Tensor], meta: dict) -> None:
        self.logits, self.maps, self.meta = logits, maps, meta  # (E, N, K), {key: (E, N, h, w)}
        self.source = ""

    @property
    def epochs(self) -> int:
        return self.logits.shape[0]

    def lookup(
        self, views: ViewKeys, key: str | None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, K) and the `key` maps (B, h, w) (None for key None) of a batch's views."""
        if not 0 <= views.epoch < self.epochs:
            raise IndexError(
                f"{self.source or 'teacher targets'} cover view epochs 0..{self.epochs - 1}, a "
                f"run asked for epoch {views.epoch}; rebuild them with more epochs"
            )
        rows = views.indices.cpu()
        logits = self.logits[views.epoch, rows].to(device)
        maps = None if key is None else self.maps[key][views.epoch, rows].to(device)
        return logits, maps

    def check(
        self,
        *,
        teacher: str | Path,
        dataset: TrainViews,
        layer: str,
        keys: Sequence[str],
        epochs: int,
    ) -> None:
        """ValueError naming every way this store does not fit a run (so it is never misused)."""
        problems = []
        if self.meta.get("teacher_sha256") != file_sha256(teacher):
            problems.append(f"made from another teacher than {teacher}")
        if self.meta.get("view_spec") != as_stored(dataset.spec.to_dict()):
            problems.append(f"view spec {self.meta.get('view_spec')} vs {dataset.spec.to_dict()}")
        if self.meta.get("ids") != list(dataset.ids):
            problems.append("made for another list of training images")
        if self.meta.get("layer") != layer:
            problems.append(f"matching layer {self.meta.get('layer')!r} vs {layer!r}")
        missing = [k for k in keys if k not in self.maps]
        if missing:
            problems.append(f"no maps {missing} (it has {sorted(self.maps)})")
        if epochs > self.epochs:
            problems.append(f"{self.epochs} view epochs, the run needs {epochs}")
        if problems:
            raise ValueError(
                f"{self.source or 'teacher targets'} do not fit this run: "
                + "; ".join(problems)
                + " (rebuild them with `python -m attrlib.stages targets`, or pass teacher_targets='')"
            )

    def save(self, path: str | Path) -> Path:
        blob = {
            "version": STORE_VERSION,
            "logits": self.logits,
            "maps": self.maps,
            "meta": self.meta,
        }
        return save_torch_atomic(path, blob)

    @classmethod
    def load(cls, path: str | Path) -> TeacherTargets:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"teacher targets {path} not found; build them with `python -m attrlib.stages targets`"
            )
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("version") != STORE_VERSION:
            raise ValueError(f"{path}: not a teacher-targets file of version {STORE_VERSION}")
        store = cls(blob["logits"], blob["maps"], blob["meta"])
        store.source = str(path)
        return store


def build_targets(
    teacher: nn.Module,
    dataset: TrainViews,
    epochs: int,
    kinds: Sequence[tuple[str, float]],
    layer: str,
    *,
    teacher_path: str | Path,
    batch_size: int = 64,  # measured: batch 128 is ~1.5x slower per image on CPU
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TeacherTargets:
    """Run the frozen teacher over view epochs 0..epochs-1 of `dataset`, every image once each."""
    device = torch.device(device)
    teacher = teacher.to(device)
    n = len(dataset)
    logits = None
    maps: dict[str, torch.Tensor] = {}
    bar = progress_bar(total=epochs * n, desc="teacher targets", unit="view", enabled=progress)
    for epoch in range(epochs):
        loader = DataLoader(dataset, batch_size, shuffle=False, collate_fn=dataset.collate(epoch))
        for images, _, indices in loader:
            views = ViewKeys(epoch, indices)
            out_logits, out_maps = teacher_outputs(
                teacher, images.to(device), kinds, layer, views, dataset.spec.seed
            )
            if logits is None:
                logits = torch.zeros(epochs, n, out_logits.shape[1])  # (E, N, K)
            logits[epoch, indices] = out_logits.float().cpu()
            for key, value in out_maps.items():
                if key not in maps:
                    maps[key] = torch.zeros(epochs, n, *value.shape[1:])  # (E, N, h, w)
                maps[key][epoch, indices] = value.float().cpu()
            bar.update(len(indices))
    bar.close()
    meta = {
        "teacher": str(teacher_path),
        "teacher_sha256": file_sha256(teacher_path),
        "view_spec": as_stored(dataset.spec.to_dict()),
        "ids": list(dataset.ids),
        "layer": layer,
        "kinds": [list(k) for k in kinds],
    }
    return TeacherTargets(logits, maps, meta)


def profile_kinds(profile) -> list[tuple[str, float]]:
    """The map kinds (matching, drop fraction) a profile's grid matches with, from its
    methods' `COMPRESSION` entries (a plugin's matching included), in the registry's order."""
    words = {
        *profile.distill_methods,
        *profile.oneshot_methods,
        *profile.iterative_methods,
        *(profile.quantize_methods if profile.quantize_bits else ()),
    }
    kinds = []
    for word in COMPRESSION:
        method = COMPRESSION.get(word)
        kind = (method.matching, profile.drop_fraction if method.stochastic else 0.0)
        if word in words and method.matching != NO_MATCHING and kind not in kinds:
            kinds.append(kind)
    return kinds


def profile_epochs(profile) -> int:
    """View epochs a profile's compression stages read (the longest of them)."""
    return max(
        *(profile.distill_recipe(w).epochs for w in profile.student_width_divs),
        profile.prune_oneshot.epochs,
        profile.iterative_steps * profile.prune_iterative.epochs,
        profile.quantize_recipe.epochs,
    )
