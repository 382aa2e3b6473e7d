"""Evaluate a model: prediction (mAP, F1), cost, and localization of its attribution maps.

SPEC, Evaluation: for each image of the segmentation val split and each ground-truth class
c that the model predicts (logit > 0), the map of every attribution method is min-max
normalised and scored by ROC AUC against the class mask (void excluded) and by the pointing
game. Beyond the paper, each map is also compared with the reference (teacher) network's map
for the same image, class and method: cosine similarity and AUC against the teacher's
top-15 % region ("is the attribution preserved?").

All pairs of a batch are evaluated at once: one trunk forward per batch (its attribution
feature gives the logits and feeds the methods that start at that layer), one `attribute` call
per method and batch, and metrics computed for the whole batch on the device.

Under torchrun (attrlib.distributed) the batches are dealt over the ranks (batch b to rank
b mod n), each rank scores its batches exactly as one process would, and the ranks gather
one table in the one-process order: the same table, row for row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attrlib import distributed
from attrlib.attribution import METHODS, attribute, refusal
from attrlib.cost import model_cost
from attrlib.data import class_masks
from attrlib.faithfulness import Faithfulness, faithfulness_table, with_derived
from attrlib.faithfulness import summarize as summarize_faithfulness
from attrlib.masks import permanent_copy
from attrlib.metrics import (
    agreement_auc,
    localization_auc,
    map_cosine,
    normalize_maps,
    pointing_game,
)
from attrlib.models import eval_mode
from attrlib.predict import predict, prediction_metrics
from attrlib.progress import progress_bar

AGREEMENT_TOP = 0.15  # fraction of the teacher's highest pixels that forms its "region"


def select_pairs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    require_prediction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image row, class) pairs to score: ground truth, predicted (logit > 0), mask scorable.

    A pair whose class mask is empty or covers every valid pixel after resizing has no
    defined AUC; it is left out (counted in the summary as `pairs_unscorable`).
    `require_prediction=False` drops the logit > 0 condition (every scorable ground-truth
    pair; used by the benchmark on an untrained network). Returns rows (P,) and classes (P,)
    int64.
    """
    chosen = labels > 0  # (B, K)
    if require_prediction:
        chosen = chosen & (logits > 0)
    rows, classes = torch.nonzero(chosen, as_tuple=True)  # (P,), (P,)
    target, valid = class_masks(masks[rows], classes)  # (P, S, S)
    inside = (target & valid).flatten(1).sum(1)
    outside = (~target & valid).flatten(1).sum(1)
    keep = (inside > 0) & (outside > 0)
    return rows[keep], classes[keep]


def trunk_forward(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's prediction pass: the attribution feature (B, C, h, w) and logits (B, K).

    The trunk runs once per batch: its feature gives the logits (`model(x)` is
    `head(forward_features(x))`) and is where Grad-CAM and EBP start. It convolves the
    images laid out channels-last, the layout oneDNN and cuDNN convolve fastest in (on this
    CPU 1.5-2x for the default teacher at batch 32). The images themselves keep their layout:
    LRP and RAP run their own forward from them, and RAP's propagation is slower channels-last.
    """
    with torch.no_grad(), eval_mode(model):
        feature = model.forward_features(images.contiguous(memory_format=torch.channels_last))
        logits = model.head(feature)  # (B, K)
    return feature, logits


class ReferenceMaps:
    """The reference (teacher) network's normalised maps, each computed once.

    Keyed by (method, image id, class): evaluating many compressed models against one
    teacher on the same data reuses the teacher's maps instead of recomputing them per model.
    `source` names where the network came from (checked by the callers that share it).
    """

    def __init__(self, model: nn.Module, source: str = "") -> None:
        self.model = permanent_copy(model)
        self.source = source
        self._maps: dict[tuple[str, object, int], torch.Tensor] = {}

    def get(
        self, method: str, keys: Sequence[object], images: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """Maps (P, S, S) of `classes` on `images`; rows named by `keys` (image ids)."""
        names = [(method, key, int(c)) for key, c in zip(keys, classes.tolist(), strict=True)]
        missing = [i for i, name in enumerate(names) if name not in self._maps]
        if missing:
            rows = torch.tensor(missing, device=images.device)
            model = self.model.to(images.device)
            maps = normalize_maps(attribute(model, images[rows], classes[rows], method))
            for i, one in zip(missing, maps, strict=True):
                self._maps[names[i]] = one.cpu()
        return torch.stack([self._maps[name] for name in names]).to(images.device)  # (P, S, S)


def localization_table(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str] | None = None,
    reference: nn.Module | ReferenceMaps | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    require_prediction: bool = True,
    *,
    label: str = "",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per (image, class, method): auc, pointing, and agreement with `reference`.

    Args:
        dataset: items (image (3,S,S), labels (K,), mask (S,S)) — `VOCLocalization`.
        methods: names in `METHODS`; None = every registered one.
        reference: the teacher / unpruned network (or its shared `ReferenceMaps`), or None
            (no agreement columns).
        progress: a bar on a terminal (attrlib.progress), named "localization <label>".
        require_prediction: score only pairs the model predicts (logit > 0), as the paper;
            False scores every scorable ground-truth pair (see `select_pairs`).
    Returns:
        (table, counts) with counts of GT pairs, predicted pairs and unscorable pairs; in a
        run of several processes every rank returns the whole table (see the module's
        docstring).
    """
    methods = METHODS.names() if methods is None else list(methods)
    for name in methods:
        METHODS.get(name)
    device = torch.device(device)
    if isinstance(reference, nn.Module):
        reference = ReferenceMaps(reference)
    ids = getattr(dataset, "ids", None)
    counts = {"pairs_gt": 0, "pairs_predicted": 0, "pairs_scored": 0}
    frames = []  # (batch number, frame)
    rank = distributed.ranks()
    numbers, batches = distributed.shard_batches(len(dataset), batch_size, rank)
    loader = DataLoader(dataset, batch_sampler=batches)
    desc = f"localization {label}" if label else "localization"
    bar = progress_bar(loader, desc=desc, enabled=progress and rank.is_main)
    for number, (images, labels, masks) in zip(numbers, bar, strict=True):
        offset = number * batch_size
        images, labels, masks = images.to(device), labels.to(device), masks.to(device)
        feature, logits = trunk_forward(model, images)  # (B, C, h, w), (B, K)
        counts["pairs_gt"] += int((labels > 0).sum())
        counts["pairs_predicted"] += int(((labels > 0) & (logits > 0)).sum())
        rows, classes = select_pairs(logits, labels, masks, require_prediction)  # (P,), (P,)
        counts["pairs_scored"] += len(rows)
        if len(rows) == 0:
            continue
        target, valid = class_masks(masks[rows], classes)  # (P, S, S)
        pair_images, pair_feature = images[rows], feature[rows]  # (P, 3, S, S), (P, C, h, w)
        image_keys = [ids[i] if ids else i for i in (rows + offset).tolist()]
        for name in methods:
            maps = attribute(model, pair_images, classes, name, feature=pair_feature)
            maps = normalize_maps(maps)  # (P, S, S)
            columns = {
                "image": image_keys,
                "class": classes.tolist(),
                "method": name,
                "auc": localization_auc(maps, target, valid).tolist(),
                "pointing": pointing_game(maps, target).float().tolist(),
            }
            if reference is not None:
                ref_maps = reference.get(name, image_keys, pair_images, classes)  # (P, S, S)
                columns["cosine_teacher"] = map_cosine(maps, ref_maps).tolist()
                columns["auc_teacher"] = agreement_auc(maps, ref_maps, AGREEMENT_TOP).tolist()
            frames.append((number, pd.DataFrame(columns)))
    counts = {name: sum(c[name] for c in distributed.gather(counts)) for name in counts}
    # batch order, then method order within a batch: the one-process table
    frames = distributed.gather_batches(frames)
    if not frames:  # nothing scorable (e.g. a model that predicts no ground-truth class)
        columns = ["image", "class", "method", "auc", "pointing"]
        columns += ["cosine_teacher", "auc_teacher"] if reference is not None else []
        return pd.DataFrame(columns=columns), counts
    return pd.concat(frames, ignore_index=True), counts


def summarize(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean of every score column per method (NaN agreement rows skipped)."""
    if table.empty:
        return {}
    scores = [c for c in ("auc", "pointing", "cosine_teacher", "auc_teacher") if c in table]
    means = table.groupby("method")[scores].mean()
    return {m: {c: float(means.loc[m, c]) for c in scores} for m in means.index}


def evaluate_model(
    model: nn.Module,
    val_set: Dataset,
    loc_set: Dataset,
    methods: Sequence[str] | None = None,
    reference: nn.Module | ReferenceMaps | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    *,
    label: str = "",
    faithfulness: Faithfulness | None = None,
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Prediction, cost, localization and faithfulness of one model: (summary dict, per-pair
    localization table, per-pair faithfulness table).

    The prediction scores are class mAP, the authors' per-sample mAP and F1
    (`attrlib.predict.prediction_metrics`) on `val_set`. `label` names the model in the
    progress bar (its checkpoint: an evaluation scores many models in a row). Faithfulness
    (attrlib.faithfulness) is scored on its fixed pairs of `loc_set` unless `faithfulness` is
    None or has no pairs; its means join each method's scores in `summary["localization"]`
    and its mean curves are `summary["faithfulness_curves"]`.
    """
    device = torch.device(device)
    model = permanent_copy(model).to(device)
    methods = METHODS.names() if methods is None else list(methods)
    # a method whose rules cannot follow this network's family (LRP / RAP on a family they cannot walk) is
    # left out and named in the summary, instead of drawing a wrong map
    refused = {m: why for m in methods if (why := refusal(model, m))}
    methods = [m for m in methods if m not in refused]
    for method, why in refused.items():
        print(f"{label or 'model'}: {method} not evaluated: {why}")
    scores = prediction_metrics(*predict(model, val_set, device))
    table, counts = localization_table(
        model, loc_set, methods, reference, batch_size, device, progress, label=label
    )
    per_method = summarize(table)
    faith, faith_curves = pd.DataFrame(), {}
    if faithfulness is not None and faithfulness.pairs > 0:
        faith, faith_curves = faithfulness_table(model, loc_set, methods, faithfulness, device)
        for method, means in summarize_faithfulness(faith).items():
            per_method.setdefault(method, {}).update(means)
    summary = {
        **{name: scores[name] for name in ("map_class", "map_sample", "f1")},
        **model_cost(model),
        **counts,
        "localization": per_method,
    }
    if faith_curves:
        summary["faithfulness_curves"] = faith_curves
    if refused:
        summary["refused_methods"] = refused
    return summary, table, faith


def summary_frame(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per evaluated checkpoint: prediction, cost and '<method> <metric>' columns."""
    rows = []
    for s in summaries:
        row = {
            "checkpoint": s["checkpoint"],
            "map_class": s["map_class"],
            "map_sample": s["map_sample"],
            "f1": s["f1"],
            "params": s["params"],
            "macs": s["macs"],
            "sparsity": s["sparsity"],
        }
        for method, scores in s["localization"].items():
            row.update({f"{method} {metric}": v for metric, v in with_derived(scores).items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("checkpoint")


def checkpoint_labels(checkpoints: Sequence[str]) -> list[str]:
    """Short unique names of checkpoints: each one's folder relative to their common folder.

    `runs/default/prune_iterative/swa-s0/iter_08/best.pt` among other runs of the profile is
    `prune_iterative/swa-s0/iter_08` (the folder name alone, `iter_08`, is not unique).
    """
    folders = [Path(c).resolve().parent for c in checkpoints]
    if len(set(folders)) < len(folders):
        raise ValueError(f"two checkpoints share a folder: {list(checkpoints)}")
    if len(folders) == 1:
        return [folders[0].name]
    common = Path(os.path.commonpath(folders))
    return [str(f.relative_to(common)) if f != common else f.name for f in folders]


def image_maps(
    models: dict[str, nn.Module], image: torch.Tensor, target: int, methods: Sequence[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """Normalised (H, W) maps of one image (3, H, W) for class `target`: {model: {method: map}}."""
    classes = torch.tensor([target])
    return {
        name: {
            method: normalize_maps(attribute(permanent_copy(model), image[None], classes, method))[
                0
            ].cpu()
            for method in methods
            if refusal(model, method) is None  # a refusing method draws no map
        }
        for name, model in models.items()
    }
