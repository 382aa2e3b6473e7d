"""Profiles as YAML files: the built-in ones, a user's file, overrides, and the errors that
name the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attrlib.config import (
    DistillConfig,
    EvalConfig,
    PruneIterativeConfig,
    PruneOneShotConfig,
    TeacherConfig,
)
from attrlib.profiles import (
    BUILTIN_DIR,
    PROFILES,
    Profile,
    ProfileError,
    Recipe,
    data_problem,
    get_profile,
    load_file,
    main,
    to_yaml,
)
from attrlib.study import grid, makefile_grid

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _smoke_fields() -> dict:
    return yaml.safe_load((BUILTIN_DIR / "smoke.yaml").read_text())


def test_builtin_profiles_are_the_files_beside_the_package():
    assert sorted(PROFILES) == ["default", "replicated", "resnet", "smoke", "voc"]
    default = PROFILES["default"]
    # the study's recipe, as the reference run of docs/results/default was made
    assert (default.input_size, default.teacher_width_div, default.student_width_divs) == (
        96,
        8,
        (2, 4),
    )
    assert default.distill == Recipe(
        epochs=25,
        batch_size=64,
        lr=1.5e-2,
        optimizer="adamw",
        schedule="onecycle",
        weight_decay=5e-4,
    )
    assert (default.matching_lambda, default.prune_matching_lambda) == (3.0, 18.0)
    assert default.seeds == (0, 1, 2) and default.synth.n_train == 3000
    assert PROFILES["voc"].synth is None and PROFILES["voc"].distill.momentum == 0.0
    assert PROFILES["smoke"].matching_layer == "attribution"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_builtin_field_is_written_out(name):
    """A user copying a built-in file sees every knob (all but the name, the file's)."""
    written = set(yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text()))
    fields = {f for f in Profile.__dataclass_fields__} - {"name"}
    assert written == fields


def test_a_users_file_is_named_by_its_file(tmp_path):
    path = _write(tmp_path / "mine.yaml", {**_smoke_fields(), "seeds": [0, 1]})
    prof = get_profile(str(path))
    assert prof.name == "mine" and prof.seeds == (0, 1)
    # left-out fields take the dataclass defaults
    fields = _smoke_fields()
    del fields["view_seed"]
    assert load_file(_write(tmp_path / "short.yaml", fields)).view_seed == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"distil": {"epochs": 1}}, r"mine.yaml: unknown field 'distil'; did you mean 'distill'"),
        ({"input_size": "big"}, r"mine.yaml: input_size: expected an integer, got 'big'"),
        ({"input_size": True}, r"input_size: expected an integer, got True"),
        ({"prune_rates": 0.5}, r"prune_rates: expected a list"),
        ({"prune_rates": [0.5, "x"]}, r"prune_rates\[1\]: expected a number"),
        ({"distill": {"epochs": 0, "batch_size": 4, "lr": 0.1}}, r"distill: epochs must be >= 1"),
        ({"distill": {"epochs": 1, "lr": 0.1}}, r"missing field 'distill.batch_size'"),
        ({"teacher": {"epochs": 1, "batch_size": 4, "lr": 0.1, "optimiser": "sgd"}}, "optimizer"),
        ({"sync_bn": "yes"}, r"sync_bn: expected true or false"),
        ({"synth": [1, 2]}, r"synth: expected a mapping of SynthSpec fields"),
        ({"name": "other"}, r"unknown field 'name'"),
        ({"distill_width_epochs": [4]}, r"distill_width_epochs: expected a mapping"),
        ({"distill_width_epochs": {3: 5}}, r"a width_div must be one of .*got 3"),
        ({"distill_width_epochs": {4: 0}}, r"distill_width_epochs\[4\] must be >= 1 epochs"),
        ({"distill_width_epochs": {4: "long"}}, r"distill_width_epochs\[4\]: expected an integer"),
    ],
)
def test_a_bad_field_is_named_with_its_file(tmp_path, change, message):
    path = _write(tmp_path / "mine.yaml", {**_smoke_fields(), **change})
    with pytest.raises(ProfileError, match=message):
        get_profile(str(path))


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ProfileError, match=r"bad.yaml: expected a mapping"):
        get_profile(str(_write(tmp_path / "bad.yaml", "- 1\n- 2\n")))
    with pytest.raises(ProfileError, match=r"not valid YAML"):
        get_profile(str(_write(tmp_path / "worse.yaml", "a: [1\n")))
    with pytest.raises(ProfileError, match=r"profile file .*none.yaml not found"):
        get_profile(str(tmp_path / "none.yaml"))
    with pytest.raises(KeyError, match=r"unknown profile 'nosuch'.*\.yaml file"):
        get_profile("nosuch")


def test_overrides_change_single_fields():
    prof = get_profile("smoke", "distill.epochs=3 seeds=[0,1] distill.lr=1e-3 synth=null")
    assert prof.distill.epochs == 3 and prof.distill.lr == 1e-3  # YAML 1.1 reads 1e-3 as text
    assert prof.distill.batch_size == PROFILES["smoke"].distill.batch_size
    assert prof.seeds == (0, 1) and prof.synth is None
    assert get_profile("smoke", ["matching_lambda=2"]).matching_lambda == 2.0
    assert get_profile("smoke", "") is PROFILES["smoke"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.matching_lambda=2", r"unknown field 'distill.matching_lambda'; did you mean "),
        ("epochs", r"expected field=value"),
        ("distill.epochs=ten", r"distill.epochs: expected an integer, got 'ten'"),
        ("zzz=1", r"unknown field 'zzz'; fields: input_size"),
    ],
)
def test_a_bad_override_is_named(override, message):
    with pytest.raises(ProfileError, match=message):
        get_profile("smoke", override)
    with pytest.raises(ProfileError, match=r"synth is null in profile 'voc'; set it whole"):
        get_profile("voc", "synth.n_train=3")


def test_configs_record_their_overrides_and_apply_them():
    cfg = DistillConfig(profile="smoke", overrides="distill.epochs=3 matching_lambda=7")
    assert cfg.overrides == ("distill.epochs=3", "matching_lambda=7")
    assert cfg.recipe.epochs == 3 and cfg.matching_lambda == 7.0
    stored = cfg.to_dict()
    assert stored["overrides"] == ("distill.epochs=3", "matching_lambda=7")
    assert "overrides" not in DistillConfig(profile="smoke").to_dict()  # older runs still match
    stored = {k: v for k, v in stored.items() if k != "recipe"}  # derived, not an argument
    assert DistillConfig(**{**stored, "overrides": list(stored["overrides"])}) == cfg


def test_a_users_file_reaches_every_config(tmp_path):
    path = _write(
        tmp_path / "quick.yaml",
        {
            **_smoke_fields(),
            "prune_iterative": {"epochs": 2, "batch_size": 8, "lr": 0.01, "schedule": "constant"},
        },
    )
    cfg = PruneIterativeConfig(profile=str(path))
    assert cfg.recipe.epochs == 2 and cfg.recipe.batch_size == 8
    assert cfg.data_root == "data/synthvoc-quick/VOCdevkit/VOC2012"


def test_a_profiles_plugins_are_imported_with_it(tmp_path):
    """A plugin listed in the profile registers its methods wherever the profile is read
    (in a process of its own: registries are process state)."""
    path = _write(tmp_path / "plugged.yaml", {**_smoke_fields(), "plugins": ["extension_plugin"]})
    code = (
        "from attrlib.distill import MATCHINGS\n"
        "from attrlib.config import DistillConfig\n"
        "assert 'gxf' not in MATCHINGS\n"
        f"cfg = DistillConfig(profile={str(path)!r}, matching='gxf')\n"
        "print(cfg.matching)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "tests",
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "tests")},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gxf"


def test_empty_paths_point_at_the_lab_and_the_profiles_data():
    """Runs made outside `make all` go to runs/lab/<profile>, never among the grid's runs."""
    teacher = TeacherConfig(profile="smoke")
    assert teacher.data_root == "data/synthvoc-smoke/VOCdevkit/VOC2012"
    assert teacher.out_dir == "runs/lab/smoke/teacher"
    distill = DistillConfig(profile="smoke", matching="sswa", width_div=4, seed=2)
    assert distill.out_dir == "runs/lab/smoke/distill/x4-sswa-s2"
    assert distill.teacher == "runs/lab/smoke/teacher/best.pt"
    oneshot = PruneOneShotConfig(profile="smoke", rate=0.5)
    assert oneshot.out_dir == "runs/lab/smoke/prune_oneshot/p0.5-naive-s0"
    assert oneshot.model == oneshot.teacher == "runs/lab/smoke/teacher/best.pt"
    assert (
        PruneIterativeConfig(profile="smoke").out_dir == "runs/lab/smoke/prune_iterative/naive-s0"
    )
    assert EvalConfig(profile="smoke").out_dir == "runs/lab/smoke/teacher"
    with pytest.raises(ValueError, match=r"profile 'voc' reads real data: set data_root"):
        TeacherConfig(profile="voc")


def test_sswa_is_stochastic_swa():
    cfg = DistillConfig(profile="default", matching="sswa")
    assert (cfg.matching, cfg.drop_fraction) == ("swa", PROFILES["default"].drop_fraction)
    # the grid passes the same run as swa + drop_fraction: one config either way
    assert cfg == DistillConfig(profile="default", matching="swa", drop_fraction=0.3)
    with pytest.raises(ValueError, match=r"stochastic SWA is swa with drop_fraction > 0"):
        DistillConfig(profile="default", matching="stochastic")


def test_grid_and_make_assignments_follow_overrides():
    g = grid("smoke", "seeds=[0,1] distill_methods=[kd,sswa]")
    assert g.seeds == (0, 1) and g.distill == ("kd", "sswa")
    assert "DISTILL_METHODS := kd sswa" in makefile_grid("smoke", "distill_methods=[kd,sswa]")
    with pytest.raises(ValueError, match=r"distill_methods: unknown method 'foo'"):
        makefile_grid("smoke", "distill_methods=[kd,foo]")


def test_make_refuses_real_data_with_a_synthetic_profile_and_the_reverse():
    assert "PROFILE=voc" in data_problem(PROFILES["smoke"], "real", "smoke")
    assert "VOC_ROOT=/path/to/VOCdevkit/VOC2012" in data_problem(
        PROFILES["voc"], "synthetic", "voc"
    )
    assert data_problem(PROFILES["voc"], "real", "voc") is None
    assert data_problem(PROFILES["smoke"], "synthetic", "smoke") is None


def test_show_writes_the_resolved_profile_only_when_it_changes(tmp_path, capsys):
    out = tmp_path / "profile.yaml"
    assert main(["show", "smoke", "--set", "distill.epochs=3", "--into", str(out)]) == 0
    text = out.read_text()
    resolved = yaml.safe_load(text)
    assert resolved["distill"]["epochs"] == 3 and resolved["name"] == "smoke"
    before = out.stat().st_mtime_ns
    assert main(["show", "smoke", "--set", "distill.epochs=3", "--into", str(out)]) == 0
    assert out.stat().st_mtime_ns == before  # make reads its time: no change, nothing reruns
    assert main(["show", "smoke", "--set", "distill.epochs=4", "--into", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["distill"]["epochs"] == 4
    # the voc teacher without weights: one plain warning naming the fix, once per study
    capsys.readouterr()
    voc = ["show", "voc", "--data", "real", "--into", str(tmp_path / "voc.yaml")]
    assert main(voc) == 0
    assert "TEACHER_WEIGHTS=" in capsys.readouterr().err
    assert main(voc) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["show", "voc", "--data", "real", "--weights"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["show", "smoke", "--data", "real"]) == 2
    assert "PROFILE=voc" in capsys.readouterr().err


def _make(*args: str, runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args, f"RUNS={runs}"], cwd=ROOT, capture_output=True, text=True)


def test_make_unknown_profile_is_one_line_and_writes_nothing(tmp_path):
    out = _make("all", "PROFILE=nosuch", runs=tmp_path / "runs")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROFILE=nosuch: no such profile" in lines[0]
    assert not (tmp_path / "runs").exists() and not (ROOT / "runs" / "nosuch").exists()


def test_make_voc_without_voc_root_says_the_fix(tmp_path):
    out = _make("-n", "all", "PROFILE=voc", "VOC_ROOT=", runs=tmp_path / "runs")
    assert out.returncode != 0
    assert "make all PROFILE=voc VOC_ROOT=/path/to/VOCdevkit/VOC2012" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_make_voc_root_with_a_synthetic_profile_is_refused(tmp_path):
    split = tmp_path / "voc" / "ImageSets" / "Main" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("")
    out = _make("-n", "teacher", "PROFILE=default", f"VOC_ROOT={tmp_path}/voc", runs=tmp_path / "r")
    assert out.returncode != 0 and "use the paper's recipe" in out.stderr


def test_make_passes_a_users_file_and_overrides_to_every_stage(tmp_path):
    path = _write(tmp_path / "mine.yaml", _smoke_fields())
    out = subprocess.run(
        ["make", "-n", "all", f"PROFILE={path}", "SET=distill.epochs=3 seeds=[0,1]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    # runs/<name>-<hash of SET>: another SET never lands among these runs
    runs = [w for w in out.stdout.split() if w.startswith("runs/mine-")]
    assert runs, out.stdout[:2000]
    folder = runs[0].split("/")[1]
    try:
        assert f"-p profile {path} -p overrides 'distill.epochs=3 seeds=[0,1]'" in out.stdout
        assert "02_distill.ipynb" in out.stdout and "-s1/02_distill.ipynb" in out.stdout
        assert (ROOT / "runs" / folder / "profile.yaml").is_file()
    finally:
        import shutil

        shutil.rmtree(ROOT / "runs" / folder, ignore_errors=True)


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for target in (
        "all",
        "teacher",
        "distill",
        "evaluate",
        "paper",
        "lab",
        "tensorboard",
        "results",
        "clean-runs",
        "test",
        "bench-gpu",
    ):
        assert f"\n  {target} " in out.stdout, target
    for variable in ("PROFILE=", "SET=", "VOC_ROOT=", "TEACHER_WEIGHTS=", "JOBS="):
        assert variable in out.stdout, variable


def test_a_missing_checkpoint_says_what_writes_it(tmp_path):
    from attrlib.engine import load_checkpoint

    with pytest.raises(FileNotFoundError, match=r"the teacher notebook writes it .* run it first"):
        load_checkpoint(tmp_path / "runs" / "lab" / "smoke" / "teacher" / "best.pt")
    with pytest.raises(FileNotFoundError, match=r"`make distill` writes it"):
        load_checkpoint(tmp_path / "runs" / "smoke" / "distill" / "x2-kd-s0" / "best.pt")


def test_replicated_is_the_default_under_three_teachers():
    from dataclasses import replace

    replicated, default = PROFILES["replicated"], PROFILES["default"]
    assert replicated.teacher_seeds == (0, 1, 2) and replicated.seeds == (0, 1, 2)
    # its grid has no quantization (its yaml says how to add the default's)
    assert replicated.quantize_bits == () and default.quantize_bits
    same = replace(
        replicated,
        name="default",
        teacher_seeds=default.teacher_seeds,
        quantize_bits=default.quantize_bits,
        quantize_methods=default.quantize_methods,
        quantize=default.quantize,
        distill_width_epochs=default.distill_width_epochs,
    )
    assert same == default
    assert (
        replicated.distill_recipe(4).epochs == 30
        and replicated.distill_recipe(2) == default.distill
    )


def test_resnet_is_the_default_on_three_resnet_teachers_at_x4():
    from dataclasses import replace

    resnet, default = PROFILES["resnet"], PROFILES["default"]
    assert resnet.architecture == "resnet" and resnet.teacher_width_div == 4
    assert resnet.teacher_seeds == (0, 1, 2) and resnet.seeds == (0,)
    assert resnet.student_width_divs == (4,)
    same = replace(
        resnet,
        name="default",
        architecture=default.architecture,
        teacher_width_div=default.teacher_width_div,
        teacher_seeds=default.teacher_seeds,
        seeds=default.seeds,
        student_width_divs=default.student_width_divs,
    )
    assert same == default


def test_students_of_one_width_can_train_longer(tmp_path):
    """distill_width_epochs gives the students of one width their own epochs, and only them:
    every other recipe field, and every other width, keep distill's."""
    prof = get_profile("smoke", ["distill_width_epochs={4: 3}", "student_width_divs=[2, 4]"])
    base = prof.distill
    assert prof.distill_recipe(4) == Recipe(**{**base.__dict__, "epochs": 3})
    assert prof.distill_recipe(2) == base
    assert DistillConfig(profile=prof, width_div=4).recipe.epochs == 3
    assert DistillConfig(profile=prof, width_div=2).recipe == base
    assert DistillConfig(profile=prof, width_div=4, epochs=5).recipe.epochs == 5  # explicit wins
    assert hash(prof) == hash(prof) and prof != get_profile("smoke", "student_width_divs=[2,4]")
    # the teacher store covers the longest student
    from attrlib.targets import profile_epochs

    assert profile_epochs(prof) == 3 > profile_epochs(get_profile("smoke"))
    # the resolved profile names it only when set (runs made before it stay current), and
    # reads back as the same profile
    assert "distill_width_epochs" not in to_yaml(get_profile("smoke"))
    written = _write(tmp_path / "resolved.yaml", to_yaml(prof))
    assert get_profile(str(written)).distill_width_epochs == {4: 3}
    assert "distill_width_epochs" in to_yaml(prof, recipes_only=True)  # a recipe, not the grid


def test_the_resolved_profile_names_the_family_only_when_it_is_not_the_default():
    """Runs made before the field existed keep their resolved profile, so make reruns none."""
    assert "architecture" not in to_yaml(get_profile("smoke"))
    resnet = get_profile("smoke", "architecture=resnet")
    assert resnet.architecture == "resnet" and "architecture: resnet" in to_yaml(resnet)


def test_the_weights_warning_names_the_teachers_family():
    from attrlib.profiles import weights_warning

    assert "vgg16_bn-6c64b313.pth" in weights_warning("vgg16_bn")
    resnet = weights_warning("resnet")
    assert "resnet teacher" in resnet and "resnet18" in resnet and "vgg16_bn" not in resnet
