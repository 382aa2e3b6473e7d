"""Check a whole VOC2012-layout tree before a run: every problem at once, not the first.

`python -m attrlib.data check ROOT` (`make check-data`) reads every image, annotation and
mask that the study's splits list, once each, and prints each problem found (the file and
what is wrong) before exiting 1. The checks are `attrlib.data`'s own functions, so a
problem reported here reads exactly as the error a loader would raise at it; only the
collecting is new: a loader stops at its first problem, often hours into a run (images are
decoded on first access), and one at a time is a slow way to repair a copied data set.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from attrlib.data import (
    MANIFEST,
    check_mask,
    check_root,
    item_paths,
    load_classes,
    missing_file_message,
    parse_labels,
    read_image,
    read_mask,
    read_split,
    split_path,
)

# The (kind, split) listings the study reads: classification train and val
# (attrlib.stages.build_datasets, evaluate_checkpoint), localization val (evaluation, paper)
# and localization train (the teacher notebook's sample figure, whose loader needs every
# file of the split).
STUDY_SPLITS: tuple[tuple[str, str], ...] = (
    ("Main", "train"),
    ("Main", "val"),
    ("Segmentation", "train"),
    ("Segmentation", "val"),
)
KINDS = ("image", "annotation", "mask")  # the files of one image id, in reading order


@dataclass(frozen=True)
class Problem:
    """One faulty file: a missing or unreadable one, or a split file that lists nothing."""

    path: Path
    message: str  # the error a loader raises at this file, word for word


@dataclass
class CheckReport:
    """What `check_tree` found: the problems, and how many files of each kind read cleanly."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            n = self.read
            return (
                f"{self.root}: all {n['image']} images, {n['annotation']} annotations, "
                f"{n['mask']} masks read"
            )
        files = len({p.path for p in self.problems})
        return f"{self.root}: {_plural(len(self.problems), 'problem')} in {_plural(files, 'file')}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _listed_files(
    root: Path, splits: Sequence[tuple[str, str]], report: CheckReport
) -> dict[str, dict[str, Path]]:
    """Per image id, the kinds of file some split needs and the first listing that names it.

    Missing or empty split files go into `report`. Classification needs each image and
    its annotation, localization the mask too (as VOCClassification / VOCLocalization).
    """
    needs: dict[str, dict[str, Path]] = {}
    for kind, split in splits:
        listing = split_path(root, split, kind)
        try:
            ids = read_split(root, split, kind)
        except (FileNotFoundError, ValueError) as e:
            report.problems.append(Problem(listing, str(e)))
            continue
        kinds = KINDS if kind == "Segmentation" else ("image", "annotation")
        for image_id in ids:
            item = needs.setdefault(image_id, {})
            for k in kinds:
                item.setdefault(k, listing)
    return needs


def check_tree(
    root: str | Path,
    splits: Sequence[tuple[str, str]] = STUDY_SPLITS,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> CheckReport:
    """Read every file the `splits` list once (in listing order) and collect every problem.

    Args:
        root: the VOC2012 folder. splits: (kind, split) pairs, kind "Main" or "Segmentation".
        classes: class names; default `load_classes(root)`, as the loaders.
    An unusable root or class list is the only problem reported (nothing else can be read).
    """
    report = CheckReport(Path(root))
    try:
        root = check_root(root)
    except FileNotFoundError as e:
        report.problems.append(Problem(report.root, str(e)))
        return report
    try:
        classes = tuple(classes) if classes is not None else load_classes(root)
    except ValueError as e:
        report.problems.append(Problem(root / MANIFEST, str(e)))
        return report
    needs = _listed_files(root, splits, report)
    for image_id, listings in tqdm(needs.items(), desc="check", unit="image", disable=not progress):
        _check_item(root, image_id, listings, classes, report)
    return report


def _check_item(
    root: Path,
    image_id: str,
    listings: dict[str, Path],
    classes: tuple[str, ...],
    report: CheckReport,
) -> None:
    """Read the files of one image id that some listing needs (image, annotation, mask)."""
    paths = {k: item_paths(root, [image_id], k)[0] for k in listings}
    found = {}
    for kind, path in paths.items():
        found[kind] = path.is_file()
        if not found[kind]:
            report.problems.append(Problem(path, missing_file_message(kind, path, listings[kind])))
    image = None
    if found["image"]:
        image = _attempt(report, "image", paths["image"], read_image, paths["image"])
    if found["annotation"]:
        _attempt(
            report, "annotation", paths["annotation"], parse_labels, paths["annotation"], classes
        )
    if found.get("mask"):
        mask = _attempt(report, "mask", paths["mask"], read_mask, paths["mask"])  # (1, H, W)
        if mask is not None and image is not None:  # an unreadable image is its own problem
            size = image.shape[-2:]
            _attempt(
                report,
                None,
                paths["mask"],
                check_mask,
                mask,
                size,
                len(classes),
                paths["mask"],
                paths["image"],
            )


def _attempt(report: CheckReport, kind: str | None, path: Path, check, *args):
    """`check(*args)`, counted as one `kind` file read; on ValueError the problem is recorded
    against `path` and None returned."""
    try:
        result = check(*args)
    except ValueError as e:
        report.problems.append(Problem(path, str(e)))
        return None
    if kind is not None:
        report.read[kind] += 1
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI `python -m attrlib.data check ROOT`: 0 when every file reads, 1 (problems listed)."""
    parser = argparse.ArgumentParser(
        prog="python -m attrlib.data", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="read every listed file, list every problem")
    check.add_argument("root", help="the VOC2012 folder (holding JPEGImages/, ImageSets/, ...)")
    check.add_argument(
        "--split",
        action="append",
        metavar="KIND/NAME",
        help="a listing to check, e.g. Main/train (repeatable); default: the study's "
        + " ".join(f"{k}/{s}" for k, s in STUDY_SPLITS),
    )
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    splits = STUDY_SPLITS
    if args.split:
        pairs = [s.split("/") for s in args.split]
        if any(len(p) != 2 or p[0] not in ("Main", "Segmentation") for p in pairs):
            parser.error(f"--split takes Main/<name> or Segmentation/<name>, got {args.split}")
        splits = [tuple(p) for p in pairs]
    report = check_tree(args.root, splits, progress=not args.no_progress)
    for problem in report.problems:
        print(problem.message)
    print(report.summary())
    return 0 if report.ok else 1
