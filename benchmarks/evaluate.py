"""Time localization evaluation: the authors' per-pair loop against `localization_table`.

The authors' `pascal/evaluate_localization.py` (GeondoPark/attribute-preserve) runs one
script per attribution method over a batch-size-1 loader, with nothing under `no_grad`: per
image one forward of the whole network, then for EVERY ground-truth class (predicted or not)
one map, the map to NumPy, min-max normalised in NumPy, scored with scikit-learn `roc_curve`
+ `auc` and an arg-max pointing game; only then are classes with logit <= 0 dropped.
`authors_localization` re-creates that loop (`authors_maps`, `authors_scored`), per method:
- Grad-CAM (`authors_gradcam`), as theirs: hooks keep the attribution layer's output and
  gradient; per class `model.zero_grad()` and `logits.backward(one_hot, retain_graph=True)`
  on the image's one forward, a backward through the whole network that also fills every
  parameter's gradient;
- EBP (`authors_ebp`), as their `ExcitationBackpropExplainer`: excitation rules on every
  conv and linear for the whole run (zennit's composite instead of their autograd functions),
  and per class the explainer's own forward of the whole network plus
  `autograd.grad(logits, attribution output, one_hot)`, which stops at the attribution layer;
- LRP, RAP (`authors_per_pair`): the image's forward, then our `attribute` per class (see
  below for how that compares with their `relprop` / `RAP_relprop`).
`attrlib.evaluate.localization_table` is the batched path: per batch one trunk forward (its
attribution feature gives the logits and feeds Grad-CAM and EBP), one `attribute` call per
method on the selected pairs, metrics for the whole batch. Both score the same pairs.

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
What differs in cost from theirs, each difference in their favour unless said otherwise:
- LRP and RAP use our propagation, which per hidden conv runs 1 conv and 1 transposed conv
  (LRP: the z+ term; RAP: both contribution groups on stacked weights); their `relprop` runs
  4 convs and 4 gradients (alpha and beta terms of both input signs, the beta term computed
  and multiplied by 0) and their `RAP_relprop` 4 convs and 8 gradients (both input signs
  always). Against them: `attribute` runs its own forward per pair, theirs propagate from
  the activations recorded in the image's forward. Per pair this is cheaper than theirs, and
  every speed-up of our LRP/RAP speeds up both sides alike: their ratios measure batching.
- EBP: zennit's hooks add an identity function and a copy of each layer's input to every
  forward; theirs run a Python autograd function per layer around the legacy im2col
  convolution instead of the oneDNN one.
- Pointing: a NumPy arg-max on the map; theirs builds a Python list of the mask's pixel
  coordinates per class and searches it (and, a bug, keeps the pixels of the image's earlier
  classes in that list, so a peak on another ground-truth object counts as a hit).
- Against them: the batched prediction pass (`trunk_forward`) convolves channels-last, the
  layout oneDNN is fastest in; theirs stays NCHW, as their code does (at batch 1 on this CPU,
  channels-last measured no faster).
- No `cv2.resize` of layer maps (upsampled inside `attribute`); pairs with an empty or full
  mask are mapped but not scored (theirs: a NaN AUC from scikit-learn, with a warning).
CPU times depend on the load: with another process on the cores, pass `--threads 1` (two
threads competing with a busy process can be 50x slower).

Deviations from the authors' loop, all needed for equal scores: min-max normalisation without
their +1e-5 in the denominator (AUC unchanged: a monotone rescaling), the arg-max taken on the
normalised map, no RAP negative clipping and no LRP/RAP sign flip for negative logits (the
batched path scores the raw map, SPEC: Evaluation), bilinear upsampling inside `attribute`
instead of `cv2.resize`, Grad-CAM channel weights from the spatial mean of the gradient
instead of its sum (a factor h * w per map). Without `--checkpoint`, a seeded untrained x4
student at 64 px is used and pairs are selected by ground truth alone (`--all-gt-pairs`, on by
default then), so that the pair count does not hinge on which random logits happen to be
positive.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import auc, roc_curve
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from attrlib.attribution import METHODS, attribute, upsample
from attrlib.attribution.ebp import ebp_composite
from attrlib.data import VOID, VOCLocalization, load_classes
from attrlib.engine import load_model
from attrlib.evaluate import localization_table, select_pairs, trunk_forward
from attrlib.io import write_json_atomic
from attrlib.models import eval_mode, vgg16_bn_voc

TOLERANCE = 1e-6  # largest accepted difference of a pair's AUC or pointing between the paths
MAP_TOLERANCE = 1e-9  # float64 maps of one pair alone and in a batch: equal up to rounding
KEYS = ["image", "class", "method"]


# ----------------------------------------------------------------------------- the authors' loop


Explain = Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, list[np.ndarray]]]
# (image (1,3,S,S), its ground-truth classes) -> (logits (K,), one map (S,S) per class)


@contextmanager
def parameters_require_grad(model: nn.Module) -> Iterator[None]:
    """Parameters require gradients inside (as in the authors' scripts), then flags and grads reset.

    Their forwards build a graph through every layer (nothing runs under `no_grad`), and their
    Grad-CAM backward fills every parameter's `.grad`; both need `requires_grad` on.
    """
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)


@contextmanager
def keep_output(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """`module`'s latest output under "output", and its gradient after a backward under "grad".

    The authors' `Hooks` class in `utils.py`, as a context manager that removes its hook.
    """
    kept: dict[str, torch.Tensor] = {}

    def keep_grad(grad: torch.Tensor) -> None:
        kept["grad"] = grad

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kept["output"] = output
        if output.requires_grad:
            output.register_hook(keep_grad)

    handle = module.register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()
        kept.clear()


def model_device(model: nn.Module) -> torch.device:
    """The device of `model`'s parameters: both paths run there, their images moved to it."""
    return next(model.parameters()).device


def one_hot(logits: torch.Tensor, target: int) -> torch.Tensor:
    """(1, K) start gradient of class `target`, their `grad_out`."""
    start = torch.zeros_like(logits)
    start[0, target] = 1.0
    return start


def to_input_size(layer_map: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """(1, h, w) map at the attribution layer -> (S, S) NumPy map, upsampled as `attribute` does."""
    return upsample(layer_map.detach(), tuple(image.shape[-2:]))[0].cpu().numpy()


@contextmanager
def authors_gradcam(model: nn.Module) -> Iterator[Explain]:
    """Their Grad-CAM: per image one forward whose graph is kept, per class a full backward.

    As `evaluate_localization.py` with `--method gcam`: hooks on the attribution layer keep its
    output and gradient; per ground-truth class `model.zero_grad()` and
    `logits.backward(one_hot, retain_graph=True)`, a backward through the whole network down
    to the first conv that also fills every parameter's gradient. Channel weights are the
    spatial mean of the gradient (theirs: the sum; a factor h * w that min-max normalisation
    removes), so the maps equal `attribute(..., "gradcam")`'s up to rounding.
    """
    with keep_output(model.attribution_layer) as kept:

        def explain(image: torch.Tensor, targets: list[int]) -> tuple[torch.Tensor, list]:
            with torch.enable_grad():
                logits = model(image)  # (1, K), graph kept for one backward per class
                maps = []
                for target in targets:
                    model.zero_grad()
                    logits.backward(one_hot(logits, target), retain_graph=True)
                    weights = kept["grad"].mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
                    cam = F.relu((weights * kept["output"]).sum(dim=1))  # (1, h, w)
                    maps.append(to_input_size(cam, image))
            return logits.detach()[0], maps

        yield explain


@contextmanager
def authors_ebp(model: nn.Module) -> Iterator[Explain]:
    """Their EBP explainer: a forward of the whole network and a head backward per class.

    Their `ExcitationBackpropExplainer` swaps every conv's and linear's forward for an autograd
    function with the excitation backward, once before the loop; here zennit's
    ExcitationBackprop composite (`ebp_composite`, the rules of `attrlib.attribution.ebp`) is
    registered on the whole model for the run. Per image their loop runs one forward for the
    logits; per class `explain` runs its own forward of the whole network (with its graph) and
    `torch.autograd.grad(logits, attribution output, one_hot, retain_graph=True)`, which goes
    back to the attribution layer only (the head: max-pool, dropout, linear). Relevance summed
    over channels, negatives clipped: `attribute(..., "ebp")`'s maps up to rounding.
    """
    with keep_output(model.attribution_layer) as kept, ebp_composite().context(model):

        def explain(image: torch.Tensor, targets: list[int]) -> tuple[torch.Tensor, list]:
            with torch.enable_grad():
                logits = model(image)  # (1, K), their loop's forward per image
                maps = []
                for target in targets:
                    output = model(image)  # (1, K), the explainer's own forward per class
                    (relevance,) = torch.autograd.grad(
                        output, kept["output"], one_hot(output, target), retain_graph=True
                    )  # (1, C, h, w)
                    maps.append(to_input_size(relevance.sum(dim=1).clamp(min=0), image))
            return logits.detach()[0], maps

        yield explain


@contextmanager
def authors_per_pair(model: nn.Module, method: str) -> Iterator[Explain]:
    """LRP, RAP and any other method: a forward per image, then `attribute` per class.

    Their loop runs the image's forward (with its graph: their relevance layers record their
    inputs in forward hooks) and then, per class, `relprop` (LRP) or `RAP_relprop` (RAP) from
    the recorded activations. Here `attribute` runs its own forward per pair, one forward
    more than theirs, with a propagation that costs far less than theirs (module docstring):
    per pair, if anything cheaper than their code.
    """

    def explain(image: torch.Tensor, targets: list[int]) -> tuple[torch.Tensor, list]:
        with torch.enable_grad():
            logits = model(image)  # (1, K), their loop's forward per image
        maps = [
            attribute(model, image, torch.tensor([t]), method)[0].cpu().numpy() for t in targets
        ]
        return logits.detach()[0], maps

    yield explain


def authors_explainer(model: nn.Module, method: str) -> AbstractContextManager[Explain]:
    """The authors' per-image procedure for `method` (see the three re-creations above)."""
    if method == "gradcam":
        return authors_gradcam(model)
    if method == "ebp":
        return authors_ebp(model)
    return authors_per_pair(model, method)


def scorable(seg_mask: np.ndarray, valid: np.ndarray) -> bool:
    """AUC is defined: the class mask has valid pixels inside and outside (`select_pairs`)."""
    truth = seg_mask[valid]  # (V,)
    return bool(truth.any() and not truth.all())


def authors_predict(model: nn.Module, dataset: Dataset, require_prediction: bool = True) -> int:
    """The authors' prediction pass alone; returns the number of pairs it would score.

    Batch-size-1 loading, a forward per image (with its graph, as theirs), the ground-truth
    classes with their logit > 0 test (unless `require_prediction` is False) and mask check.
    """
    count = 0
    with eval_mode(model), parameters_require_grad(model):
        for image, labels, mask in DataLoader(dataset, batch_size=1):
            logits = model(image.to(model_device(model)))[0]  # (K,)
            segmentation = mask[0].numpy()  # (S, S)
            valid = segmentation != VOID
            for target in labels[0].nonzero().flatten().tolist():
                predicted = bool(logits[target] > 0) or not require_prediction
                count += predicted and scorable(segmentation == target + 1, valid)
    return count


def authors_maps(
    model: nn.Module, dataset: Dataset, method: str
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, bool]]:
    """The authors' loop: (index, class, map (S,S), seg_mask (S,S), valid (S,S), predicted).

    Batch size 1; per image the method's forward, then a map for EVERY ground-truth class,
    also those the model does not predict (their loop drops those only after scoring them:
    `predicted` says whether the logit is > 0). Pairs whose mask is empty or covers every
    valid pixel are mapped but not yielded (AUC undefined; scikit-learn would give theirs NaN).
    Maps are not normalised.
    """
    with (
        eval_mode(model),
        parameters_require_grad(model),
        authors_explainer(model, method) as explain,
    ):
        device = model_device(model)
        for index, (image, labels, mask) in enumerate(DataLoader(dataset, batch_size=1)):
            targets = labels[0].nonzero().flatten().tolist()
            logits, heatmaps = explain(image.to(device), targets)  # (K,), a (S, S) map each
            segmentation = mask[0].numpy()  # (S, S) 0 background, k+1 class k, 255 void
            valid = segmentation != VOID  # (S, S)
            for target, heatmap in zip(targets, heatmaps, strict=True):
                seg_mask = segmentation == target + 1  # (S, S)
                if scorable(seg_mask, valid):
                    yield index, target, heatmap, seg_mask, valid, bool(logits[target] > 0)


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


def authors_scored(
    model: nn.Module, dataset: Dataset, method: str, require_prediction: bool = True
) -> Iterator[tuple[object, int, np.ndarray, float, float]]:
    """Per kept pair of `authors_maps`: (image id, class, map (S,S), auc, pointing).

    Every ground-truth pair is scored; with `require_prediction`, those with logit <= 0 are
    dropped afterwards, as theirs.
    """
    ids = getattr(dataset, "ids", None)
    for index, target, heatmap, seg_mask, valid, predicted in authors_maps(model, dataset, method):
        scores = authors_scores(heatmap, seg_mask, valid)
        if require_prediction and not predicted:
            continue
        yield (ids[index] if ids else index), target, heatmap, *scores


def authors_localization(
    model: nn.Module, dataset: Dataset, method: str, require_prediction: bool = True
) -> pd.DataFrame:
    """The authors' evaluation of one method: one map and its scores per (image, class).

    Args:
        model: a `VGGVOC`; evaluated in eval mode.
        dataset: items (image (3,S,S), labels (K,), mask (S,S)), like `VOCLocalization`.
        method: an attribution method name (gradcam, ebp, lrp, rap).
        require_prediction: keep only classes with logit > 0 (the paper); False keeps every
            scorable ground-truth class.
    Returns:
        One row per kept pair: image, class, method, auc, pointing (the columns of
        `localization_table`).
    """
    rows = [
        (name, target, method, auc_value, pointing)
        for name, target, _, auc_value, pointing in authors_scored(
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

    Mirrors the batched path (same loader, trunk forward, pair selection and `attribute` call
    per batch and method), so the maps are the ones it scores, bit for bit; were the mirror to
    drift, the same-map score check of `check_equal_scores` would fail.
    """
    offset, device = 0, model_device(model)
    for images, labels, masks in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images, labels, masks = images.to(device), labels.to(device), masks.to(device)
        feature, logits = trunk_forward(model, images)  # (B, C, h, w), (B, K)
        rows, classes = select_pairs(logits, labels, masks, require_prediction)  # (P,), (P,)
        segmentation = masks.cpu().numpy()  # (B, S, S)
        for method in methods if len(rows) else []:
            maps = attribute(model, images[rows], classes, method, feature=feature[rows])
            for p, (row, target) in enumerate(zip(rows.tolist(), classes.tolist(), strict=True)):
                seg = segmentation[row]
                heatmap = maps[p].cpu().numpy()  # (S, S)
                yield offset + row, target, method, heatmap, seg == target + 1, seg != VOID
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
        for name, target, heatmap, *scores in authors_scored(
            model64, data64, method, require_prediction
        ):
            authors_heatmaps[name, target, method] = heatmap
            authors_rows.append((name, target, method, *scores))
    authors = pd.DataFrame(authors_rows, columns=[*KEYS, "auc", "pointing"])
    batched, _ = localization_table(
        model64,
        data64,
        methods,
        batch_size=batch_size,
        device=model_device(model64),
        progress=False,
        require_prediction=require_prediction,
    )
    end_to_end = compare_tables(authors, batched, tolerance=None)  # asserts the same pairs
    rescored_rows, map_gap = [], 0.0
    for index, target, method, heatmap, seg, valid in batched_maps(
        model64, data64, methods, batch_size, require_prediction
    ):
        name = ids[index] if ids else index
        scale = max(float(np.abs(heatmap).max()), np.finfo(heatmap.dtype).tiny)
        gap = float(np.abs(authors_heatmaps[name, target, method] - heatmap).max()) / scale
        map_gap = max(map_gap, gap)
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
    steadier measure when another process shares the cores. Every run ends in host values (a
    table, a count), so on CUDA its time includes its kernels.
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


def measure(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str],
    batch_size: int,
    repeats: int,
    require_prediction: bool,
    device: torch.device | str = "cpu",
) -> dict:
    """The float64 check, then both paths timed on `device` (`timed`): the JSON's figures.

    `model` is moved to `device` (a copy); the returned dict holds the check's differences,
    seconds per run and every ratio of the module docstring.
    """
    model = copy.deepcopy(model).to(device).eval()
    # correctness first: equal scores per pair and method, else no times are reported
    check = check_equal_scores(model, dataset, methods, batch_size, require_prediction)

    def authors(method: str | None) -> pd.DataFrame | None:
        if method is None:  # the prediction pass alone: loading, forward, pair selection
            authors_predict(model, dataset, require_prediction)
            return None
        return authors_localization(model, dataset, method, require_prediction)

    def batched(methods: Sequence[str]) -> pd.DataFrame:
        table, _ = localization_table(
            model,
            dataset,
            methods,
            batch_size=batch_size,
            device=device,
            progress=False,
            require_prediction=require_prediction,
        )
        return table

    runs = {"authors:predict": lambda: authors(None), "batched:predict": lambda: batched([])}
    for method in methods:
        runs[f"authors:{method}"] = lambda m=method: authors(m)
        runs[f"batched:{method}"] = lambda m=method: batched([m])
    runs["batched:total"] = lambda: batched(methods)
    times = timed(runs, repeats)
    wall = {name: t[0] for name, t in times.items()}
    cpu = {name: t[1] for name, t in times.items()}
    diff32 = {
        m: compare_tables(times[f"authors:{m}"][2], times[f"batched:{m}"][2], tolerance=None)
        for m in methods
    }
    pairs = {m: len(times[f"batched:{m}"][2]) for m in methods}

    def ratios(seconds: dict[str, float]) -> dict[str, float]:
        names = ["predict", *methods]
        out = {m: seconds[f"authors:{m}"] / seconds[f"batched:{m}"] for m in names}
        out["total"] = sum(seconds[f"authors:{m}"] for m in methods) / seconds["batched:total"]
        return out

    ratio_wall, ratio_cpu = ratios(wall), ratios(cpu)
    ratio_beyond = {
        m: beyond(wall[f"authors:{m}"], wall["authors:predict"])
        / beyond(wall[f"batched:{m}"], wall["batched:predict"])
        for m in methods
    }
    return {
        "images": len(dataset),
        "input_size": model.config.input_size,
        "model_widths": list(model.config.widths),
        "all_gt_pairs": not require_prediction,
        "methods": list(methods),
        "batch_size": batch_size,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "pairs": pairs,
        "float64_check": {"tolerance": TOLERANCE, "map_tolerance": MAP_TOLERANCE, **check},
        "float32_diffs": diff32,
        "seconds_wall": wall,
        "seconds_cpu": cpu,
        "seconds_authors_total": sum(wall[f"authors:{m}"] for m in methods),
        "seconds_batched_total": wall["batched:total"],
        "ratio_per_method": {m: ratio_wall[m] for m in methods},
        "ratio_total": ratio_wall["total"],
        "ratio_gradcam_metrics": ratio_wall.get("gradcam"),
        "ratio_beyond_prediction": ratio_beyond,
        "ratio_cpu": ratio_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data/synthvoc-default/VOCdevkit/VOC2012")
    parser.add_argument("--checkpoint", default=None, help="attrlib checkpoint (best.pt)")
    parser.add_argument("--images", type=int, default=64, help="first N segmentation-val images")
    parser.add_argument(
        "--methods", nargs="+", default=METHODS.names(), help="default: every registered method"
    )
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

    result = {"data_root": args.data_root, "checkpoint": args.checkpoint}
    result |= measure(
        model, dataset, args.methods, args.batch_size, args.repeats, require_prediction
    )
    check, wall, pairs = result["float64_check"], result["seconds_wall"], result["pairs"]
    ratio_cpu, ratio_beyond = result["ratio_cpu"], result["ratio_beyond_prediction"]
    print(
        "float64 check passed: same pairs; maps equal to "
        f"{check['maps']['max_rel_diff']:.1g} (rel); same-map scores equal to "
        f"{check['same_maps']['auc_max']:.1g}; end to end max |diff| auc "
        f"{check['end_to_end']['auc_max']:.1g}, pointing {check['end_to_end']['pointing_max']:.1g}"
    )
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
