"""Profiles: everything that differs between a one-minute smoke run, the default study and VOC.

A profile is a YAML file validated into the `Profile` dataclass: the built-in ones are the
files beside this module (`smoke`, `default`, `voc`), a user's is any path to a `.yaml` file
(its name is the file's name), and overrides change single fields on top of either
(`distill.epochs=10`, `seeds=[0]`: a dotted field path, `=`, a YAML value). Errors name the
file, the field and what was expected. A profile may list `plugins`, modules imported
whenever the profile is loaded, so their decorators register methods in every stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import shlex
import types
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from attrlib.registry import load_plugins
from attrlib.widths import check_width_div

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "onecycle", "constant")
BUILTIN_DIR = Path(__file__).parent


class ProfileError(ValueError):
    """A profile file or override that does not validate; the message names the field."""


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
    """One profile; default.yaml describes every field."""

    name: str  # the file's name: runs go to runs/<name>/, data to data/synthvoc-<name>/
    input_size: int  # pixels fed to the network
    scale_min: float  # lower area bound of RandomResizedCrop
    teacher_width_div: int  # 1 = the family's full widths (VGG16-BN: the paper's network)
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
    seeds: tuple[int, ...] = (0,)  # of every compressed run, under each teacher
    teacher_seeds: tuple[int, ...] = (0,)  # one teacher per seed; runs/<p>/teacher-s<seed>/
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
    plugins: tuple[str, ...] = ()  # modules imported with the profile (they register methods)
    # the teachers' family (attrlib.architectures); left out of the resolved profile while
    # it is the default, so runs made before the field do not count as made with another
    architecture: str = field(default="vgg16_bn", metadata={"omit_if_default": True})
    # quantization-aware fine-tuning (attrlib.quantize): the weight widths of the grid and its
    # method words; its recipe (None: prune_oneshot's). Left out of the resolved profile while
    # empty, like `architecture`.
    quantize_bits: tuple[int, ...] = field(default=(), metadata={"omit_if_default": True})
    quantize_methods: tuple[str, ...] = field(default=(), metadata={"omit_if_default": True})
    quantize: Recipe | None = field(default=None, metadata={"omit_if_default": True})
    # distillation epochs of the students of some widths (width_div: epochs), where they
    # differ from distill.epochs (the narrowest students learn slowest). Left out of the
    # resolved profile while empty, like `architecture`; out of the hash (a dict has none),
    # so a profile stays hashable.
    distill_width_epochs: dict[int, int] = field(
        default_factory=dict, hash=False, metadata={"omit_if_default": True}
    )

    def __post_init__(self) -> None:
        for width_div, epochs in self.distill_width_epochs.items():
            check_width_div(width_div, "distill_width_epochs: a width_div")
            if epochs < 1:
                raise ValueError(
                    f"distill_width_epochs[{width_div}] must be >= 1 epochs, got {epochs}"
                )

    def distill_recipe(self, width_div: int) -> Recipe:
        """The distillation recipe of a student `width_div` times narrower than its teacher."""
        epochs = self.distill_width_epochs.get(width_div, self.distill.epochs)
        return dataclasses.replace(self.distill, epochs=epochs)

    @property
    def quantize_recipe(self) -> Recipe:
        """Quantization's recipe: `quantize`, or the one-shot fine-tune's when that is null."""
        return self.quantize or self.prune_oneshot


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every settable dotted path of a dataclass (nested dataclasses expanded)."""
    paths = []
    for name, hint in get_type_hints(cls).items():
        if name == "name" and cls is Profile:
            continue
        inner = [a for a in get_args(hint) if a is not type(None)] or [hint]
        paths.append(prefix + name)
        if dataclasses.is_dataclass(inner[0]):
            paths += _field_paths(inner[0], f"{prefix}{name}.")
    return paths


def _unknown(key: str, valid: Iterable[str], where: str) -> ProfileError:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "fields: " + ", ".join(valid)
    return ProfileError(f"{where}: unknown field {key!r}; {hint}")


def _coerce(value: Any, hint: Any, where: str, path: str) -> Any:
    """`value` as the type `hint` names, or a ProfileError naming the file and field."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ProfileError(
                f"{where}: {path}: expected a mapping of {hint.__name__} fields, got {value!r}"
            )
        return _build(hint, value, where, f"{path}.")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ProfileError(f"{where}: {path}: expected a mapping, got {value!r}")
        key_hint, value_hint = args
        return {
            _coerce(k, key_hint, where, f"{path} key {k!r}"): _coerce(
                v, value_hint, where, f"{path}[{k!r}]"
            )
            for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ProfileError(f"{where}: {path}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = (
        isinstance(value, hint)
        if hint in (str, bool)
        else isinstance(value, int | float if hint is float else int)
        and not isinstance(value, bool)
    )
    if not ok:
        raise ProfileError(f"{where}: {path}: expected {_TYPE_WORDS[hint]}, got {value!r}")
    return float(value) if hint is float else value


def _build(cls: type, mapping: Mapping, where: str, prefix: str = "", **fixed: Any) -> Any:
    """A `cls` from `mapping`: unknown, missing and ill-typed fields are errors naming them."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    settable = [n for n in fields if n not in fixed]
    for key in mapping:
        if key not in settable:
            raise _unknown(f"{prefix}{key}", [prefix + n for n in settable], where)
    values = dict(fixed)
    for name in settable:
        f = fields[name]
        if name in mapping:
            values[name] = _coerce(mapping[name], hints[name], where, prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProfileError(f"{where}: missing field {prefix + name!r}")
    try:
        return cls(**values)
    except ValueError as e:  # a value the class itself refuses (Recipe: epochs < 1, ...)
        raise ProfileError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def split_overrides(overrides: str | Iterable[str] | None) -> tuple[str, ...]:
    """Overrides as a tuple of `path=value` words: a string is split as a shell would."""
    if overrides is None:
        return ()
    if isinstance(overrides, str):
        return tuple(shlex.split(overrides))
    return tuple(str(o) for o in overrides)


def apply_overrides(mapping: dict, overrides: Iterable[str], where: str) -> dict:
    """A copy of the profile `mapping` with each `path=value` override set (value: YAML)."""
    result = yaml.safe_load(yaml.safe_dump(mapping))  # a deep copy of plain data
    valid = _field_paths(Profile)
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ProfileError(f"override {item!r}: expected field=value, e.g. distill.epochs=10")
        if path not in valid:
            close = difflib.get_close_matches(path, valid, n=1, cutoff=0.5)
            top = [p for p in valid if "." not in p]
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else (f"fields: {', '.join(top)}; a recipe's as teacher.epochs, distill.lr, ...")
            )
            raise ProfileError(f"{where}, override {item!r}: unknown field {path!r}; {hint}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        *parents, leaf = path.split(".")
        node = result
        for i, key in enumerate(parents):
            if node.get(key) is None:
                name = ".".join(parents[: i + 1])
                raise ProfileError(
                    f"override {item!r}: {name} is null in {where}; set it whole, "
                    f"e.g. {name}={{...}}"
                )
            node = node[key]
        node[leaf] = value
    return result


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile fields, got {data!r}")
    return data


def from_mapping(mapping: Mapping, name: str, where: str, overrides: Iterable[str] = ()) -> Profile:
    """Validate a profile's fields (plus `overrides`) into a Profile called `name`."""
    overrides = tuple(overrides)
    data = apply_overrides(dict(mapping), overrides, where) if overrides else mapping
    return _build(Profile, data, where, name=name)


def load_file(path: str | Path, overrides: Iterable[str] = ()) -> Profile:
    """The profile in a YAML file; its name is the file's name without `.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile file {path} not found")
    return from_mapping(_read_yaml(path), path.stem, str(path), overrides)


def _builtins() -> dict[str, Profile]:
    return {p.stem: load_file(p) for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


# The built-in profiles by name; tests may replace an entry (tests/ddp_run.py).
PROFILES: dict[str, Profile] = _builtins()


def is_profile_file(source: str) -> bool:
    return source.endswith((".yaml", ".yml"))


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int, overrides: tuple[str, ...]) -> Profile:
    return load_file(path, overrides)


def get_profile(source: str | Profile, overrides: str | Iterable[str] | None = ()) -> Profile:
    """The profile a name (smoke, default, replicated, voc) or a YAML file's path names, with overrides.

    Imports the profile's plugins, so whatever loads a profile sees their methods.
    """
    overrides = split_overrides(overrides)
    if isinstance(source, Profile):
        prof = (
            source
            if not overrides
            else from_mapping(
                {k: v for k, v in asdict(source).items() if k != "name"},
                source.name,
                f"profile {source.name!r}",
                overrides,
            )
        )
    elif source in PROFILES:
        prof = get_profile(PROFILES[source], overrides)
    elif is_profile_file(str(source)):
        path = Path(source)
        if not path.is_file():
            raise ProfileError(f"profile file {source} not found")
        prof = _load_cached(str(path.resolve()), path.stat().st_mtime_ns, overrides)
    else:
        raise KeyError(
            f"unknown profile {source!r}; valid profiles: {sorted(PROFILES)}, "
            "or the path of a .yaml file (attrlib/profiles/default.yaml describes every field)"
        )
    load_plugins(prof.plugins)
    return prof


# The fields that say which runs a study has, not how any run is made: a profile edit that
# only changes these adds or drops runs and leaves every finished one as it is.
GRID_FIELDS = (
    "seeds",
    "teacher_seeds",
    "student_width_divs",
    "prune_rates",
    "distill_methods",
    "oneshot_methods",
    "iterative_methods",
    "quantize_bits",
    "quantize_methods",
)


def to_yaml(prof: Profile, recipes_only: bool = False) -> str:
    """The profile as YAML, every field (its name omitted: a file's name is its name); with
    `recipes_only`, every field but the grid's (`GRID_FIELDS`)."""
    data = {k: v for k, v in asdict(prof).items() if k != "name"}
    if recipes_only:
        data = {k: v for k, v in data.items() if k not in GRID_FIELDS}
    for f in dataclasses.fields(prof):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.metadata.get("omit_if_default") and data.get(f.name, default) == default:
            data.pop(f.name, None)
    return yaml.safe_dump(_lists(data), sort_keys=False)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def data_problem(prof: Profile, data: str, source: str) -> str | None:
    """Why `make` must not run profile `prof` on `data` (real: VOC_ROOT given), with the fix."""
    if data == "real" and prof.synth is not None:
        return (
            f"VOC_ROOT is real data, but profile {source} trains on its own synthetic set "
            f"({prof.input_size} px, widths / {prof.teacher_width_div}); use the paper's recipe "
            "with `make all PROFILE=voc VOC_ROOT=...`, or a profile file with `synth: null`"
        )
    if data == "synthetic" and prof.synth is None:
        return (
            f"profile {source} reads real PASCAL VOC 2012 and VOC_ROOT is not set: "
            f"`make all PROFILE={source} VOC_ROOT=/path/to/VOCdevkit/VOC2012` (README, Real "
            "PASCAL VOC, says where to get it)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from attrlib.io import locked, write_text_atomic

    parser = argparse.ArgumentParser(
        prog="python -m attrlib.profiles",
        description="Show a profile with every field resolved (a built-in name or a .yaml "
        "file, plus overrides), or list the built-in profiles.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the built-in profiles, one per line")
    show = sub.add_parser("show", help="the resolved profile as YAML")
    show.add_argument("profile", help="smoke, default, replicated, voc or a .yaml file")
    show.add_argument("--set", default="", help="overrides: 'distill.epochs=10 seeds=[0]'")
    show.add_argument("--into", help="write to this file, only when its content changes")
    show.add_argument(
        "--data",
        choices=["real", "synthetic"],
        help="the data make will use (VOC_ROOT set or not): refuse a profile made for the other",
    )
    show.add_argument("--weights", action="store_true", help="make has TEACHER_WEIGHTS")
    show.add_argument(
        "--recipes",
        action="store_true",
        help="every field but the grid's lists (which runs exist): what finished runs depend on",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(f"{name}\t{BUILTIN_DIR / name}.yaml" for name in PROFILES))
        return 0
    try:
        prof = get_profile(args.profile, args.set)
    except (KeyError, ProfileError, ModuleNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    problem = data_problem(prof, args.data, args.profile) if args.data else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    changed = args.into is None or not Path(args.into).is_file()
    changed = changed or Path(args.into).read_text() != _show_text(prof, args)
    # once per study (when its resolved profile is first written), not at every make
    if changed and args.data and prof.teacher_width_div == 1 and not args.weights:
        print(weights_warning(prof.architecture), file=sys.stderr)
    text = _show_text(prof, args)
    if args.into is None:
        sys.stdout.write(text)
    elif changed:
        with locked(args.into):  # two makes on one runs folder: one writer, one write
            if not Path(args.into).is_file() or Path(args.into).read_text() != text:
                write_text_atomic(args.into, text)  # only on change: make reads its time
    return 0


def weights_warning(architecture: str) -> str:
    """The warning for a full-width teacher without TEACHER_WEIGHTS, naming its family's file."""
    text = "warning: the teacher trains from scratch: TEACHER_WEIGHTS is not set. "
    if architecture == "vgg16_bn":
        return text + (
            "The paper fine-tunes torchvision's ImageNet vgg16_bn; to do the same, add "
            "TEACHER_WEIGHTS=/path/to/vgg16_bn-6c64b313.pth (README, Real PASCAL VOC)"
        )
    return text + (
        f"To start the {architecture} teacher from ImageNet, set TEACHER_WEIGHTS to a local "
        "torchvision state-dict file of that family (for resnet: resnet18-f37072fd.pth)"
    )


def _show_text(prof: Profile, args) -> str:
    text = f"# profile {args.profile}" + (f", overrides: {args.set}" if args.set else "")
    if args.recipes:
        text += ", without the grid's fields"
    return text + f"\nname: {prof.name}\n" + to_yaml(prof, recipes_only=args.recipes)
