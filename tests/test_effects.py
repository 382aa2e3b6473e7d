import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attrlib.effects import (
    COLUMNS,
    effects_table,
    figure_iterations,
    figure_rows,
    replicate_differences,
    sign_flip_p,
    summary_table,
    t_interval,
    verdict,
    with_replicate,
)
from attrlib.plots import forest_plot, replicate_strips

METRICS = ["map_class", "gradcam auc"]


def _frame(effect: dict[str, float], teachers=(0, 1), seeds=(0, 1, 2), noise=0.01, rng=0):
    """all_runs.csv rows of x4 distillation: KD, and per method KD + effect + noise, one run
    per (teacher, seed); plus the teachers' own rows."""
    rng = np.random.default_rng(rng)
    rows = [
        {"stage": "teacher", "method": "teacher", "teacher_seed": t, "seed": t}
        | dict.fromkeys(METRICS, 0.95)
        for t in teachers
    ]
    for t, s in itertools.product(teachers, seeds):
        base = 0.8 + 0.05 * rng.standard_normal()  # replicates differ far more than methods
        for method, shift in {"KD": 0.0, **effect}.items():
            rows.append(
                {"stage": "distill", "method": method, "teacher_seed": t, "seed": s, "width_div": 4}
                | {m: base + shift + noise * rng.standard_normal() for m in METRICS}
            )
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # row order carries nothing


def test_t_interval_is_the_textbook_one():
    d = np.array([0.03, 0.01, 0.05, 0.02])
    mean, low, high = t_interval(d)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert mean == pytest.approx(d.mean())
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert np.isnan(t_interval([0.1])[1]) and t_interval([0.2, 0.2])[1:] == (0.2, 0.2)


def test_sign_flip_p_is_exact_for_few_replicates():
    # all of n positive: only "no flip" and "flip all" are as extreme, p = 2 / 2^n
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([0.5, 1.0, 2.0, 3.0, 4.0]) == pytest.approx(2 / 32)
    # brute force over every sign pattern
    d = np.array([0.3, -0.1, 0.2, 0.05])
    flips = [abs((d * s).mean()) for s in itertools.product((1, -1), repeat=len(d))]
    assert sign_flip_p(d) == pytest.approx(np.mean(np.array(flips) >= abs(d.mean()) - 1e-12))
    assert sign_flip_p([0.0, 0.0]) == 1.0 and np.isnan(sign_flip_p([1.0]))


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.01, 0.2, "better"), (-0.2, -0.01, "worse"), (-0.1, 0.1, "no clear change")],
)
def test_verdict_comes_from_the_interval(low, high, expected):
    assert verdict(low, high) == expected


def test_differences_pair_runs_of_one_replicate():
    frame = _frame({"KD+SWA": 0.05}, noise=0.0)
    d = replicate_differences(frame, "distill", 4, "KD+SWA", METRICS)
    assert len(d) == 6 and d.index.names == ["teacher_seed", "seed"]
    np.testing.assert_allclose(d.to_numpy(), 0.05)  # the replicate's own level cancels
    # a replicate without its baseline run drops out
    missing = frame[
        ~((frame["method"] == "KD") & (frame["seed"] == 2) & (frame["teacher_seed"] == 1))
    ]
    assert len(replicate_differences(missing, "distill", 4, "KD+SWA", METRICS)) == 5


def test_two_runs_of_one_replicate_are_refused():
    frame = _frame({"KD+SWA": 0.05})
    twice = pd.concat([frame, frame[frame["method"] == "KD+SWA"].head(1)])
    with pytest.raises(ValueError, match=r"distill x4, KD\+SWA: two runs of one replicate"):
        replicate_differences(twice, "distill", 4, "KD+SWA", METRICS)


def test_effects_table_verdicts_and_recomputed_interval():
    frame = _frame({"KD+SWA": 0.05, "KD+EWA": 0.0, "KD+stochastic SWA": -0.05})
    effects = effects_table(frame, METRICS)
    assert list(effects.columns) == list(COLUMNS)
    assert len(effects) == 3 * 2  # methods x metrics
    row = effects[(effects["method"] == "KD+SWA") & (effects["metric"] == "gradcam auc")].iloc[0]
    assert (row["stage"], row["setting"], row["baseline"], row["n"]) == ("distill", "x4", "KD", 6)
    # recomputed from the runs as a reader would: a paired t interval over replicates
    runs = frame[frame["stage"] == "distill"].set_index(["teacher_seed", "seed"])
    swa = runs[runs["method"] == "KD+SWA"]["gradcam auc"].sort_index()
    kd = runs[runs["method"] == "KD"]["gradcam auc"].sort_index()
    test = stats.ttest_rel(swa, kd)
    ci = test.confidence_interval()
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["verdict"] == "better" and row["p"] == pytest.approx(2 / 64)
    worse = effects[(effects["method"] == "KD+stochastic SWA") & (effects["metric"] == "map_class")]
    assert worse["verdict"].item() == "worse"
    # bar 2 of the design: every verdict agrees with its interval
    assert (effects.loc[effects["verdict"] == "better", "ci_low"] > 0).all()
    assert (effects.loc[effects["verdict"] == "worse", "ci_high"] < 0).all()
    unclear = effects[effects["verdict"] == "no clear change"]
    assert ((unclear["ci_low"] <= 0) & (unclear["ci_high"] >= 0)).all()
    assert (effects["method"].tolist()[::2]) == ["KD+EWA", "KD+SWA", "KD+stochastic SWA"]


def test_one_replicate_decides_nothing():
    effects = effects_table(_frame({"KD+SWA": 0.2}, teachers=(0,), seeds=(0,)), METRICS)
    assert set(effects["verdict"]) == {"too few replicates"} and set(effects["n"]) == {1}
    assert "(n=1)" in summary_table(effects)


def test_a_study_of_one_teacher_gets_its_teachers_seed():
    frame = _frame({"KD+SWA": 0.05}, teachers=(7,)).drop(columns="teacher_seed")
    assert set(with_replicate(frame)["teacher_seed"]) == {7}


def test_summary_table_marks_decided_cells():
    effects = effects_table(_frame({"KD+SWA": 0.05, "KD+EWA": 0.0}), METRICS)
    text = summary_table(effects)
    lines = [line for line in text.splitlines() if line.startswith("| distill")]
    assert len(lines) == 2 and "▲" in lines[1] and "▲" not in lines[0]
    assert "Grad-CAM AUC" in text and "class mAP" in text
    # decisive metrics first
    header = next(line for line in text.splitlines() if line.startswith("| stage"))
    assert header.index("Grad-CAM AUC") < header.index("class mAP")


def test_figure_rows_keep_every_setting_and_a_few_iterations():
    frame = pd.DataFrame(
        {"stage": "prune_iterative", "iteration": [2, 4, 6, 8, 10, 12, 14, 16], "method": "naive"}
    )
    assert figure_iterations(frame) == [4, 8, 12, 16]
    effects = pd.DataFrame(
        {
            "stage": ["distill", "prune_iterative", "prune_iterative"],
            "setting": ["x4", "iteration 6", "iteration 16"],
        }
    )
    assert figure_rows(effects, frame)["setting"].tolist() == ["x4", "iteration 16"]


def test_figures_draw_every_effect_and_every_run():
    frame = _frame({"KD+SWA": 0.05, "KD+EWA": 0.0})
    effects = effects_table(frame, METRICS)
    fig = forest_plot(effects, METRICS)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "distill x4 · KD+EWA",
        "distill x4 · KD+SWA",
    ]
    plt.close(fig)
    fig = replicate_strips(frame, "gradcam auc")
    ax = fig.axes[0]
    dots = sum(len(c.get_offsets()) for c in ax.collections)
    assert dots == 3 * 6  # every run of every method
    assert len(ax.lines) == 6  # one line per replicate
    plt.close(fig)


def test_cli_writes_what_the_paper_notebook_writes(tmp_path, capsys):
    from attrlib.effects import main

    path = tmp_path / "all_runs.csv"
    _frame({"KD+SWA": 0.05}).to_csv(path, index=False)
    assert main([str(path), "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "f")]) == 0
    effects = pd.read_csv(tmp_path / "out" / "effects.csv")
    assert list(effects.columns) == list(COLUMNS) and len(effects) == 2
    assert "▲" in (tmp_path / "out" / "summary.md").read_text()
    spread = pd.read_csv(tmp_path / "out" / "teacher_spread.csv")
    assert set(spread["metric"]) == set(METRICS) and set(spread["teachers"]) == {2}
    assert (tmp_path / "f" / "forest.png").is_file()
    assert (tmp_path / "f" / "replicates_gradcam_auc.png").is_file()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.csv"), "--out", str(tmp_path)])
    assert "missing.csv: no such file" in capsys.readouterr().err


def test_teacher_spread_counts_each_teacher_once():
    from attrlib.effects import teacher_spread

    frame = _frame({"KD+SWA": 0.05}, teachers=(0, 1, 2))
    row = teacher_spread(frame, ["gradcam auc"]).iloc[0]
    d = replicate_differences(frame, "distill", 4, "KD+SWA", ["gradcam auc"])["gradcam auc"]
    means = d.groupby(level="teacher_seed").mean()
    ci = stats.ttest_1samp(means, 0.0).confidence_interval()
    assert row["teachers"] == 3
    assert (row["teacher_ci_low"], row["teacher_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["sd_between_teachers"] == pytest.approx(means.std())


def test_figures_of_a_folder_without_pairs_say_so():
    # one run per stage, as notebooks 01-05 run once each in JupyterLab: nothing to compare
    frame = _frame({}, teachers=(0,), seeds=(0,))
    effects = effects_table(frame, METRICS)
    assert effects.empty
    teachers_only = frame[frame["stage"] == "teacher"]
    for fig in (forest_plot(effects, METRICS), replicate_strips(teachers_only, "gradcam auc")):
        assert any("no " in t.get_text() for t in fig.axes[0].texts)
        plt.close(fig)


def test_a_method_without_its_baseline_in_any_replicate_has_no_row():
    frame = _frame({"KD+SWA": 0.05})
    alone = frame[frame["method"] != "KD"]
    assert effects_table(alone, METRICS).empty


def test_summary_names_methods_some_models_were_not_evaluated_by():
    from attrlib.effects import refused_text

    frame = pd.DataFrame({"run": ["a", "b", "c"], "map_class": [0.9, 0.8, 0.7]})
    assert refused_text(frame) == ""
    frame["refused_methods"] = ["lrp rap", None, "lrp"]
    text = refused_text(frame)
    assert "Not evaluated: lrp (2 of 3 models), rap (1 of 3 models)" in text
    assert "refused_methods" in text
