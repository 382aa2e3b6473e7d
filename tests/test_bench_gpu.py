"""`benchmarks/gpu.py`: says so and measures nothing without CUDA; its figures run on the CPU.

No GPU here: the CUDA path itself (`run(args, "cuda")`) is exercised with device "cpu" and tiny
sizes, so everything but the device is the code a GPU machine runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmod import BENCHMARKS, load_benchmark

pytest.importorskip("sklearn")

bench = load_benchmark("gpu.py")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--profile", "smoke", "--width-div", "16", "--input-size", "32", "--batch", "4"]
TINY += ["--steps", "2", "--warmup", "1", "--images", "6", "--eval-batch-size", "4"]
TINY += ["--repeats", "1"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_script_without_cuda_says_so_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == bench.NO_CUDA
    assert not out.exists()


def test_teacher_throughput_on_cpu() -> None:
    result = bench.teacher_throughput(
        "cpu", width_div=16, num_classes=5, input_size=32, batch=2, steps=2, warmup=1
    )
    assert set(result["images_per_s"]) == {"amp_channels_last", "fp32"}
    assert all(len(times) == 2 for times in result["seconds_all"].values())
    assert all(ips > 0 for ips in result["images_per_s"].values())
    assert result["autocast_dtype"] is None  # no autocast on the CPU
    expected = result["seconds_per_step"]["fp32"] / result["seconds_per_step"]["amp_channels_last"]
    assert result["ratio"] == pytest.approx(expected)


def test_amp_channels_last_objective_is_the_teacher_loss() -> None:
    torch.manual_seed(0)
    model = bench.vgg16_bn_voc(16, 5, 32).eval()
    images = torch.randn(3, 3, 32, 32)  # (B, 3, S, S)
    labels = (torch.rand(3, 5) > 0.5).float()  # (B, K)
    loss, _ = bench.amp_channels_last_objective(model, images, labels)
    reference, _ = bench.multilabel_objective(model, images, labels)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def test_cuda_path_on_cpu_prints_each_figure_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench" / "gpu.json"
    result = bench.run(bench.parse_args([*TINY, "--out", str(out)]), "cpu")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == bench.summary_lines(result)
    first_words = ["teacher", "distill", "localization", "estimated"]
    assert [line.split(" ")[0] for line in lines] == first_words
    assert lines[3].startswith("estimated smoke device-hours")  # the smoke teacher was measured
    assert set(result["stage_hours"]) == {
        "teacher",
        "distill",
        "prune_oneshot",
        "prune_iterative",
        "evaluate",
    }
    assert "fp32+CL vs" in lines[0]  # no autocast on the CPU
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert written["cuda"] is False and written["device_name"] == "cpu"
    assert written["torch"] == torch.__version__ and written["date"]
    assert written["distill_step"]["device"] == "cpu"
    assert written["distill_step"]["speedup_head_only_vs_authors"] > 0
    assert written["evaluate"]["device"] == "cpu" and written["evaluate"]["ratio_total"] > 0
    assert written["evaluate"]["images"] == 6 and sum(written["evaluate"]["pairs"].values()) > 0
    assert written["teacher_train"]["input_size"] == 32


def test_stage_hours_count_every_run_of_the_grid() -> None:
    """smoke: teacher 2 epochs; 2 students x 1 epoch; 2 one-shot x 1; 2 x 2 iterations x 1."""
    prof = bench.get_profile("smoke")
    result = {
        "teacher_train": {"images_per_s": {"amp_channels_last": 100.0}},
        "distill_step": {"seconds_per_step": {"kd_swa_head_only": 0.5}, "batch": 10},
        "evaluate": {"seconds_batched_total": 2.0, "images": 4},
    }
    hours = bench.stage_hours(result, prof, train_images=3600, eval_images=7200)
    assert hours == pytest.approx(
        {
            "teacher": 2 * 3600 / 100 / 3600,
            "distill": 2 * 1 * 3600 * 0.05 / 3600,
            "prune_oneshot": 2 * 1 * 3600 / 100 / 3600,
            "prune_iterative": 2 * 2 * 1 * 3600 / 100 / 3600,
            "evaluate": (1 + 2 + 2 + 4) * 7200 * 0.5 / 3600,
        }
    )


def test_no_estimate_when_the_teacher_measured_is_not_the_profiles() -> None:
    prof = bench.get_profile("voc")
    assert bench.teacher_matches({"teacher_train": {"width_div": 1, "input_size": 227}}, prof)
    assert not bench.teacher_matches({"teacher_train": {"width_div": 16, "input_size": 32}}, prof)


def test_ddp_scaling_runs_the_step_under_torchrun_on_cpu() -> None:
    """gloo stands in for NCCL: 1 and 2 processes share a global batch of 4."""
    result = bench.ddp_scaling("cpu", [1, 2], 16, 32, batch=4, steps=2, warmup=1)
    assert result["counts"] == [1, 2]
    assert [result["runs"][n]["world"] for n in (1, 2)] == [1, 2]
    assert [result["runs"][n]["per_rank_batch"] for n in (1, 2)] == [4, 2]
    assert result["efficiency"][1] == 1.0
    assert all(ips > 0 for ips in result["images_per_s"].values())
    expected = result["images_per_s"][2] / (2 * result["images_per_s"][1])
    assert result["efficiency"][2] == pytest.approx(expected)
    line = bench.scaling_line(result, 32)
    assert line.startswith("DDP teacher train 32 px:") and " img/s on 2 (" in line
