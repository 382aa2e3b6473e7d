"""Profiles (smoke / default / voc) and the frozen config of each training stage.

A profile fixes data size, input size, widths and the optimisation recipe of every stage;
a stage config takes a profile name plus explicit overrides (None = the profile's value),
resolves them in `__post_init__`, and is written as `config.json` and into checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "onecycle", "constant")


@dataclass(frozen=True)
class Recipe:
    """Optimisation recipe of one stage."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # multistep: lr *= gamma at each milestone epoch
    milestones: tuple[int, ...] = ()  # epochs
    gamma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass(frozen=True)
class SynthSpec:
    """Size of the generated synthetic VOC-layout data set."""

    n_train: int
    n_val: int
    image_size: int  # pixels, side of the generated square images


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a seconds-long smoke run, the default study and VOC."""

    name: str
    input_size: int  # pixels fed to the network
    scale_min: float  # lower area bound of RandomResizedCrop
    teacher_width_div: int  # 1 = the paper's VGG16-BN
    student_width_divs: tuple[int, ...]  # students' extra division of the teacher's widths
    teacher: Recipe
    distill: Recipe
    prune_oneshot: Recipe
    prune_iterative: Recipe
    prune_rates: tuple[float, ...]
    iterative_steps: int
    synth: SynthSpec | None = None  # None: real data only (VOC_ROOT)
    iterative_fraction: float = 0.2  # of the remaining weights, per iteration
    matching_lambda: float = 100.0  # distillation's
    prune_matching_lambda: float | None = None  # pruning fine-tunes'; None: matching_lambda
    drop_fraction: float = 0.3  # stochastic SWA
    seeds: tuple[int, ...] = (0,)
    num_workers: int = 0
    # Where maps are matched (attrlib.models.MATCHING_LAYERS): "pool", the last max-pool's
    # output, is where the authors' code matches.
    matching_layer: str = "pool"
    view_seed: int = 0  # seed of the training views shared by every run (attrlib.views)
    matching_warmup: int = 0  # distillation epochs of KD alone before matching starts
    # the grid of `make all`: words of attrlib.study.COMPRESSION per stage
    distill_methods: tuple[str, ...] = ("kd", "ewa", "swa", "sswa")
    oneshot_methods: tuple[str, ...] = ("naive", "swa", "sswa")
    iterative_methods: tuple[str, ...] = ("naive", "swa", "sswa")
    # Under `make NPROC=n` (GPUs only): batch norm over the global batch instead of each
    # rank's shard. Off everywhere: not measured to train better on any profile yet.
    sync_bn: bool = False


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        input_size=32,
        scale_min=0.5,
        teacher_width_div=16,
        student_width_divs=(2,),
        teacher=Recipe(epochs=2, batch_size=16, lr=0.05, schedule="onecycle"),
        distill=Recipe(epochs=1, batch_size=16, lr=0.05, schedule="onecycle"),
        prune_oneshot=Recipe(epochs=1, batch_size=16, lr=0.01, schedule="constant"),
        prune_iterative=Recipe(epochs=1, batch_size=16, lr=0.01, schedule="constant"),
        prune_rates=(0.5,),
        iterative_steps=2,
        matching_layer="attribution",  # at 32 px the pooled map is 1x1: nothing to match
        synth=SynthSpec(n_train=48, n_val=16, image_size=40),
        distill_methods=("kd", "swa"),
        oneshot_methods=("naive", "swa"),
        iterative_methods=("naive", "swa"),
    ),
    "default": Profile(
        name="default",
        # 96 px: the attribution layer is 6x6, fine enough for Grad-CAM's arg-max to land on
        # the object (at 64 px its 4x4 grid put the teacher's pointing at 0.44)
        input_size=96,
        scale_min=0.5,
        teacher_width_div=8,
        student_width_divs=(2, 4),
        teacher=Recipe(
            epochs=24,
            batch_size=64,
            lr=2e-3,
            optimizer="adamw",
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        # Students train from scratch: a higher lr than the teacher's and 25 epochs. Measured on
        # x4 (VGG16 / 32) KD+SWA, seed 0: 20 epochs 0.63 class mAP, 25 epochs 0.77; x4 KD
        # at lr 2e-3 / 6e-3 / 1e-2 / 1.5e-2 (20 epochs): 0.52 (of 30) / 0.58 / 0.66 / 0.70.
        distill=Recipe(
            epochs=25,
            batch_size=64,
            lr=1.5e-2,
            optimizer="adamw",
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        prune_oneshot=Recipe(
            epochs=2, batch_size=64, lr=2e-4, optimizer="adamw", schedule="constant"
        ),
        prune_iterative=Recipe(
            epochs=1, batch_size=64, lr=2e-4, optimizer="adamw", schedule="constant"
        ),
        prune_rates=(0.3, 0.5, 0.7),
        iterative_steps=16,
        # Matching at the attribution layer (6x6), not at the pooled 3x3 the authors' layer
        # gives at 96 px, which is too coarse to say where a network looks. The loss is a mean
        # over h*w positions: the authors' lambda = 100 on 7x7 is 100 * 36 / 49 ~ 73 on 6x6.
        # That pull keeps these tiny from-scratch students at chance (x4 KD+SWA: class mAP
        # 0.17 after 12 epochs at 73; 0.29 after 27 at 10; 0.56 at 2 beside KD's 0.58), so
        # distillation matches at lambda 3. Pruning fine-tunes start from the trained teacher
        # and keep the pull that preserved their maps at 64 px (8 on 4x4 = 18 on 6x6).
        matching_layer="attribution",
        matching_lambda=3.0,
        prune_matching_lambda=18.0,
        seeds=(0, 1, 2),
        synth=SynthSpec(n_train=3000, n_val=500, image_size=120),
        iterative_methods=("naive", "swa"),  # stochastic SWA left out for time
    ),
    "voc": Profile(
        name="voc",
        input_size=227,
        scale_min=0.08,
        teacher_width_div=1,
        student_width_divs=(2, 4, 8),
        teacher=Recipe(epochs=60, batch_size=64, lr=0.1, milestones=(10, 30, 40)),
        # the authors distil with plain SGD (no momentum); teacher and fine-tunes use 0.9
        distill=Recipe(epochs=350, batch_size=64, lr=0.1, momentum=0.0, milestones=(150, 200, 250)),
        prune_oneshot=Recipe(epochs=30, batch_size=64, lr=0.001, schedule="constant"),
        prune_iterative=Recipe(epochs=30, batch_size=64, lr=0.001, schedule="constant"),
        prune_rates=(0.3, 0.5, 0.7),
        iterative_steps=16,
        num_workers=4,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; valid profiles: {sorted(PROFILES)}") from None


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is passed to torch.device."""
    import torch  # here: the grid (`python -m attrlib.study grid`) reads profiles without it

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def _fill_from(cfg: object, defaults: dict) -> None:
    """Replace None fields of a frozen dataclass by the profile's value."""
    for name, value in defaults.items():
        if getattr(cfg, name) is None:
            object.__setattr__(cfg, name, value)


def recipe_overrides(cfg: object, base: Recipe) -> Recipe:
    """The stage's recipe: the profile's, with the stage config's non-None recipe fields."""
    names = {f.name for f in dataclasses.fields(Recipe)}
    changes = {n: getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None}
    return dataclasses.replace(base, **changes)


DATA_ROOT = "data/synthvoc-default/VOCdevkit/VOC2012"  # the default profile's generated set
TEACHER = "runs/default/teacher/best.pt"
# Fields added after runs were made: left out of `to_dict` while they hold their default,
# so a finished run of before still matches its config and is reloaded, not refused.
ADDED = {"omit_if_default": True}


@dataclass(frozen=True)
class StageConfig:
    """What every stage config has: a profile, the data, an output folder, seed and device.

    `__post_init__` fills the None fields the profile decides (`_profile_defaults`), derives
    what follows from them (`_resolve`) and validates (`_check`); a subclass extends each.
    """

    stage: ClassVar[str] = ""
    profile: str = "default"
    data_root: str = DATA_ROOT  # a VOC2012-layout folder
    out_dir: str = ""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        prof = get_profile(self.profile)
        _fill_from(self, self._profile_defaults(prof))
        self._resolve(prof)
        self._check(prof)

    def _profile_defaults(self, prof: Profile) -> dict:
        return {}

    def _resolve(self, prof: Profile) -> None:
        pass

    def _check(self, prof: Profile) -> None:
        pass

    def to_dict(self) -> dict:
        """The config as stored in `config.json` and checkpoints."""
        values = asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("omit_if_default") and values[f.name] == f.default:
                del values[f.name]
        return values


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """A stage that trains: the profile's recipe for it, with these fields overriding."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    recipe: Recipe = field(init=False)

    def _base_recipe(self, prof: Profile) -> Recipe:
        raise NotImplementedError

    def _resolve(self, prof: Profile) -> None:
        super()._resolve(prof)
        object.__setattr__(self, "recipe", recipe_overrides(self, self._base_recipe(prof)))


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    """Train the teacher (SPEC: Training recipes, Teacher)."""

    stage: ClassVar[str] = "teacher"  # its folder under runs/<profile>/, in config.json

    out_dir: str = "runs/default/teacher"
    width_div: int | None = None  # None: the profile's teacher width
    weights: str = ""  # optional local torchvision vgg16_bn weights file (width_div=1 only)

    def _profile_defaults(self, prof: Profile) -> dict:
        return {**super()._profile_defaults(prof), "width_div": prof.teacher_width_div}

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.teacher

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        if self.weights and self.width_div != 1:
            raise ValueError(f"weights={self.weights!r} needs width_div=1, got {self.width_div}")


STUDENT_WIDTH_DIVS = (2, 4, 8)


@dataclass(frozen=True)
class CompressionConfig(TrainConfig):
    """A network trained against a reference: its loss + lambda x matching(maps, reference's)."""

    teacher: str = TEACHER  # the reference checkpoint
    matching: str = "none"  # none | a name in attrlib.distill.MATCHINGS (ewa, swa, plugins')
    drop_fraction: float = 0.0  # stochastic SWA: fraction of teacher channel weights zeroed
    matching_lambda: float | None = None  # None: the profile's lambda for this stage
    matching_layer: str | None = None  # None: the profile's (attrlib.models.MATCHING_LAYERS)
    teacher_targets: str = ""  # cached teacher outputs (attrlib.targets); "" = run the teacher

    def _profile_defaults(self, prof: Profile) -> dict:
        return {**super()._profile_defaults(prof), "matching_layer": prof.matching_layer}

    def _check(self, prof: Profile) -> None:
        from attrlib.distill import check_matching
        from attrlib.models import MATCHING_LAYERS

        super()._check(prof)
        if self.matching_layer not in MATCHING_LAYERS:
            raise ValueError(
                f"matching_layer must be one of {MATCHING_LAYERS}, got {self.matching_layer!r}"
            )
        check_matching(self.matching, self.matching_lambda, self.drop_fraction)


@dataclass(frozen=True)
class DistillConfig(CompressionConfig):
    """Distil a student from a teacher checkpoint (SPEC: Distillation, matching regularisers)."""

    stage: ClassVar[str] = "distill"  # its folder under runs/<profile>/, in config.json

    out_dir: str = "runs/default/distill/x2-kd"
    width_div: int = 2  # the student's widths = the teacher's // width_div (x2, x4, x8)
    matching_warmup: int | None = None  # epochs of KD alone first; None: the profile's
    temperature: float = 4.0
    alpha: float = 0.9

    def _profile_defaults(self, prof: Profile) -> dict:
        return {
            **super()._profile_defaults(prof),
            "matching_lambda": prof.matching_lambda,
            "matching_warmup": prof.matching_warmup,
        }

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.distill

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        if self.width_div not in STUDENT_WIDTH_DIVS:
            raise ValueError(f"width_div must be one of {STUDENT_WIDTH_DIVS}, got {self.width_div}")
        if not 0 <= self.matching_warmup < self.recipe.epochs:
            raise ValueError(
                f"matching_warmup must be in [0, epochs={self.recipe.epochs}), "
                f"got {self.matching_warmup}"
            )
        if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"need temperature > 0 and alpha in [0, 1], got {self.temperature}, {self.alpha}"
            )


@dataclass(frozen=True)
class EvalConfig(StageConfig):
    """Evaluate one checkpoint (SPEC: Evaluation); results go beside it unless out_dir is set."""

    stage: ClassVar[str] = "evaluate"  # its folder under runs/<profile>/, in config.json

    out_dir: str = ""  # "" = the checkpoint's folder
    checkpoint: str = TEACHER
    teacher: str = ""  # reference checkpoint for the agreement columns ("" = none)
    methods: tuple[str, ...] = ()  # names in attrlib.attribution.METHODS; () = every one
    batch_size: int = 32
    overwrite: bool = False  # replace an existing eval.json made with another config

    def _resolve(self, prof: Profile) -> None:
        from attrlib.attribution import METHODS

        super()._resolve(prof)
        object.__setattr__(self, "methods", tuple(self.methods) or tuple(METHODS.names()))
        if not self.out_dir:
            object.__setattr__(self, "out_dir", str(Path(self.checkpoint).parent))

    def _check(self, prof: Profile) -> None:
        from attrlib.attribution import METHODS

        super()._check(prof)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"methods must be names in {METHODS.names()}, got {list(self.methods)}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class _PruneConfig(CompressionConfig):
    """What the two pruning stages share: the network to prune, its reference, a criterion."""

    teacher: str = ""  # reference for matching; "" = the unpruned `model`
    model: str = TEACHER  # checkpoint to prune

    def _profile_defaults(self, prof: Profile) -> dict:
        lam = prof.prune_matching_lambda
        return {
            **super()._profile_defaults(prof),
            "matching_lambda": prof.matching_lambda if lam is None else lam,
        }

    def _resolve(self, prof: Profile) -> None:
        super()._resolve(prof)
        if not self.teacher:
            object.__setattr__(self, "teacher", self.model)

    def _criteria(self):
        """The registry `criterion` (how weights are scored, a field of each stage) names."""
        raise NotImplementedError

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        criteria = self._criteria()
        if self.criterion not in criteria:
            raise ValueError(f"criterion must be one of {criteria.names()}, got {self.criterion!r}")


@dataclass(frozen=True)
class PruneOneShotConfig(_PruneConfig):
    """One-shot structured filter pruning + fine-tuning (SPEC: One-shot structured)."""

    stage: ClassVar[str] = "prune_oneshot"  # its folder under runs/<profile>/, in config.json

    out_dir: str = "runs/default/prune_oneshot/p0.3-naive"
    criterion: str = field(default="l1", metadata=ADDED)  # attrlib.prune.STRUCTURED_CRITERIA
    rate: float = 0.3  # fraction of filters removed in the first conv and the last six

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.prune_oneshot

    def _criteria(self):
        from attrlib.prune import STRUCTURED_CRITERIA

        return STRUCTURED_CRITERIA

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {self.rate}")


@dataclass(frozen=True)
class PruneIterativeConfig(_PruneConfig):
    """Iterative global pruning, fine-tuning after each step (SPEC: Iterative)."""

    stage: ClassVar[str] = "prune_iterative"  # its folder under runs/<profile>/, in config.json

    out_dir: str = "runs/default/prune_iterative/naive"
    criterion: str = field(default="magnitude", metadata=ADDED)  # ...UNSTRUCTURED_CRITERIA
    fraction: float | None = None  # of the remaining conv weights pruned per iteration
    iterations: int | None = None

    def _profile_defaults(self, prof: Profile) -> dict:
        return {
            **super()._profile_defaults(prof),
            "fraction": prof.iterative_fraction,
            "iterations": prof.iterative_steps,
        }

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.prune_iterative

    def _criteria(self):
        from attrlib.prune import UNSTRUCTURED_CRITERIA

        return UNSTRUCTURED_CRITERIA

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
