"""The paper's tables and figures, built from every `eval.json` under a profile's runs folder.

Nothing is hard-coded: a run is described by its `config.json` (stage, width, rate, matching,
seed) and scored by its `eval.json`. Tables give mean ± std over replicates (teacher, seed);
attrlib.effects says which matched-vs-baseline differences hold over them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import stats

from attrlib.effects import REPLICATE, with_replicate
from attrlib.engine import load_model
from attrlib.evaluate import image_maps
from attrlib.faithfulness import score_names, with_derived
from attrlib.io import write_text_atomic
from attrlib.plots import (
    attribution_grid,
    figure_pixels,
    remaining_weights_axis,
    save_animation,
    score_label,
)
from attrlib.study import NO_MATCHING, STAGES, colour, method_label, method_labels, method_order

SCORES = ("auc", "pointing", "cosine_teacher", "auc_teacher")
LOCALIZATION_SCORES = ("auc", "pointing")  # beside them: agreement with the teacher


def table_scores() -> tuple[str, ...]:
    """The per-method scores of the paper's tables: localization, agreement, then every
    registered faithfulness metric (a plugin's among them) and the derived ones (absent
    columns are skipped)."""
    return SCORES + tuple(score_names())


def attribution_methods(frame: pd.DataFrame) -> list[str]:
    """The attribution methods the models were evaluated with, in evaluation order."""
    return list(dict.fromkeys(c.split(" ")[0] for c in frame.columns if c.endswith(" auc")))


def _stage_of(config: dict, path: Path, runs_dir: Path) -> str:
    """The stage its `config.json` records; runs written before it did: their folder's."""
    stage = config.get("stage") or path.relative_to(runs_dir).parts[0]
    if stage not in STAGES:
        raise ValueError(f"{path}: stage {stage!r} is not one of {STAGES.names()}")
    return stage


def _baselines() -> set[str]:
    """Labels of the runs without matching that matched runs are compared with."""
    return {method_label(s, {"matching": NO_MATCHING}) for s in STAGES if STAGES.get(s).baseline}


def last_dead_maps(folder: Path) -> float:
    """Share of the matching loss's maps of the model in `folder` that were zero everywhere in
    its last training epoch (`metrics.json`); NaN without matching or a training history."""
    path = folder / "metrics.json"
    if not path.is_file():
        return np.nan
    history = json.loads(path.read_text()).get("history") or [{}]
    return history[-1].get("train_dead_maps", np.nan)


def teacher_seed(folder: Path, runs_dir: Path) -> float:
    """The seed of the teacher a run in `folder` descends from: that of the nearest folder
    at or above it (up to `runs_dir`) that holds a `teacher/config.json` (a study nests each
    teacher's runs in its own folder; a one-teacher study keeps its teacher at the top).
    NaN where none is found."""
    for parent in (folder, *folder.parents):
        config = parent / "teacher" / "config.json"
        if config.is_file():
            return json.loads(config.read_text()).get("seed", 0)
        if parent == runs_dir:
            break
    return np.nan


def collect(runs_dir: str | Path, require: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per evaluated model under `runs_dir` with its description and scores.

    Beside the scores: `pairs`, the (image, class) pairs its localization scores average
    over, and `dead_maps`, the last-epoch share of dead matching maps (see `last_dead_maps`).
    Raises FileNotFoundError naming every stage in `require` (default: every registered
    stage) that has no evaluated model.
    """
    runs_dir = Path(runs_dir)
    require = STAGES.names() if require is None else require
    rows = []
    for eval_path in sorted(runs_dir.glob("**/eval.json")):
        if "evaluate" in eval_path.relative_to(runs_dir).parts[:1]:
            continue
        summary = json.loads(eval_path.read_text())
        folder = eval_path.parent
        config = json.loads((folder / "config.json").read_text())
        stage = _stage_of(config, eval_path, runs_dir)
        row = {
            "stage": stage,
            "run": str(folder.relative_to(runs_dir)),
            "method": method_label(stage, config),
            "teacher_seed": teacher_seed(folder, runs_dir),
            "seed": config.get("seed", 0),
        }
        for name in STAGES:  # one column per stage's setting, filled for its own runs
            key = STAGES.get(name).setting
            if key is not None:
                row[key] = config.get(key) if name == stage else None
        for key in (
            "map_class",
            "map_sample",
            "f1",
            "params",
            "nonzero_params",
            "macs",
            "sparsity",
        ):
            row[key] = summary[key]
        # bytes at the stored widths; a summary older than the field is a float32 model's
        row["weight_bytes"] = summary.get("weight_bytes", 4 * summary["params"])
        row["pairs"] = summary.get("pairs_scored", np.nan)
        if summary.get("refused_methods"):  # a column only where some model has refusals
            row["refused_methods"] = " ".join(sorted(summary["refused_methods"]))
        # every matching map's share of all-zero maps (SWA's die as a ReLU of a negative sum;
        # EWA's are squares, zero only where the feature is)
        matched = config.get("matching", NO_MATCHING) != NO_MATCHING
        row["dead_maps"] = last_dead_maps(folder) if matched else np.nan
        for method, scores in summary["localization"].items():
            for score, value in with_derived(scores).items():
                row[f"{method} {score}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    found = set(frame["stage"]) if len(frame) else set()
    missing = [s for s in require if s not in found]
    if missing:
        raise FileNotFoundError(
            f"no evaluated models for stage(s) {missing} under {runs_dir}: run those stages "
            "and `make evaluate` first (each model needs an eval.json beside its config.json)"
        )
    return frame


def _metric_columns(frame: pd.DataFrame, scores: Sequence[str]) -> list[str]:
    cols = ["map_class", "f1"]
    for method in attribution_methods(frame):
        cols += [f"{method} {s}" for s in scores if f"{method} {s}" in frame]
    return cols


def mean_std(frame: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of `columns` per group of `keys`, plus the seed count."""
    grouped = frame.groupby(keys, dropna=False, sort=True)
    out = grouped[columns].agg(["mean", "std"])
    out[("seeds", "n")] = grouped.size()
    return out


def distillation_table(frame: pd.DataFrame, scores: Sequence[str] | None = None) -> pd.DataFrame:
    """Teacher, then per student width the methods: mAP, F1, AUC / pointing / agreement /
    faithfulness (`table_scores` unless `scores`)."""
    cols = _metric_columns(frame, scores or table_scores())
    teacher = frame[frame["stage"] == "teacher"].assign(width_div=1)
    students = frame[frame["stage"] == "distill"]
    rows = pd.concat([teacher, students]).astype({"width_div": int})
    table = mean_std(rows, ["width_div", "method"], cols)
    order = ["teacher", *method_labels("distill")]
    order += sorted(set(rows["method"]) - set(order))  # plugins' methods without a table entry
    rank = {m: i for i, m in enumerate(order)}
    return table.sort_index(key=lambda idx: idx.map(rank) if idx.name == "method" else idx)


def structured_table(frame: pd.DataFrame, scores: Sequence[str] | None = None) -> pd.DataFrame:
    """Prune rate x {naive, SWA, stochastic SWA}: metrics plus parameters and MACs."""
    cols = _metric_columns(frame, scores or table_scores()) + ["params", "macs"]
    rows = frame[frame["stage"] == "prune_oneshot"]
    return mean_std(rows, ["rate", "method"], cols)


def quantization_table(
    frame: pd.DataFrame, scores: Sequence[str] | None = None, extra: Sequence[str] = ()
) -> pd.DataFrame:
    """Weight bits x method (naive, SWA, ...), the float teachers first (bits 32): metrics,
    `extra` columns, then the parameters' bytes at their widths."""
    cols = _metric_columns(frame, scores or table_scores()) + [*extra, "weight_bytes"]
    cols = [c for c in cols if c in frame]
    rows = frame[frame["stage"] == "quantize"]
    teacher = frame[frame["stage"] == "teacher"].assign(bits=32)
    table = mean_std(pd.concat([teacher, rows]).astype({"bits": int}), ["bits", "method"], cols)
    order = {m: i for i, m in enumerate(["teacher", *method_order("quantize", rows["method"])])}
    keys = [(-bits, order[method]) for bits, method in table.index]
    return table.iloc[sorted(range(len(table)), key=keys.__getitem__)]


def unstructured_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Iterative-pruning rows with the teacher as iteration 0 of every method."""
    rows = frame[frame["stage"] == "prune_iterative"]
    teacher = frame[frame["stage"] == "teacher"]
    starts = [teacher.assign(method=m, iteration=0) for m in rows["method"].unique()]
    return pd.concat([*starts, rows], ignore_index=True)


def first_teacher(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the study's first teacher (the lowest teacher seed) and its runs: what
    the figures of single models show. A frame without `teacher_seed` is one teacher's."""
    if "teacher_seed" not in frame or frame["teacher_seed"].isna().all():
        return frame
    return frame[frame["teacher_seed"] == frame["teacher_seed"].min()]


def seeds_per_curve(frame: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per iterative-pruning method, the (fewest, most) replicates (seeds, or runs of
    (teacher, seed)) averaged into a point of its curve, counted in the frame (the teacher's
    point aside)."""
    frame = with_replicate(frame)
    rows = frame[frame["stage"] == "prune_iterative"]
    point = ["method", "iteration"]
    per_point = rows.drop_duplicates([*point, *REPLICATE]).groupby(point).size()
    return {
        method: (int(per_point[method].min()), int(per_point[method].max()))
        for method in method_order("prune_iterative", rows["method"])
    }


def _seeds_text(seeds: dict[str, tuple[int, int]], unit: str = "seeds") -> str:
    """'mean ± sd over 3 seeds', '... over 2-3 seeds' or '... over seeds: naive 3, SWA 2'
    (`unit` "runs" in a study of several teachers)."""
    spans = {m: str(lo) if lo == hi else f"{lo}-{hi}" for m, (lo, hi) in seeds.items()}
    if set(spans.values()) == {"1"}:
        return f"one {unit[:-1]} (no spread)"
    if len(set(spans.values())) == 1:
        return f"mean ± sd over {next(iter(spans.values()))} {unit}"
    return f"mean ± sd over {unit}: " + ", ".join(f"{m} {n}" for m, n in spans.items())


def unstructured_curves(frame: pd.DataFrame, score: str = "auc") -> plt.Figure:
    """mAP and each attribution method's `score` against the share of conv weights left,
    one line per method: mean ± sd over seeds, the seed count in the title.

    The first point of every line is the unpruned teacher (iteration 0).
    """
    if not (frame["stage"] == "prune_iterative").any():
        raise FileNotFoundError("no iterative-pruning runs among the evaluated models")
    rows = unstructured_frame(frame)
    panels = ["map_class"] + [
        f"{m} {score}" for m in attribution_methods(rows) if f"{m} {score}" in rows
    ]
    methods = method_order("prune_iterative", rows["method"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    for ax, col in zip(axes[0], panels, strict=True):
        for method in methods:
            agg = (
                rows[rows["method"] == method]
                .groupby("iteration")
                .agg(sparsity=("sparsity", "mean"), mean=(col, "mean"), std=(col, "std"))
            )
            ax.errorbar(
                1 - agg["sparsity"],
                agg["mean"],
                yerr=agg["std"].fillna(0),
                marker="o",
                ms=3,
                capsize=2,
                label=method,
                color=colour(method),
            )
        remaining_weights_axis(ax, 1 - rows["sparsity"])
        # titles are the tables' column names; the y label says what is better
        ax.set(title=col.replace("map_class", "class mAP"), ylabel=score_label(col, sep="\n"))
    axes[0, 0].legend(fontsize=8)
    teachers = with_replicate(frame)["teacher_seed"].nunique()
    seeds = _seeds_text(seeds_per_curve(frame), "seeds" if teachers <= 1 else "runs")
    fig.suptitle(f"Iterative unstructured pruning: {seeds}; 100% = the unpruned teacher")
    fig.tight_layout()
    return fig


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """'mean ± std' strings (std only when more than one seed) for display and export."""
    out = pd.DataFrame(index=table.index)
    for col in dict.fromkeys(c for c, _ in table.columns):
        if col == "seeds":
            out["seeds"] = table[("seeds", "n")]
            continue
        mean, std = table[(col, "mean")], table[(col, "std")]
        if col in ("params", "macs"):
            out[col] = mean.map(lambda v: f"{v / 1e6:.2f}M")
            continue
        if col == "weight_bytes":
            out[col] = mean.map(lambda v: f"{v / 1e3:.0f} kB")
            continue
        out[col] = [
            f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"
            for m, s in zip(mean, std, strict=True)
        ]
    return out


def save_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write a formatted table as CSV, Markdown and LaTeX beside each other."""
    path = Path(path)
    shown = format_table(table).reset_index()  # one column per index level
    write_text_atomic(path.with_suffix(".csv"), shown.to_csv(index=False))
    write_text_atomic(path.with_suffix(".md"), shown.to_markdown(index=False) + "\n")
    write_text_atomic(path.with_suffix(".tex"), shown.to_latex(index=False))


def paired_tests(runs_dir: str | Path, frame: pd.DataFrame, score: str = "auc") -> pd.DataFrame:
    """Within-run statistics: one matched model against its naive twin on the same (image,
    class) pairs, their mean difference and a Wilcoxon p over those pairs.

    A description of two trained models, never a verdict on the method: the pairs are not
    replicates of training (attrlib.effects compares methods over runs). A matched run's twin
    is the run of the same stage, width / rate / iteration, teacher and seed without
    matching; pairs scored by only one of the two are dropped.
    """
    runs_dir = Path(runs_dir)
    keys = ["stage", *(s.setting for s in map(STAGES.get, STAGES) if s.setting)]
    keys += ["teacher_seed", "seed"]
    naive_names = _baselines()
    rows = []
    compressed = frame[frame["stage"] != "teacher"]
    for _, run in compressed[~compressed["method"].isin(naive_names)].iterrows():
        same = (compressed[keys].fillna(-1) == run[keys].fillna(-1)).all(axis=1)
        twins = compressed[same & compressed["method"].isin(naive_names)]
        if twins.empty:
            continue
        twin = twins.iloc[0]
        a = pd.read_csv(runs_dir / twin["run"] / "eval_pairs.csv")
        b = pd.read_csv(runs_dir / run["run"] / "eval_pairs.csv")
        merged = a.merge(b, on=["image", "class", "method"], suffixes=("_naive", "_match"))
        for method, group in merged.groupby("method"):
            diff = group[f"{score}_match"] - group[f"{score}_naive"]
            p = stats.wilcoxon(diff).pvalue if len(diff) > 1 and diff.abs().sum() > 0 else 1.0
            rows.append(
                {
                    **{k: run[k] for k in keys},
                    "compression": run["method"],
                    "attribution": method,
                    "pairs": len(diff),
                    f"{score}_naive": group[f"{score}_naive"].mean(),
                    f"{score}_match": group[f"{score}_match"].mean(),
                    "difference": diff.mean(),
                    "p_wilcoxon": p,
                }
            )
    return pd.DataFrame(rows)


def qualitative_runs(frame: pd.DataFrame) -> dict[str, str]:
    """Runs shown in the qualitative figure, {row label: run}, in the order drawn.

    The teacher, then for each stage's strongest compression (smallest student, highest
    rate, last iteration, fewest bits: `Stage.stronger`) every method, the one without
    matching (KD, naive) before the matched ones; each stage's first seed under the first
    teacher. A label is the method and the setting as the study prints it: 'KD+SWA (x4)',
    'naive (rate 0.7)', 'SWA (iteration 16)', 'SWA (2-bit)'.
    """
    chosen = {}
    frame = first_teacher(frame)
    for stage in STAGES:
        spec = STAGES.get(stage)
        group = frame[frame["stage"] == stage]
        if group.empty:
            continue
        group = group[group["seed"] == group["seed"].min()]
        if spec.setting is not None:
            values = group[spec.setting] * spec.stronger
            group = group[values == values.max()]
        for method in method_order(stage, group["method"]):
            run = group[group["method"] == method].iloc[0]
            suffix = "" if spec.setting is None else f" ({spec.label(run[spec.setting])})"
            chosen[f"{method}{suffix}"] = run["run"]
    return chosen


def showcase_pair(teacher: torch.nn.Module, dataset) -> tuple[int, int]:
    """(image index, class) shown in the qualitative figures: the first image with a
    ground-truth class the teacher predicts, and its most confident such class.

    A fixed rule, not a search for pretty maps: the first scored pair of the evaluation. A
    teacher that predicts none (an undertrained one) gets the first image's most confident
    ground-truth class.
    """
    fallback = None
    for index in range(len(dataset)):
        image, labels = dataset[index][:2]
        if not labels.any():
            continue
        with torch.no_grad():
            logits = teacher.eval()(image[None])[0]  # (K,)
        scores = torch.where(labels > 0, logits, torch.full_like(logits, -torch.inf))
        if scores.max() > 0:
            return index, int(scores.argmax())
        fallback = fallback or (index, int(scores.argmax()))
    if fallback is None:
        raise ValueError("no image of the data set has a ground-truth class")
    return fallback


def schedule_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The iterative-pruning runs of the first seed under the first teacher: (runs, sparsity).

    `runs` has one row per iteration and one column per matching method (run folders);
    `sparsity` the conv-weight sparsity per iteration (the schedule is the same for all).
    """
    rows = first_teacher(frame)
    rows = rows[rows["stage"] == "prune_iterative"]
    if rows.empty:
        raise FileNotFoundError("no iterative-pruning runs among the evaluated models")
    rows = rows[rows["seed"] == rows["seed"].min()].astype({"iteration": int})
    runs = rows.pivot(index="iteration", columns="method", values="run").sort_index()
    return runs, rows.groupby("iteration")["sparsity"].mean()


def schedule_animation(
    runs_dir: str | Path,
    frame: pd.DataFrame,
    image: torch.Tensor,
    target: int,
    methods: Sequence[str],
    path: str | Path,
    seconds_per_frame: float = 1.0,
) -> Path:
    """GIF of one image's maps through the iterative-pruning schedule, naive beside matching.

    Frame 0 shows the unpruned network (the reference every schedule starts from), frame k
    the networks after iteration k: one row per matching method, one column per attribution
    method, maps normalised per model and method as in the evaluation.

    Args:
        frame: `collect(runs_dir)`; image (3, H, W) normalised; target its class index.
    """
    runs_dir = Path(runs_dir)
    runs, sparsity = schedule_runs(frame)
    reference = first_teacher(frame).loc[lambda f: f["stage"] == "teacher", "run"]
    if reference.empty:
        raise FileNotFoundError(f"no evaluated teacher under {runs_dir}")
    teacher, checkpoint = load_model(runs_dir / reference.iloc[0] / "best.pt")
    classes = tuple(checkpoint["classes"])
    unpruned = image_maps({"teacher": teacher}, image, target, methods)["teacher"]
    frames = [
        _grid_pixels(
            image,
            {label: unpruned for label in runs.columns},
            "iteration 0 · sparsity 0 % (the unpruned network)",
        )
    ]
    for iteration, row in runs.iterrows():
        models = {
            label: load_model(runs_dir / run / "best.pt", classes=classes)[0]
            for label, run in row.items()
        }
        title = f"iteration {iteration} · sparsity {sparsity[iteration]:.0%}"
        frames.append(_grid_pixels(image, image_maps(models, image, target, methods), title))
    return save_animation(frames, path, seconds_per_frame)


def _grid_pixels(image: torch.Tensor, maps: dict, title: str) -> np.ndarray:
    fig = attribution_grid(image, maps, title=title)
    pixels = figure_pixels(fig)
    plt.close(fig)  # frames are not shown one by one in the notebook
    return pixels


README_SCORES = LOCALIZATION_SCORES


def readme_tables(frame: pd.DataFrame, every: int = 2) -> str:
    """The README's three tables (markdown, mean ± std over seeds) from `all_runs.csv` rows.

    Columns: class mAP, F1, AUC and pointing per attribution method, scored pairs and the
    last-epoch share of dead matching maps; iterative pruning shows every `every`-th iteration.
    """
    cols = _metric_columns(frame, README_SCORES) + ["pairs", "dead_maps"]
    cols = [c for c in cols if c in frame]
    distill = distillation_table(frame, README_SCORES)  # for its row order
    students = pd.concat(
        [frame[frame["stage"] == "teacher"].assign(width_div=1), frame[frame["stage"] == "distill"]]
    ).astype({"width_div": int})
    distill = mean_std(students, ["width_div", "method"], cols).loc[distill.index]
    oneshot = mean_std(
        frame[frame["stage"] == "prune_oneshot"], ["rate", "method"], ["params", *cols]
    )
    iterative = frame[frame["stage"] == "prune_iterative"]
    iterative = iterative[iterative["iteration"] % every == 0]
    iterative = mean_std(iterative, ["iteration", "method"], ["sparsity", *cols])
    tables = [
        ("Distillation", distill),
        ("One-shot structured pruning", oneshot),
        (f"Iterative unstructured pruning (every {_ordinal(every)} iteration)", iterative),
    ]
    if (frame["stage"] == "quantize").any():
        quantized = quantization_table(frame, README_SCORES, extra=["pairs", "dead_maps"])
        tables.append(("Quantization (weight bits; 32: the float teacher)", quantized))
    parts = []
    for title, table in tables:
        shown = format_table(table)
        if ("pairs", "mean") in table:  # a count: its mean over seeds, whole
            shown["pairs"] = table[("pairs", "mean")].map(
                lambda v: "–" if np.isnan(v) else f"{v:.0f}"
            )
        shown = shown.reset_index()
        if "width_div" in shown:
            width = STAGES.get("distill").label
            shown["width_div"] = shown["width_div"].map(
                lambda w, width=width: "teacher" if w == 1 else width(w)
            )
        if "iteration" in shown:
            shown["iteration"] = shown["iteration"].astype(int)
        shown = shown.rename(
            columns=lambda c: c.replace(" pointing", " pt").replace("map_class", "mAP")
        )
        shown = shown.replace({"nan": "–", "nan ± nan": "–"})
        parts.append(f"#### {title}\n\n" + shown.to_markdown(index=False))
    return "\n\n".join(parts) + "\n"


def _ordinal(n: int) -> str:
    return {1: "", 2: "second", 3: "third"}.get(n, f"{n}th")


def main(argv: Sequence[str] | None = None) -> str:
    """CLI: `python -m attrlib.paper readme docs/results/default/all_runs.csv` prints the
    README's tables made from a reference run's `all_runs.csv`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m attrlib.paper",
        description="Print the README tables of a finished study from its all_runs.csv.",
    )
    parser.add_argument("command", choices=["readme"])
    parser.add_argument("all_runs", help="all_runs.csv written by the paper notebook")
    args = parser.parse_args(argv)
    text = readme_tables(pd.read_csv(args.all_runs))
    print(text)
    return text


def faithfulness_curves(
    runs_dir: str | Path, frame: pd.DataFrame, stage: str, setting, attribution: str = "gradcam"
) -> dict[str, dict]:
    """The mean faithfulness curves of one setting's methods and of the teachers, averaged
    over runs from their eval.json: {label: {metric: {"fractions", "mean", "runs"}}}, the
    teachers first. Runs evaluated without faithfulness are skipped."""
    runs_dir = Path(runs_dir)
    spec = STAGES.get(stage)
    rows = frame[(frame["stage"] == stage) & (frame[spec.setting] == setting)]
    teachers = frame[frame["stage"] == "teacher"]
    groups = [("teacher", teachers)] + [
        (m, rows[rows["method"] == m]) for m in method_order(stage, rows["method"])
    ]
    out: dict[str, dict] = {}
    for label, group in groups:
        collected: dict[str, list] = {}
        fractions: dict[str, list] = {}
        for run in group["run"]:
            summary = json.loads((runs_dir / run / "eval.json").read_text())
            for metric, c in summary.get("faithfulness_curves", {}).get(attribution, {}).items():
                collected.setdefault(metric, []).append(c["mean"])
                fractions[metric] = c["fractions"]
        if collected:
            out[label] = {
                m: {"fractions": fractions[m], "mean": np.mean(v, axis=0).tolist(), "runs": len(v)}
                for m, v in collected.items()
            }
    return out


def decisive_setting(frame: pd.DataFrame) -> tuple[str, object] | None:
    """The setting whose faithfulness curves the paper draws: the narrowest distilled
    student, else the highest one-shot rate, else the last iteration; None without one."""
    for stage in ("distill", "prune_oneshot", "prune_iterative"):
        key = STAGES.get(stage).setting
        values = frame.loc[frame["stage"] == stage, key].dropna() if key in frame else []
        if len(values):
            return stage, values.max()
    return None


if __name__ == "__main__":
    main()
