"""`benchmarks/quantize.py` end to end on a small VGG: it writes what it reports, and what it
reports holds (no timing is asserted: the benchmark times)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmod import load_benchmark

from attrlib.data import load_classes
from attrlib.engine import make_checkpoint
from attrlib.io import save_torch_atomic

from nets import random_vgg

bench = load_benchmark("quantize.py")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_benchmark_writes_sizes_latencies_and_the_int8_agreement(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    classes = load_classes(synth_root)
    checkpoint = tmp_path / "teacher.pt"
    save_torch_atomic(checkpoint, make_checkpoint(random_vgg(len(classes), 32, 0), classes))
    out = tmp_path / "quantize.json"
    argv = ["quantize.py", "--checkpoint", str(checkpoint), "--data-root", str(synth_root)]
    argv += ["--profile", "smoke", "--repeats", "2", "--calibration", "2", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    result = bench.main()
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["bytes_int8"] < 0.4 * result["bytes_float"]
    assert result["seconds_per_batch_int8"] > 0 and result["seconds_per_batch_float"] > 0
    assert result["speedup"] == pytest.approx(
        result["seconds_per_batch_float"] / result["seconds_per_batch_int8"]
    )
    assert result["max_logit_gap_relative"] < 0.05
    assert abs(result["map_class_int8"] - result["map_class_fake_quantized"]) < 0.05
    assert result["threads"] == 1 and result["engine"] == "x86"
