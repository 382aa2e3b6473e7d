"""Faithfulness of attribution maps: does the network use the pixels its map ranks highest?

Localization (attrlib.metrics) asks whether a map sits on the object; these metrics ask
whether the class score depends on what the map ranks highest. Pixels are ordered by the map
(highest first; ties in raster order) and the image is perturbed in growing fractions of
that order; the curve is the network's class probability (sigmoid of the class logit: VOC is
multi-label) at each fraction, and the score is the curve's mean height (its area over the
fractions it spans):

- `deletion` (MoRF, Petsiuk et al. 2018): the top fraction replaced by a baseline image.
  A faithful map makes the probability fall fast: lower is better.
- `insertion` (Petsiuk et al. 2018): the baseline image with the top fraction put back. A
  faithful map makes the probability rise fast: higher is better.
- `road` (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods"): the top fraction removed by noisy linear imputation, each removed pixel the
  weighted mean of its eight neighbours (1/6 sides, 1/12 corners) plus Gaussian noise, so the
  image stays close to the data and the drop is not an artefact of an unseen grey patch.
  Most relevant first: lower is better. Fractions stop before 1 (nothing to impute from).

Each metric is a registered perturbation (`FAITHFULNESS`): a new one is one decorated
function of (images, top-fraction masks, baseline images) and reaches the evaluation, the
effects and the paper's tables like the built-ins. Everything is batched: all pairs x all
fractions of one metric are perturbed at once and scored in chunks on the device; the linear
imputation of every image is one batched preconditioned conjugate-gradient solve.

Scored on a fixed, seeded subset of the ground-truth (image, class) pairs of the evaluation
set, the same for every model whatever it predicts (`faithfulness_pairs`): comparisons across
models average over the same pairs. Deletion equals Quantus's `RegionPerturbation` (one pixel
per region, most relevant first) for the same ordering, steps and baseline; ROAD's imputed
images equal Quantus's `noisy_linear_imputation` and give its `ROAD` arg-max curve (Quantus
scores whether the arg-max class survives, one label per image; here the class probability,
as VOC is multi-label); every metric equals a per-pair loop written from the definitions
(tests/test_faithfulness.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from attrlib.models import eval_mode
from attrlib.registry import Registry

BASELINES = ("blur", "mean", "zero")
BLUR_SIGMA = 0.05  # of the image side: 4.8 px at 96 px
ROAD_NOISE = 0.01  # Quantus's and the ROAD paper's default, on the network's input
# relative residual of the imputation solve: its mean error (~1e-3 of the pixels' std) stays
# well under the noise ROAD adds
CG_TOLERANCE = 1e-3
CHUNK = 256  # perturbed images per forward pass


@dataclass(frozen=True)
class Perturbation:
    """A faithfulness metric: how the top fraction of pixels is perturbed, and its direction.

    `fn(images, top, baseline, generator)`: images (Q, 3, S, S), top (Q, 1, S, S) bool (the
    pixels the map ranks in the fraction), baseline (Q, 3, S, S) -> perturbed (Q, 3, S, S).
    `full`: the curve reaches fraction 1 (every pixel perturbed).
    """

    fn: Callable[..., torch.Tensor]
    higher_is_better: bool
    full: bool = True
    opt_in: bool = False  # left out of an evaluation that does not name it (its cost)


FAITHFULNESS: Registry[Perturbation] = Registry("faithfulness metric")


def register_faithfulness(
    name: str, *, higher_is_better: bool, full: bool = True, opt_in: bool = False
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: a perturbation function becomes the faithfulness metric `name`; an
    `opt_in` one is scored only where an evaluation names it (`faith_metrics`)."""

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        FAITHFULNESS.register(name)(Perturbation(fn, higher_is_better, full, opt_in))
        return fn

    return decorator


# Scores derived from the metrics' means, better when higher. `ins_del` = insertion -
# deletion: a network that is surer of a class everywhere lifts both curves by about as much,
# which raises (worsens) deletion and raises (improves) insertion alike; their difference
# cancels such a shift and keeps what the map's order adds.
DERIVED = {"ins_del": ("insertion", "deletion")}


def with_derived(scores: dict[str, float]) -> dict[str, float]:
    """One method's mean scores plus the `DERIVED` ones whose parts are among them."""
    out = dict(scores)
    for name, (plus, minus) in DERIVED.items():
        if plus in scores and minus in scores:
            out[name] = scores[plus] - scores[minus]
    return out


def score_names() -> list[str]:
    """Every faithfulness score a table can hold: the registered metrics, then the derived."""
    return [*FAITHFULNESS.names(), *DERIVED]


def higher_is_better(column: str) -> bool:
    """Whether a score column ('gradcam deletion', 'map_class') is better when higher."""
    score = column.rpartition(" ")[2]
    return FAITHFULNESS.get(score).higher_is_better if score in FAITHFULNESS else True


# ----------------------------------------------------------------------------- perturbations


@register_faithfulness("deletion", higher_is_better=False)
def deletion(images, top, baseline, generator=None):
    return torch.where(top, baseline, images)


@register_faithfulness("insertion", higher_is_better=True)
def insertion(images, top, baseline, generator=None):
    return torch.where(top, images, baseline)


# Opt-in: its imputation costs about 25 ms per image on a 2-core CPU, 20x a teacher's forward,
# so scoring it for every model would more than double the default study's evaluation.
@register_faithfulness("road", higher_is_better=False, full=False, opt_in=True)
def road(images, top, baseline, generator=None):
    return linear_imputation(images, top, noise=ROAD_NOISE, generator=generator)


# ----------------------------------------------------------------------------- building blocks


def baseline_images(images: torch.Tensor, kind: str = "blur") -> torch.Tensor:
    """What removed pixels become: (B, 3, S, S) from (B, 3, S, S) normalised images.

    blur: a Gaussian blur (sigma `BLUR_SIGMA` of the side) of the image; mean: each image's
    channel means; zero: 0 in the normalised input, the data set's mean colour.
    """
    if kind == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        sigma = BLUR_SIGMA * images.shape[-1]
        size = 2 * math.ceil(3 * sigma) + 1
        return gaussian_blur(images, [size, size], [sigma, sigma])
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if kind == "zero":
        return torch.zeros_like(images)
    raise ValueError(f"faithfulness baseline must be one of {BASELINES}, got {kind!r}")


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(P, S, S) maps -> (P, S, S) int64 rank of each pixel, 0 for the highest (ties in raster
    order: a stable sort)."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices  # (P, N)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=maps.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks.view_as(maps)


def fractions(steps: int, full: bool = True) -> torch.Tensor:
    """(K,) perturbed fractions 0, 1/steps, ..., 1 (without 1 when not `full`)."""
    if steps < 1:
        raise ValueError(f"faithfulness steps must be >= 1, got {steps}")
    n = steps + 1 if full else steps
    return torch.arange(n, dtype=torch.float64) / steps


def top_masks(ranks: torch.Tensor, fracs: torch.Tensor) -> torch.Tensor:
    """(P, S, S) ranks, (K,) fractions -> (P, K, S, S) bool: the floor(N f) top pixels."""
    n = ranks[0].numel()
    counts = torch.floor(fracs * n + 1e-9).long().to(ranks.device)  # (K,)
    return ranks[:, None] < counts[None, :, None, None]


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's eight neighbours inside the image (sides 1/6, corners
    1/12), per channel: ([1 2 1] x [1 2 1] - 4 at the centre) / 12, as two padded 3-tap
    passes (a one-channel 3x3 convolution is several times slower on CPU)."""
    v = F.pad(x, (0, 0, 1, 1))
    v = v[..., :-2, :] + 2 * v[..., 1:-1, :] + v[..., 2:, :]
    h = F.pad(v, (1, 1))
    return (h[..., :-2] + 2 * h[..., 1:-1] + h[..., 2:] - 4 * x) / 12


def linear_imputation(
    images: torch.Tensor,
    unknown: torch.Tensor,
    noise: float = ROAD_NOISE,
    generator: torch.Generator | None = None,
    tolerance: float = CG_TOLERANCE,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the `unknown` pixels of every image.

    Each unknown pixel equals the weighted mean of its neighbours inside the image (known or
    unknown): one sparse linear system per image, (D - W_uu) x_u = W_uk x_k with D the sum of
    the valid neighbours' weights (symmetric positive definite while an image keeps one known
    pixel). All images and channels are solved at once by conjugate gradients preconditioned
    by D, its products a 3x3 convolution, started from the solution of the same problem at
    half the resolution (cascadic multigrid: a hole spanning many pixels would otherwise take
    CG as many iterations as its width). Then Gaussian noise of std `noise` is added to the
    imputed pixels (Quantus's `noisy_linear_imputation`).

    Args:
        images: (Q, C, S, S); unknown: (Q, 1, S, S) bool. Computed in float64 for float64
            images, else float32; `tolerance` is the relative residual of the solve.
    """
    if unknown.flatten(1).all(1).any():
        raise ValueError(
            "linear imputation needs one known pixel per image; got a fully unknown one"
        )
    work = images.double() if images.dtype == torch.float64 else images.float()
    x = _impute(work, unknown, tolerance)
    if noise:
        x = x + noise * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return torch.where(unknown, x, work).to(images.dtype)


def _impute(images: torch.Tensor, unknown: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The noiseless imputation (known pixels kept): a coarse guess, then preconditioned CG."""
    guess = torch.zeros_like(images)
    side = min(images.shape[-2:])
    if side >= 8 and side % 2 == 0:
        # coarse pixel: the mean of its known children, unknown when all four are
        ones = (~unknown).to(images)
        weight = F.avg_pool2d(ones, 2)
        coarse_unknown = weight == 0
        coarse = F.avg_pool2d(images * ones, 2) / weight.clamp_min(1e-12)
        solved = _impute(torch.where(coarse_unknown, 0.0, coarse), coarse_unknown, tolerance)
        guess = F.interpolate(solved, scale_factor=2, mode="bilinear", align_corners=False)
    return _conjugate_gradients(images, unknown, guess, tolerance)


def _conjugate_gradients(
    images: torch.Tensor, unknown: torch.Tensor, guess: torch.Tensor, tolerance: float
) -> torch.Tensor:
    u = unknown.to(images)  # (Q, 1, S, S)
    diag = _neighbour_sum(torch.ones_like(u[:1]))  # (1, 1, S, S) valid neighbours' weights

    def apply(v):  # (D - W_uu) v on the unknowns
        return u * (diag * v - _neighbour_sum(u * v))

    b = u * _neighbour_sum(images * (1 - u))
    x = u * guess
    r = b - apply(x)
    z = r / diag
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    stop = tolerance * b.flatten(2).norm(dim=2)[..., None, None]
    tiny = torch.finfo(images.dtype).tiny
    for _ in range(4 * u[0].numel()):  # CG ends in at most n steps in exact arithmetic
        if (r.flatten(2).norm(dim=2)[..., None, None] <= stop).all():
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return torch.where(unknown, x, images)


def class_probabilities(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, chunk: int = CHUNK
) -> torch.Tensor:
    """(Q,) sigmoid probability of `classes` (Q,) on `images` (Q, 3, S, S), in chunks."""
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(images), chunk):
            batch = images[start : start + chunk].contiguous(memory_format=torch.channels_last)
            logits = model(batch)
            rows = torch.arange(len(batch), device=logits.device)
            out.append(torch.sigmoid(logits[rows, classes[start : start + chunk]].float()))
    return torch.cat(out)


def curves(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    maps: torch.Tensor,
    metric: str,
    steps: int = 8,
    baseline: str = "blur",
    generator: torch.Generator | None = None,
    chunk: int = CHUNK,
    ends: dict[float, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One metric's curves: fractions (K,) float64 and class probabilities (P, K).

    Args:
        model: the network whose class probability is read (logits (Q, K_classes)).
        images: (P, 3, S, S) normalised; classes: (P,) int64; maps: (P, S, S) (any scale:
            only their order counts).
        ends: shared by the calls of one metric on the same pairs (one per attribution
            method): at fractions 0 and 1 nothing or everything is perturbed, whatever the
            map, so their probabilities are read once and kept here. The images are still
            perturbed in full, so a seeded perturbation draws the same noise either way.
    """
    spec = FAITHFULNESS.get(metric)
    if maps.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"maps must be (P, S, S) = {tuple(images.shape[:1] + images.shape[2:])}, "
            f"got {tuple(maps.shape)}"
        )
    fracs = fractions(steps, spec.full)
    k = len(fracs)
    top = top_masks(pixel_ranks(maps), fracs)  # (P, K, S, S)
    base = baseline_images(images, baseline)
    rep = lambda t: t[:, None].expand(-1, k, *t.shape[1:]).flatten(0, 1)  # noqa: E731
    perturbed = spec.fn(rep(images), top.flatten(0, 1)[:, None], rep(base), generator)
    perturbed = perturbed.view(len(images), k, *images.shape[1:])
    known = {j: ends[f] for j, f in enumerate(fracs.tolist()) if ends is not None and f in ends}
    todo = [j for j in range(k) if j not in known]
    probs = torch.empty(len(images), k, dtype=torch.float64)
    read = class_probabilities(
        model, perturbed[:, todo].flatten(0, 1), classes.repeat_interleave(len(todo)), chunk
    )
    probs[:, todo] = read.view(len(images), len(todo)).double().cpu()
    for j, value in known.items():
        probs[:, j] = value
    if ends is not None:
        for j, f in enumerate(fracs.tolist()):
            if f in (0.0, 1.0):
                ends.setdefault(f, probs[:, j].clone())
    return fracs, probs


def curve_score(fracs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """(P,) mean height of each curve: its trapezoid area over the span of `fracs`."""
    if len(fracs) < 2:
        return probs[:, 0]
    span = fracs[-1] - fracs[0]
    return torch.trapezoid(probs, fracs.to(probs), dim=1) / span


# ----------------------------------------------------------------------------- evaluation


def faithfulness_pairs(
    labels: torch.Tensor, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of `n` ground-truth (image, class) pairs of a data set's labels (N, K):
    seeded, independent of any model, sorted by image. Returns rows (n,) and classes (n,)."""
    rows, classes = torch.nonzero(labels > 0, as_tuple=True)
    if n <= 0:
        raise ValueError(f"faithfulness pairs must be >= 1, got {n}")
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:n]
    pick = pick.sort().values
    return rows[pick], classes[pick]


@dataclass(frozen=True)
class Faithfulness:
    """What an evaluation scores for faithfulness (attrlib.config.EvalConfig's faith_ fields).

    16 pairs and 8 steps keep deletion and insertion of the four built-in methods within
    about a quarter of a model's evaluation on a 2-core CPU (+16 % for the default teacher,
    +25 % for a one-shot network and for an x4 student: benchmarks/faithfulness.py,
    docs/benchmarks.md); the pairs are the same for every model, so differences between
    models are paired.
    """

    pairs: int = 16  # ground-truth (image, class) pairs, a seeded subset; 0 = none
    steps: int = 8  # fractions 0, 1/steps, ..., 1 of the pixels
    baseline: str = "blur"  # blur | mean | zero: what deleted pixels become
    metrics: tuple[str, ...] = ()  # names in FAITHFULNESS; () = every one but the opt-in ones
    seed: int = 0  # of the pairs and of ROAD's noise

    def __post_init__(self) -> None:
        if self.pairs < 0:
            raise ValueError(f"faith_pairs must be >= 0 (0: no faithfulness), got {self.pairs}")
        if self.steps < 2:
            raise ValueError(f"faith_steps must be >= 2, got {self.steps}")
        if self.baseline not in BASELINES:
            raise ValueError(f"faith_baseline must be one of {BASELINES}, got {self.baseline!r}")
        unknown = [m for m in self.metrics if m not in FAITHFULNESS]
        if unknown:
            raise ValueError(
                f"faith_metrics must be names in {FAITHFULNESS.names()}, got {list(self.metrics)}"
            )

    def names(self) -> list[str]:
        if self.metrics:
            return list(self.metrics)
        return [name for name in FAITHFULNESS if not FAITHFULNESS.get(name).opt_in]


def faithfulness_table(
    model: nn.Module,
    dataset,
    methods: Sequence[str],
    settings: Faithfulness | None = None,
    device: torch.device | str = "cpu",
    maps_model: nn.Module | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Faithfulness of every method's maps on the fixed pairs: (table, mean curves).

    The table has one row per (image, class, method) and a column per metric; the curves are
    {method: {metric: {"fractions": [...], "mean": [...]}}}, the mean over pairs. The maps
    come from `maps_model` when given (the randomisation check: maps of a randomised copy,
    scored by the trained network), else from `model`. ROAD's noise is seeded by the
    settings' seed, so every model sees the same noise.
    """
    from attrlib.attribution import attribute

    settings = settings or Faithfulness()
    metrics, seed = settings.names(), settings.seed
    steps, baseline = settings.steps, settings.baseline
    labels = (
        dataset.labels
        if hasattr(dataset, "labels")
        else torch.stack([dataset[i][1] for i in range(len(dataset))])
    )
    rows, classes = faithfulness_pairs(labels, settings.pairs, seed)
    device = torch.device(device)
    images = torch.stack([dataset[int(i)][0] for i in rows]).to(device)
    classes = classes.to(device)
    ids = getattr(dataset, "ids", None)
    keys = [ids[int(i)] if ids else int(i) for i in rows]
    source = maps_model if maps_model is not None else model
    frames, mean_curves = [], {}
    ends: dict[str, dict] = {metric: {} for metric in metrics}  # shared by the methods
    for method in methods:
        maps = attribute(source, images, classes, method).detach()
        columns = {"image": keys, "class": classes.tolist(), "method": method}
        mean_curves[method] = {}
        for metric in metrics:
            generator = torch.Generator().manual_seed(seed)
            fracs, probs = curves(
                model, images, classes, maps, metric, steps, baseline, generator, ends=ends[metric]
            )
            columns[metric] = curve_score(fracs, probs).tolist()
            mean_curves[method][metric] = {
                "fractions": fracs.tolist(),
                "mean": probs.mean(0).tolist(),
            }
        frames.append(pd.DataFrame(columns))
    return pd.concat(frames, ignore_index=True), mean_curves


def summarize(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean of every metric per attribution method."""
    metrics = [c for c in table.columns if c in FAITHFULNESS]
    means = table.groupby("method", sort=False)[metrics].mean()
    return {m: {c: float(means.loc[m, c]) for c in metrics} for m in means.index}
