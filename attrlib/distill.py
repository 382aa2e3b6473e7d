"""Knowledge distillation and attribution-map matching (EWA, SWA, stochastic SWA).

Park et al., NeurIPS 2020: the compressed network is trained with its usual loss plus
`lambda * matching(student_map, teacher_map)`, where maps are taken at the attribution layer,
flattened, L2-normalised and compared by mean squared difference. The same objective serves
distillation (KD loss) and pruning fine-tuning (CE loss) — see `CompressionObjective`.

Matching losses are registry entries: a map function
`(feature (B,C,h,w), logits (B,K), classes (B,), create_graph, channel_keep (B,C) | None)
-> maps (B,h,w)`. Adding one is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attrlib.models import eval_mode
from attrlib.registry import Registry
from attrlib.views import ViewKeys, channel_keep

MapFn = Callable[..., torch.Tensor]
MATCHINGS: Registry[MapFn] = Registry("matching loss")
NO_MATCHING = "none"


def check_matching(matching: str, matching_lambda: float, drop_fraction: float) -> None:
    """The one validation of a matching setting (configs and `CompressionObjective`)."""
    if matching != NO_MATCHING and matching not in MATCHINGS:
        raise ValueError(
            f"matching must be {NO_MATCHING!r} or one of {MATCHINGS.names()}, got {matching!r} "
            "(stochastic SWA is swa with drop_fraction > 0; the configs read 'sswa' as that)"
        )
    if matching_lambda < 0:
        raise ValueError(f"matching_lambda must be >= 0, got {matching_lambda}")
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    if drop_fraction > 0 and matching == NO_MATCHING:
        raise ValueError("drop_fraction > 0 needs a matching loss (stochastic SWA)")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Multi-label distillation loss (SPEC: Training recipes, Distillation).

    alpha * T^2 * KL(sigmoid(t/T) || sigmoid(s/T)) + (1 - alpha) * soft-margin CE, with the
    binary (present / absent) KL of each class averaged over all (image, class) pairs.

    Args:
        student_logits, teacher_logits: (B, K). targets: (B, K) in {0, 1}.
    """
    s, t = student_logits / T, teacher_logits.detach() / T  # (B, K)
    p_t = torch.sigmoid(t)
    # log-sigmoids keep the KL finite for saturated logits
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (
        F.logsigmoid(-t) - F.logsigmoid(-s)
    )
    ce = F.multilabel_soft_margin_loss(student_logits, targets)
    return alpha * T * T * kl.mean() + (1 - alpha) * ce


@MATCHINGS.register("ewa")
def ewa_map(
    feature: torch.Tensor,
    logits: torch.Tensor,
    classes: torch.Tensor,
    create_graph: bool = False,
    channel_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain attention transfer (Zagoruyko & Komodakis 2017): mean over channels of feature^2.

    Class-agnostic: `logits`, `classes` and `channel_keep` are ignored.
    """
    return feature.pow(2).mean(dim=1)  # (B, h, w)


@MATCHINGS.register("swa")
def swa_map(
    feature: torch.Tensor,
    logits: torch.Tensor,
    classes: torch.Tensor,
    create_graph: bool = False,
    channel_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sensitivity-weighted attribution (Park et al. 2020): ReLU(sum_k w_k * feature_k).

    w_k = sum over space of d logit_c / d feature_k. The gradient is taken with
    `torch.autograd.grad` w.r.t. `feature`, so it runs through the network head only (the
    layers after the attribution layer), never a full backward pass.

    Args:
        feature: (B, C, h, w) attribution feature, part of the graph that made `logits`.
        logits: (B, K). classes: (B,) target class per row.
        create_graph: keep the graph of the gradient (the student's map is trained through).
        channel_keep: optional (B, C) 0/1 mask on the channel weights (stochastic SWA).
    """
    selected = logits.gather(1, classes[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, feature, create_graph=create_graph)  # (B, C, h, w)
    weights = grad.sum(dim=(2, 3))  # (B, C)
    if channel_keep is not None:
        weights = weights * channel_keep
    return F.relu((weights[:, :, None, None] * feature).sum(dim=1))  # (B, h, w)


def attribution_maps(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    matching: str,
    create_graph: bool = False,
) -> torch.Tensor:
    """Map of a registered matching function for `model` on `images`: (B,3,H,W) -> (B,h,w)."""
    map_fn = MATCHINGS.get(matching)
    with torch.enable_grad():
        feature = model.forward_features(images)  # (B, C, h, w)
        if not feature.requires_grad:  # frozen model: the head-only gradient still needs a graph
            feature = feature.detach().requires_grad_()
        return map_fn(feature, model.head(feature), classes, create_graph=create_graph)


def swa_map_full_backward(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """SWA map built the authors' way: a full `backward(create_graph=True)` to a retained feature.

    Reference for the equivalence test and the benchmark only; it costs a second full
    backward pass and leaves graph-carrying `.grad` on the parameters (cleared here).
    """
    feature = model.forward_features(images)  # (B, C, h, w)
    feature.retain_grad()
    logits = model.head(feature)
    one_hot = F.one_hot(classes, logits.shape[1]).to(logits.dtype)  # (B, K)
    logits.backward(one_hot, create_graph=True)
    grad = feature.grad
    model.zero_grad(set_to_none=True)
    weights = grad.sum(dim=(2, 3))  # (B, C)
    return F.relu((weights[:, :, None, None] * feature).sum(dim=1))  # (B, h, w)


def matching_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the flattened, L2-normalised maps; the teacher's is constant."""
    s = F.normalize(student_maps.flatten(1), dim=1)  # (B, h*w)
    t = F.normalize(teacher_maps.detach().flatten(1), dim=1)  # (B, h*w)
    return (s - t).pow(2).mean()


def random_channel_keep(
    batch: int, channels: int, drop_fraction: float, device: torch.device
) -> torch.Tensor:
    """(B, C) 0/1 mask zeroing exactly round(drop_fraction * C) random channels per row.

    Draws from torch's global RNG, which the training loop reseeds from (seed, epoch), so
    the drops are fresh every step and reproducible from the seed.
    """
    n_drop = round(drop_fraction * channels)
    ranks = torch.rand(batch, channels, device=device).argsort(dim=1).argsort(dim=1)  # (B, C)
    return (ranks >= n_drop).to(torch.float32)


def target_key(matching: str, drop_fraction: float = 0.0) -> str:
    """Name of a cached map kind: the matching name, plus its channel-drop fraction."""
    return f"{matching}-drop{drop_fraction:g}" if drop_fraction > 0 else matching


def teacher_outputs(
    teacher: nn.Module,
    images: torch.Tensor,
    kinds: Sequence[tuple[str, float]],
    layer: str,
    views: ViewKeys | None = None,
    view_seed: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The frozen teacher's logits (B, K) and its map (B, h, w) for each (matching, drop).

    The map is built for the teacher's top-1 class at `layer` (SPEC: matching regularisers);
    a drop fraction > 0 zeroes that share of the teacher's channel weights (stochastic SWA),
    drawn per (view epoch, image) from `views`, or from torch's global RNG without them.
    """
    with eval_mode(teacher), torch.no_grad():
        # channels-last: oneDNN's fastest layout for inference (as attrlib.evaluate)
        images = images.contiguous(memory_format=torch.channels_last)
        feature = teacher.matching_feature(images, layer)  # (B, C, h, w)
    maps = {}
    with eval_mode(teacher), torch.enable_grad():
        # the head-only gradient of SWA needs a graph from the feature, not the parameters
        feature = feature.detach().requires_grad_(bool(kinds))
        logits = teacher.matching_head(feature, layer)  # (B, K)
        classes = logits.detach().argmax(dim=1)  # (B,) the teacher's top-1 class
        first = True
        for matching, drop in kinds:
            keep = None
            if drop > 0:
                batch, channels = feature.shape[:2]
                if views is None:
                    keep = random_channel_keep(batch, channels, drop, images.device)
                else:
                    keep = channel_keep(
                        view_seed, views.epoch, views.indices.tolist(), channels, drop
                    )
                    keep = keep.to(images.device)
            map_fn = MATCHINGS.get(matching)
            # a gradient-based map frees the head's graph: later kinds get a head pass of their own
            head_logits = logits if first else teacher.matching_head(feature, layer)
            first = False
            maps[target_key(matching, drop)] = map_fn(
                feature,
                head_logits,
                classes,
                create_graph=False,
                channel_keep=keep,
            ).detach()
    return logits.detach(), maps


class CompressionObjective:
    """Loss of a compressed network against its reference (teacher or unpruned network).

    `kd=True` (distillation): kd_loss(student, teacher) + lambda * matching.
    `kd=False` (pruning fine-tune): soft-margin CE + lambda * matching.
    The reference runs in eval mode without parameter gradients; its map uses its top-1
    predicted class, the student's map the same class, both at `layer`
    (attrlib.models.MATCHING_LAYERS). `matching="none"` drops the term.

    With `targets` (attrlib.targets.TeacherTargets) the reference's logits and maps are read
    from the cache by the batch's `views` instead of being computed: the same values, since
    views and channel drops are drawn per (view epoch, image).

    `warmup_epochs` > 0 (beyond the paper): the matching term is off for batches of view
    epochs below it (distillation reads view epoch = training epoch), so that KD first makes
    a from-scratch student predict before its maps are pulled towards the teacher's.
    """

    def __init__(
        self,
        teacher: nn.Module,
        matching: str = NO_MATCHING,
        matching_lambda: float = 100.0,
        drop_fraction: float = 0.0,
        kd: bool = True,
        temperature: float = 4.0,
        alpha: float = 0.9,
        layer: str = "attribution",
        targets=None,
        view_seed: int = 0,
        warmup_epochs: int = 0,
    ) -> None:
        check_matching(matching, matching_lambda, drop_fraction)
        self.teacher = teacher.eval().requires_grad_(False)
        self.matching, self.matching_lambda, self.drop_fraction = (
            matching,
            matching_lambda,
            drop_fraction,
        )
        self.kd, self.temperature, self.alpha = kd, temperature, alpha
        self.layer, self.targets, self.view_seed = layer, targets, view_seed
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = warmup_epochs

    @property
    def kinds(self) -> list[tuple[str, float]]:
        """The reference map kinds this objective needs: [(matching, drop)] or []."""
        return [] if self.matching == NO_MATCHING else [(self.matching, self.drop_fraction)]

    def reference_outputs(
        self, images: torch.Tensor, views=None, with_map: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reference's logits (B, K) and map (B, h, w) (None without matching or when
        `with_map` is False, as during the matching warm-up)."""
        kinds = self.kinds if with_map else []
        key = target_key(*kinds[0]) if kinds else None
        if self.targets is not None:
            if views is None:
                raise ValueError("cached teacher targets need the batch's views (ViewKeys)")
            return self.targets.lookup(views, key, images.device)
        logits, maps = teacher_outputs(
            self.teacher, images, kinds, self.layer, views, self.view_seed
        )
        return logits, None if key is None else maps[key]

    def __call__(
        self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor, views=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        warming = views is not None and views.epoch < self.warmup_epochs
        need_grad = self.matching != NO_MATCHING and not warming
        # through forward: `student` may be a DistributedDataParallel replica
        s_feature, s_logits = student(images, matching_layer=self.layer)  # (B,C_s,h,w), (B,K)
        if not self.kd:
            base = F.multilabel_soft_margin_loss(s_logits, labels)
            if not need_grad:  # plain fine-tuning: the reference plays no part, skip its forward
                return base, {"ce": base.detach()}
        t_logits, t_maps = self.reference_outputs(images, views, with_map=need_grad)
        if self.kd:
            base = kd_loss(s_logits, t_logits, labels, self.temperature, self.alpha)
        logs = {"kd" if self.kd else "ce": base.detach()}
        if not need_grad:
            return base, logs
        map_fn = MATCHINGS.get(self.matching)
        classes = t_logits.argmax(dim=1)  # (B,) teacher's top-1 class
        s_maps = map_fn(s_feature, s_logits, classes, create_graph=True)  # (B, h, w)
        match = matching_loss(s_maps, t_maps)
        logs["match"] = match.detach()
        # A student map that is zero everywhere (SWA's ReLU of a negative weighted sum) gets
        # no gradient from the matching term: the share of such maps says whether it acts.
        logs["dead_maps"] = (s_maps.detach().flatten(1).amax(dim=1) <= 0).float().mean()
        return base + self.matching_lambda * match, logs
