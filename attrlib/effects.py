"""The effect of a compression method, with the training run as the unit of inference.

A replicate is one (teacher, seed): the runs of one replicate share the teacher, the initial
weights and the batch order, and differ only in the method. For every stage, setting (width,
rate, iteration), compared method and metric, the effect is the mean over replicates of
matched - baseline; its 95 % interval is a t interval over those paired differences, and its
p-value a sign-flip permutation test (exact up to 2^13 replicates). The verdict comes from the
interval alone: "better" when it lies above 0, "worse" below, "no clear change" when it holds
0. Scores of single (image, class) pairs never enter: they describe one run, not the method.

Why a t interval and not a hierarchical bootstrap over teachers then seeds: with 3-5 teachers
a bootstrap's resampled teacher sets take a handful of values and its percentile interval is
too narrow (it cannot be wider than the range of the teachers' means); the t interval is exact
for normal differences and conservative enough at these n. Replicates of one teacher share
that teacher and are not independent, so `teacher_spread` reports how much of the variation
lies between teachers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from attrlib.faithfulness import higher_is_better, score_names
from attrlib.plots import score_name
from attrlib.study import NO_MATCHING, STAGES, method_label, method_order
from attrlib.validity import validity_table, validity_text

REPLICATE = ("teacher_seed", "seed")  # the unit of inference
LEVEL = 0.95
COLUMNS = (
    "stage",
    "setting",
    "method",
    "baseline",
    "metric",
    "n",
    "diff",
    "ci_low",
    "ci_high",
    "p",
    "verdict",
)
# the metrics a reader looks at first: where the maps are, and what it cost in accuracy
DECISIVE = ("gradcam auc", "gradcam pointing", "ebp auc", "ebp pointing", "map_class")
TOO_FEW = "too few replicates"


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """What an interval says: better (above 0), worse (below 0) or no clear change; for a
    metric that is better when lower (deletion, ROAD) the other way round."""
    if np.isnan(low) or np.isnan(high):
        return TOO_FEW
    up = "better" if higher_is_better else "worse"
    down = "worse" if higher_is_better else "better"
    if low > 0:
        return up
    if high < 0:
        return down
    return "no clear change"


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of the mean of paired differences; NaN bounds with
    fewer than two, and a zero-width interval when every difference is the same."""
    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean()) if len(d) else np.nan
    if len(d) < 2:
        return mean, np.nan, np.nan
    if np.all(d == d[0]):  # scipy's interval is NaN at zero spread; the mean is exact then
        return mean, mean, mean
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence_level=level)
    return mean, float(ci.low), float(ci.high)


def sign_flip_p(diffs: Sequence[float], resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p of a sign-flip permutation test of mean(diffs) = 0: exact while 2^n is at
    most `resamples`, else seeded Monte Carlo. NaN with fewer than two differences."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return np.nan
    if np.all(d == 0):
        return 1.0
    result = stats.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",  # one sample: each difference keeps or flips its sign
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Every metric of `all_runs.csv`: class mAP, F1, then each attribution method's scores."""
    scores = [c for c in frame.columns if " " in c]  # "<attribution> <score>"
    return [c for c in ("map_class", "f1") if c in frame] + scores


def with_replicate(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `teacher_seed` column (a study of one teacher: that teacher's seed)."""
    if "teacher_seed" in frame and frame["teacher_seed"].notna().all():
        return frame
    teachers = frame.loc[frame["stage"] == "teacher", "seed"]
    fill = int(teachers.iloc[0]) if len(teachers) == 1 else 0
    out = frame.copy()
    out["teacher_seed"] = out.get("teacher_seed", pd.Series(np.nan, index=out.index)).fillna(fill)
    return out


def _settings(rows: pd.DataFrame, key: str) -> list:
    return sorted(rows[key].dropna().unique()) if key in rows else []


def replicate_differences(
    frame: pd.DataFrame, stage: str, setting, method: str, metrics: Sequence[str]
) -> pd.DataFrame:
    """matched - baseline per replicate (index: teacher_seed, seed) at one setting; only the
    replicates that ran both methods."""
    spec = STAGES.get(stage)
    rows = with_replicate(frame)
    rows = rows[(rows["stage"] == stage) & (rows[spec.setting] == setting)]
    baseline = method_label(stage, {"matching": NO_MATCHING})
    per = {
        label: rows[rows["method"] == label].set_index(list(REPLICATE))[list(metrics)]
        for label in (method, baseline)
    }
    for label, table in per.items():
        if table.index.duplicated().any():
            raise ValueError(
                f"{stage} {spec.label(setting)}, {label}: two runs of one replicate "
                f"{table.index[table.index.duplicated()][0]} (teacher_seed, seed)"
            )
    return (per[method] - per[baseline]).dropna(how="all")


def comparisons(frame: pd.DataFrame, metrics: Sequence[str]) -> Iterator[tuple]:
    """Every comparison the study makes: (stage, setting label, method, baseline, its
    replicate differences of `metrics`), per stage with a baseline, per setting in order and
    per method in table order; comparisons without a replicate that ran both are left out."""
    frame = with_replicate(frame)
    for stage in STAGES:
        spec = STAGES.get(stage)
        group = frame[frame["stage"] == stage]
        if group.empty or not spec.baseline or spec.setting is None:
            continue
        baseline = method_label(stage, {"matching": NO_MATCHING})
        compared = [m for m in method_order(stage, group["method"]) if m != baseline]
        for setting in _settings(group, spec.setting):
            for method in compared:
                diffs = replicate_differences(frame, stage, setting, method, metrics)
                if not diffs.empty:  # no replicate ran both: nothing to compare
                    yield stage, spec.label(setting), method, baseline, diffs


def effects_table(
    frame: pd.DataFrame, metrics: Sequence[str] | None = None, level: float = LEVEL
) -> pd.DataFrame:
    """One row per stage x setting x compared method x metric: the paired difference over
    replicates, its interval, sign-flip p and verdict (columns `COLUMNS`)."""
    metrics = list(metrics) if metrics is not None else metric_columns(frame)
    rows = []
    for stage, setting, method, baseline, diffs in comparisons(frame, metrics):
        for metric in metrics:
            d = diffs[metric].dropna().to_numpy()
            mean, low, high = t_interval(d, level)
            rows.append(
                {
                    "stage": stage,
                    "setting": setting,
                    "method": method,
                    "baseline": baseline,
                    "metric": metric,
                    "n": len(d),
                    "diff": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "p": sign_flip_p(d),
                    "verdict": verdict(low, high, higher_is_better(metric)),
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def teacher_spread(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per comparison and metric: the standard deviation of the per-teacher mean differences
    beside that of all replicates (how much of the spread is the teacher's), and the t
    interval over the per-teacher means (`teacher_ci_low`, `teacher_ci_high`): the reading
    that counts each teacher once, wider with few teachers."""
    rows = []
    for stage, setting, method, _, diffs in comparisons(frame, metrics):
        for metric in metrics:
            d = diffs[metric].dropna()
            per_teacher = d.groupby(level="teacher_seed").mean()
            _, low, high = t_interval(per_teacher.to_numpy())
            rows.append(
                {
                    "stage": stage,
                    "setting": setting,
                    "method": method,
                    "teachers": len(per_teacher),
                    "sd_between_teachers": per_teacher.std(),
                    "sd_all_replicates": d.std(),
                    # the conservative reading: each teacher one replicate (its seeds averaged)
                    "teacher_ci_low": low,
                    "teacher_ci_high": high,
                    "metric": metric,
                }
            )
    return pd.DataFrame(rows)


def summary_metrics(effects: pd.DataFrame) -> list[str]:
    """The summary's columns: the decisive metrics, then every other attribution method's
    AUC (a plugin's among them)."""
    present = list(dict.fromkeys(effects["metric"]))
    others = [m for m in present if m.endswith(" auc") and m not in DECISIVE]
    return [m for m in DECISIVE if m in present] + others + faithfulness_metrics(present)


def faithfulness_metrics(
    present: Sequence[str], methods: Sequence[str] = ("gradcam",)
) -> list[str]:
    """The faithfulness columns among `present` of the attribution `methods`, in registry
    order (the summary shows Grad-CAM's; the faithfulness forest plot Grad-CAM's and EBP's)."""
    return [
        f"{method} {score}"
        for method in methods
        for score in score_names()
        if f"{method} {score}" in present
    ]


def summary_table(effects: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """The effects as one markdown table: a row per stage, setting and method, a column per
    metric (default `summary_metrics`), each cell `diff [low, high]` with ▲ / ▼ where the
    95 % t interval over replicates excludes 0."""
    metrics = summary_metrics(effects) if metrics is None else list(metrics)
    shown = effects[effects["metric"].isin(metrics)].copy()
    if shown.empty:
        return "No compared runs: every stage needs its baseline and a matched method.\n"

    def cell(row) -> str:
        if row["verdict"] == TOO_FEW:
            return f"{row['diff']:+.3f} (n={row['n']})"
        mark = {"better": " ▲", "worse": " ▼"}.get(row["verdict"], "")
        return f"{row['diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]{mark}"

    shown["cell"] = shown.apply(cell, axis=1)
    keys = ["stage", "setting", "method", "baseline", "n"]
    shown["n"] = shown.groupby(keys[:4])["n"].transform("min")
    order = {m: i for i, m in enumerate(metrics)}
    table = shown.pivot_table(
        index=keys, columns="metric", values="cell", aggfunc="first", sort=False
    )
    table = table[sorted(table.columns, key=order.get)].reset_index()
    table.columns = [score_name(c) if c in order else c for c in table.columns]
    return (
        "Matched - baseline per replicate (teacher, seed): mean [95 % t interval]; "
        "▲ better, ▼ worse (the interval excludes 0; for deletion and ROAD lower is better), "
        "otherwise no clear change.\n\n" + table.to_markdown(index=False) + "\n"
    )


def figure_iterations(frame: pd.DataFrame) -> list:
    """The iterative-pruning iterations the figures show: the last evaluated one and those at
    a quarter, half and three quarters of the schedule (every one of a short schedule)."""
    spec = STAGES.get("prune_iterative")
    values = _settings(frame[frame["stage"] == "prune_iterative"], spec.setting)
    picks = {values[max(len(values) * k // 4 - 1, 0)] for k in (1, 2, 3, 4)} if values else set()
    return sorted(picks)


def figure_rows(effects: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The effects a forest plot shows: every distillation width and pruning rate, and the
    iterations of `figure_iterations` (of the runs in `frame`)."""
    label = STAGES.get("prune_iterative").label
    shown = {label(v) for v in figure_iterations(frame)}
    iterative = effects["stage"] == "prune_iterative"
    return effects[~iterative | effects["setting"].isin(shown)]


def refused_text(frame: pd.DataFrame) -> str:
    """A line for summary.md naming the attribution methods some models were not evaluated
    by (their rules cannot follow the network, e.g. LRP on a family its rules cannot walk), or ""."""
    if "refused_methods" not in frame:
        return ""
    names = frame["refused_methods"].dropna().str.split().explode()
    if names.empty:
        return ""
    counts = names.value_counts()
    listed = ", ".join(f"{m} ({counts[m]} of {len(frame)} models)" for m in sorted(counts.index))
    return (
        f"\nNot evaluated: {listed}: the method's rules cannot follow these networks "
        "(each model's eval.json says why, under refused_methods); their columns are absent.\n"
    )


def write_effects(frame: pd.DataFrame, out_dir: str | Path, figures_dir: str | Path | None = None):
    """effects.csv, teacher_spread.csv, validity.csv and summary.md into `out_dir`, the
    forest plot and the Grad-CAM AUC of every run (PNG, PDF) into `figures_dir` (default
    `out_dir`); returns the effects."""
    from attrlib.io import write_text_atomic
    from attrlib.plots import forest_plot, replicate_strips, save_figure

    frame = with_replicate(frame)
    out_dir, figures_dir = Path(out_dir), Path(figures_dir or out_dir)
    effects = effects_table(frame)
    write_text_atomic(out_dir / "effects.csv", effects.to_csv(index=False))
    spread = teacher_spread(frame, [m for m in DECISIVE if m in frame])
    write_text_atomic(out_dir / "teacher_spread.csv", spread.to_csv(index=False))
    summary = summary_table(effects)
    if {"run", "pairs", "map_class"} <= set(frame.columns):  # every model against its bars
        validity = validity_table(frame)
        write_text_atomic(out_dir / "validity.csv", validity.to_csv(index=False))
        summary += "\n" + validity_text(validity)
    summary += refused_text(frame)
    write_text_atomic(out_dir / "summary.md", summary)
    metrics = [m for m in DECISIVE if m in set(effects["metric"])]
    fig = forest_plot(figure_rows(effects, frame), metrics)
    save_figure(fig, figures_dir / "forest", formats=("png", "pdf"))
    faithful = faithfulness_metrics(list(effects["metric"]), ("gradcam", "ebp"))
    if faithful:
        columns = len(faithfulness_metrics(faithful))  # one row per attribution method
        fig = forest_plot(figure_rows(effects, frame), faithful, columns=columns)
        save_figure(fig, figures_dir / "forest_faithfulness", formats=("png", "pdf"))
    if "gradcam auc" in frame:
        fig = replicate_strips(
            frame, "gradcam auc", settings={"prune_iterative": figure_iterations(frame)}
        )
        save_figure(fig, figures_dir / "replicates_gradcam_auc", formats=("png", "pdf"))
    return effects


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m attrlib.effects",
        description="Effects over replicates from a finished study's all_runs.csv: writes "
        "effects.csv, summary.md and the forest and per-run figures (what notebook 06 writes).",
    )
    parser.add_argument("all_runs", help="all_runs.csv written by the paper notebook")
    parser.add_argument("--out", required=True, help="folder for effects.csv and summary.md")
    parser.add_argument("--figures", default=None, help="folder for the figures (default --out)")
    args = parser.parse_args(argv)
    path = Path(args.all_runs)
    if not path.is_file():
        parser.error(
            f"{path}: no such file (the paper notebook writes runs/<name>/paper/all_runs.csv)"
        )
    effects = write_effects(pd.read_csv(path), args.out, args.figures)
    print(f"{len(effects)} effects -> {args.out}/effects.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
