"""Stage configs: every validation, the profile's values filling None fields, and the round
trip through `config.json`."""

from __future__ import annotations

import dataclasses

import pytest

from attrlib.config import (
    PROFILES,
    DistillConfig,
    EvalConfig,
    PruneIterativeConfig,
    PruneOneShotConfig,
    TeacherConfig,
    get_profile,
)
from attrlib.io import read_json, write_json_atomic

CONFIGS = (TeacherConfig, DistillConfig, EvalConfig, PruneOneShotConfig, PruneIterativeConfig)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (TeacherConfig, {"profile": "nope"}, "unknown profile 'nope'"),
        (TeacherConfig, {"weights": "w.pth"}, "needs width_div=1"),
        (TeacherConfig, {"epochs": 0}, "epochs must be >= 1"),
        (TeacherConfig, {"lr": -1.0}, "lr must be > 0"),
        (DistillConfig, {"width_div": 3}, "width_div must be one of"),
        (DistillConfig, {"matching": "gradcam"}, r"one of \['ewa', 'swa'\], got 'gradcam'"),
        (DistillConfig, {"matching": "swa", "matching_lambda": -1.0}, "matching_lambda"),
        (DistillConfig, {"matching": "swa", "drop_fraction": 1.5}, r"drop_fraction must be"),
        (DistillConfig, {"drop_fraction": 0.3}, "needs a matching loss"),
        (DistillConfig, {"matching_layer": "conv3"}, "matching_layer must be one of"),
        (DistillConfig, {"matching_warmup": 99}, r"matching_warmup must be in \[0, epochs"),
        (DistillConfig, {"temperature": 0.0}, "temperature > 0"),
        (DistillConfig, {"alpha": 1.5}, "alpha in"),
        (EvalConfig, {"methods": ("gradcam", "nope")}, "methods must be names in"),
        (EvalConfig, {"batch_size": 0}, "batch_size must be >= 1"),
        (PruneOneShotConfig, {"rate": 1.0}, r"rate must be in \[0, 1\)"),
        (PruneOneShotConfig, {"criterion": "magnitude"}, "criterion must be one of"),
        (PruneOneShotConfig, {"matching": "swa", "matching_lambda": -2.0}, "matching_lambda"),
        (PruneIterativeConfig, {"fraction": 0.0}, r"fraction must be in \(0, 1\)"),
        (PruneIterativeConfig, {"iterations": 0}, "iterations must be >= 1"),
        (PruneIterativeConfig, {"criterion": "l1"}, "criterion must be one of"),
    ],
)
def test_invalid_values_are_named(cls, kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        cls(**kwargs)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_none_fields_take_the_profile_values(profile):
    prof = get_profile(profile)
    # a real-data profile has no data set of its own (test_real_data_profile_needs_a_root)
    root = {"data_root": "VOC2012"} if prof.synth is None else {}
    assert TeacherConfig(profile=profile, **root).width_div == prof.teacher_width_div
    assert TeacherConfig(profile=profile, **root).recipe == prof.teacher
    distill = DistillConfig(profile=profile, **root)
    assert distill.matching_lambda == prof.matching_lambda
    assert distill.matching_layer == prof.matching_layer
    assert distill.matching_warmup == prof.matching_warmup
    assert distill.recipe == prof.distill
    prune_lambda = prof.prune_matching_lambda or prof.matching_lambda
    oneshot = PruneOneShotConfig(profile=profile, **root)
    assert oneshot.matching_lambda == prune_lambda and oneshot.recipe == prof.prune_oneshot
    assert oneshot.teacher == oneshot.model  # the unpruned network is the reference
    iterative = PruneIterativeConfig(profile=profile, **root)
    assert (iterative.fraction, iterative.iterations) == (
        prof.iterative_fraction,
        prof.iterative_steps,
    )
    assert iterative.matching_lambda == prune_lambda


def test_explicit_values_override_the_profile():
    cfg = DistillConfig(profile="smoke", matching_lambda=7.0, epochs=3, lr=0.5, batch_size=4)
    assert cfg.matching_lambda == 7.0
    assert (cfg.recipe.epochs, cfg.recipe.lr, cfg.recipe.batch_size) == (3, 0.5, 4)
    assert cfg.recipe.optimizer == get_profile("smoke").distill.optimizer


def test_evaluation_defaults_to_every_registered_method():
    from attrlib.attribution import METHODS

    assert EvalConfig().methods == tuple(METHODS.names())
    assert EvalConfig(checkpoint="a/b/best.pt").out_dir == "a/b"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_round_trip_through_config_json(cls, tmp_path):
    cfg = cls(profile="smoke")
    write_json_atomic(tmp_path / "config.json", cfg.to_dict())
    stored = read_json(tmp_path / "config.json")
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    again = cls(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in init}
    )
    assert again == cfg
    added = {"criterion", "overrides", "architecture"}  # stored only when not as before
    assert set(stored) >= init - added


def test_fields_added_later_are_stored_only_when_set():
    """A finished run of before (no `criterion` in its config) still matches its config."""
    assert "criterion" not in PruneOneShotConfig().to_dict()
    assert "criterion" not in PruneIterativeConfig().to_dict()
    assert "architecture" not in TeacherConfig().to_dict()  # vgg16_bn, as every run before
    resnet = TeacherConfig(profile="smoke", overrides=("architecture=resnet",))
    assert resnet.to_dict()["architecture"] == "resnet"
    from attrlib.prune import STRUCTURED_CRITERIA

    @STRUCTURED_CRITERIA.register("test_config_l2")
    def l2(weight):
        return weight.flatten(1).norm(dim=1)

    try:
        assert PruneOneShotConfig(criterion="test_config_l2").to_dict()["criterion"] == (
            "test_config_l2"
        )
    finally:
        STRUCTURED_CRITERIA._entries.pop("test_config_l2")
