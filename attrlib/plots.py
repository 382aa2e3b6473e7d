"""Figures shared by the notebooks: training curves, data samples, attribution grids, GIFs."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from PIL import Image

from attrlib.data import MEAN, STD
from attrlib.distributed import is_main
from attrlib.io import write_atomic

# What the figures call the study's attribution methods and scores. Every score is better
# when higher but the faithfulness metrics registered as lower-is-better (deletion, ROAD:
# attrlib.faithfulness), and its axis says which; a plugin's method or score keeps its name.
ATTRIBUTION_NAMES = {"gradcam": "Grad-CAM", "ebp": "EBP", "lrp": "LRP", "rap": "RAP"}
SCORE_NAMES = {
    "map_class": "class mAP",
    "map_sample": "per-sample mAP",
    "f1": "F1",
    "auc": "AUC",
    "pointing": "pointing game",
    "cosine_teacher": "cosine to teacher's map",
    "auc_teacher": "AUC on teacher's top region",
    "deletion": "deletion",
    "insertion": "insertion",
    "road": "ROAD",
    "ins_del": "insertion - deletion",
}
SAVE_DPI = 150  # save_figure's resolution
# side of one map in attribution_grid: about 1.5 saved pixels per pixel of a 96 px map, and
# the default study's ten models stay under 1 MB of PNG (tests/test_plots.py)
MAP_PANEL_INCHES = 1.0


def score_label(column: str, sep: str = " ") -> str:
    """Axis label of a score column ('map_class', 'gradcam auc'): its name and, for the
    study's scores, that higher is better ('Grad-CAM AUC (higher is better)'); `sep` goes
    between the two (a line break for a label too long for its axis)."""
    from attrlib.faithfulness import higher_is_better

    name = score_name(column)
    if column.rpartition(" ")[2] not in SCORE_NAMES:
        return name
    return f"{name}{sep}({'higher' if higher_is_better(column) else 'lower'} is better)"


def score_name(column: str) -> str:
    """A score column's name in figures and tables: 'gradcam auc' -> 'Grad-CAM AUC'."""
    method, _, score = column.rpartition(" ")
    name = SCORE_NAMES.get(score, score)
    return f"{ATTRIBUTION_NAMES.get(method, method)} {name}" if method else name


def denormalize(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) normalised -> (B, H, W, 3) floats in [0, 1] for imshow."""
    mean = torch.tensor(MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(STD, device=images.device)[None, :, None, None]
    return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def plot_history(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Training loss and validation mAP per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.5))
    shares = {"train_dead_maps": "train: student maps all zero"}  # fractions: drawn on the 0-1 axis
    for key in sorted(k for k in history[0] if k.startswith("train_") and k not in shares):
        ax_loss.plot(
            epochs, [r[key] for r in history], marker="o", label=key.removeprefix("train_")
        )
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="s", ls="--", label="val loss")
    ax_loss.set(
        xlabel="epoch", ylabel="loss (log scale, lower is better)", yscale="log", title="loss"
    )
    ax_loss.legend(fontsize=8)
    for key, label in (("val_map_class", "class mAP"), ("val_map_sample", "per-sample mAP")):
        ax_map.plot(epochs, [r[key] for r in history], marker="o", label=label)
    ylabel = "mAP (higher is better)"
    for key, label in shares.items():
        if key in history[0]:
            ax_map.plot(epochs, [r[key] for r in history], ls=":", color="k", label=label)
            ylabel = "mAP (higher is better), share"
    ax_map.set(xlabel="epoch", ylabel=ylabel, ylim=(0, 1), title="validation")
    ax_map.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_samples(
    images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> plt.Figure:
    """Images (B,3,H,W) over their class masks (B,H,W; 255 void) with the label names."""
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    pictures = denormalize(images)
    cmap = plt.get_cmap("tab20", len(classes) + 1)
    for i in range(n):
        names = [classes[k] for k in torch.nonzero(labels[i]).flatten().tolist()]
        axes[0, i].imshow(pictures[i])
        axes[0, i].set_title(", ".join(names), fontsize=8)
        mask = masks[i].cpu().numpy().astype(float)
        shown = np.ma.masked_where(mask == 255, mask)
        axes[1, i].imshow(shown, cmap=cmap, vmin=0, vmax=len(classes), interpolation="nearest")
        axes[1, i].imshow(np.ma.masked_where(mask != 255, mask), cmap="gray", vmin=0, vmax=255)
        for ax in axes[:, i]:
            ax.axis("off")
    axes[1, 0].set_title("mask (white = void)", fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | Path, formats: Sequence[str] = ("png",)) -> None:
    """Save a figure under `path` (suffix replaced per format) at `SAVE_DPI`; in a run of
    several processes only rank 0 saves it.

    PNGs are written as RGB: the figures are opaque, and matplotlib's alpha channel only
    added a tenth to the bytes of the map grids.
    """
    path = Path(path)
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt != "png":
            fig.savefig(path.with_suffix(f".{fmt}"), dpi=SAVE_DPI, bbox_inches="tight")
            continue
        rendered = io.BytesIO()
        fig.savefig(rendered, format="png", dpi=SAVE_DPI, bbox_inches="tight")
        picture = Image.open(rendered).convert("RGB")
        write_atomic(
            path.with_suffix(".png"),
            lambda tmp, picture=picture: picture.save(tmp, format="png", dpi=(SAVE_DPI, SAVE_DPI)),
        )


def figure_pixels(fig: plt.Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB rendering of `fig` at its own size: one frame of an animation."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_animation(
    frames: Sequence[np.ndarray], path: str | Path, seconds_per_frame: float = 1.0
) -> Path:
    """Write equal-sized (H, W, 3) uint8 frames to `path` as a looping GIF (atomically)."""
    import imageio.v3 as iio

    shapes = {frame.shape for frame in frames}
    if not frames or len(shapes) != 1:
        raise ValueError(f"need at least one frame, all of one shape; got shapes {shapes}")
    stack = np.stack(frames)  # (T, H, W, 3)
    duration = round(1000 * seconds_per_frame)  # milliseconds per frame
    return write_atomic(
        path, lambda tmp: iio.imwrite(tmp, stack, extension=".gif", duration=duration, loop=0)
    )


def attribution_grid(
    image: torch.Tensor,
    maps: dict[str, dict[str, torch.Tensor]],
    title: str = "",
) -> plt.Figure:
    """The image once, then one row per model of each method's (H, W) map over it.

    Rows keep the order of `maps` and are labelled by its keys, so the caller decides what
    comes first (the reference model, then each compression's baseline before its matched
    models; see `attrlib.paper.qualitative_runs`). Maps are expected min-max normalised to
    [0, 1] (`attrlib.metrics.normalize_maps`), which one colour bar under the maps shows.
    The image is drawn beside the first row only: a copy per row showed nothing new and
    took a sixth of the PNG's bytes.
    """
    models = list(maps)
    methods = list(maps[models[0]])
    picture = denormalize(image[None])[0]  # (H, W, 3)
    side = MAP_PANEL_INCHES
    # a map smaller than its saved panel is drawn as the pixels it has: smoothing them
    # invents detail and costs a third of the bytes; a larger one is averaged down
    upsampled = max(picture.shape[:2]) <= 0.9 * side * SAVE_DPI  # layout: ~0.93 of `side`
    interpolation = "nearest" if upsampled else "antialiased"
    fig, axes = plt.subplots(
        len(models),
        len(methods) + 1,
        figsize=(side * (len(methods) + 1) + 1.6, side * len(models) + 0.9),  # + labels, bar
        squeeze=False,
        layout="constrained",  # leaves room for the row labels and the colour bar
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(picture, interpolation=interpolation)
    axes[0, 0].set_title("image", fontsize=9)
    for ax in axes[1:, 0]:
        ax.axis("off")
    overlay = None
    labelled = min(1, len(methods))  # the row's first map, or the image when there is none
    for r, name in enumerate(models):
        # the label sits left of the row's first map, between the image and the maps
        axes[r, labelled].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        for c, method in enumerate(methods, start=1):
            axes[r, c].imshow(picture, interpolation=interpolation)
            overlay = axes[r, c].imshow(
                maps[name][method].numpy(),
                cmap="jet",
                alpha=0.5,
                vmin=0,
                vmax=1,
                interpolation=interpolation,
            )
            if r == 0:
                axes[r, c].set_title(ATTRIBUTION_NAMES.get(method, method), fontsize=9)
    if overlay is not None:  # blended with white at alpha 0.5, as over the image
        bar = fig.colorbar(overlay, ax=axes[-1, 1:], location="bottom", aspect=40)
        bar.set_label("attribution, min-max normalised per map", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def auc_histograms(pairs, column: str = "auc", hue: str = "model") -> plt.Figure:
    """Histogram of a per-(image, class) score for each method, one colour per model."""
    import seaborn as sns

    methods = list(dict.fromkeys(pairs["method"]))
    if not methods:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no scored (image, class) pairs", ha="center", va="center")
        ax.axis("off")
        return fig
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        sns.histplot(
            pairs[pairs["method"] == method],
            x=column,
            hue=hue,
            ax=ax,
            bins=20,
            binrange=(0, 1),
            element="step",
            stat="density",
            common_norm=False,
            legend=ax is axes[0, -1],
        )
        ax.set_title(ATTRIBUTION_NAMES.get(method, method))
        ax.set_xlabel(score_label(column, sep="\n"))
        ax.set_ylabel("density of (image, class) pairs")
    fig.tight_layout()
    return fig


def filter_counts(
    before_widths: Sequence[int],
    after_widths: Sequence[int],
    names: Sequence[str] | None = None,
    title: str = "",
) -> plt.Figure:
    """Filters (output channels) of each conv before and after structured pruning, as bars.

    Args:
        before_widths, after_widths: one filter count per conv, in forward order (a
            `ModelConfig.widths`: a structurally pruned VGG is just another list of widths).
        names: one label per conv; None = conv1, conv2, ...
        title: put before the totals in the axes title.
    Returns:
        One axes with a pair of bars per conv (before in grey, after in colour; its two bar
        containers in that order), each after-bar labelled with its count, and the kept
        total and share in the title.
    """
    before, after = [int(w) for w in before_widths], [int(w) for w in after_widths]
    if not before or len(before) != len(after):
        raise ValueError(
            f"need one count per conv before and after, got {len(before)} and {len(after)}"
        )
    names = [f"conv{i}" for i in range(1, len(before) + 1)] if names is None else list(names)
    if len(names) != len(before):
        raise ValueError(f"need {len(before)} names, one per conv, got {len(names)}")
    x = np.arange(len(before))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(before) + 1.5), 3.4))
    ax.bar(x - 0.2, before, width=0.4, color="0.75", label="before pruning")
    kept = ax.bar(x + 0.2, after, width=0.4, color="tab:blue", label="after pruning")
    ax.bar_label(kept, fontsize=7, padding=1)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("filters (output channels)")
    ax.legend(fontsize=8)
    totals = f"{sum(after)} of {sum(before)} filters kept ({sum(after) / sum(before):.0%})"
    ax.set_title(f"{title}: {totals}" if title else totals, fontsize=10)
    fig.tight_layout()
    return fig


def matching_map_figure(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    image: torch.Tensor,
    layer: str,
    matchings: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> plt.Figure:
    """The maps the matching loss compares for one image (3, H, W): teacher row, student row.

    For each matching (None = every entry of `attrlib.distill.MATCHINGS`: EWA, SWA) both maps
    are built as `attrlib.distill.CompressionObjective` builds them: at `layer`
    (`attrlib.models.MATCHING_LAYERS`), for the teacher's top-1 class, with no channel
    dropped (stochastic SWA's teacher map is the SWA map with a fresh random share of its
    channel weights zeroed at every step). Both networks run in eval mode. Each column's
    title holds `attrlib.distill.matching_loss` of the pair on this image, before lambda,
    and names a map that is zero everywhere (a dead SWA map: no gradient, no agreement).
    For display each map is upsampled to the image (bilinear, as
    `attrlib.attribution.attribute`) and min-max normalised (`attrlib.metrics.normalize_maps`;
    the loss L2-normalises instead, and both keep a map's shape) and drawn over the image by
    `attribution_grid`.

    Args:
        teacher, student: networks with `matching_feature` / `matching_head`, on any device.
        image: (3, H, W) normalised. classes: class names, for the title.
    """
    from attrlib.attribution import upsample
    from attrlib.distill import MATCHINGS, matching_loss
    from attrlib.metrics import normalize_maps
    from attrlib.models import eval_mode

    names = MATCHINGS.names() if matchings is None else list(matchings)
    if not names:
        raise ValueError("need at least one matching to draw")
    raw: dict[str, dict[str, torch.Tensor]] = {"teacher": {}, "student": {}}
    target = None  # (1,) the teacher's top-1 class, the class of both networks' maps
    for label, model in (("teacher", teacher), ("student", student)):
        images = image[None].to(next(model.parameters()).device)  # (1, 3, H, W)
        with eval_mode(model):
            with torch.no_grad():
                feature = model.matching_feature(images, layer)  # (1, C, h, w)
            for name in names:
                with torch.enable_grad():  # SWA's weights: the head's gradient at the feature
                    leaf = feature.detach().requires_grad_()
                    logits = model.matching_head(leaf, layer)  # (1, K)
                    if target is None:
                        target = logits.detach().argmax(dim=1).cpu()
                    maps = MATCHINGS.get(name)(leaf, logits, target.to(images.device))
                raw[label][name] = maps.detach().cpu()  # (1, h, w)
    size = tuple(image.shape[-2:])
    drawn: dict[str, dict[str, torch.Tensor]] = {"teacher": {}, "student": {}}
    for name in names:
        loss = float(matching_loss(raw["student"][name], raw["teacher"][name]))
        # an all-zero map normalises to zeros: a small loss then says nothing about agreement
        dead = [label for label, maps in raw.items() if not maps[name].any()]
        column = f"{name.upper()} · loss {loss:.3g}"
        if dead:  # short: the title sits over one map panel
            column += "\nboth maps = 0" if len(dead) == 2 else f"\n{dead[0]} map = 0"
        for label, maps in raw.items():
            drawn[label][column] = normalize_maps(upsample(maps[name], size))[0]  # (H, W)
    h, w = raw["teacher"][names[0]].shape[-2:]
    chosen = int(target)
    name_of = classes[chosen] if classes is not None else str(chosen)
    what = f"matching maps at the '{layer}' layer ({h}x{w}), teacher's top-1 class '{name_of}'"
    return attribution_grid(image.cpu(), drawn, title=f"{title} · {what}" if title else what)


def remaining_weights_axis(ax: plt.Axes, remaining: Sequence[float]) -> None:
    """Log x axis of the share of conv weights left: 100% at the left, pruning to the right.

    Each iteration keeps a fixed share of the weights, so on a log axis the iterations are
    evenly spaced; on a linear sparsity axis the last ones crowd together near 1.
    """
    lowest = min(r for r in remaining if r > 0)
    ax.set_xscale("log")
    right = lowest / 1.5  # room for the last point's marker and a tick below it
    ax.set_xlim(1.2, right)  # left > right: the axis decreases to the right
    steps = [step * 10.0**-k for k in range(7) for step in (1, 0.5, 0.2)]  # 100%, 50%, ...
    ticks = [t for t in steps if t >= right]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.xaxis.set_minor_locator(NullLocator())  # 60%, 70%, ... crowd the first decade
    ax.set_xlabel("conv weights left, log scale (pruning →)")


def schedule_curve(records: Sequence[dict], title: str = "") -> plt.Figure:
    """One iterative-pruning schedule: each iteration's best val class mAP against the share
    of conv weights it left (`records` as attrlib.stages.prune_iterative returns them)."""
    remaining = [1 - r["sparsity"] for r in records]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(remaining, [r["best"]["val_map_class"] for r in records], marker="o")
    remaining_weights_axis(ax, remaining)
    ax.set(ylabel=f"val {score_label('map_class')}", title=title)
    fig.tight_layout()
    return fig


def forest_plot(
    effects, metrics: Sequence[str], title: str = "", columns: int | None = None
) -> plt.Figure:
    """Paired differences matched - baseline with their intervals: one panel per metric (in
    rows of `columns` panels; default all in one), one line per (stage, setting, method) of
    `effects` (attrlib.effects.effects_table rows), in the order given. Filled: the interval
    excludes 0; hollow: no clear change."""
    from attrlib.study import colour

    if effects.empty or not metrics:
        return _nothing_to_draw("no effects: no matched run has its baseline run beside it")
    keys = list(
        dict.fromkeys(zip(effects["stage"], effects["setting"], effects["method"], strict=True))
    )
    columns = min(columns or len(metrics), len(metrics))
    rows = -(-len(metrics) // columns)
    fig, grid = plt.subplots(
        rows,
        columns,
        figsize=(2.6 * columns + 2.4, rows * (0.28 * len(keys) + 0.9) + 0.5),
        sharey=True,
        squeeze=False,
    )
    for ax in grid.flat[len(metrics) :]:
        ax.set_axis_off()
    axes = grid.flat[: len(metrics)]
    y = {key: -i for i, key in enumerate(keys)}
    for ax, metric in zip(axes, metrics, strict=True):
        rows = effects[effects["metric"] == metric]
        for _, e in rows.iterrows():
            pos = y[(e["stage"], e["setting"], e["method"])]
            c = colour(e["method"]) or "k"
            decided = e["verdict"] in ("better", "worse")
            err = [[e["diff"] - e["ci_low"]], [e["ci_high"] - e["diff"]]]
            ax.errorbar(
                e["diff"],
                pos,
                xerr=err,
                fmt="o",
                color=c,
                ms=4,
                capsize=2,
                mfc=c if decided else "white",
            )
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_title(score_label(metric, "\n"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    grid[0, 0].set_yticks(list(y.values()), [f"{s} {v} · {m}" for s, v, m in y])
    fig.supxlabel("matched - baseline (mean over replicates, 95 % t interval)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def replicate_strips(frame, metric: str, settings: dict[str, Sequence] | None = None) -> plt.Figure:
    """Every run's `metric`, one panel per compression stage: per setting the methods side by
    side (the baseline first), each run a dot coloured by its teacher, a grey line joining the
    runs of one replicate (teacher, seed) across methods. `settings` limits a stage's
    settings ({stage: [values]}); `frame` is all_runs.csv with a `teacher_seed` column."""
    from attrlib.study import STAGES, method_order

    settings = settings or {}
    stages = [s for s in STAGES if STAGES.get(s).baseline and (frame["stage"] == s).any()]
    if not stages:
        return _nothing_to_draw("no compressed runs")
    teachers = sorted(frame["teacher_seed"].dropna().unique())
    palette = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, stage in zip(axes, stages, strict=True):
        spec = STAGES.get(stage)
        rows = frame[frame["stage"] == stage]
        values = settings.get(stage) or sorted(rows[spec.setting].dropna().unique())
        methods = method_order(stage, rows["method"])
        ticks, labels = [], []
        for g, value in enumerate(values):
            group = rows[rows[spec.setting] == value]
            xs = {m: g * (len(methods) + 1) + i for i, m in enumerate(methods)}
            for _, runs in group.groupby(["teacher_seed", "seed"]):
                runs = runs.set_index("method").reindex(methods)
                ax.plot([xs[m] for m in methods], runs[metric], color="0.75", lw=0.6, zorder=1)
            for m in methods:
                runs = group[group["method"] == m]
                ax.scatter(
                    np.full(len(runs), xs[m]),
                    runs[metric],
                    c=[palette(teachers.index(t) % 10) for t in runs["teacher_seed"]],
                    s=14,
                    zorder=2,
                )
                ticks.append(xs[m])
                labels.append(f"{spec.label(value)} {m}")
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(stage, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(score_label(metric))
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=palette(i % 10), label=f"teacher {int(t)}")
        for i, t in enumerate(teachers)
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _nothing_to_draw(reason: str) -> plt.Figure:
    """A small figure that says why it is empty, where a study has nothing to draw yet."""
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.text(0.5, 0.5, reason, ha="center", va="center", fontsize=9)
    ax.set_axis_off()
    return fig


def faithfulness_curves(
    curves: dict[str, dict], metrics: Sequence[str], attribution: str, title: str = ""
) -> plt.Figure:
    """Mean faithfulness curves, one panel per metric: {label: {metric: {"fractions": [...],
    "mean": [...], "runs": n}}} (attrlib.paper.faithfulness_curves), class probability over
    the fraction of pixels perturbed in the order of `attribution`'s maps."""
    from attrlib.faithfulness import higher_is_better
    from attrlib.study import colour

    if not curves or not metrics:
        return _nothing_to_draw("no faithfulness curves: evaluate with faith_pairs > 0")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, by_metric in curves.items():
            if metric not in by_metric:
                continue
            c = by_metric[metric]
            runs = f" ({c['runs']} runs)" if c.get("runs", 1) > 1 else ""
            ax.plot(c["fractions"], c["mean"], marker=".", color=colour(label), label=label + runs)
        better = "lower" if not higher_is_better(f"{attribution} {metric}") else "higher"
        ax.set(
            xlabel="fraction of pixels perturbed, highest first",
            ylabel="class probability",
            title=f"{score_name(f'{attribution} {metric}')} (area: {better} is better)",
        )
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
