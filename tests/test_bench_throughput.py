"""The correctness half of `benchmarks/distill_throughput.py`: both variants train alike.

No timing here: the benchmark times; this checks that, inside the benchmark's own step, the
cached-targets variant gives the online variant's losses on the same batches (so the
throughput ratio compares equal work) while never running the teacher, and that the
benchmark runs end to end and writes what it reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmod import load_benchmark

from attrlib.config import get_profile
from attrlib.data import VOCClassification, load_classes
from attrlib.engine import make_checkpoint
from attrlib.io import save_torch_atomic
from attrlib.stages import view_spec
from attrlib.views import TrainViews

from nets import random_vgg

PROFILE = "smoke"

bench = load_benchmark("distill_throughput.py")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Smoke views of the session's synthetic set, a random teacher saved, two batches."""
    prof = get_profile(PROFILE)
    classes = load_classes(synth_root)
    train = TrainViews(VOCClassification(synth_root, "train", classes), view_spec(PROFILE))
    # random BN and biases: a fresh teacher's near-zero classifier gives degenerate maps
    teacher = random_vgg(len(classes), prof.input_size, seed=0).eval()
    path = tmp_path_factory.mktemp("throughput") / "teacher.pt"
    save_torch_atomic(path, make_checkpoint(teacher, classes))
    batches = bench.draw_batches(train, 2, 8)
    return prof, train, teacher, path, batches


def _counting_teacher_forwards(teacher) -> tuple[dict[str, int], object]:
    counts = {"forward": 0}

    def hook(module, inputs, output):
        counts["forward"] += 1

    return counts, teacher.features[0].register_forward_hook(hook)


@pytest.mark.parametrize("matching", bench.MATCHINGS)
def test_cached_and_online_steps_give_the_same_losses(env, matching: str) -> None:
    prof, train, teacher, path, batches = env
    store, seconds = bench.build_store(teacher, train, matching, prof.matching_layer, path, 16)
    assert seconds > 0 and store.epochs == 1
    student = bench.make_student(teacher, 2)
    with torch.no_grad():  # a near-zero classifier would leave most student maps dead
        student.classifier[-1].weight.normal_(0.0, 0.3)
    objs = bench.objectives(teacher, matching, store, prof, train.spec.seed)
    losses, forwards = {}, {}
    for variant, objective in objs.items():
        student_copy, optimizer = bench.prepare(student, prof.distill)
        counts, handle = _counting_teacher_forwards(teacher)
        try:
            losses[variant] = []
            for step, batch in enumerate(batches):  # the second step follows an optimizer step
                torch.manual_seed(10 + step)  # the same dropout masks in both students
                loss, logs = bench.train_step(student_copy, optimizer, objective, batch)
                losses[variant].append(loss)
                if matching != "none" and step == 0:
                    # the comparison means something only if the matching term acts
                    assert logs["match"] > 1e-3 and logs["dead_maps"] < 0.5
        finally:
            handle.remove()
        forwards[variant] = counts["forward"]
    assert forwards == {"online": len(batches), "cached": 0}
    for cached, online in zip(losses["cached"], losses["online"], strict=True):
        torch.testing.assert_close(cached, online, rtol=1e-5, atol=1e-5)
    assert losses["online"][0] != losses["online"][1]  # two batches, two different losses
    checked = bench.check_same_loss(student, prof.distill, objs, batches[0])
    assert checked["cached"] == pytest.approx(checked["online"], rel=1e-5)


def test_interleaved_order_keeps_pairs_together_and_rotates() -> None:
    groups = [["a-online", "a-cached"], ["b-online", "b-cached"], ["c-online", "c-cached"]]
    orders = [bench.interleaved_order(groups, r) for r in range(6)]
    for order in orders:
        assert sorted(order) == sorted(sum(groups, []))
        for group in groups:  # the two sides of a ratio run back to back
            assert abs(order.index(group[0]) - order.index(group[1])) == 1
    # over 2 x 3 rounds every variant opens a round once, and each side of a pair leads in turn
    firsts = [order[0] for order in orders]
    assert firsts == ["a-online", "b-cached", "c-online", "a-cached", "b-online", "c-cached"]


def test_main_writes_every_variant_and_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "distill_throughput.json"
    argv = ["--profile", PROFILE, "--batches", "2", "--rounds", "2", "--warmup", "0"]
    result = bench.main([*argv, "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert written["torch_threads"] == 1 and written["width_divs"] == [2, 4]
    assert written["batches"] == 2 and written["rounds"] == 2 and written["warmup"] == 0
    batch = get_profile(PROFILE).distill.batch_size
    assert written["batch_size"] == batch

    distill = written["distill"]
    keys = {f"x{w}-{m}" for w in (2, 4) for m in bench.MATCHINGS}
    variants = {f"{k}-{v}" for k in keys for v in bench.VARIANTS}
    assert set(distill["images_per_second"]) == variants
    assert set(distill["images_per_second_cpu"]) == variants
    assert all(len(times) == 2 for times in distill["seconds_per_pass_all"].values())
    assert all(v > 0 for v in distill["images_per_second"].values())
    for name in ("ratio_cached_vs_online", "ratio_cpu", "loss_check"):
        assert set(distill[name]) == keys, name
    assert all(r > 0 for r in distill["ratio_cached_vs_online"].values())
    assert all(r > 0 for r in distill["ratio_cpu"].values())
    assert all(r is None or r > 0 for r in distill["break_even_runs"].values())
    assert set(distill["break_even_runs"]) == keys
    assert all(s > 0 for s in distill["targets_build_seconds"].values())
    assert distill["targets_views_built"] == 2 * batch  # exactly the images of the batches
    assert distill["images_per_pass"] == 2 * batch
    teacher_widths = distill["teacher_widths"]
    assert distill["student_widths"] == {
        f"x{d}": [max(1, w // d) for w in teacher_widths] for d in (2, 4)
    }
    goal = distill["goal"]
    assert goal["ratio_at_least"] == 3.0 and goal["width"] == "x4"
    assert goal["met"] == all(r >= 3.0 for r in goal["ratios"].values())

    data = written["data"]
    assert set(data["seconds_per_epoch"]) == {"per_image", "views"}
    assert all(s > 0 for s in data["seconds_per_epoch"].values())
    assert all(s > 0 for s in data["seconds_per_epoch_cpu"].values())
    assert data["ratio_per_image_vs_views"] > 0 and data["ratio_cpu"] > 0
    assert data["batch_size"] == batch and data["num_workers"] == 0
