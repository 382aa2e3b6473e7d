"""The teacher-targets cache: the online teacher's values, checked to fit, shared by runs."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest
import torch
from test_engine import _interrupt_after

import attrlib.stages as stages
from attrlib.config import DistillConfig, PruneIterativeConfig, Recipe, get_profile
from attrlib.data import VOCClassification, eval_transform, load_classes
from attrlib.distill import CompressionObjective, target_key, teacher_outputs
from attrlib.engine import fit, load_checkpoint, make_checkpoint
from attrlib.io import save_torch_atomic
from attrlib.models import MATCHING_LAYERS, vgg16_bn_voc
from attrlib.synthvoc import generate
from attrlib.targets import (
    TeacherTargets,
    build_targets,
    profile_epochs,
    profile_kinds,
)
from attrlib.views import TrainViews, ViewKeys, ViewSpec, make_views

from nets import random_vgg

KINDS = [("ewa", 0.0), ("swa", 0.0), ("swa", 0.3)]
KEYS = ["ewa", "swa", "swa-drop0.3"]
WIDE_GRID = "distill_methods=[kd,ewa,swa,sswa]"
EPOCHS = 2
SPEC = ViewSpec(32, 0.5)
TOL = {"rtol": 1e-5, "atol": 1e-5}  # losses and gradients (up to ~100s in size)
STORE_TOL = {"rtol": 0.0, "atol": 1e-5}  # logits and maps (at most a few units)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _env(base, size: int, layers) -> SimpleNamespace:
    """Smoke-sized data, a random teacher saved as a checkpoint, and its stores per layer."""
    spec = get_profile("smoke").synth
    root = generate(base, spec.n_train, spec.n_val, spec.image_size, workers=1, progress=False)
    classes = load_classes(root)
    view_spec = ViewSpec(size, 0.5)
    train = TrainViews(VOCClassification(root, "train", classes), view_spec)
    teacher = random_vgg(len(classes), size, seed=0).eval()
    teacher_path = save_torch_atomic(base / "teacher.pt", make_checkpoint(teacher, classes))
    stores = {
        layer: build_targets(
            teacher,
            train,
            EPOCHS,
            KINDS,
            layer,
            teacher_path=teacher_path,
            batch_size=16,
            progress=False,
        )
        for layer in layers
    }
    return SimpleNamespace(
        base=base,
        root=root,
        classes=classes,
        spec=view_spec,
        train=train,
        teacher=teacher,
        teacher_path=teacher_path,
        stores=stores,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The smoke profile's 32 px views: maps 2x2 at the attribution layer, 1x1 at the pool."""
    return _env(tmp_path_factory.mktemp("targets"), 32, MATCHING_LAYERS)


@pytest.fixture(scope="module")
def env64(tmp_path_factory):
    """64 px views: 2x2 maps at the pool layer, where 1x1 maps make matching trivial."""
    return _env(tmp_path_factory.mktemp("targets64"), 64, ["pool"])


# (fixture, layer): every matching layer, and the pool layer with maps of more than one pixel
SETUPS = [("env", "attribution"), ("env", "pool"), ("env64", "pool")]
SETUP_IDS = ["32px-attribution", "32px-pool", "64px-pool"]


# ----------------------------------------------------------------------------- the values


@pytest.mark.parametrize(("setup", "layer"), SETUPS, ids=SETUP_IDS)
def test_store_equals_online_teacher_outputs(request, setup, layer):
    env = request.getfixturevalue(setup)
    store = env.stores[layer]
    n, k = len(env.train), len(env.classes)
    assert store.epochs == EPOCHS and store.logits.shape == (EPOCHS, n, k)
    assert sorted(store.maps) == sorted(KEYS)
    side = env.spec.size // (16 if layer == "attribution" else 32)
    for key in KEYS:
        assert store.maps[key].shape == (EPOCHS, n, side, side)
    for epoch in range(EPOCHS):
        # other batches than the store's (16 in order): 7 at a time, shuffled
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for chunk in order.split(7):
            images = make_views([env.train.dataset.image(i) for i in chunk], chunk, epoch, env.spec)
            views = ViewKeys(epoch, chunk)
            logits, maps = teacher_outputs(env.teacher, images, KINDS, layer, views, env.spec.seed)
            for key in KEYS:
                cached_logits, cached = store.lookup(views, key)
                torch.testing.assert_close(cached_logits, logits, **STORE_TOL)
                torch.testing.assert_close(cached, maps[key], **STORE_TOL, msg=key)
            no_map_logits, none = store.lookup(views, None)
            assert none is None and torch.equal(no_map_logits, cached_logits)
    # the drop map is its own map, the epochs differ, and the maps are not trivial
    plain, dropped = store.maps["swa"], store.maps["swa-drop0.3"]
    assert (plain.flatten(2) != dropped.flatten(2)).any(dim=2).float().mean() > 0.3
    assert not torch.equal(store.logits[0], store.logits[1])
    for key in KEYS:
        assert (store.maps[key].flatten(2).amax(dim=2) > 0).float().mean() > 0.3, key


def test_store_meta_names_its_inputs(env):
    meta = env.stores["pool"].meta
    assert meta["teacher"] == str(env.teacher_path) and len(meta["teacher_sha256"]) == 64
    assert meta["view_spec"] == SPEC.to_dict() and meta["ids"] == list(env.train.ids)
    assert meta["layer"] == "pool" and meta["kinds"] == [list(k) for k in KINDS]
    assert env.stores["attribution"].meta["layer"] == "attribution"


@pytest.mark.parametrize(("setup", "layer"), SETUPS, ids=SETUP_IDS)
@pytest.mark.parametrize("kd", [True, False])
@pytest.mark.parametrize(("matching", "drop"), [("swa", 0.3), ("ewa", 0.0), ("none", 0.0)])
def test_objective_with_store_equals_online(request, setup, layer, kd, matching, drop):
    env = request.getfixturevalue(setup)
    store = env.stores[layer]
    torch.manual_seed(1)
    student = vgg16_bn_voc(32, num_classes=len(env.classes), input_size=env.spec.size).train()
    indices = torch.tensor([7, 2, 30, 11, 4, 19, 40, 0, 33])
    epoch = 1
    images = make_views([env.train.dataset.image(i) for i in indices], indices, epoch, env.spec)
    labels = env.train.labels[indices]
    views = ViewKeys(epoch, indices)
    results, forwards = [], []
    hook = env.teacher.features[0].register_forward_hook(lambda *args: forwards.append(1))
    for targets in (None, store):
        objective = CompressionObjective(
            env.teacher,
            matching,
            100.0,
            drop,
            kd=kd,
            layer=layer,
            targets=targets,
            view_seed=env.spec.seed,
        )
        torch.manual_seed(2)  # the same dropout draw for the student's forward
        loss, logs = objective(student, images, labels, views)
        params = [p for p in student.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss.detach(), logs, grads))
        forwards.append("run")
    hook.remove()
    # online, the teacher runs unless plain fine-tuning; with the store it never runs
    uses_teacher = kd or matching != "none"
    assert forwards == ([1] if uses_teacher else []) + ["run", "run"]
    (loss_a, logs_a, grads_a), (loss_b, logs_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, **TOL)
    assert set(logs_a) == set(logs_b)
    for name in logs_a:
        torch.testing.assert_close(logs_b[name], logs_a[name], **TOL, msg=name)
    for (name, _), a, b in zip(student.named_parameters(), grads_a, grads_b, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, **TOL, msg=name)
    if matching != "none" and store.maps["swa"].shape[-1] > 1:
        # maps of more than one pixel: the matching term takes part (a 1x1 map normalises to
        # 1, or to 0 when dead, whatever the network does)
        assert logs_a["match"] > 0


def test_objective_with_store_needs_views(env):
    objective = CompressionObjective(env.teacher, "swa", targets=env.stores["attribution"])
    images = make_views([env.train.dataset.image(0)], [0], 0, SPEC)
    with pytest.raises(ValueError, match="need the batch's views"):
        objective(vgg16_bn_voc(32, len(env.classes), 32), images, env.train.labels[:1])


def test_online_drop_map_follows_the_views_not_the_global_rng(env):
    """The online stochastic-SWA map is a function of (view epoch, image): what a cache needs."""
    indices = torch.tensor([3, 9, 14, 21])
    images = make_views([env.train.dataset.image(i) for i in indices], indices, 0, SPEC)
    kinds = [("swa", 0.3)]
    torch.manual_seed(0)
    a = teacher_outputs(env.teacher, images, kinds, "attribution", ViewKeys(0, indices))[1]
    torch.manual_seed(1)
    b = teacher_outputs(env.teacher, images, kinds, "attribution", ViewKeys(0, indices))[1]
    assert torch.equal(a["swa-drop0.3"], b["swa-drop0.3"])
    c = teacher_outputs(env.teacher, images, kinds, "attribution", ViewKeys(1, indices))[1]
    assert not torch.equal(a["swa-drop0.3"], c["swa-drop0.3"])  # drops of another epoch


# ----------------------------------------------------------------------------- training


def _fit(env, out_dir, targets, layer="pool", epochs=2, view_offset=0, **kw):
    torch.manual_seed(123)  # student init
    student = vgg16_bn_voc(32, num_classes=len(env.classes), input_size=env.spec.size)
    objective = CompressionObjective(
        env.teacher, "swa", 10.0, 0.3, kd=True, layer=layer, targets=targets
    )
    val = VOCClassification(env.root, "val", env.classes, eval_transform(env.spec.size))
    metrics = fit(
        student,
        objective,
        env.train,
        val,
        Recipe(epochs=epochs, batch_size=16, lr=0.02, schedule="onecycle"),
        out_dir=out_dir,
        classes=env.classes,
        seed=0,
        device=torch.device("cpu"),
        stage_config={"name": "targets-test"},
        progress=False,
        view_offset=view_offset,
        **kw,
    )
    return student, metrics


def _train_columns(history: list[dict]) -> dict[str, list[float]]:
    keys = [k for k in history[0] if k.startswith("train_")]
    return {k: [r[k] for r in history] for k in keys}


@pytest.mark.parametrize(("setup", "layer"), SETUPS, ids=SETUP_IDS)
def test_fit_with_store_equals_fit_without_and_resumes_exactly(request, setup, layer, tmp_path):
    env = request.getfixturevalue(setup)
    store = env.stores[layer]
    _, online = _fit(env, tmp_path / "online", None, layer)
    full, cached = _fit(env, tmp_path / "cached", store, layer)
    a, b = _train_columns(online["history"]), _train_columns(cached["history"])
    assert set(a) == {"train_loss", "train_kd", "train_match", "train_dead_maps"} == set(b)
    for key in a:
        torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), **TOL, msg=key)
    assert a["train_loss"][0] != a["train_loss"][1]

    with pytest.raises(KeyboardInterrupt):
        _fit(env, tmp_path / "cut", store, layer, on_epoch_end=_interrupt_after(0))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    resumed, resumed_metrics = _fit(env, tmp_path / "cut", store, layer)
    assert _strip(resumed_metrics["history"]) == _strip(cached["history"])
    assert resumed_metrics["best"] == cached["best"]
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert list(full_state) == list(resumed_state)
    for key, value in full_state.items():
        assert torch.equal(value, resumed_state[key]), key


def test_fit_view_offset_reads_later_view_epochs_of_the_store(env, tmp_path):
    store = env.stores["attribution"]
    _, online = _fit(env, tmp_path / "online", None, "attribution", epochs=1, view_offset=1)
    _, cached = _fit(env, tmp_path / "cached", store, "attribution", epochs=1, view_offset=1)
    _, first = _fit(env, tmp_path / "first", store, "attribution", epochs=1, view_offset=0)
    a, b, c = (_train_columns(m["history"]) for m in (online, cached, first))
    for key in a:
        torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), **TOL, msg=key)
    assert b["train_loss"] != c["train_loss"]  # another view epoch, other views
    with pytest.raises(IndexError, match="view epochs 0..1, a run asked for epoch 2"):
        _fit(env, tmp_path / "beyond", store, "attribution", epochs=1, view_offset=2)


# ----------------------------------------------------------------------------- checks, files


def test_check_accepts_a_fitting_run(env):
    env.stores["pool"].check(
        teacher=env.teacher_path, dataset=env.train, layer="pool", keys=KEYS, epochs=EPOCHS
    )
    env.stores["pool"].check(
        teacher=env.teacher_path, dataset=env.train, layer="pool", keys=[], epochs=1
    )


def test_check_names_every_problem(env):
    store = env.stores["pool"]
    other_teacher = save_torch_atomic(
        env.base / "other-teacher.pt",
        make_checkpoint(random_vgg(len(env.classes), 32, seed=1), env.classes),
    )
    other_spec = TrainViews(env.train.dataset, ViewSpec(32, 0.6))
    other_ids = TrainViews(VOCClassification(env.root, "val", env.classes), SPEC)
    good = {
        "teacher": env.teacher_path,
        "dataset": env.train,
        "layer": "pool",
        "keys": KEYS,
        "epochs": EPOCHS,
    }
    cases = {
        "teacher": (other_teacher, f"made from another teacher than {other_teacher}"),
        "layer": ("attribution", "matching layer 'pool' vs 'attribution'"),
        "keys": (["swa", "swa-drop0.5"], "no maps ['swa-drop0.5'] (it has ['ewa', 'swa', "),
        "epochs": (3, "2 view epochs, the run needs 3"),
        "dataset": (other_spec, "view spec {'size': 32, 'scale_min': 0.5"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError) as info:
            store.check(**{**good, name: value})
        text = str(info.value)
        assert message in text, (name, text)
        assert "python -m attrlib.stages targets" in text
        # only this problem
        others = [m for n, (_, m) in cases.items() if n != name]
        assert not any(m in text for m in others), (name, text)
    with pytest.raises(ValueError, match="made for another list of training images"):
        store.check(**{**good, "dataset": other_ids})
    # all at once, each named
    with pytest.raises(ValueError) as info:
        store.check(
            teacher=other_teacher,
            dataset=other_spec,
            layer="attribution",
            keys=["swa-drop0.5"],
            epochs=3,
        )
    for _, message in cases.values():
        assert message in str(info.value)
    assert "'scale_min': 0.6" in str(info.value)


def test_save_load_round_trip_and_file_errors(env, tmp_path):
    store = env.stores["attribution"]
    path = store.save(tmp_path / "sub" / "targets.pt")
    assert path == tmp_path / "sub" / "targets.pt" and path.is_file()
    loaded = TeacherTargets.load(path)
    assert loaded.source == str(path) and loaded.epochs == store.epochs
    assert torch.equal(loaded.logits, store.logits)
    assert sorted(loaded.maps) == sorted(store.maps)
    for key, value in store.maps.items():
        assert torch.equal(loaded.maps[key], value), key
    assert loaded.meta == store.meta
    loaded.check(
        teacher=env.teacher_path, dataset=env.train, layer="attribution", keys=KEYS, epochs=2
    )

    missing = tmp_path / "nowhere" / "targets.pt"
    with pytest.raises(FileNotFoundError, match=r"teacher targets .*nowhere/targets\.pt not found"):
        TeacherTargets.load(missing)
    torch.save({"logits": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not a teacher-targets file"):
        TeacherTargets.load(tmp_path / "bad.pt")

    indices = torch.tensor([0, 1])
    for epoch in (EPOCHS, -1):
        with pytest.raises(IndexError, match=rf"{path}.* cover view epochs 0\.\.1.*epoch {epoch}"):
            loaded.lookup(ViewKeys(epoch, indices), "swa")
    with pytest.raises(IndexError, match="teacher targets cover"):  # unsaved: no file to name
        store.lookup(ViewKeys(EPOCHS, indices), "swa")
    with pytest.raises(ValueError, match=str(path)):
        loaded.check(teacher=env.teacher_path, dataset=env.train, layer="pool", keys=[], epochs=1)


# ----------------------------------------------------------------------------- the CLI, stages


@pytest.fixture(scope="module")
def cli_store(env):
    """`python -m attrlib.stages targets` on the smoke profile with the random teacher, its grid
    widened to every built-in matching (the store holds the grid's kinds only)."""
    out = env.base / "cli" / "targets.pt"
    argv = ["--teacher", str(env.teacher_path), "--data-root", str(env.root), "--profile"]
    argv += ["smoke", "--set", WIDE_GRID, "--out", str(out), "--device", "cpu"]
    return stages.targets_main(argv)


def test_cli_writes_the_profiles_store(env, cli_store):
    prof = get_profile("smoke", WIDE_GRID)
    assert cli_store.is_file()
    store = TeacherTargets.load(cli_store)
    assert store.epochs == profile_epochs(prof) == 2
    assert sorted(store.maps) == ["ewa", "swa", "swa-drop0.3"]
    assert [target_key(m, d) for m, d in profile_kinds(prof)] == ["ewa", "swa", "swa-drop0.3"]
    smoke = get_profile("smoke")  # its grid: kd, swa (and naive)
    assert [target_key(m, d) for m, d in profile_kinds(smoke)] == ["swa"]
    assert store.meta["layer"] == prof.matching_layer
    assert store.meta["view_spec"] == stages.view_spec("smoke").to_dict()
    direct = env.stores[prof.matching_layer]  # same teacher, data, spec and layer
    assert direct.meta["view_spec"] == store.meta["view_spec"]
    torch.testing.assert_close(store.logits, direct.logits, **STORE_TOL)
    for key in KEYS:
        torch.testing.assert_close(store.maps[key], direct.maps[key], **STORE_TOL, msg=key)


def test_cli_keeps_a_store_that_fits_and_rebuilds_one_that_does_not(
    env, cli_store, tmp_path, capsys
):
    """make re-runs the step whenever the teacher's notebook re-executes; a fitting store is
    left untouched (so no run that reads it becomes stale), a misfit is rebuilt."""
    import shutil

    out = tmp_path / "targets.pt"
    shutil.copy2(cli_store, out)
    before = out.stat().st_mtime_ns
    argv = ["--teacher", str(env.teacher_path), "--data-root", str(env.root), "--profile"]
    argv += ["smoke", "--out", str(out), "--device", "cpu"]
    assert stages.targets_main([*argv, "--set", WIDE_GRID]) == out
    assert out.stat().st_mtime_ns == before and "up to date" in capsys.readouterr().out
    stages.targets_main([*argv, "--set", f"{WIDE_GRID} matching_layer=pool"])
    printed = capsys.readouterr().out
    assert "rebuilding: " in printed and "matching layer 'attribution' vs 'pool'" in printed
    assert TeacherTargets.load(out).meta["layer"] == "pool"
    out.write_bytes(out.read_bytes()[:1000])  # cut short: torch cannot read it
    stages.targets_main([*argv, "--set", f"{WIDE_GRID} matching_layer=pool"])
    assert "rebuilding: " in capsys.readouterr().out
    assert TeacherTargets.load(out).meta["layer"] == "pool"


def _stage_history(out_dir) -> list[dict]:
    return _strip(json.loads((out_dir / "metrics.json").read_text())["history"])


def test_distill_stage_with_cli_store_equals_without(env, cli_store, tmp_path):
    common = {
        "profile": "smoke",
        "data_root": str(env.root),
        "teacher": str(env.teacher_path),
        "device": "cpu",
        "matching": "swa",
        "drop_fraction": 0.3,
    }
    stages.train_student(DistillConfig(**common, out_dir=str(tmp_path / "online")))
    stages.train_student(
        DistillConfig(**common, out_dir=str(tmp_path / "cached"), teacher_targets=str(cli_store))
    )
    a, b = (_train_columns(_stage_history(tmp_path / d)) for d in ("online", "cached"))
    for key in a:
        torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), **TOL, msg=key)
    with pytest.raises(ValueError, match="matching layer 'attribution' vs 'pool'"):
        stages.train_student(
            DistillConfig(
                **common,
                out_dir=str(tmp_path / "wrong"),
                teacher_targets=str(cli_store),
                matching_layer="pool",
            )
        )


def test_iterative_pruning_with_cli_store_equals_without(env, cli_store, tmp_path, monkeypatch):
    """Iteration k reads view epoch k - 1 (view_offset): both store epochs are used."""
    read_epochs = []
    lookup = TeacherTargets.lookup

    def spy(self, views, key, device="cpu"):
        read_epochs.append(views.epoch)
        return lookup(self, views, key, device)

    monkeypatch.setattr(TeacherTargets, "lookup", spy)
    common = {
        "profile": "smoke",
        "data_root": str(env.root),
        "model": str(env.teacher_path),
        "device": "cpu",
        "matching": "swa",
        "drop_fraction": 0.3,
    }
    stages.prune_iterative(PruneIterativeConfig(**common, out_dir=str(tmp_path / "on")), False)
    stages.prune_iterative(
        PruneIterativeConfig(
            **common, out_dir=str(tmp_path / "cached"), teacher_targets=str(cli_store)
        ),
        False,
    )
    for k in (1, 2):
        a, b = (
            _train_columns(_stage_history(tmp_path / d / f"iter_{k:02d}")) for d in ("on", "cached")
        )
        for key in a:
            torch.testing.assert_close(
                torch.tensor(b[key]), torch.tensor(a[key]), **TOL, msg=f"iteration {k}: {key}"
            )
    steps = len(read_epochs) // 2  # 48 images in batches of 16, per iteration
    assert steps == 3 and read_epochs == [0] * steps + [1] * steps


def test_a_plugin_matching_in_the_grid_is_a_kind_of_the_store(plugin_sandbox):
    """The store's kinds come from the grid's COMPRESSION entries, not a fixed list."""
    importlib.import_module(plugin_sandbox)  # registers the "gxf" matching and its word

    prof = get_profile("smoke", "distill_methods=[kd,gxf] oneshot_methods=[naive,sswa]")
    drop = prof.drop_fraction  # iterative_methods stay [naive, swa]
    assert profile_kinds(prof) == [("swa", 0.0), ("swa", drop), ("gxf", 0.0)]
