"""Time localization evaluation: the authors' per-pair loop against `localization_table`.

The authors' `pascal/evaluate_localization.py` (GeondoPark/attribute-preserve) runs one
script per attribution method over a batch-size-1 loader: per image a forward for the
logits, then per ground-truth class one map, the map to NumPy, min-max normalised in NumPy,
scored with scikit-learn `roc_curve` + `auc` and an arg-max pointing game.
`authors_localization` re-creates that loop with our per-method functions: `attribute` on
one (image, class) at a time, i.e. a forward and a backward (or relevance) pass per pair.
`attrlib.evaluate.localization_table` is the batched path (one `attribute` call per method
and batch, metrics for the whole batch). Both score the same (image, class) pairs.

    python benchmarks/evaluate.py [--data-root ...] [--checkpoint ...] [--images 64]
        [--threads 1] [--repeats 3] [--out runs/bench/evaluate.json]

Correctness before time (`check_equal_scores`, in float64): the benchmark asserts that both
paths score the same pairs, that each pair's one-at-a-time map equals its batched map up to
rounding, and that the authors' scoring of a map equals the batched scores to 1e-6 (AUC and
pointing, per pair and method). End-to-end scores are reported, not asserted: a map computed
alone and in a batch differs in its last bits (CPU kernels sum in a batch-size-dependent
order), and such a difference that makes or breaks a tie between pixels moves that pair's
AUC by about 1/(positives x negatives), ~1e-5 at 64 px. Pointing has never differed.

bench: how to read the ratios. Every ratio is authors' seconds / batched seconds on the same
images, model and process (median of `--repeats` runs after a warm-up run); 5.0 means the
batched path is five times faster.
- `ratio_per_method[m]`: method m alone, end to end (data loading, the logits forward that
  selects the pairs, maps, metrics), as the authors run one method per script;
- `ratio_total`: the authors' per-method runs summed against one `localization_table` call
  with all the methods (which shares data loading and the logits forward between them);
- `ratio_gradcam_metrics`: `ratio_per_method["gradcam"]`, an evaluation of Grad-CAM maps and
  metrics alone;
- `ratio_beyond_prediction[m]`: the same with each path's prediction pass (loading, logits
  forward, pair selection; `seconds_wall["*:predict"]`) subtracted from both sides: maps +
  metrics only. A difference of medians, so noisy when the batched remainder is small;
- `ratio_cpu`: the per-method and total ratios of CPU seconds of this process, steadier than
  wall time when another process shares the cores.
Per pair, this loop costs about what the authors' does: its Grad-CAM and EBP back-propagate
through the head only (theirs: a full backward per class, with parameter gradients for
Grad-CAM), while its LRP and RAP run their own forward per pair (theirs propagate from the
image's logits forward); it builds maps only for the scored pairs (theirs for every
ground-truth class) and points with a NumPy arg-max (theirs searches a Python list of mask
pixels). CPU times depend on the load: with another process on the cores, pass
`--threads 1` (two threads competing with a busy process can be 50x slower).

Deviations from the authors' loop, all needed for equal scores: min-max normalisation without
their +1e-5 in the denominator (AUC unchanged: a monotone rescaling), the arg-max taken on the
normalised map, no RAP negative clipping and no LRP/RAP sign flip for negative logits (the
batched path scores the raw map, SPEC: Evaluation), bilinear upsampling inside `attribute`
instead of `cv2.resize`. Without `--checkpoint`, a seeded untrained x4 student at 64 px is
used and pairs are selected by ground truth alone (`--all-gt-pairs`, on by default then), so
that the pair count does not hinge on which random logits happen to be positive.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import auc, roc_curve
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from attrlib.attribution import attribute
from attrlib.data import VOID, VOCLocalization, load_classes
from attrlib.engine import load_model
from attrlib.evaluate import DEFAULT_METHODS, localization_table, select_pairs
from attrlib.io import write_json_atomic
from attrlib.models import vgg16_bn_voc

TOLERANCE = 1e-6  # largest accepted difference of a pair's AUC or pointing between the paths
MAP_TOLERANCE = 1e-9  # float64 maps of one pair alone and in a batch: equal up to rounding
KEYS = ["image", "class", "method"]


# ----------------------------------------------------------------------------- the authors' loop


def authors_pairs(
    model: nn.Module, dataset: Dataset, require_prediction: bool = True
) -> Iterator[tuple[int, torch.Tensor, int, np.ndarray, np.ndarray]]:
    """The authors' outer loops: batch size 1, a forward per image, its ground-truth classes.

    Yields (index, image (1,3,S,S), class, seg_mask (S,S) bool, valid (S,S) bool) for every
    pair `attrlib.evaluate.select_pairs` keeps: ground truth, logit > 0 unless
    `require_prediction` is False, mask neither empty nor covering every non-void pixel.
    """
    model.eval()
    for index, (image, labels, mask) in enumerate(DataLoader(dataset, batch_size=1)):
        with torch.no_grad():
            logits = model(image)  # (1, K)
        segmentation = mask[0].numpy()  # (S, S) 0 background, k+1 class k, 255 void
        valid = segmentation != VOID  # (S, S)
        for target in labels[0].nonzero().flatten().tolist():
            if require_prediction and not logits[0, target] > 0:
                continue
            seg_mask = segmentation == target + 1  # (S, S)
            truth = seg_mask[valid]  # (V,)
            if truth.all() or not truth.any():  # AUC undefined: scored by neither path
                continue
            yield index, image, target, seg_mask, valid


def authors_maps(
    model: nn.Module, dataset: Dataset, method: str, require_prediction: bool = True
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per pair of `authors_pairs`: (index, class, map (S,S), seg_mask, valid), one at a time.

    The map is `attribute` on that single (image, class), as a NumPy array, not normalised.
    """
    for index, image, target, seg_mask, valid in authors_pairs(model, dataset, require_prediction):
        heatmap = attribute(model, image, torch.tensor([target]), method)[0].numpy()  # (S, S)
        yield index, target, heatmap, seg_mask, valid


def authors_scores(
    heatmap: np.ndarray, seg_mask: np.ndarray, valid: np.ndarray
) -> tuple[float, float]:
    """(AUC, pointing hit) of one map the authors' way: NumPy min-max, scikit-learn ROC, arg-max."""
    low, high = heatmap.min(), heatmap.max()
    span = high - low  # in the map's dtype, as `normalize_maps`
    heatmap = (heatmap - low) / span if span > 0 else np.zeros_like(heatmap)
    false_pos, true_pos, _ = roc_curve(seg_mask[valid], heatmap[valid])
    peak = np.argmax(heatmap)  # first maximum in row-major order
    return float(auc(false_pos, true_pos)), float(seg_mask.flat[peak])


def authors_localization(
    model: nn.Module, dataset: Dataset, method: str, require_prediction: bool = True
) -> pd.DataFrame:
    """The authors' evaluation of one method: one map and its scores per (image, class).

    Args:
        model: a `VGGVOC`; evaluated in eval mode.
        dataset: items (image (3,S,S), labels (K,), mask (S,S)), like `VOCLocalization`.
        method: an attribution method name (gradcam, ebp, lrp, rap).
        require_prediction: keep only classes with logit > 0 (the paper); False keeps every
            scorable ground-truth class (see `authors_pairs`).
    Returns:
        One row per scored pair: image, class, method, auc, pointing (the columns of
        `localization_table`).
    """
    ids = getattr(dataset, "ids", None)
    rows = [
        (ids[index] if ids else index, target, method, *authors_scores(heatmap, seg_mask, valid))
        for index, target, heatmap, seg_mask, valid in authors_maps(
            model, dataset, method, require_prediction
        )
    ]
    return pd.DataFrame(rows, columns=[*KEYS, "auc", "pointing"])


# ----------------------------------------------------------------------------- correctness


def compare_tables(
    authors: pd.DataFrame, batched: pd.DataFrame, tolerance: float | None = TOLERANCE
) -> dict[str, float]:
    """Assert that both paths scored the same pairs with equal AUC and pointing (to 1e-6).

    `tolerance=None` only measures (the pair sets must still be equal). Returns the largest
    absolute differences and the share of pairs beyond `TOLERANCE`, per score.
    """
    merged = authors.merge(batched, on=KEYS, how="outer", suffixes=("_authors", "_batched"))
    missing = merged[["auc_authors", "auc_batched"]].isna().any(axis=1)
    if missing.any():
        raise AssertionError(
            f"the paths scored different pairs: {merged.loc[missing, KEYS].to_dict('records')[:5]}"
        )
    diffs = {}
    for column in ("auc", "pointing"):
        gap = (merged[f"{column}_authors"] - merged[f"{column}_batched"]).abs()
        worst = int(gap.to_numpy().argmax()) if len(gap) else 0
        if tolerance is not None and len(gap) and gap.iloc[worst] > tolerance:
            raise AssertionError(
                f"{column} differs by {gap.iloc[worst]:.3g} at {merged.loc[worst, KEYS].to_dict()}"
            )
        diffs[f"{column}_max"] = float(gap.max()) if len(gap) else 0.0
        diffs[f"{column}_share_beyond_tolerance"] = (
            float((gap > TOLERANCE).mean()) if len(gap) else 0.0
        )
    return diffs


class CastImages(Dataset):
    """`dataset` with its images cast to `dtype` (labels and masks unchanged)."""

    def __init__(self, dataset: Dataset, dtype: torch.dtype) -> None:
        self.dataset, self.dtype = dataset, dtype
        self.ids = getattr(dataset, "ids", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, labels, mask = self.dataset[index]
        return image.to(self.dtype), labels, mask


def batched_maps(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str],
    batch_size: int,
    require_prediction: bool,
) -> Iterator[tuple[int, int, str, np.ndarray, np.ndarray, np.ndarray]]:
    """The maps `localization_table` scores, per pair: (index, class, method, map, seg, valid).

    Mirrors the batched path (same loader, pair selection and `attribute` call per batch and
    method), so the maps are the ones it scores, bit for bit; were the mirror to drift, the
    same-map score check of `check_equal_scores` would fail.
    """
    offset = 0
    for images, labels, masks in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with torch.no_grad():
            logits = model.eval()(images)  # (B, K)
        rows, classes = select_pairs(logits, labels, masks, require_prediction)  # (P,), (P,)
        segmentation = masks.numpy()  # (B, S, S)
        for method in methods if len(rows) else []:
            maps = attribute(model, images[rows], classes, method)  # (P, S, S)
            for p, (row, target) in enumerate(zip(rows.tolist(), classes.tolist(), strict=True)):
                seg = segmentation[row]
                yield offset + row, target, method, maps[p].numpy(), seg == target + 1, seg != VOID
        offset += images.shape[0]


def check_equal_scores(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str],
    batch_size: int,
    require_prediction: bool,
) -> dict[str, dict[str, float]]:
    """Assert that both paths score the same pairs with the same maps and the same scores.

    Run in float64 (copies of model and images). Asserts, per (image, class, method):
    1. both paths score the same pairs;
    2. the authors' one-pair map equals the batched path's map up to rounding
       (`MAP_TOLERANCE`, relative to the map's largest magnitude);
    3. the authors' scoring (NumPy min-max, scikit-learn ROC AUC, NumPy arg-max) of the
       batched path's map equals the batched path's scores to `TOLERANCE`.
    End to end (authors' map and scoring against the batched path) the scores are only
    measured: a map computed in a batch of 1 and in a batch of P differs in its last bits
    (CPU GEMM and conv kernels sum in a batch-size-dependent order), and a 1-ulp change that
    makes or breaks a tie between pixels moves that pair's AUC by about 1/(positives x
    negatives): on the default 64-px benchmark ~2 % of pairs move, by at most ~1e-5.

    Returns {"end_to_end": diffs, "same_maps": diffs, "maps": {"max_rel_diff": ...}}.
    """
    model64 = copy.deepcopy(model).double().eval()
    data64 = CastImages(dataset, torch.float64)
    ids = data64.ids
    authors_rows, authors_heatmaps = [], {}
    for method in methods:
        for index, target, heatmap, seg, valid in authors_maps(
            model64, data64, method, require_prediction
        ):
            authors_heatmaps[index, target, method] = heatmap
            name = ids[index] if ids else index
            authors_rows.append((name, target, method, *authors_scores(heatmap, seg, valid)))
    authors = pd.DataFrame(authors_rows, columns=[*KEYS, "auc", "pointing"])
    batched, _ = localization_table(
        model64,
        data64,
        methods,
        batch_size=batch_size,
        progress=False,
        require_prediction=require_prediction,
    )
    end_to_end = compare_tables(authors, batched, tolerance=None)  # asserts the same pairs
    rescored_rows, map_gap = [], 0.0
    for index, target, method, heatmap, seg, valid in batched_maps(
        model64, data64, methods, batch_size, require_prediction
    ):
        scale = max(float(np.abs(heatmap).max()), np.finfo(heatmap.dtype).tiny)
        gap = float(np.abs(authors_heatmaps[index, target, method] - heatmap).max()) / scale
        map_gap = max(map_gap, gap)
        name = ids[index] if ids else index
        rescored_rows.append((name, target, method, *authors_scores(heatmap, seg, valid)))
    if map_gap > MAP_TOLERANCE:
        raise AssertionError(f"a one-pair map differs from its batched map by {map_gap:.3g} (rel)")
    rescored = pd.DataFrame(rescored_rows, columns=[*KEYS, "auc", "pointing"])
    same_maps = compare_tables(rescored, batched)  # asserts scores to TOLERANCE
    return {"end_to_end": end_to_end, "same_maps": same_maps, "maps": {"max_rel_diff": map_gap}}


# ----------------------------------------------------------------------------- timing


def timed(
    runs: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, float, object]]:
    """Per run: median wall and CPU seconds of `repeats` calls, and the warm-up call's result.

    The runs alternate within each repeat, so a change of machine load hits all of them alike.
    CPU seconds (`time.process_time`) count this process only: with one thread they are the
    steadier measure when another process shares the cores.
    """
    results = {name: run() for name, run in runs.items()}  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name]), results[name])
        for name in runs
    }


def first_images(dataset: VOCLocalization, count: int) -> Dataset:
    """The first `count` items of `dataset`, keeping their image ids."""
    subset = Subset(dataset, range(min(count, len(dataset))))
    subset.ids = dataset.ids[: len(subset)]
    return subset


def build_network(checkpoint: str | None, classes: Sequence[str], seed: int) -> nn.Module:
    """The checkpoint's model, or a seeded untrained x4 student at 64 px."""
    if checkpoint:
        model, _ = load_model(checkpoint, tuple(classes))
        return model.eval()
    torch.manual_seed(seed)
    return vgg16_bn_voc(width_div=4, num_classes=len(classes), input_size=64).eval()


def beyond(seconds: float, prediction: float) -> float:
    """Time of a run beyond its path's prediction pass (never below 1 ms: medians are noisy)."""
    return max(seconds - prediction, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data/synthvoc-default/VOCdevkit/VOC2012")
    parser.add_argument("--checkpoint", default=None, help="attrlib checkpoint (best.pt)")
    parser.add_argument("--images", type=int, default=64, help="first N segmentation-val images")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--all-gt-pairs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score every ground-truth pair, not only logit > 0 (default: on without --checkpoint)",
    )
    parser.add_argument("--out", default="runs/bench/evaluate.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    all_gt_pairs = args.all_gt_pairs if args.all_gt_pairs is not None else not args.checkpoint
    require_prediction = not all_gt_pairs
    classes = load_classes(args.data_root)
    model = build_network(args.checkpoint, classes, args.seed)
    size = model.config.input_size
    dataset = first_images(VOCLocalization(args.data_root, "val", classes, size), args.images)

    # correctness first: equal scores per pair and method, else no times are reported
    check = check_equal_scores(model, dataset, args.methods, args.batch_size, require_prediction)
    print(
        "float64 check passed: same pairs; maps equal to "
        f"{check['maps']['max_rel_diff']:.1g} (rel); same-map scores equal to "
        f"{check['same_maps']['auc_max']:.1g}; end to end max |diff| auc "
        f"{check['end_to_end']['auc_max']:.1g}, pointing {check['end_to_end']['pointing_max']:.1g}"
    )

    def authors(method: str | None) -> pd.DataFrame | None:
        if method is None:  # the prediction pass alone: loading, forward, pair selection
            for _ in authors_pairs(model, dataset, require_prediction):
                pass
            return None
        return authors_localization(model, dataset, method, require_prediction)

    def batched(methods: Sequence[str]) -> pd.DataFrame:
        table, _ = localization_table(
            model,
            dataset,
            methods,
            batch_size=args.batch_size,
            progress=False,
            require_prediction=require_prediction,
        )
        return table

    runs = {"authors:predict": lambda: authors(None), "batched:predict": lambda: batched([])}
    for method in args.methods:
        runs[f"authors:{method}"] = lambda m=method: authors(m)
        runs[f"batched:{method}"] = lambda m=method: batched([m])
    runs["batched:total"] = lambda: batched(args.methods)
    times = timed(runs, args.repeats)
    wall = {name: t[0] for name, t in times.items()}
    cpu = {name: t[1] for name, t in times.items()}
    diff32 = {
        m: compare_tables(times[f"authors:{m}"][2], times[f"batched:{m}"][2], tolerance=None)
        for m in args.methods
    }
    pairs = {m: len(times[f"batched:{m}"][2]) for m in args.methods}

    def ratios(seconds: dict[str, float]) -> dict[str, float]:
        names = ["predict", *args.methods]
        out = {m: seconds[f"authors:{m}"] / seconds[f"batched:{m}"] for m in names}
        out["total"] = sum(seconds[f"authors:{m}"] for m in args.methods) / seconds["batched:total"]
        return out

    ratio_wall, ratio_cpu = ratios(wall), ratios(cpu)
    ratio_beyond = {
        m: beyond(wall[f"authors:{m}"], wall["authors:predict"])
        / beyond(wall[f"batched:{m}"], wall["batched:predict"])
        for m in args.methods
    }
    result = {
        "data_root": args.data_root,
        "checkpoint": args.checkpoint,
        "images": len(dataset),
        "input_size": size,
        "model_widths": list(model.config.widths),
        "all_gt_pairs": all_gt_pairs,
        "methods": list(args.methods),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "pairs": pairs,
        "float64_check": {"tolerance": TOLERANCE, "map_tolerance": MAP_TOLERANCE, **check},
        "float32_diffs": diff32,
        "seconds_wall": wall,
        "seconds_cpu": cpu,
        "seconds_authors_total": sum(wall[f"authors:{m}"] for m in args.methods),
        "seconds_batched_total": wall["batched:total"],
        "ratio_per_method": {m: ratio_wall[m] for m in args.methods},
        "ratio_total": ratio_wall["total"],
        "ratio_gradcam_metrics": ratio_wall.get("gradcam"),
        "ratio_beyond_prediction": ratio_beyond,
        "ratio_cpu": ratio_cpu,
    }
    print(f"{'':8s} {'pairs':>5s} {'authors s':>10s} {'batched s':>10s} {'ratio':>6s} {'cpu':>6s}")
    for m in ["predict", *args.methods, "total"]:
        a = result["seconds_authors_total"] if m == "total" else wall[f"authors:{m}"]
        b = wall[f"batched:{m}"]
        print(
            f"{m:8s} {pairs.get(m, ''):>5} {a:10.3f} {b:10.3f} {a / b:6.2f} "
            f"{ratio_cpu.get(m, float('nan')):6.2f}"
        )
    for m in args.methods:
        print(f"beyond the prediction pass, {m}: {ratio_beyond[m]:.2f}")
    write_json_atomic(Path(args.out), result)


if __name__ == "__main__":
    main()
