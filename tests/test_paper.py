import json

import numpy as np
import pandas as pd
import pytest

from attrlib.paper import (
    collect,
    distillation_table,
    format_table,
    method_label,
    paired_tests,
    save_table,
    summary_text,
)


def _run(root, rel, config, auc_shift, seed):
    folder = root / rel
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, "seed": seed}))
    rng = np.random.default_rng(seed)
    pairs = pd.DataFrame(
        {
            "image": np.repeat(np.arange(20), 2),
            "class": 0,
            "method": np.tile(["gradcam", "lrp"], 20),
            "auc": np.clip(0.6 + auc_shift + rng.normal(0, 0.01, 40), 0, 1),
            "pointing": 1.0,
        }
    )
    pairs.to_csv(folder / "eval_pairs.csv", index=False)
    loc = {m: {"auc": g["auc"].mean(), "pointing": 1.0} for m, g in pairs.groupby("method")}
    summary = {
        "map_class": 0.8 + auc_shift,
        "map_sample": 0.8,
        "f1": 0.7,
        "params": 1000,
        "nonzero_params": 1000,
        "macs": 5000,
        "sparsity": 0.0,
        "localization": loc,
    }
    (folder / "eval.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path):
    _run(tmp_path, "teacher", {}, 0.2, 0)
    for seed in (0, 1):
        _run(tmp_path, f"distill/x2-kd-s{seed}", {"width_div": 2, "matching": "none"}, 0.0, seed)
        _run(tmp_path, f"distill/x2-swa-s{seed}", {"width_div": 2, "matching": "swa"}, 0.1, seed)
    return tmp_path


def test_method_labels():
    assert method_label("distill", {"matching": "none"}) == "KD"
    assert method_label("distill", {"matching": "swa", "drop_fraction": 0.3}) == "KD+stochastic SWA"
    assert method_label("prune_oneshot", {"matching": "none"}) == "naive"
    assert method_label("prune_iterative", {"matching": "swa"}) == "SWA"


def test_collect_names_missing_stages(tmp_path, runs):
    with pytest.raises(FileNotFoundError, match=r"\['prune_oneshot', 'prune_iterative'\]"):
        collect(runs)
    with pytest.raises(FileNotFoundError, match="teacher"):
        collect(tmp_path / "nothing")


def test_tables_hold_every_run_with_spread(runs):
    frame = collect(runs, require=("teacher", "distill"))
    assert len(frame) == 5
    table = distillation_table(frame)
    assert list(table.index) == [(1, "teacher"), (2, "KD"), (2, "KD+SWA")]
    assert table.loc[(2, "KD+SWA"), ("seeds", "n")] == 2
    shown = format_table(table)
    assert "±" in shown.loc[(2, "KD"), "gradcam auc"]
    save_table(table, runs / "paper" / "t")
    for suffix in (".csv", ".md", ".tex"):
        assert (runs / "paper" / f"t{suffix}").is_file()
    markdown = (runs / "paper" / "t.md").read_text()
    assert "| KD+SWA " in markdown and "width_div" in markdown


def test_paired_tests_and_summary_call_real_differences(runs):
    frame = collect(runs, require=("teacher", "distill"))
    tests = paired_tests(runs, frame)
    assert len(tests) == 4  # 2 seeds x 2 attribution methods
    assert (tests["difference"] > 0.05).all() and (tests["p_wilcoxon"] < 0.05).all()
    text = summary_text(frame, tests)
    assert "distill, KD+SWA vs naive" in text
    assert "gradcam auc +0.100 (better)" in text
    assert "gradcam pointing +0.000 (no clear change)" in text
    one_seed = frame[frame["seed"] == 0]
    text = summary_text(one_seed, tests[tests["seed"] == 0])
    assert "gradcam pointing +0.000 (one seed, untested)" in text
    assert "gradcam auc +0.100 (better)" in text
