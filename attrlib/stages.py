"""Each study stage wired from its config: data, model, objective, the shared loop."""

from __future__ import annotations

from pathlib import Path

from attrlib.config import DistillConfig, TeacherConfig, get_profile, resolve_device
from attrlib.data import VOCClassification, eval_transform, load_classes, train_transform
from attrlib.distill import CompressionObjective
from attrlib.engine import fit, load_model, multilabel_objective
from attrlib.models import ModelConfig, VGGVOC, build_model, load_torchvision_features_, vgg16_bn_voc


def build_datasets(data_root: str, profile: str, classes: tuple[str, ...] | None = None):
    """(train, val, classes) for a profile: augmented train split, resized val split."""
    prof = get_profile(profile)
    classes = tuple(classes) if classes is not None else load_classes(data_root)
    train = VOCClassification(
        data_root, "train", classes, train_transform(prof.input_size, prof.scale_min)
    )
    val = VOCClassification(data_root, "val", classes, eval_transform(prof.input_size))
    return train, val, classes


def load_reference(path: str, data_root: str, device) -> tuple[VGGVOC, tuple[str, ...]]:
    """A trained reference network (teacher / unpruned) checked against the data's classes."""
    classes = load_classes(data_root)
    model, _ = load_model(path, classes=classes, device=device)
    return model, classes


def train_teacher(cfg: TeacherConfig) -> tuple[VGGVOC, dict]:
    """Train (or resume, or reload when finished) the teacher; returns (model at best, metrics)."""
    prof = get_profile(cfg.profile)
    train, val, classes = build_datasets(cfg.data_root, cfg.profile)
    model = vgg16_bn_voc(cfg.width_div, num_classes=len(classes), input_size=prof.input_size)
    if cfg.weights:
        load_torchvision_features_(model, cfg.weights)
    metrics = fit(
        model, multilabel_objective, train, val, cfg.recipe,
        out_dir=Path(cfg.out_dir), classes=classes, seed=cfg.seed,
        device=resolve_device(cfg.device), stage_config=cfg.to_dict(),
        num_workers=prof.num_workers,
    )
    return model, metrics


def train_student(cfg: DistillConfig) -> tuple[VGGVOC, dict]:
    """Distil a student (KD, optionally + EWA / SWA / stochastic SWA matching)."""
    device = resolve_device(cfg.device)
    teacher, classes = load_reference(cfg.teacher, cfg.data_root, device)
    train, val, _ = build_datasets(cfg.data_root, cfg.profile, classes)
    t_cfg = teacher.config
    if t_cfg.input_size != get_profile(cfg.profile).input_size:
        raise ValueError(
            f"teacher {cfg.teacher} takes {t_cfg.input_size} px inputs, profile "
            f"{cfg.profile!r} uses {get_profile(cfg.profile).input_size} px"
        )
    student = build_model(
        ModelConfig(
            widths=tuple(max(1, w // cfg.width_div) for w in t_cfg.widths),
            num_classes=t_cfg.num_classes,
            input_size=t_cfg.input_size,
            dropout=t_cfg.dropout,
        )
    )
    objective = CompressionObjective(
        teacher, cfg.matching, cfg.matching_lambda, cfg.drop_fraction, kd=True,
        temperature=cfg.temperature, alpha=cfg.alpha,
    )
    metrics = fit(
        student, objective, train, val, cfg.recipe,
        out_dir=Path(cfg.out_dir), classes=classes, seed=cfg.seed, device=device,
        stage_config=cfg.to_dict(), num_workers=get_profile(cfg.profile).num_workers,
    )
    return student, metrics
