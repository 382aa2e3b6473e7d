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

from attrlib.profiles import (  # noqa: F401  (re-exported: the configs' callers use them)
    OPTIMIZERS,
    PROFILES,
    SCHEDULES,
    Profile,
    ProfileError,
    Recipe,
    SynthSpec,
    get_profile,
    split_overrides,
)
from attrlib.widths import check_width_div

if TYPE_CHECKING:
    import torch


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


# Where a config's empty paths point: the profile's generated data set, and a workspace of
# its own for runs started outside `make all` (notebooks opened in JupyterLab, scripts), so
# they never land among the grid's runs in runs/<profile>/.
LAB_RUNS = "runs/lab"


def synthetic_root(prof: Profile) -> str:
    """The VOC2012 folder of the profile's generated data set (`make data` writes it)."""
    return f"data/synthvoc-{prof.name}/VOCdevkit/VOC2012"


def lab_dir(prof: Profile) -> str:
    """The folder of the profile's runs made outside `make all`."""
    return f"{LAB_RUNS}/{prof.name}"


def lab_teacher(prof: Profile) -> str:
    """The teacher checkpoint notebook 01 writes with its defaults, the others' reference."""
    return f"{lab_dir(prof)}/teacher/best.pt"


def default_data_root(prof: Profile) -> str:
    if prof.synth is None:
        raise ValueError(
            f"profile {prof.name!r} reads real data: set data_root to your VOCdevkit/VOC2012 "
            f"folder (make: VOC_ROOT=/path/to/VOCdevkit/VOC2012)"
        )
    return synthetic_root(prof)


# Fields added after runs were made: left out of `to_dict` while they hold their default,
# so a finished run of before still matches its config and is reloaded, not refused.
ADDED = {"omit_if_default": True}


def added_as(value: object) -> dict:
    """A field added after runs were made, whose value is `value` in every run made before:
    left out of `config.json` while it holds that value, so those runs' configs still match."""
    return {"omit_if_default": True, "omitted_value": value}


@dataclass(frozen=True)
class StageConfig:
    """What every stage config has: a profile, the data, an output folder, seed and device.

    `__post_init__` fills the None fields the profile decides (`_profile_defaults`), derives
    what follows from them (`_resolve`) and validates (`_check`); a subclass extends each.
    """

    stage: ClassVar[str] = ""
    profile: str = "default"
    data_root: str = ""  # a VOC2012-layout folder; "": the profile's synthetic data set
    out_dir: str = ""  # "": runs/lab/<profile>/<stage>/<run name>
    seed: int = 0
    device: str = "auto"
    # changes to the profile's fields, `distill.epochs=10` (attrlib.profiles); a string is
    # split into words as a shell splits them
    overrides: tuple[str, ...] = field(default=(), metadata=ADDED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", split_overrides(self.overrides))
        prof = self.profile_spec
        _fill_from(self, self._profile_defaults(prof))
        self._resolve(prof)
        self._check(prof)

    @property
    def profile_spec(self) -> Profile:
        """The profile, with this config's overrides applied."""
        return get_profile(self.profile, self.overrides)

    def run_name(self) -> str:
        """The run's folder name in `make all`'s grid (x2-swa-s0, ...); "" for the teacher."""
        return ""

    def _profile_defaults(self, prof: Profile) -> dict:
        return {}

    def _resolve(self, prof: Profile) -> None:
        if not self.data_root:
            object.__setattr__(self, "data_root", default_data_root(prof))
        if not self.out_dir:
            out_dir = f"{lab_dir(prof)}/{self.stage}/{self.run_name()}".rstrip("/")
            object.__setattr__(self, "out_dir", out_dir)

    def _check(self, prof: Profile) -> None:
        pass

    def to_dict(self) -> dict:
        """The config as stored in `config.json` and checkpoints."""
        values = asdict(self)
        for f in dataclasses.fields(self):
            omitted = f.metadata.get("omitted_value", f.default)
            if f.metadata.get("omit_if_default") and values[f.name] == omitted:
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

    width_div: int | None = None  # widths = the family's full // this; None: the profile's
    weights: str = ""  # optional local torchvision weights file of the family (width_div=1)
    # a name in attrlib.architectures.ARCHITECTURES; None: the profile's
    architecture: str | None = field(default=None, metadata=added_as("vgg16_bn"))

    def _profile_defaults(self, prof: Profile) -> dict:
        return {
            **super()._profile_defaults(prof),
            "width_div": prof.teacher_width_div,
            "architecture": prof.architecture,
        }

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.teacher

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        from attrlib.architectures import ARCHITECTURES  # torch: only where a teacher is made

        ARCHITECTURES.get(self.architecture)  # an unknown name: a KeyError listing the valid ones
        check_width_div(self.width_div)
        if self.weights and self.width_div != 1:
            raise ValueError(f"weights={self.weights!r} needs width_div=1, got {self.width_div}")


STOCHASTIC_SWA = "sswa"


@dataclass(frozen=True)
class CompressionConfig(TrainConfig):
    """A network trained against a reference: its loss + lambda x matching(maps, reference's)."""

    teacher: str = ""  # the reference checkpoint; "": the lab's teacher (runs/lab/<profile>)
    # none | a name in attrlib.distill.MATCHINGS (ewa, swa, plugins'); "sswa" is read as
    # stochastic SWA: swa with the profile's drop_fraction
    matching: str = "none"
    drop_fraction: float = 0.0  # stochastic SWA: fraction of teacher channel weights zeroed
    matching_lambda: float | None = None  # None: the profile's lambda for this stage
    matching_layer: str | None = None  # None: the profile's (attrlib.models.MATCHING_LAYERS)
    teacher_targets: str = ""  # cached teacher outputs (attrlib.targets); "" = run the teacher

    def _profile_defaults(self, prof: Profile) -> dict:
        return {**super()._profile_defaults(prof), "matching_layer": prof.matching_layer}

    def _resolve(self, prof: Profile) -> None:
        if self.matching == STOCHASTIC_SWA:  # the word of the grid's run names
            object.__setattr__(self, "matching", "swa")
            object.__setattr__(self, "drop_fraction", self.drop_fraction or prof.drop_fraction)
        super()._resolve(prof)
        if not self.teacher:
            object.__setattr__(self, "teacher", self._default_teacher(prof))

    def _default_teacher(self, prof: Profile) -> str:
        return lab_teacher(prof)

    def method_word(self, baseline: str) -> str:
        """The method's word in run names: `baseline` without matching, sswa, ewa, ..."""
        if self.matching == "none":
            return baseline
        return ("s" if self.drop_fraction > 0 else "") + self.matching

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

    width_div: int = 2  # the student's widths = the teacher's // width_div (attrlib.widths)
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
        return prof.distill_recipe(self.width_div)

    # the run's folder name; make's grid renders the same template (attrlib.study)
    RUN_NAME: ClassVar[str] = "x{width_div}-{method}-s{seed}"

    def run_name(self) -> str:
        return self.RUN_NAME.format(
            width_div=self.width_div, method=self.method_word("kd"), seed=self.seed
        )

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        check_width_div(self.width_div)
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
    checkpoint: str = ""  # "": the lab's teacher (runs/lab/<profile>/teacher/best.pt)
    teacher: str = ""  # reference checkpoint for the agreement columns ("" = none)
    methods: tuple[str, ...] = ()  # names in attrlib.attribution.METHODS; () = every one
    batch_size: int = 32
    overwrite: bool = False  # replace an existing eval.json made with another config
    # faithfulness (attrlib.faithfulness.Faithfulness): a fixed subset of pairs, the same for
    # every model; faith_pairs 0 scores none
    faith_pairs: int = 16
    faith_steps: int = 8
    faith_baseline: str = "blur"  # blur | mean | zero
    faith_metrics: tuple[str, ...] = ()  # in attrlib.faithfulness.FAITHFULNESS; (): not opt-in

    def faithfulness(self):
        """The faithfulness settings of this evaluation (attrlib.faithfulness.Faithfulness)."""
        from attrlib.faithfulness import Faithfulness

        return Faithfulness(
            self.faith_pairs,
            self.faith_steps,
            self.faith_baseline,
            tuple(self.faith_metrics),
            self.seed,
        )

    def _resolve(self, prof: Profile) -> None:
        from attrlib.attribution import METHODS

        if not self.checkpoint:
            object.__setattr__(self, "checkpoint", lab_teacher(prof))
        if not self.out_dir:
            object.__setattr__(self, "out_dir", str(Path(self.checkpoint).parent))
        super()._resolve(prof)
        object.__setattr__(self, "methods", tuple(self.methods) or tuple(METHODS.names()))

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
        self.faithfulness()  # its own checks name the faith_ field at fault


@dataclass(frozen=True)
class _FineTuneConfig(CompressionConfig):
    """A trained network compressed and fine-tuned against its uncompressed self (pruning,
    quantization): the network, its reference, the fine-tunes' matching lambda."""

    teacher: str = ""  # reference for matching; "" = the uncompressed `model`
    model: str = ""  # checkpoint to compress; "": the lab's teacher

    def _profile_defaults(self, prof: Profile) -> dict:
        lam = prof.prune_matching_lambda
        return {
            **super()._profile_defaults(prof),
            "matching_lambda": prof.matching_lambda if lam is None else lam,
        }

    def _resolve(self, prof: Profile) -> None:
        if not self.model:
            object.__setattr__(self, "model", lab_teacher(prof))
        super()._resolve(prof)

    def _default_teacher(self, prof: Profile) -> str:
        return self.model


@dataclass(frozen=True)
class _PruneConfig(_FineTuneConfig):
    """What the two pruning stages share: a criterion scoring the weights."""

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

    criterion: str = field(default="l1", metadata=ADDED)  # attrlib.prune.STRUCTURED_CRITERIA
    rate: float = 0.3  # fraction of filters removed in the first conv and the last six

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.prune_oneshot

    RUN_NAME: ClassVar[str] = "p{rate:g}-{method}-s{seed}"

    def run_name(self) -> str:
        return self.RUN_NAME.format(
            rate=self.rate, method=self.method_word("naive"), seed=self.seed
        )

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

    RUN_NAME: ClassVar[str] = "{method}-s{seed}"

    def run_name(self) -> str:
        return self.RUN_NAME.format(method=self.method_word("naive"), seed=self.seed)

    def _criteria(self):
        from attrlib.prune import UNSTRUCTURED_CRITERIA

        return UNSTRUCTURED_CRITERIA

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


@dataclass(frozen=True)
class QuantizeConfig(_FineTuneConfig):
    """Quantization-aware fine-tuning at `bits`-bit weights and `act_bits`-bit activations
    (attrlib.quantize), with CE (+ matching the float teacher's maps)."""

    stage: ClassVar[str] = "quantize"  # its folder under runs/<profile>/, in config.json

    bits: int = 8  # conv and linear weights, per output channel (2..8)
    act_bits: int = 8  # activations, per tensor (2..8)
    # the first conv and the last linear layer (2..8; None: `bits` like every layer)
    edge_bits: int | None = 8
    calibration_batches: int = 8  # training batches that set the activation ranges

    def _base_recipe(self, prof: Profile) -> Recipe:
        return prof.quantize_recipe

    RUN_NAME: ClassVar[str] = "w{bits}-{method}-s{seed}"

    def run_name(self) -> str:
        return self.RUN_NAME.format(
            bits=self.bits, method=self.method_word("naive"), seed=self.seed
        )

    def spec(self):
        """The quantization (attrlib.quantize.QuantSpec) this run trains under."""
        from attrlib.quantize import QuantSpec

        return QuantSpec(self.bits, self.act_bits, self.edge_bits)

    def _check(self, prof: Profile) -> None:
        super()._check(prof)
        try:
            self.spec()
        except ValueError as e:  # name the config's own fields
            raise ValueError(str(e).replace("weight_bits", "bits")) from None
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
