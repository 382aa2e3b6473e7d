"""attrlib.distributed: DDP training and sharded evaluation under a real torchrun (gloo, 2 CPU
processes), compared with one process.

The one-process reference of a 2-rank run is `fit(..., micro_batches=2)`: every step splits
the recipe's batch into the ranks' two shards, runs each on its rank's random stream and
averages their gradients, the batch norms keeping rank 0's running statistics. That is the
arithmetic of DDP, so losses, validation scores and weights must agree to float rounding.
Tolerance: relative 1e-6 on every logged number and 1e-6 absolute on weights. On this CPU
they agree bit for bit; the tolerance only allows gloo's all-reduce to add the two ranks'
gradients in another order than autograd accumulates them.

(A plain one-process run differs from both by design: its batch norms normalise the whole
batch of 16, each rank's its own 8, and its dropout draws one stream.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from attrlib import distributed, engine
from attrlib.distributed import Ranks
from attrlib.models import vgg16_bn_voc

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "ddp_run.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
REL = 1e-6
# validation and evaluation predict 8 images in batches of 3: batches 0 and 2 on rank 0, 1
# on rank 1 (with the default 128 the one batch would sit on rank 0)
SHARDED_VAL = {"predict_batch_size": 3}


def run(tmp: Path, name: str, spec: dict, ranks: int = 1) -> subprocess.CompletedProcess:
    """tests/ddp_run.py with `spec`, under torchrun with `ranks` processes or as one."""
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    if ranks > 1:
        command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={ranks}", str(RUNNER)]
    else:
        command = [sys.executable, str(RUNNER)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, str(spec_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def history(out_dir: Path) -> list[dict]:
    """A finished run's per-epoch records without their wall times."""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["finished"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["history"]]


def assert_same_history(a: Path, b: Path) -> None:
    ha, hb = history(a), history(b)
    assert [sorted(r) for r in ha] == [sorted(r) for r in hb]
    for ra, rb in zip(ha, hb, strict=True):
        assert ra == pytest.approx(rb, rel=REL), (ra, rb)


def assert_same_weights(a: Path, b: Path, exact: bool = False) -> None:
    sa = torch.load(a / "best.pt", weights_only=True)["model_state"]
    sb = torch.load(b / "best.pt", weights_only=True)["model_state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-6, msg=key)


def config(synth_root: Path, out_dir: Path, **fields) -> dict:
    return {
        "profile": "smoke",
        "data_root": str(synth_root),
        "out_dir": str(out_dir),
        "device": "cpu",
        **fields,
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def teachers(work: Path, synth_root: Path) -> dict[str, Path]:
    """The smoke teacher trained by 2 ranks (writes audited) and by one process as 2 ranks."""
    out = {"ddp": work / "teacher-ddp", "one": work / "teacher-one"}
    spec = {"stage": "teacher", "config": config(synth_root, out["ddp"]), **SHARDED_VAL}
    ok(run(work, "teacher-ddp", {**spec, "audit": str(work / "audit-teacher")}, ranks=2))
    spec = {"stage": "teacher", "config": config(synth_root, out["one"]), "micro_batches": 2}
    ok(run(work, "teacher-one", {**spec, **SHARDED_VAL}))
    return out


def test_ddp_teacher_equals_one_process_with_the_same_global_batch(teachers):
    assert_same_history(teachers["ddp"], teachers["one"])
    assert_same_weights(teachers["ddp"], teachers["one"])
    assert len(history(teachers["ddp"])) == 2  # the smoke recipe's epochs


def test_rank_zero_alone_writes(teachers, work: Path):
    rank0 = json.loads((work / "audit-teacher" / "rank0.json").read_text())
    rank1 = json.loads((work / "audit-teacher" / "rank1.json").read_text())
    assert rank1 == []
    assert {"best.pt", "last.pt", "metrics.json", "config.json"} <= set(rank0)
    assert any(p.startswith("tb/") for p in rank0)
    assert sorted(p.name for p in teachers["ddp"].iterdir()) == [
        "best.pt",
        "config.json",
        "last.pt",
        "metrics.json",
        "tb",
    ]


def test_ddp_kd_swa_equals_one_process_with_the_same_global_batch(teachers, work, synth_root):
    teacher = str(teachers["one"] / "best.pt")
    runs = {}
    for name, ranks, extra in (("ddp", 2, {}), ("one", 1, {"micro_batches": 2})):
        runs[name] = work / f"swa-{name}"
        fields = config(synth_root, runs[name], teacher=teacher, matching="swa", epochs=2)
        spec = {"stage": "distill", "config": fields, **extra, **SHARDED_VAL}
        ok(run(work, f"swa-{name}", spec, ranks))
    assert_same_history(runs["ddp"], runs["one"])
    assert_same_weights(runs["ddp"], runs["one"])
    assert all(r["train_match"] > 0 for r in history(runs["ddp"]))  # the matching term acted


def test_killed_ddp_run_resumes_and_ends_as_the_uninterrupted_one(teachers, work, synth_root):
    out = work / "teacher-killed"
    spec = {"stage": "teacher", "config": config(synth_root, out), "stop_after": 1, **SHARDED_VAL}
    stopped = run(work, "teacher-killed", spec, ranks=2)
    assert stopped.returncode != 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics["finished"] and len(metrics["history"]) == 1
    resumed = run(work, "teacher-resumed", {**spec, "stop_after": 0}, ranks=2)
    ok(resumed)
    assert "resuming after epoch 0 from last.pt" in resumed.stdout
    assert history(out) == history(teachers["ddp"])
    assert_same_weights(out, teachers["ddp"], exact=True)


def test_sharded_evaluation_equals_the_one_process_table(teachers, work, synth_root):
    # a teacher that predicts every class: every ground-truth pair is scored
    ckpt = engine.load_checkpoint(teachers["one"] / "best.pt")
    ckpt["model_state"]["classifier.1.bias"] += 20.0
    checkpoint = work / "predicts-all" / "best.pt"
    checkpoint.parent.mkdir()
    torch.save(ckpt, checkpoint)
    outs = {}
    for name, ranks in (("ddp", 2), ("one", 1)):
        outs[name] = work / f"eval-{name}"
        fields = config(
            synth_root,
            outs[name],
            checkpoint=str(checkpoint),
            teacher=str(teachers["one"] / "best.pt"),
            batch_size=3,  # 8 images: batches 0 and 2 on rank 0, 1 on rank 1
        )
        audit = str(work / f"audit-eval-{name}")
        spec = {"stage": "evaluate", "config": fields, "audit": audit, **SHARDED_VAL}
        ok(run(work, f"eval-{name}", spec, ranks))
    pairs = {name: (out / "eval_pairs.csv").read_text() for name, out in outs.items()}
    assert pairs["ddp"] == pairs["one"]
    assert len(pairs["one"].splitlines()) > 10
    summaries = {name: json.loads((out / "eval.json").read_text()) for name, out in outs.items()}
    for summary in summaries.values():
        summary["config"].pop("out_dir")
    assert summaries["ddp"] == summaries["one"]
    assert summaries["one"]["pairs_scored"] == summaries["one"]["pairs_gt"]
    assert json.loads((work / "audit-eval-ddp" / "rank1.json").read_text()) == []


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("sync_bn", [False, True])
def test_ddp_on_two_gpus(work, synth_root, sync_bn):
    """NCCL, one GPU per rank: the run finishes, rank 1 writes nothing; without sync_bn it
    matches one GPU computing the two ranks' shards (cuDNN picks its own kernels per batch
    size, so to 1e-3 rather than float rounding)."""
    name = f"gpu-{'sync' if sync_bn else 'plain'}"
    fields = config(synth_root, work / name, device="cuda")
    audit = str(work / f"audit-{name}")
    ok(
        run(
            work,
            name,
            {"stage": "teacher", "config": fields, "sync_bn": sync_bn, "audit": audit},
            2,
        )
    )
    assert json.loads((work / f"audit-{name}" / "rank1.json").read_text()) == []
    assert torch.load(work / name / "last.pt", weights_only=True)["processes"] == 2
    if not sync_bn:
        one = work / f"{name}-one"
        spec = {"stage": "teacher", "config": {**fields, "out_dir": str(one)}, "micro_batches": 2}
        ok(run(work, f"{name}-one", spec))
        for a, b in zip(history(work / name), history(one), strict=True):
            assert a == pytest.approx(b, rel=1e-3)


# ----------------------------------------------------------------------------- in-process


def test_rank_shards_make_up_the_one_process_batches(synth_root):
    from attrlib.stages import build_datasets

    train = build_datasets(str(synth_root), "smoke")[0]
    one = [b[2].tolist() for b in engine.epoch_loader(train, 16, seed=7, view_epoch=0)]
    shards = [
        [b[2].tolist() for b in engine.epoch_loader(train, 16, 7, 0, rank=Ranks(r, 2))]
        for r in range(2)
    ]
    assert [len(b) for b in shards[0]] == [8, 4]
    for step, batch in enumerate(one):
        together = shards[0][step] + shards[1][step]
        assert sorted(together) == sorted(batch)
        assert batch[0::2] == shards[0][step] and batch[1::2] == shards[1][step]


def test_epoch_order_is_the_one_process_loaders():
    loader = torch.utils.data.DataLoader(
        range(11), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    assert distributed.epoch_order(11, 3) == torch.cat(list(loader)).tolist()


def test_uneven_epochs_are_padded_as_distributed_sampler_pads():
    order = [4, 0, 3, 1, 2]
    shards = [distributed.shard_indices(order, Ranks(r, 2)) for r in range(2)]
    assert shards == [[4, 3, 2], [0, 1, 4]]


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(ValueError, match="batch_size 15 does not split over 2 processes"):
        distributed.per_rank_batch(15, 2)


def test_micro_batches_must_be_positive(tmp_path, synth_root):
    from attrlib.config import get_profile

    model = vgg16_bn_voc(8, num_classes=3, input_size=32)
    with pytest.raises(ValueError, match="micro_batches must be"):
        engine.fit(
            model,
            engine.multilabel_objective,
            [],
            [],
            get_profile("smoke").teacher,
            out_dir=tmp_path,
            classes=("a", "b", "c"),
            seed=0,
            device=torch.device("cpu"),
            stage_config={},
            micro_batches=0,
        )


def test_rng_streams_draw_each_shards_own_stream():
    device = torch.device("cpu")
    streams = distributed.RngStreams(11, 2, device)
    with streams.stream(1):
        a1 = torch.rand(3)
    with streams.stream(0):
        a0 = torch.rand(3)
    with streams.stream(1):
        b1 = torch.rand(3)
    torch.manual_seed(distributed.shard_seed(11, 1))
    assert torch.equal(torch.cat([a1, b1]), torch.rand(6))
    torch.manual_seed(11)
    assert torch.equal(a0, torch.rand(3))


def test_frozen_running_stats_normalise_by_the_batch_and_keep_the_statistics():
    norm = nn.BatchNorm2d(4).train()
    norm(torch.randn(8, 4, 3, 3))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    x = torch.randn(8, 4, 3, 3) * 3 + 1
    with distributed.frozen_running_stats(norm):
        frozen = norm(x)
    for key, value in norm.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(frozen, norm(x))  # same batch-statistics output as a tracking pass
    assert norm.momentum == 0.1


def test_batch_norm_swap_keeps_the_tensors_an_optimiser_holds():
    model = vgg16_bn_voc(8, num_classes=3, input_size=32)
    params = [id(p) for p in model.parameters()]
    buffers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    distributed.swap_batch_norms_(model, nn.SyncBatchNorm)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == 13
    assert [id(p) for p in model.parameters()] == params
    distributed.swap_batch_norms_(model, nn.BatchNorm2d)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert [id(p) for p in model.parameters()] == params
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == buffers


def test_sync_bn_on_the_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    model = vgg16_bn_voc(8, num_classes=3, input_size=32)
    with pytest.raises(ValueError, match="sync_bn=True needs CUDA"):
        with distributed.replica(model, torch.device("cpu"), sync_bn=True):
            pass


def test_outside_a_group_every_process_is_rank_zero_and_writes(tmp_path):
    from attrlib.io import write_text_atomic

    assert distributed.ranks() == Ranks(0, 1) and distributed.is_main()
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.gather(5) == [5]
    assert distributed.sum_over_ranks({"x": 2.0}) == {"x": 2.0}
    write_text_atomic(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").read_text() == "x"


def test_a_torchrun_rank_knows_its_rank_before_the_group_forms(monkeypatch, tmp_path):
    """Notebook 01 saves its sample grid before the stage joins the group: rank 1 must not."""
    from attrlib.plots import save_figure

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.ranks() == Ranks(1, 2) and not distributed.is_main()
    import matplotlib.pyplot as plt

    fig = plt.figure()
    save_figure(fig, tmp_path / "samples.png")
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main()


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    from attrlib.io import save_torch_atomic, write_json_atomic

    monkeypatch.setattr(distributed, "ranks", lambda: Ranks(1, 2))
    write_json_atomic(tmp_path / "a" / "m.json", {"x": 1})
    save_torch_atomic(tmp_path / "b.pt", {"x": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_shard_batches_deal_the_one_process_batches_round_robin():
    shares = [distributed.shard_batches(8, 3, Ranks(r, 2)) for r in range(2)]
    assert [list(numbers) for numbers, _ in shares] == [[0, 2], [1]]
    assert [[list(b) for b in batches] for _, batches in shares] == [
        [[0, 1, 2], [6, 7]],
        [[3, 4, 5]],
    ]
    assert distributed.gather_batches([(2, "c"), (0, "a")]) == ["a", "c"]
