"""The correctness half of `benchmarks/evaluate.py`: the authors' loop and the batched path agree.

No timing here: the benchmark times; this checks that both paths score the same (image, class)
pairs with equal AUC and pointing, for every registered method, on a tiny model and data set.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import attrlib.evaluate
from attrlib.attribution import METHODS
from attrlib.data import VOCLocalization, load_classes
from attrlib.evaluate import localization_table
from attrlib.models import vgg16_bn_voc

pytest.importorskip("sklearn")

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_evaluate", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def tiny_setup(synth_root: Path):
    classes = load_classes(synth_root)
    torch.manual_seed(0)
    model = vgg16_bn_voc(width_div=16, num_classes=len(classes), input_size=32).eval()
    dataset = VOCLocalization(synth_root, "val", classes, size=32)
    return model, dataset


@pytest.mark.parametrize("require_prediction", [False, True])
def test_authors_loop_equals_batched_path(tiny_setup, require_prediction: bool) -> None:
    """Same pairs, same maps up to rounding, same scores on the same maps (float64)."""
    model, dataset = tiny_setup
    methods = METHODS.names()  # every registered method, new ones included
    check = bench.check_equal_scores(
        model, dataset, methods, batch_size=3, require_prediction=require_prediction
    )  # raises AssertionError on any difference beyond the tolerances
    assert check["maps"]["max_rel_diff"] <= bench.MAP_TOLERANCE
    assert check["same_maps"]["auc_max"] <= bench.TOLERANCE
    assert check["same_maps"]["pointing_max"] == 0.0
    # end to end only last-bit map differences separate the paths: a few tied pixels at most
    assert check["end_to_end"]["auc_max"] < 1e-3


def test_check_catches_a_wrong_batched_path(tiny_setup, monkeypatch) -> None:
    """A batched path that scores each row with another row's class must fail the check."""
    model, dataset = tiny_setup
    real_attribute = attrlib.evaluate.attribute

    def swapped(model, images, classes, method):
        return real_attribute(model, images, classes.roll(1), method)

    monkeypatch.setattr(attrlib.evaluate, "attribute", swapped)  # the library's call only
    with pytest.raises(AssertionError, match="differs"):
        bench.check_equal_scores(
            model, dataset, ["ebp", "lrp"], batch_size=4, require_prediction=False
        )


def test_pair_selection_matches_select_pairs(tiny_setup) -> None:
    model, dataset = tiny_setup
    batched, counts = localization_table(
        model, dataset, ["gradcam"], batch_size=4, progress=False, require_prediction=True
    )
    pairs = list(bench.authors_pairs(model, dataset, require_prediction=True))
    assert len(pairs) == counts["pairs_scored"] == len(batched)
    every_gt = list(bench.authors_pairs(model, dataset, require_prediction=False))
    assert len(every_gt) >= len(pairs) and len(every_gt) > 0


def test_compare_tables_rejects_different_scores(tiny_setup) -> None:
    model, dataset = tiny_setup
    table = bench.authors_localization(model, dataset, "gradcam", require_prediction=False)
    assert len(table) > 0
    shifted = table.assign(auc=table["auc"] + 1e-3)
    with pytest.raises(AssertionError, match="auc differs"):
        bench.compare_tables(table, shifted)
    with pytest.raises(AssertionError, match="different pairs"):
        bench.compare_tables(table, table.iloc[1:])
