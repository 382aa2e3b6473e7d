import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from attrlib.paper import (
    collect,
    distillation_table,
    format_table,
    method_label,
    paired_tests,
    qualitative_runs,
    readme_tables,
    save_table,
    schedule_runs,
    seeds_per_curve,
    showcase_pair,
    unstructured_curves,
)
from attrlib.plots import attribution_grid, figure_pixels, save_animation


def _run(root, rel, config, auc_shift, seed, history=None):
    folder = root / rel
    folder.mkdir(parents=True)
    if history is not None:
        (folder / "metrics.json").write_text(json.dumps({"history": history, "finished": True}))
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
        "pairs_gt": 30,
        "pairs_predicted": 20,
        "pairs_scored": 20,
        "localization": loc,
    }
    (folder / "eval.json").write_text(json.dumps(summary))


def _history(dead_maps):
    """A two-epoch metrics.json history; `dead_maps` per epoch, None for no matching."""
    return [
        {"epoch": e + 1, "train_loss": 1.0}
        | ({} if dead_maps is None else {"train_dead_maps": dead_maps[e]})
        for e in range(2)
    ]


@pytest.fixture
def runs(tmp_path):
    _run(tmp_path, "teacher", {}, 0.2, 0, history=_history(None))
    for seed in (0, 1):
        kd = {"width_div": 2, "matching": "none"}
        swa = {"width_div": 2, "matching": "swa"}
        _run(tmp_path, f"distill/x2-kd-s{seed}", kd, 0.0, seed, history=_history(None))
        dead = [1.0, 0.25 + seed / 4]
        _run(tmp_path, f"distill/x2-swa-s{seed}", swa, 0.1, seed, history=_history(dead))
    return tmp_path


def test_method_labels():
    assert method_label("distill", {"matching": "none"}) == "KD"
    assert method_label("distill", {"matching": "swa", "drop_fraction": 0.3}) == "KD+stochastic SWA"
    assert method_label("prune_oneshot", {"matching": "none"}) == "naive"
    assert method_label("prune_iterative", {"matching": "swa"}) == "SWA"


def test_collect_names_missing_stages(tmp_path, runs):
    with pytest.raises(
        FileNotFoundError, match=r"\['prune_oneshot', 'prune_iterative', 'quantize'\]"
    ):
        collect(runs)
    with pytest.raises(FileNotFoundError, match="teacher"):
        collect(tmp_path / "nothing")


def test_collect_has_pairs_and_last_epoch_dead_maps(runs):
    iterative = "prune_iterative/swa-s0"
    for k, dead in ((1, 0.5), (2, 0.125)):  # each iteration's own metrics.json
        history = _history([0.9, dead])
        _run(runs, f"{iterative}/iter_0{k}", {"matching": "swa", "iteration": k}, 0.0, 0, history)
    _run(runs, "prune_oneshot/p0.5-naive-s0", {"rate": 0.5, "matching": "none"}, 0.0, 0)
    frame = collect(runs, require=["teacher", "distill"]).set_index("run")
    assert (frame["pairs"] == 20).all()
    assert frame.loc["distill/x2-swa-s0", "dead_maps"] == 0.25
    assert frame.loc["distill/x2-swa-s1", "dead_maps"] == 0.5
    assert frame.loc[f"{iterative}/iter_01", "dead_maps"] == 0.5
    assert frame.loc[f"{iterative}/iter_02", "dead_maps"] == 0.125
    # no matching logged, or no metrics.json at all: empty
    for run in ("teacher", "distill/x2-kd-s0", "prune_oneshot/p0.5-naive-s0"):
        assert np.isnan(frame.loc[run, "dead_maps"])
    written = runs / "all_runs.csv"
    frame.reset_index().to_csv(written, index=False)
    back = pd.read_csv(written)
    assert {"pairs", "dead_maps"} <= set(back.columns)
    assert back["dead_maps"].isna().sum() == 4


def test_collect_without_pair_counts_leaves_pairs_empty(tmp_path):
    _run(tmp_path, "teacher", {}, 0.2, 0)
    path = tmp_path / "teacher" / "eval.json"
    summary = json.loads(path.read_text())
    del summary["pairs_scored"]
    path.write_text(json.dumps(summary))
    frame = collect(tmp_path, require=("teacher",))
    assert np.isnan(frame.loc[0, "pairs"]) and np.isnan(frame.loc[0, "dead_maps"])


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


def test_paired_tests_describe_each_matched_run_against_its_twin(runs):
    frame = collect(runs, require=("teacher", "distill"))
    tests = paired_tests(runs, frame)
    assert len(tests) == 4  # 2 seeds x 2 attribution methods
    assert (tests["difference"] > 0.05).all() and (tests["p_wilcoxon"] < 0.05).all()
    assert set(tests["teacher_seed"]) == {0}


def test_collect_names_each_runs_teacher(runs, tmp_path_factory):
    assert set(collect(runs, require=())["teacher_seed"]) == {0}
    # a study of several teachers nests each teacher's runs in its own folder
    nested = tmp_path_factory.mktemp("nested")
    for t in (3, 4):
        _run(nested, f"teacher-s{t}/teacher", {"stage": "teacher"}, 0.2, t)
        kd = {"stage": "distill", "width_div": 2}
        _run(nested, f"teacher-s{t}/distill/x2-kd-s0", kd, 0.0, 0)
    frame = collect(nested, require=())
    assert dict(zip(frame["run"], frame["teacher_seed"], strict=True)) == {
        "teacher-s3/distill/x2-kd-s0": 3,
        "teacher-s3/teacher": 3,
        "teacher-s4/distill/x2-kd-s0": 4,
        "teacher-s4/teacher": 4,
    }


def test_schedule_runs_pivot_iterations_by_method():
    frame = pd.DataFrame(
        {
            "stage": ["teacher"] + ["prune_iterative"] * 6,
            "run": ["teacher"]
            + [
                f"prune_iterative/{m}-s{s}/iter_0{i}"
                for m, s, i in [
                    ("naive", 0, 2),
                    ("naive", 0, 1),
                    ("swa", 0, 1),
                    ("swa", 0, 2),
                    ("swa", 1, 1),
                    ("swa", 1, 2),
                ]
            ],
            "method": ["teacher", "naive", "naive", "SWA", "SWA", "SWA", "SWA"],
            "seed": [0, 0, 0, 0, 0, 1, 1],
            "iteration": [np.nan, 2.0, 1.0, 1.0, 2.0, 1.0, 2.0],
            "sparsity": [0.0, 0.36, 0.2, 0.2, 0.36, 0.2, 0.36],
        }
    )
    runs, sparsity = schedule_runs(frame)
    assert list(runs.index) == [1, 2] and list(runs.columns) == ["SWA", "naive"]
    assert runs.loc[2, "naive"] == "prune_iterative/naive-s0/iter_02"
    assert runs.loc[1, "SWA"] == "prune_iterative/swa-s0/iter_01"  # first seed only
    assert sparsity.to_dict() == pytest.approx({1: 0.2, 2: 0.36})
    with pytest.raises(FileNotFoundError, match="iterative"):
        schedule_runs(frame[frame["stage"] == "teacher"])


class _Fixed(torch.nn.Module):
    """A 'teacher' whose logits are fixed per image: the image's mean selects them."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, images):
        return self.table[images.mean(dim=(1, 2, 3)).round().long()]


def test_showcase_pair_is_the_first_predicted_ground_truth_class():
    logits = [[-1.0, 2.0, 3.0], [4.0, 1.0, 5.0], [1.0, 9.0, 2.0]]
    images = [torch.full((3, 4, 4), float(i)) for i in range(3)]
    labels = [torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 0]), torch.tensor([0.0, 1, 1])]
    data = list(zip(images, labels, strict=True))
    # image 0: its only class is not predicted; image 1: both are, class 0 more confidently
    assert showcase_pair(_Fixed(logits), data) == (1, 0)
    # nothing predicted: the first image's most confident ground-truth class
    assert showcase_pair(_Fixed(logits), data[:1]) == (0, 0)
    with pytest.raises(ValueError, match="no image"):
        showcase_pair(_Fixed(logits), [(images[0], torch.zeros(3))])


def test_save_animation_writes_every_frame(tmp_path):
    import imageio.v3 as iio

    fig = plt.figure(figsize=(2, 1))
    first = figure_pixels(fig)
    plt.close(fig)
    frames = [first, 255 - first, first]
    path = save_animation(frames, tmp_path / "anim.gif", seconds_per_frame=0.5)
    back = iio.imread(path, index=None)
    assert back.shape[0] == 3 and back.shape[1:3] == first.shape[:2]
    assert not (back[0] == back[1]).all()
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
    with pytest.raises(ValueError, match="one shape"):
        save_animation([first, first[:-1]], tmp_path / "bad.gif")


def test_readme_tables_are_made_from_all_runs(runs):
    frame = collect(runs, require=("teacher", "distill"))
    text = readme_tables(frame)
    assert "#### Distillation" in text
    row = next(line for line in text.splitlines() if "| KD+SWA " in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "x2" and cells[2].startswith("0.900 ± ")  # mAP 0.8 + shift 0.1
    assert cells[-3] == "20" and cells[-2] == "0.375 ± 0.177" and cells[-1] == "2"


def test_qualitative_runs_are_labelled_by_their_setting(runs):
    frame = collect(runs, require=["teacher", "distill"])
    chosen = qualitative_runs(frame)
    assert list(chosen) == ["teacher", "KD (x2)", "KD+SWA (x2)"]
    assert chosen["KD+SWA (x2)"] == "distill/x2-swa-s0"  # the first seed


def test_stage_comes_from_config_json_when_recorded(runs):
    """A run records its stage; only runs written before that are placed by their folder."""
    config = runs / "distill" / "x2-kd-s0" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "stage": "teacher"}))
    frame = collect(runs, require=["teacher", "distill"])
    assert frame.loc[frame["run"] == "distill/x2-kd-s0", "stage"].item() == "teacher"


def _iterative_frame(seeds: dict[str, tuple[int, ...]], iterations: int = 16) -> pd.DataFrame:
    """The teacher and an iterative schedule per method (0.8 of the weights kept each
    iteration), with `seeds[method]` the seeds each method ran."""
    rows = [{"stage": "teacher", "run": "teacher", "method": "teacher", "seed": 0, "sparsity": 0.0}]
    for method, method_seeds in seeds.items():
        word = method.lower()
        for seed in method_seeds:
            for it in range(1, iterations + 1):
                rows.append(
                    {
                        "stage": "prune_iterative",
                        "run": f"prune_iterative/{word}-s{seed}/iter_{it:02d}",
                        "method": method,
                        "seed": seed,
                        "iteration": float(it),
                        "sparsity": 1 - 0.8**it,
                    }
                )
    frame = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    for col in ("map_class", "gradcam auc", "gradcam pointing", "gradcam cosine_teacher"):
        frame[col] = rng.uniform(0.5, 1.0, len(frame))
    return frame


@pytest.mark.parametrize("score", ["auc", "pointing", "cosine_teacher"])
def test_unstructured_curves_have_a_log_axis_of_the_weights_left(score):
    fig = unstructured_curves(_iterative_frame({"SWA": (0, 1, 2), "naive": (0, 1, 2)}), score)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["class mAP", f"gradcam {score}"]
    for ax in axes:
        assert ax.get_xscale() == "log"
        assert ax.xaxis_inverted()  # 100% at the left, pruning to the right
        assert "weights left" in ax.get_xlabel()
        assert "(higher is better)" in ax.get_ylabel()
        left = ax.lines[0].get_xdata()  # the first method's points, teacher first
        assert left[0] == 1.0 and left[-1] == pytest.approx(0.8**16)  # 2.8% left
        assert min(ax.get_xlim()) < left[-1] < max(ax.get_xlim())
    assert axes[0].get_ylabel().startswith("class mAP")
    assert axes[1].get_ylabel().startswith("Grad-CAM")
    # the method without matching first, whatever the frame's order
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["naive", "SWA"]
    assert "mean ± sd over 3 seeds" in fig._suptitle.get_text()
    plt.close(fig)


def test_unstructured_curves_count_the_seeds_in_the_frame():
    def title(frame):
        fig = unstructured_curves(frame)
        plt.close(fig)
        return fig._suptitle.get_text()

    assert "mean ± sd over 2 seeds" in title(_iterative_frame({"naive": (0, 1), "SWA": (3, 4)}))
    assert "over seeds: naive 3, SWA 1" in title(
        _iterative_frame({"naive": (0, 1, 2), "SWA": (0,)})
    )
    assert "one seed (no spread)" in title(_iterative_frame({"naive": (0,), "SWA": (0,)}))
    # seed 2 stopped after iteration 10: its last points average two seeds
    frame = _iterative_frame({"naive": (0, 1, 2), "SWA": (0, 1, 2)})
    frame = frame[~((frame["seed"] == 2) & (frame["iteration"] > 10))]
    assert seeds_per_curve(frame) == {"naive": (2, 3), "SWA": (2, 3)}
    assert "mean ± sd over 2-3 seeds" in title(frame)


def _study_frame() -> pd.DataFrame:
    """A two-seed study of every stage, rows sorted by run folder as `collect` reads them."""
    rows = [{"stage": "teacher", "run": "teacher", "method": "teacher", "seed": 0}]
    for seed in (0, 1):
        for width in (2, 4):
            for word, method in (("kd", "KD"), ("ewa", "KD+EWA"), ("swa", "KD+SWA")):
                rows.append(
                    {"stage": "distill", "run": f"distill/x{width}-{word}-s{seed}"}
                    | {"method": method, "seed": seed, "width_div": float(width)}
                )
        for rate in (0.3, 0.7):
            for word, method in (("naive", "naive"), ("sswa", "stochastic SWA"), ("swa", "SWA")):
                rows.append(
                    {"stage": "prune_oneshot", "run": f"prune_oneshot/p{rate}-{word}-s{seed}"}
                    | {"method": method, "seed": seed, "rate": rate}
                )
        for word, method in (("naive", "naive"), ("swa", "SWA")):
            for it in (1, 16):
                rows.append(
                    {
                        "stage": "prune_iterative",
                        "run": f"prune_iterative/{word}-s{seed}/iter_{it:02d}",
                    }
                    | {"method": method, "seed": seed, "iteration": float(it)}
                )
        for bits in (8, 2):
            for word, method in (("naive", "naive"), ("swa", "SWA")):
                rows.append(
                    {"stage": "quantize", "run": f"quantize/w{bits}-{word}-s{seed}"}
                    | {"method": method, "seed": seed, "bits": float(bits)}
                )
    return pd.DataFrame(rows).sort_values("run", ignore_index=True)


def test_qualitative_grid_rows_teacher_then_baselines_before_matching():
    chosen = qualitative_runs(_study_frame())
    expected = [
        "teacher",
        "KD (x4)",
        "KD+EWA (x4)",
        "KD+SWA (x4)",
        "naive (rate 0.7)",
        "SWA (rate 0.7)",
        "stochastic SWA (rate 0.7)",
        "naive (iteration 16)",
        "SWA (iteration 16)",
        "naive (2-bit)",  # the fewest bits are the strongest quantization
        "SWA (2-bit)",
    ]
    assert list(chosen) == expected
    assert chosen["KD+EWA (x4)"] == "distill/x4-ewa-s0"  # each stage's first seed
    assert chosen["SWA (iteration 16)"] == "prune_iterative/swa-s0/iter_16"
    maps = {label: {"gradcam": torch.rand(8, 8), "rap": torch.rand(8, 8)} for label in chosen}
    fig = attribution_grid(torch.zeros(3, 8, 8), maps)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == expected
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    plt.close(fig)


def test_figures_of_single_models_show_the_first_teacher_and_curves_count_runs():
    one = _study_frame().assign(sparsity=0.5)
    frame = pd.concat(
        [one.assign(teacher_seed=t, run=f"teacher-s{t}/" + one["run"]) for t in (2, 5)],
        ignore_index=True,
    )
    chosen = qualitative_runs(frame)
    assert all(run.startswith("teacher-s2/") for run in chosen.values())
    runs, _ = schedule_runs(frame)
    assert runs.stack().str.startswith("teacher-s2/").all()
    # two teachers x two seeds: four runs per point of a curve
    assert seeds_per_curve(frame) == {"naive": (4, 4), "SWA": (4, 4)}
    fig = unstructured_curves(frame.assign(**{"gradcam auc": 0.9, "map_class": 0.8}))
    assert "mean ± sd over 4 runs" in fig._suptitle.get_text()
    plt.close(fig)
