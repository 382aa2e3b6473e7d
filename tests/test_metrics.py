"""Metrics against scikit-learn (random and heavily tied inputs), batched vs row-by-row,
hand-made pointing-game and agreement cases, and error messages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from attrlib.metrics import (
    agreement_auc,
    average_precision_per_class,
    f1_score,
    localization_auc,
    map_cosine,
    mean_average_precision,
    normalize_maps,
    pointing_game,
)

SEEDS = (0, 1, 2)


def _scores(gen: torch.Generator, shape: tuple[int, ...], tied: bool) -> torch.Tensor:
    """Random scores; `tied` quantises them to 4 levels so ties are everywhere."""
    x = torch.randn(shape, generator=gen)
    return torch.round(x.clamp(-1.5, 1.5)) if tied else x


def _labels(gen: torch.Generator, n: int, k: int, p: float = 0.3) -> torch.Tensor:
    return torch.rand(n, k, generator=gen) < p


def _sk_ap(labels: torch.Tensor, scores: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on rows without positives
        return skm.average_precision_score(labels.numpy(), scores.numpy())


# ----------------------------------------------------------------------------- mAP


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tied", [False, True])
def test_average_precision_per_class_matches_sklearn(seed: int, tied: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores, labels = _scores(gen, (40, 7), tied), _labels(gen, 40, 7)
    labels[:, 3] = False  # a class without positives
    labels[:, 5] = True  # a class with only positives
    ap = average_precision_per_class(scores, labels)
    assert ap.shape == (7,)
    assert torch.isnan(ap[3])
    for k in (0, 1, 2, 4, 5, 6):
        assert ap[k].item() == pytest.approx(_sk_ap(labels[:, k], scores[:, k]), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tied", [False, True])
def test_map_class_is_mean_over_classes_with_positives(seed: int, tied: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores, labels = _scores(gen, (30, 6), tied), _labels(gen, 30, 6)
    labels[:, 0] = False
    expected = np.mean([_sk_ap(labels[:, k], scores[:, k]) for k in range(1, 6)])
    got = mean_average_precision(scores, labels, average="class")
    assert got.dim() == 0 and got.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tied", [False, True])
def test_map_sample_matches_sklearn_samples(seed: int, tied: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores, labels = _scores(gen, (25, 20), tied), _labels(gen, 25, 20)
    labels[torch.arange(25), torch.randint(20, (25,), generator=gen)] = True  # >= 1 per row
    expected = skm.average_precision_score(labels.numpy(), scores.numpy(), average="samples")
    got = mean_average_precision(scores, labels.long(), average="sample")
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # the authors' compute_mAP: a Python loop over images
    loop = np.mean([_sk_ap(labels[i], scores[i]) for i in range(25)])
    assert got.item() == pytest.approx(loop, abs=1e-12)


def test_map_sample_row_without_positive_scores_zero_like_sklearn() -> None:
    gen = torch.Generator().manual_seed(3)
    scores, labels = _scores(gen, (6, 5), False), _labels(gen, 6, 5, p=0.5)
    labels[2] = False
    labels[4] = False
    with pytest.warns(UserWarning, match=r"rows \[2, 4\] have no positive"):
        got = mean_average_precision(scores, labels, average="sample")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.average_precision_score(labels.numpy(), scores.numpy(), average="samples")
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_map_hand_made() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.7]])
    labels = torch.tensor([[0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    # row 0: the positive ranks 2nd -> AP 1/2; row 1: tie of {+,-} at 0.7 then + -> 1/2*1/2+1/2*2/3
    row1 = 0.5 * 0.5 + 0.5 * (2 / 3)
    got = mean_average_precision(scores, labels, average="sample")
    assert got.item() == pytest.approx((0.5 + row1) / 2)


def test_map_errors() -> None:
    scores = torch.randn(4, 3)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 2\)"):
        mean_average_precision(scores, torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="'class' or 'sample'"):
        mean_average_precision(scores, torch.ones(4, 3, dtype=torch.bool), average="macro")
    with pytest.raises(ValueError, match="only 0 and 1"):
        mean_average_precision(scores, torch.full((4, 3), -1))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(scores.index_fill(1, torch.tensor([0]), float("nan")), scores > 0)


# ----------------------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["samples", "micro", "macro"])
def test_f1_matches_sklearn(seed: int, average: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.round(torch.randn(30, 8, generator=gen) * 2) / 4  # many logits == 0.5
    labels = _labels(gen, 30, 8)
    labels[0] = False  # a row with no truth ...
    logits[0] = -1.0  # ... and no prediction: zero_division applies
    labels[:, 2] = False  # a class never true
    preds = (logits > 0.5).numpy()
    expected = skm.f1_score(labels.numpy(), preds, average=average, zero_division=0)
    got = f1_score(logits, labels, average=average)
    assert got.dim() == 0 and got.item() == pytest.approx(expected, abs=1e-12)


def test_f1_threshold_and_errors() -> None:
    logits = torch.tensor([[0.5, 0.6], [2.0, -1.0]])
    labels = torch.tensor([[1, 1], [1, 0]])
    assert f1_score(logits, labels).item() == pytest.approx((2 / 3 + 1) / 2)  # 0.5 is not > 0.5
    assert f1_score(logits, labels, threshold=0.0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'samples', 'micro' or 'macro'"):
        f1_score(logits, labels, average="weighted")
    with pytest.raises(ValueError, match=r"\(2, 2\) and \(2, 3\)"):
        f1_score(logits, torch.ones(2, 3))


# ----------------------------------------------------------------------------- maps


def test_normalize_maps() -> None:
    maps = torch.stack([torch.arange(12.0).view(3, 4) - 5, torch.full((3, 4), 7.0)])
    out = normalize_maps(maps)
    assert out.shape == maps.shape
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], torch.zeros(3, 4))  # constant -> zeros, no NaN
    assert torch.allclose(out[0], (maps[0] + 5) / 11)
    with pytest.raises(ValueError, match="finite"):
        normalize_maps(torch.full((1, 2, 2), float("inf")))


def _sk_auc(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> list[float]:
    return [
        skm.roc_auc_score(masks[b][valid[b]].numpy(), maps[b][valid[b]].numpy())
        for b in range(maps.shape[0])
    ]


def _mask_batch(gen: torch.Generator, b: int, h: int, w: int, p: float) -> torch.Tensor:
    masks = torch.rand(b, h, w, generator=gen) < p
    masks[:, 0, 0], masks[:, -1, -1] = True, False  # never empty nor full
    return masks


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("levels", [0, 2, 5])  # 0: continuous; else quantised (heavy ties)
def test_localization_auc_matches_sklearn(seed: int, levels: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.rand(5, 9, 11, generator=gen)
    if levels:
        maps = torch.floor(maps * levels) / levels
    masks = _mask_batch(gen, 5, 9, 11, 0.3)
    auc = localization_auc(maps, masks)
    assert auc.shape == (5,) and auc.dtype == torch.float64
    expected = _sk_auc(maps, masks, torch.ones_like(masks))
    assert torch.allclose(auc, torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    rows = torch.cat([localization_auc(maps[b : b + 1], masks[b : b + 1]) for b in range(5)])
    assert torch.equal(auc, rows)


@pytest.mark.parametrize("seed", SEEDS)
def test_localization_auc_excludes_invalid_pixels(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.floor(torch.rand(4, 8, 8, generator=gen) * 3)  # 3 levels, heavy ties
    masks = _mask_batch(gen, 4, 8, 8, 0.4)
    valid = torch.rand(4, 8, 8, generator=gen) < 0.7
    valid[:, 0, 0], valid[:, -1, -1] = True, True
    auc = localization_auc(maps, masks, valid)
    expected = _sk_auc(maps, masks, valid)
    assert torch.allclose(auc, torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    # whatever the void pixels hold (even inf / NaN) is ignored
    junk = maps.masked_fill(~valid, float("inf"))
    junk[~valid & masks] = float("nan")
    assert torch.equal(localization_auc(junk, masks, valid), auc)


def test_localization_auc_constant_and_perfect_maps() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2] = True
    maps = torch.stack([torch.full((4, 4), 0.3), masks[0].double(), 1 - masks[0].double()])
    auc = localization_auc(maps, masks)
    assert auc.tolist() == [0.5, 1.0, 0.0]


def test_localization_auc_errors() -> None:
    maps = torch.rand(4, 3, 3)
    masks = torch.zeros(4, 3, 3, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[2] = True
    with pytest.raises(ValueError, match=r"empty rows \[1, 3\], full rows \[2\]"):
        localization_auc(maps, masks)
    # a mask that is full on the valid pixels only
    valid = torch.ones_like(masks)
    masks[1, 0, 0] = masks[3, 1, 1] = True
    valid[3] = masks[3]
    with pytest.raises(ValueError, match=r"empty rows \[\], full rows \[2, 3\]"):
        localization_auc(maps, masks, valid)
    with pytest.raises(ValueError, match=r"\(4, 3, 3\) and \(4, 3, 2\)"):
        localization_auc(maps, masks[..., :2])
    with pytest.raises(ValueError, match=r"maps and valid .* \(4, 3, 3\) and \(4, 9\)"):
        localization_auc(maps, masks, valid.flatten(1))
    with pytest.raises(ValueError, match=r"\(B, H, W\), got shape \(36,\)"):
        localization_auc(maps.flatten(), masks.flatten())
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        localization_auc(maps, masks.long())
    with pytest.raises(ValueError, match=r"finite on valid pixels; rows \[1\]"):
        localization_auc(maps.index_fill(0, torch.tensor([1]), float("nan")), masks | True)


# ----------------------------------------------------------------------------- pointing game


def test_pointing_game_hand_made() -> None:
    maps = torch.zeros(3, 3, 3)
    maps[0, 1, 1] = 5.0  # peak inside
    maps[1, 2, 0] = 5.0  # peak outside
    maps[2, 0, 2] = maps[2, 2, 2] = 5.0  # tie: the first in row-major order (0, 2) wins
    masks = torch.zeros(3, 3, 3, dtype=torch.bool)
    masks[0, 1, 1] = True
    masks[1, 0, 0] = True
    masks[2, 0, 2] = True
    assert pointing_game(maps, masks).tolist() == [True, False, True]
    masks[2, 0, 2], masks[2, 2, 2] = False, True
    assert pointing_game(maps, masks).tolist() == [True, False, False]
    assert pointing_game(maps, masks).dtype == torch.bool


def test_pointing_game_errors() -> None:
    masks = torch.ones(3, 2, 2, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(ValueError, match=r"empty masks: rows \[1\]"):
        pointing_game(torch.rand(3, 2, 2), masks)
    with pytest.raises(ValueError, match=r"\(3, 2, 2\) and \(3, 2, 3\)"):
        pointing_game(torch.rand(3, 2, 2), torch.ones(3, 2, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- agreement


def test_map_cosine() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 6, 6, generator=gen)
    assert torch.allclose(map_cosine(maps, maps), torch.ones(4))
    assert torch.allclose(map_cosine(3 * maps + 1, maps), torch.ones(4))  # affine-invariant
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    c = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert map_cosine(a, b).item() == pytest.approx(0.0)
    assert map_cosine(a, c).item() == pytest.approx(2**-0.5)
    assert map_cosine(torch.full((1, 2, 2), 3.0), a).item() == 0.0  # constant -> zeros
    with pytest.raises(ValueError, match=r"\(4, 6, 6\) and \(4, 6, 5\)"):
        map_cosine(maps, maps[..., :5])


@pytest.mark.parametrize("seed", SEEDS)
def test_agreement_auc_matches_localization_auc_of_top_mask(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ref = torch.floor(torch.rand(3, 10, 10, generator=gen) * 20)  # ties at the threshold
    maps = torch.rand(3, 10, 10, generator=gen)
    assert torch.allclose(agreement_auc(ref, ref), torch.ones(3, dtype=torch.float64))
    got = agreement_auc(maps, ref, top=0.15)
    for b in range(3):
        kth = ref[b].flatten().sort(descending=True).values[14]  # the 15th largest value
        mask = ref[b] >= kth
        assert mask.sum() >= 15
        expected = skm.roc_auc_score(mask.flatten().numpy(), maps[b].flatten().numpy())
        assert got[b].item() == pytest.approx(expected, abs=1e-6)


def test_agreement_auc_hand_made_and_full_mask() -> None:
    ref = torch.zeros(3, 2, 5)
    ref[:, 0, 0] = 1.0  # top 10% of 10 pixels = 1 pixel
    ref[2] = 4.0  # constant reference: every pixel ties with the top -> NaN
    maps = torch.zeros(3, 2, 5)
    maps[0, 0, 0] = 1.0  # ranks the reference pixel first -> 1
    maps[1, 1, 4] = 1.0  # ranks it among the 9 lowest -> (0 + 8 * 0.5) / 9
    got = agreement_auc(maps, ref, top=0.1)
    assert got[0].item() == 1.0
    assert got[1].item() == pytest.approx(4 / 9)
    assert torch.isnan(got[2])
    with pytest.raises(ValueError, match=r"top must be in \(0, 1\)"):
        agreement_auc(maps, ref, top=1.0)
