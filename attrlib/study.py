"""The study as data: its stages, the words of its compression methods, each profile's grid.

A stage is one registry entry (folder, notebook, config class, run function, the config key
its runs differ by); a compression method is another (the word in run names, its notebook
parameters, its label and colour). The paper iterates these registries and the Makefile
reads the grid from `python -m attrlib.study grid PROFILE`, so each is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attrlib.config import (
    DistillConfig,
    Profile,
    PruneIterativeConfig,
    PruneOneShotConfig,
    QuantizeConfig,
    TeacherConfig,
    get_profile,
    lab_dir,
)
from attrlib.profiles import GRID_FIELDS
from attrlib.registry import Registry

# attrlib.distill.NO_MATCHING (tests hold them equal): this module imports no torch, so that
# make reads the grid in a fraction of a second
NO_MATCHING = "none"


@dataclass(frozen=True)
class Stage:
    """One stage of the study; its runs live in `runs/<profile>/<name>/`."""

    name: str
    notebook: str  # notebooks/<notebook>.ipynb
    config: type
    function: str  # its run function in attrlib.stages: config -> (model, results)
    setting: str | None = None  # config key its runs differ by (width_div, rate, iteration)
    label: Callable[[float], str] = str  # a setting's value as figures and tables print it
    # +1: a larger setting compresses more (x4 over x2, rate 0.7 over 0.3); -1: a smaller one
    # does (2 bits over 8), which the figures need to show the strongest compression
    stronger: int = 1
    baseline: str = ""  # the word of its method without matching ("" = nothing compared)
    pooled: bool = False  # the summary pools its settings (the iterations of one schedule)

    def run(self, cfg):
        return getattr(importlib.import_module("attrlib.stages"), self.function)(cfg)


STAGES: Registry[Stage] = Registry("stage")
for _stage in (
    Stage(TeacherConfig.stage, "01_teacher", TeacherConfig, "train_teacher"),
    Stage(
        DistillConfig.stage,
        "02_distill",
        DistillConfig,
        "train_student",
        setting="width_div",
        label=lambda v: f"x{int(v)}",
        baseline="kd",
    ),
    Stage(
        PruneOneShotConfig.stage,
        "03_prune_oneshot",
        PruneOneShotConfig,
        "prune_oneshot",
        setting="rate",
        label=lambda v: f"rate {float(v):g}",
        baseline="naive",
    ),
    Stage(
        PruneIterativeConfig.stage,
        "04_prune_iterative",
        PruneIterativeConfig,
        "prune_iterative",
        setting="iteration",
        label=lambda v: f"iteration {int(v)}",
        baseline="naive",
        pooled=True,
    ),
    Stage(
        QuantizeConfig.stage,
        "04b_quantize",
        QuantizeConfig,
        "quantize",
        setting="bits",
        label=lambda v: f"{int(v)}-bit",
        stronger=-1,
        baseline="naive",
    ),
):
    STAGES.register(_stage.name)(_stage)


@dataclass(frozen=True)
class Method:
    """A compression method: the word of its runs' names and what it sets."""

    word: str  # x2-<word>-s0, p0.3-<word>-s0, <word>-s0
    label: str  # tables and figures; distillation prefixes "KD+" ("" = no matching)
    colour: str
    matching: str = NO_MATCHING
    stochastic: bool = False  # drops the profile's `drop_fraction` of teacher channels

    def parameters(self, prof: Profile) -> dict:
        """The notebook parameters of a run of this method."""
        params = {"matching": self.matching}
        if self.stochastic:
            params["drop_fraction"] = prof.drop_fraction
        return params


COMPRESSION: Registry[Method] = Registry("compression method")
for _method in (
    Method("kd", "", "#1f77b4"),
    Method("naive", "", "#1f77b4"),
    Method("ewa", "EWA", "#9467bd", matching="ewa"),
    Method("swa", "SWA", "#d62728", matching="swa"),
    Method("sswa", "stochastic SWA", "#ff7f0e", matching="swa", stochastic=True),
):
    COMPRESSION.register(_method.word)(_method)
TEACHER_COLOUR = "#4d4d4d"


def _method_of(matching: str, stochastic: bool) -> Method | None:
    for word in COMPRESSION:
        method = COMPRESSION.get(word)
        if method.matching == matching and method.stochastic == stochastic:
            return method
    return None


def method_label(stage: str, config: dict) -> str:
    """A run's method as tables and figures name it: KD+SWA, naive, stochastic SWA, ..."""
    if stage == "teacher":
        return "teacher"
    matching = config.get("matching", NO_MATCHING)
    stochastic = (config.get("drop_fraction") or 0.0) > 0
    method = _method_of(matching, stochastic)
    # a plugin's matching without a table entry is named by its own word
    name = method.label if method else ("stochastic " if stochastic else "") + matching
    if stage == "distill":
        return "KD" + (f"+{name}" if name else "")
    name = name or "naive"
    # stored only when not the stage's default (attrlib.config.ADDED): l1 / magnitude unnamed
    return f"{name} ({config['criterion']})" if config.get("criterion") else name


def _labelled(stage: str) -> list[tuple[str, Method]]:
    """(label in `stage`, method) of every registered method, in the registry's order."""
    methods = [COMPRESSION.get(word) for word in COMPRESSION]
    return [
        (method_label(stage, {"matching": m.matching, "drop_fraction": float(m.stochastic)}), m)
        for m in methods
    ]


def method_labels(stage: str) -> list[str]:
    """Every method's label in the stage, in table order (the registry's)."""
    return list(dict.fromkeys(label for label, _ in _labelled(stage)))


def method_order(stage: str, labels: Sequence[str]) -> list[str]:
    """The distinct `labels` of a stage's runs in table order: its method without matching
    first, then the registry's order, then methods without an entry (plugins') by name."""
    order = dict.fromkeys([method_label(stage, {"matching": NO_MATCHING}), *method_labels(stage)])
    rank = {label: i for i, label in enumerate(order)}
    return sorted(set(labels), key=lambda m: (rank.get(m, len(rank)), m))


def colour(label: str) -> str | None:
    """The colour of a method label in every figure (None: matplotlib's next)."""
    if label == "teacher":
        return TEACHER_COLOUR
    for stage in STAGES:
        for shown, method in _labelled(stage):
            if shown == label:
                return method.colour
    return None


@dataclass(frozen=True)
class Grid:
    """The runs `make all` starts for a profile."""

    seeds: tuple[int, ...]
    teacher_seeds: tuple[int, ...]
    widths: tuple[int, ...]
    rates: tuple[float, ...]
    distill: tuple[str, ...]  # method words
    oneshot: tuple[str, ...]
    iterative: tuple[str, ...]
    bits: tuple[int, ...] = ()  # quantization's weight widths
    quantize: tuple[str, ...] = ()


def grid(profile: str, overrides: str | Sequence[str] = ()) -> Grid:
    # the fields a recipes stamp leaves out (runs/<p>/.recipes.yaml), in Grid's order: one list,
    # so a grid field can never also count as a recipe
    prof = get_profile(profile, overrides)
    return Grid(*(getattr(prof, name) for name in GRID_FIELDS))


def grid_stages(profile: str, overrides: str | Sequence[str] = ()) -> list[str]:
    """The stages a profile's `make all` runs: the teacher and every compression stage whose
    method list is not empty."""
    g = grid(profile, overrides)
    methods = {
        "distill": g.distill,
        "prune_oneshot": g.oneshot,
        "prune_iterative": g.iterative,
        "quantize": g.quantize if g.bits else (),
    }
    return [s for s in STAGES if methods.get(s, True)]


def makefile_grid(profile: str, overrides: str | Sequence[str] = ()) -> str:
    """The grid as Makefile assignments (`make` includes it)."""
    g, prof = grid(profile, overrides), get_profile(profile, overrides)
    for stage, words in (
        ("distill", g.distill),
        ("oneshot", g.oneshot),
        ("iterative", g.iterative),
        ("quantize", g.quantize),
    ):
        for word in words:
            if word not in COMPRESSION:  # also catches a plugin's word without its module
                raise ValueError(
                    f"profile {profile!r}: {stage}_methods: unknown method {word!r}; "
                    f"valid: {', '.join(COMPRESSION.names())} (a plugin's words need the "
                    "profile's `plugins` to list its module)"
                )
    if g.quantize and not g.bits:
        raise ValueError(f"profile {profile!r}: quantize_methods needs quantize_bits (2..8)")
    bad = [b for b in g.bits if not 2 <= b <= 8]
    if bad:
        raise ValueError(f"profile {profile!r}: quantize_bits must be in 2..8, got {bad}")
    lines = [
        f"GRID_SEEDS := {' '.join(map(str, g.seeds))}",
        f"GRID_TEACHER_SEEDS := {' '.join(map(str, g.teacher_seeds))}",
        f"DISTILL_WIDTHS := {' '.join(map(str, g.widths))}",
        f"DISTILL_METHODS := {' '.join(g.distill)}",
        f"PRUNE_RATES := {' '.join(f'{r:g}' for r in g.rates)}",
        f"ONESHOT_METHODS := {' '.join(g.oneshot)}",
        f"ITERATIVE_METHODS := {' '.join(g.iterative)}",
        f"QUANTIZE_BITS := {' '.join(map(str, g.bits))}",
        f"QUANTIZE_METHODS := {' '.join(g.quantize if g.bits else ())}",
    ]
    for word in COMPRESSION:
        params = COMPRESSION.get(word).parameters(prof)
        lines.append(f"MATCH_{word} := " + " ".join(f"-p {k} {v}" for k, v in params.items()))
    lines += make_run_functions()
    return "\n".join(lines) + "\n"


# make's name of each compression stage's grid (DISTILL_METHODS, <prefix>_run, ...)
MAKE_PREFIX = {
    "distill": "distill",
    "prune_oneshot": "oneshot",
    "prune_iterative": "iterative",
    "quantize": "quantize",
}


def make_run_functions() -> list[str]:
    """Per compression stage, make functions of (setting value, method word, seed), or of
    (method word, seed) for a stage without a setting: `<prefix>_run` (the run's folder name,
    its config's RUN_NAME), `<prefix>_params` (its notebook parameters), `<prefix>_notebook`
    and `<prefix>_start` (the parameter that gets the teacher's checkpoint). make writes one
    rule per run from them instead of parsing run names."""
    lines = []
    for name, prefix in MAKE_PREFIX.items():
        stage = STAGES.get(name)
        fields = {f.name for f in dataclasses.fields(stage.config)}
        # a setting of the runs' config (width_div, rate); iterations live inside one run
        setting = stage.setting if stage.setting in fields else None
        args = [setting] if setting else []
        args += ["method", "seed"]
        slot = {arg: f"$({i + 1})" for i, arg in enumerate(args)}
        run = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m, s=slot: s[m.group(1)], stage.config.RUN_NAME)
        params = [f"-p {setting} {slot[setting]}"] if setting else []
        params += [f"$(MATCH_{slot['method']})", f"-p seed {slot['seed']}"]
        lines += [
            f"{prefix}_run = {run}",
            f"{prefix}_params = {' '.join(params)}",
            f"{prefix}_notebook := {stage.notebook}",
            # the parameter naming the teacher's checkpoint: the network pruning starts from
            f"{prefix}_start := {'model' if 'model' in fields else 'teacher'}",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attrlib.study",
        description="Print a profile's grid (the runs `make all` starts) as Makefile "
        "assignments; make includes them.",
    )
    parser.add_argument("command", choices=["grid"])
    parser.add_argument("profile", help="smoke, default, replicated, voc or a .yaml file")
    parser.add_argument("--set", default="", help="overrides: 'seeds=[0] distill.epochs=10'")
    args = parser.parse_args(argv)
    try:
        text = makefile_grid(args.profile, args.set)
    except (KeyError, ValueError, ModuleNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def runs_folder(profile: str, overrides: str | Sequence[str] = (), runs_dir: str = "") -> str:
    """`runs_dir`, or "" -> the profile's lab folder (runs/lab/<name>, notebooks' own runs)."""
    return runs_dir or lab_dir(get_profile(profile, overrides))


def checkpoints_under(runs_dir: str) -> list[str]:
    """Every model a study folder holds: its best.pt files, sorted, the evaluation's aside."""
    root = Path(runs_dir)
    found = sorted(p for p in root.rglob("best.pt") if "evaluate" not in p.relative_to(root).parts)
    return [str(p) for p in found]


def evaluation_inputs(
    profile: str,
    overrides: str | Sequence[str],
    runs_dir: str,
    checkpoints: Sequence[str],
    teacher: str,
    out_dir: str,
) -> tuple[str, list[str], str, str]:
    """Notebook 05's (runs_dir, checkpoints, teacher, out_dir), empty values resolved: the
    lab folder, every best.pt under it, "auto" -> its teacher, its evaluate/ folder."""
    runs_dir = runs_folder(profile, overrides, runs_dir)
    checkpoints = list(checkpoints) or checkpoints_under(runs_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"no best.pt under {runs_dir}: run notebooks 01-04 first (or set runs_dir to a "
            "study of `make all`, e.g. runs/default)"
        )
    if teacher == "auto":
        teacher = f"{runs_dir}/teacher/best.pt"
    return runs_dir, checkpoints, teacher, out_dir or f"{runs_dir}/evaluate"


def paper_inputs(
    profile: str, overrides: str | Sequence[str], runs_dir: str, out_dir: str
) -> tuple[str, str]:
    """Notebook 06's (runs_dir, out_dir): the lab folder and its paper/ folder by default."""
    runs_dir = runs_folder(profile, overrides, runs_dir)
    return runs_dir, out_dir or f"{runs_dir}/paper"
