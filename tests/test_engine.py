import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from attrlib.config import Recipe
from attrlib.engine import (
    build_training,
    check_compatible,
    describe_checkpoint,
    epoch_loader,
    epoch_seed,
    fit,
    load_checkpoint,
    load_model,
    make_checkpoint,
    multilabel_objective,
    train_epoch,
    validate,
)
from attrlib.models import vgg16_bn_voc

CLASSES = ("a", "b", "c")
RECIPE = Recipe(epochs=3, batch_size=8, lr=0.05, schedule="onecycle")


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 3, generator=g) > 0.5).float()
    labels[labels.sum(1) == 0, 0] = 1
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    # class k brightens channel k, so the task is learnable
    images += labels[:, :, None, None]
    return TensorDataset(images, labels)


def _run(out_dir, recipe=RECIPE, seed=0, **kw):
    torch.manual_seed(123)  # model init; the loop reseeds per epoch itself
    model = vgg16_bn_voc(16, num_classes=3, input_size=32)
    metrics = fit(
        model,
        multilabel_objective,
        _data(32, 0),
        _data(16, 1),
        recipe,
        out_dir=out_dir,
        classes=CLASSES,
        seed=seed,
        device=torch.device("cpu"),
        stage_config={"name": "test", "seed": seed},
        progress=False,
        **kw,
    )
    return model, metrics


def test_fit_writes_checkpoints_and_metrics(tmp_path):
    model, metrics = _run(tmp_path)
    assert metrics["finished"] and len(metrics["history"]) == 3
    for name in ("best.pt", "last.pt", "metrics.json", "config.json"):
        assert (tmp_path / name).is_file()
    assert not list(tmp_path.glob("*.tmp"))
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["best"] == metrics["best"]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["classes"] == list(CLASSES) and ckpt["epoch"] == 2 and ckpt["seed"] == 0
    assert {"optimizer", "scheduler", "history", "stage_config"} <= set(ckpt)
    # round trip: the rebuilt best model gives the caller's model outputs
    again, _ = load_model(tmp_path / "best.pt", classes=CLASSES)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_every_epoch_of_fit_is_train_epoch_then_validate(tmp_path):
    """Run by hand, `train_epoch` and `validate` give fit's record of each epoch, and end
    with the weights of its last.pt, bit for bit."""
    _, metrics = _run(tmp_path)
    torch.manual_seed(123)  # the model init of `_run`
    model = vgg16_bn_voc(16, num_classes=3, input_size=32).to(memory_format=torch.channels_last)
    train_set, val_set, device = _data(32, 0), _data(16, 1), torch.device("cpu")
    steps_per_epoch = math.ceil(len(train_set) / RECIPE.batch_size)
    optimizer, scheduler, scaler = build_training(model, RECIPE, steps_per_epoch, device)
    for epoch, record in enumerate(metrics["history"]):
        torch.manual_seed(epoch_seed(0, epoch))
        loader = epoch_loader(train_set, RECIPE.batch_size, epoch_seed(0, epoch), view_epoch=None)
        logs = train_epoch(
            model,
            multilabel_objective,
            loader,
            optimizer,
            scheduler,
            scaler,
            device,
            progress=False,
        )
        assert {f"train_{k}": v for k, v in logs.items()} == {
            k: v for k, v in record.items() if k.startswith("train_")
        }
        assert optimizer.param_groups[0]["lr"] == record["lr"]
        assert validate(model, val_set, device) == {
            k: v for k, v in record.items() if k.startswith("val_")
        }
    last = load_checkpoint(tmp_path / "last.pt")["model_state"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, last[k]), k


def _history(metrics: dict) -> list[dict]:
    """A run's per-epoch records without their wall times (the part seeds fix)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["history"]]


def _interrupt_after(last_epoch: int):
    """An `on_epoch_end` that stops training once epoch `last_epoch` (0-based) is saved: in
    the next epoch, whose callback runs before that epoch's checkpoint."""

    def interrupt(epoch, record):
        if epoch == last_epoch + 1:
            raise KeyboardInterrupt

    return interrupt


def test_same_seed_same_numbers(tmp_path):
    _, a = _run(tmp_path / "a")
    _, b = _run(tmp_path / "b")
    _, c = _run(tmp_path / "c", seed=1)
    assert _history(a) == _history(b)
    assert _history(a) != _history(c)


def test_resume_equals_uninterrupted(tmp_path):
    full, full_metrics = _run(tmp_path / "full")

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch_end=_interrupt_after(0))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    resumed, resumed_metrics = _run(tmp_path / "cut")
    assert _history(resumed_metrics) == _history(full_metrics)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_finished_run_is_not_retrained_and_other_config_refused(tmp_path):
    _run(tmp_path)
    before = (tmp_path / "last.pt").stat().st_mtime_ns
    _, metrics = _run(tmp_path)
    assert metrics["finished"]
    assert (tmp_path / "last.pt").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="different config"):
        _run(tmp_path, recipe=Recipe(epochs=4, batch_size=8, lr=0.05))


def test_nan_loss_stops_without_touching_last_good_checkpoint(tmp_path):
    _run(tmp_path, recipe=Recipe(epochs=1, batch_size=8, lr=0.05))
    good = (tmp_path / "last.pt").read_bytes()

    def nan_objective(model, images, labels, views=None):
        loss, logs = multilabel_objective(model, images, labels)
        return loss * float("nan"), logs

    model = vgg16_bn_voc(16, num_classes=3, input_size=32)
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1"):
        fit(
            model,
            nan_objective,
            _data(32, 0),
            _data(16, 1),
            RECIPE,
            out_dir=tmp_path / "nan",
            classes=CLASSES,
            seed=0,
            device=torch.device("cpu"),
            stage_config={},
            progress=False,
        )
    assert not (tmp_path / "nan" / "last.pt").exists()
    assert (tmp_path / "last.pt").read_bytes() == good


def test_wrong_architecture_or_classes_named(tmp_path):
    _run(tmp_path, recipe=Recipe(epochs=1, batch_size=8, lr=0.05))
    ckpt = load_checkpoint(tmp_path / "best.pt")
    other = vgg16_bn_voc(8, num_classes=3, input_size=32).config
    with pytest.raises(ValueError, match=r"widths \[4, 4, 8, 8"):
        check_compatible(ckpt, other, CLASSES)
    with pytest.raises(ValueError, match=r"classes \['a', 'b', 'c'\] vs \['a', 'b', 'x'\]"):
        load_model(tmp_path / "best.pt", classes=("a", "b", "x"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"foo": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: not an attrlib checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def test_checkpoint_that_carries_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "best.pt"
    torch.save({"model_config": {}, "classes": [], "model_state": {}, "x": _RunsCode()}, path)
    with pytest.raises(ValueError, match=r"best\.pt: refused to load"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def _cut(path):
    path.write_bytes(path.read_bytes()[:300])


def test_truncated_checkpoint_names_the_file_what_it_is_and_the_fix(tmp_path):
    run = tmp_path / "runs" / "smoke" / "distill" / "x2-kd-s0"
    run.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        torch.save({"model_state": {"w": torch.zeros(1000)}}, run / name)
        _cut(run / name)
    with pytest.raises(ValueError, match=r"best\.pt: unreadable best checkpoint of .*x2-kd-s0 "):
        load_checkpoint(run / "best.pt")
    with pytest.raises(ValueError, match=rf"delete {run} and rerun `make distill`"):
        load_checkpoint(run / "best.pt")
    with pytest.raises(ValueError, match=r"last-epoch checkpoint .*trains the run from the start"):
        load_checkpoint(run / "last.pt")


def test_checkpoints_are_described_by_their_run():
    teacher = describe_checkpoint("runs/p/teacher/best.pt")
    assert teacher == (
        "best checkpoint of the teacher in runs/p/teacher",
        "delete runs/p/teacher and rerun `make teacher`",
    )
    what, fix = describe_checkpoint("runs/p/prune_iterative/swa-s0/iter_03/best.pt")
    assert what == "best checkpoint of runs/p/prune_iterative/swa-s0"
    assert fix == "delete runs/p/prune_iterative/swa-s0 and rerun `make prune-iterative`"
    assert describe_checkpoint("elsewhere/model.pt")[1] == "delete it and rerun its stage"


def test_corrupt_last_pt_of_a_finished_run_does_not_block_reloading_it(tmp_path):
    first, metrics = _run(tmp_path)
    _cut(tmp_path / "last.pt")
    again, again_metrics = _run(tmp_path)
    assert again_metrics == metrics
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_last_pt_of_an_unfinished_run_is_moved_aside_and_the_run_starts_over(
    tmp_path, capsys
):
    _, full = _run(tmp_path / "full")

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", on_epoch_end=_interrupt_after(1))
    _cut(tmp_path / "cut" / "last.pt")
    _, metrics = _run(tmp_path / "cut")
    assert "moved it to last.pt.corrupt; training starts from epoch 1" in capsys.readouterr().out
    assert (tmp_path / "cut" / "last.pt.corrupt").is_file()
    assert _history(metrics) == _history(full)


def test_checkpoints_record_their_architecture_and_load_through_the_registry(tmp_path):
    from attrlib.architectures import ARCHITECTURES

    model = vgg16_bn_voc(width_div=16, num_classes=3, input_size=32).eval()
    ckpt = make_checkpoint(model, ("a", "b", "c"))
    assert ckpt["architecture"] == "vgg16_bn" == model.architecture
    torch.save(ckpt, tmp_path / "new.pt")
    legacy = {k: v for k, v in ckpt.items() if k != "architecture"}  # written before the field
    torch.save(legacy, tmp_path / "old.pt")
    x = torch.randn(2, 3, 32, 32)
    for name in ("new.pt", "old.pt"):
        loaded, _ = load_model(tmp_path / name, classes=("a", "b", "c"))
        assert torch.equal(loaded.eval()(x), model(x))
    torch.save({**ckpt, "architecture": "resnet_nope"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"foreign\.pt: a 'resnet_nope' network.*vgg16_bn"):
        load_model(tmp_path / "foreign.pt")
    assert "vgg16_bn" in ARCHITECTURES
