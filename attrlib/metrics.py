"""Evaluation metrics: prediction (mAP, F1), localization (AUC, pointing game), agreement.

Every function takes batches on any device and returns tensors on that device; nothing
loops over rows in Python. Ranking metrics are exact and tie-aware: rows are sorted once and
tied values share their average rank (or their tie group's precision), so the results equal
scikit-learn's `average_precision_score`, `roc_auc_score` and `f1_score` (checked in
`tests/test_metrics.py`). Scalars and per-row values are float64: ranks and counts of a
227x227 map stay exact in float64.

Follows the evaluation of Park et al., "Attribution Preservation in Network Compression for
Reliable Network Interpretation", NeurIPS 2020 (prediction mAP/F1, Grad-CAM/EBP/LRP/RAP
localization AUC and pointing game). `map_cosine` and `agreement_auc` go beyond the paper.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

ACC_DTYPE = torch.float64  # ranks, counts and precisions are accumulated in double


# ----------------------------------------------------------------------------- checks


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def _check_ndim(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")


def _check_bool(name: str, x: torch.Tensor) -> None:
    if x.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {x.dtype} (convert with `!= 0`)")


def _as_bool_labels(labels: torch.Tensor) -> torch.Tensor:
    """Binary labels as bool; 0/1 numbers are accepted, anything else is an error."""
    if labels.dtype == torch.bool:
        return labels
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be bool or contain only 0 and 1")
    return labels != 0


def _check_no_nan(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() and torch.isnan(x).any():
        rows = torch.isnan(x).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN in rows {rows}")


def _rows(flags: torch.Tensor) -> list[int]:
    return flags.nonzero().flatten().tolist()


# ----------------------------------------------------------------------------- ranking core


def _tie_bounds(sorted_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last position of each element's tie group in rows sorted along dim 1.

    Args:
        sorted_values: (R, M) rows sorted (either direction).
    Returns:
        start, end: (R, M) int64 positions, so elements start..end share one value.
    """
    rows, m = sorted_values.shape
    pos = torch.arange(m, device=sorted_values.device).expand(rows, m)  # (R, M)
    first = torch.ones_like(sorted_values, dtype=torch.bool)  # (R, M) starts a tie group
    first[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    last = torch.ones_like(first)  # (R, M) ends a tie group
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(dim=1).values  # (R, M)
    # the nearest group end at or after each position: a running min from the right
    end = torch.where(last, pos, m - 1).flip(1).cummin(dim=1).values.flip(1)  # (R, M)
    return start, end


def _average_precision_rows(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Non-interpolated average precision of each row's ranking of its columns.

    AP = sum over distinct score thresholds of (recall gain) x precision, as in
    scikit-learn: every positive contributes the precision at the end of its tie group.

    Args:
        scores: (R, M) float.
        labels: (R, M) bool.
    Returns:
        (R,) float64; 0 for rows without a positive (scikit-learn's convention).
    """
    sorted_scores, order = scores.sort(dim=1, descending=True, stable=True)  # (R, M)
    hits = labels.gather(1, order).to(ACC_DTYPE)  # (R, M) labels in ranked order
    true_pos = hits.cumsum(dim=1)  # (R, M)
    _, end = _tie_bounds(sorted_scores)  # (R, M)
    precision_at_end = true_pos.gather(1, end) / (end + 1).to(ACC_DTYPE)  # (R, M)
    n_pos = hits.sum(dim=1)  # (R,)
    return (hits * precision_at_end).sum(dim=1) / n_pos.clamp(min=1)  # (R,)


# ----------------------------------------------------------------------------- prediction


def average_precision_per_class(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class average precision (the standard VOC metric, non-interpolated).

    Args:
        scores: (N, K) class scores (logits or probabilities; only the order matters).
        labels: (N, K) bool or 0/1 ground truth.
    Returns:
        (K,) float64 AP of each class over the N images, NaN for classes with no positive.
        Equals `sklearn.metrics.average_precision_score(labels[:, k], scores[:, k])`.
    Note:
        VOC devkits before 2010 used 11-point interpolated AP; this is the exact area
        (scikit-learn's definition), as used by the paper's authors via scikit-learn.
    """
    _check_ndim("scores", scores, 2, "(N, K)")
    _check_same_shape("scores", scores, "labels", labels)
    _check_no_nan("scores", scores)
    labels = _as_bool_labels(labels)
    ap = _average_precision_rows(scores.T, labels.T)  # (K,) one row per class
    return ap.masked_fill(~labels.any(dim=0), float("nan"))


def mean_average_precision(
    scores: torch.Tensor, labels: torch.Tensor, average: str = "class"
) -> torch.Tensor:
    """Mean average precision, averaged over classes (standard) or over images (authors').

    Args:
        scores: (N, K) class scores (logits or probabilities; only the order matters).
        labels: (N, K) bool or 0/1 ground truth.
        average: "class" is the standard VOC mAP: AP of each class over the images, mean over
            the classes that have at least one positive (classes without one are skipped;
            ValueError if no class has one). "sample" is the authors' variant (their
            `compute_mAP`): AP of each image's ranking of its K classes, mean over images;
            equals `average_precision_score(labels, scores, average="samples")`.
    Returns:
        Scalar float64 tensor on the input's device.
    Note:
        For "sample", an image with no positive class scores AP 0 and still counts in the
        mean, exactly like scikit-learn (which warns); a UserWarning names those rows.
    """
    if average == "class":
        ap = average_precision_per_class(scores, labels)  # (K,)
        if torch.isnan(ap).all():
            raise ValueError("no class has a positive label; class-averaged mAP is undefined")
        return ap.nanmean()
    if average == "sample":
        _check_ndim("scores", scores, 2, "(N, K)")
        _check_same_shape("scores", scores, "labels", labels)
        _check_no_nan("scores", scores)
        labels = _as_bool_labels(labels)
        empty = ~labels.any(dim=1)  # (N,)
        if empty.any():
            warnings.warn(
                f"rows {_rows(empty)} have no positive label; they score AP 0 (as in scikit-learn)",
                UserWarning,
                stacklevel=2,
            )
        return _average_precision_rows(scores, labels).mean()
    raise ValueError(f"average must be 'class' or 'sample', got {average!r}")


def f1_score(
    logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5, average: str = "samples"
) -> torch.Tensor:
    """F1 of thresholded logits for multi-label prediction.

    Args:
        logits: (N, K) raw logits; a class is predicted when its logit > `threshold`.
        labels: (N, K) bool or 0/1 ground truth.
        threshold: applied to the logit, not to a sigmoid (the authors' choice: 0.5).
        average: "samples" (default, the authors' choice: F1 of each image, then the mean),
            "micro" (pooled counts) or "macro" (F1 of each class, mean over all K classes).
    Returns:
        Scalar float64 tensor; equals `sklearn.metrics.f1_score(labels, preds,
        average=average, zero_division=0)`: an image or class with no true and no
        predicted positive scores 0.
    Note:
        The authors' code predicts with `logit >= 0.5`; we use `>` as the paper's text
        states. The two differ only for logits exactly equal to the threshold.
    """
    _check_ndim("logits", logits, 2, "(N, K)")
    _check_same_shape("logits", logits, "labels", labels)
    truth = _as_bool_labels(labels)
    preds = logits > threshold  # (N, K)
    if average == "micro":
        dims: tuple[int, ...] = (0, 1)
    elif average == "samples":
        dims = (1,)
    elif average == "macro":
        dims = (0,)
    else:
        raise ValueError(f"average must be 'samples', 'micro' or 'macro', got {average!r}")
    tp = (preds & truth).sum(dim=dims).to(ACC_DTYPE)
    fp = (preds & ~truth).sum(dim=dims).to(ACC_DTYPE)
    fn = (~preds & truth).sum(dim=dims).to(ACC_DTYPE)
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), 0.0)  # zero_division=0
    return f1.mean()


# ----------------------------------------------------------------------------- localization


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map to [0, 1]; constant maps become all zeros.

    Args:
        maps: (B, H, W) finite attribution maps.
    Returns:
        (B, H, W) floating maps (integer input becomes float32), differentiable.
    """
    _check_ndim("maps", maps, 3, "(B, H, W)")
    if not maps.is_floating_point():
        maps = maps.float()
    if not torch.isfinite(maps).all():
        raise ValueError("maps must be finite to be min-max normalised")
    flat = maps.flatten(1)  # (B, H*W)
    low = flat.amin(dim=1, keepdim=True)  # (B, 1)
    span = flat.amax(dim=1, keepdim=True) - low  # (B, 1)
    has_span = span > 0
    out = torch.where(has_span, (flat - low) / torch.where(has_span, span, 1.0), 0.0)
    return out.view_as(maps)  # (B, H, W)


def localization_auc(
    maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """ROC AUC of each map's pixel values against its binary mask, void pixels excluded.

    Exact and tie-aware via the Mann-Whitney U statistic: one sort of the whole batch,
    tied values get their average rank, AUC = (rank sum of positives - P(P+1)/2) / (P N).
    Invalid pixels are keyed to +inf so they sort after every valid pixel and never
    affect the valid pixels' ranks.

    Args:
        maps: (B, H, W) finite attribution maps (any monotone rescaling gives the same AUC).
        masks: (B, H, W) bool, the object of the class the map explains.
        valid: (B, H, W) bool or None; False marks void pixels (VOC's 255 border).
    Returns:
        (B,) float64; equals `sklearn.metrics.roc_auc_score(masks[b][valid[b]],
        maps[b][valid[b]])`; a constant map gives 0.5.
    Raises:
        ValueError naming the rows whose valid mask is empty or covers every valid pixel
        (AUC undefined), and on shape mismatches or non-finite valid pixels.

    Paper: the localization AUC of Park et al. (2020).
    """
    _check_ndim("maps", maps, 3, "(B, H, W)")
    _check_same_shape("maps", maps, "masks", masks)
    _check_bool("masks", masks)
    if valid is None:
        valid = torch.ones_like(masks)
    _check_same_shape("maps", maps, "valid", valid)
    _check_bool("valid", valid)
    values = maps.flatten(1)  # (B, P)
    if not values.is_floating_point():
        values = values.to(ACC_DTYPE)
    valid = valid.flatten(1)  # (B, P)
    pos = masks.flatten(1) & valid  # (B, P)
    bad = (~torch.isfinite(values) & valid).any(dim=1)  # (B,)
    if bad.any():
        raise ValueError(f"maps must be finite on valid pixels; rows {_rows(bad)} are not")
    n_pos = pos.sum(dim=1)  # (B,)
    n_neg = valid.sum(dim=1) - n_pos  # (B,)
    empty, full = n_pos == 0, n_neg == 0
    if (empty | full).any():
        raise ValueError(
            "AUC is undefined for masks that are empty or cover every valid pixel: "
            f"empty rows {_rows(empty)}, full rows {_rows(full)}"
        )
    keys = values.masked_fill(~valid, float("inf"))  # (B, P) void pixels sort last
    sorted_keys, order = keys.sort(dim=1, stable=True)  # (B, P) ascending
    start, end = _tie_bounds(sorted_keys)  # (B, P)
    avg_rank = (start + end).to(ACC_DTYPE) / 2 + 1  # (B, P) 1-based, ties averaged
    rank_sum = (avg_rank * pos.gather(1, order)).sum(dim=1)  # (B,)
    n_pos, n_neg = n_pos.to(ACC_DTYPE), n_neg.to(ACC_DTYPE)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)  # (B,)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pointing-game hit: the map's arg-max pixel lies inside the mask.

    Args:
        maps: (B, H, W) attribution maps without NaN.
        masks: (B, H, W) bool object masks, none empty.
    Returns:
        (B,) bool. Ties for the maximum go to the first pixel in row-major order
        (`torch.argmax` of the flattened map).
    Note:
        The original pointing game (Zhang et al., 2018) allows a 15-pixel tolerance; this
        study scores the exact arg-max pixel.

    Paper: the pointing game of Park et al. (2020).
    """
    _check_ndim("maps", maps, 3, "(B, H, W)")
    _check_same_shape("maps", maps, "masks", masks)
    _check_bool("masks", masks)
    _check_no_nan("maps", maps)
    flat_masks = masks.flatten(1)  # (B, P)
    empty = ~flat_masks.any(dim=1)  # (B,)
    if empty.any():
        raise ValueError(f"pointing game is undefined for empty masks: rows {_rows(empty)}")
    peak = maps.flatten(1).argmax(dim=1, keepdim=True)  # (B, 1)
    return flat_masks.gather(1, peak).squeeze(1)  # (B,)


# ----------------------------------------------------------------------------- agreement


def map_cosine(maps: torch.Tensor, ref_maps: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each min-max-normalised map with its reference (teacher) map.

    Args:
        maps: (B, H, W) student maps.
        ref_maps: (B, H, W) reference maps.
    Returns:
        (B,) in [0, 1]; 1 for maps equal up to a positive affine rescaling. A constant map
        normalises to zeros and gets cosine 0.
    Note:
        Beyond the paper, which compares student and teacher maps only qualitatively.
    """
    _check_ndim("maps", maps, 3, "(B, H, W)")
    _check_same_shape("maps", maps, "ref_maps", ref_maps)
    a = normalize_maps(maps).flatten(1)  # (B, P)
    b = normalize_maps(ref_maps).flatten(1).to(a.dtype)  # (B, P)
    return F.cosine_similarity(a, b, dim=1, eps=1e-12)  # (B,)


def agreement_auc(maps: torch.Tensor, ref_maps: torch.Tensor, top: float = 0.15) -> torch.Tensor:
    """Localization AUC of each map against the top-`top` pixels of its reference map.

    The reference mask holds the k = round(top * H * W) (at least 1) largest pixels of
    `ref_maps`, plus every pixel tied with the k-th largest value.

    Args:
        maps: (B, H, W) student maps.
        ref_maps: (B, H, W) reference (teacher) maps without NaN.
        top: fraction of reference pixels counted as "attributed", in (0, 1).
    Returns:
        (B,) float64; 1 when `maps` ranks every reference-top pixel above the rest (e.g.
        identical maps). NaN for rows whose reference mask covers every pixel (a constant
        reference map, or ties at the threshold spanning the whole map).
    Note:
        Beyond the paper, which compares student and teacher maps only qualitatively.
    """
    _check_ndim("maps", maps, 3, "(B, H, W)")
    _check_same_shape("maps", maps, "ref_maps", ref_maps)
    if not 0.0 < top < 1.0:
        raise ValueError(f"top must be in (0, 1), got {top}")
    _check_no_nan("ref_maps", ref_maps)
    ref = ref_maps.flatten(1)  # (B, P)
    k = min(ref.shape[1], max(1, round(top * ref.shape[1])))
    kth = ref.topk(k, dim=1).values[:, -1:]  # (B, 1) k-th largest value
    ref_masks = (ref >= kth).view_as(ref_maps)  # (B, H, W)
    full = ref_masks.flatten(1).all(dim=1)  # (B,)
    out = torch.full(full.shape, float("nan"), dtype=ACC_DTYPE, device=maps.device)
    keep = ~full
    if keep.any():
        out[keep] = localization_auc(maps[keep], ref_masks[keep])
    return out
