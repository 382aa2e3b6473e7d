"""`python -m attrlib.datacheck check`: every planted fault of a synthetic tree listed at once,
each in the words of the loader that would have stopped at it."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attrlib.data import MANIFEST, VOCClassification, VOCLocalization, read_split
from attrlib.datacheck import STUDY_SPLITS, check_tree, main

ROOT = Path(__file__).resolve().parent.parent


def _file(voc: Path, folder: str, index: int, suffix: str) -> Path:
    """The `folder` file of the index-th image of the tree's train split."""
    return voc / folder / f"{read_split(voc, 'train')[index]}{suffix}"


def _val_mask(voc: Path, index: int) -> Path:
    return voc / "SegmentationClass" / f"{read_split(voc, 'val', 'Segmentation')[index]}.png"


def _save_mask(values: np.ndarray, like: Image.Image, path: Path) -> None:
    mask = Image.fromarray(values, mode="P")
    mask.putpalette(like.getpalette())  # without one, PIL renumbers the indices it saves
    mask.save(path)


def truncate_jpeg(voc: Path) -> Path:
    jpeg = _file(voc, "JPEGImages", 0, ".jpg")
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    return jpeg


def break_xml(voc: Path) -> Path:
    xml = _file(voc, "Annotations", 1, ".xml")
    xml.write_text(xml.read_text()[:100])
    return xml


def unknown_class(voc: Path) -> Path:
    xml = _file(voc, "Annotations", 2, ".xml")
    tree = ET.parse(xml)
    tree.find("object/name").text = "unicorn"
    tree.write(xml)
    return xml


def delete_jpeg(voc: Path) -> Path:
    jpeg = _file(voc, "JPEGImages", 3, ".jpg")
    jpeg.unlink()
    return jpeg


def shrink_mask(voc: Path) -> Path:
    png = _val_mask(voc, 0)
    with Image.open(png) as mask:
        mask.resize((mask.width - 3, mask.height), Image.NEAREST).save(png)
    return png


def odd_mask_values(voc: Path) -> Path:
    png = _val_mask(voc, 1)
    with Image.open(png) as mask:
        values = np.asarray(mask).copy()
        values[0, 0] = 42  # no class (the set has 10) and not void
        _save_mask(values, mask, png)
    return png


def empty_split(voc: Path) -> Path:
    listing = voc / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text("")
    return listing


@dataclass(frozen=True)
class Fault:
    plant: Callable[[Path], Path]  # damages a tree, returns the file at fault
    what: str  # a piece of the message that says what is wrong
    load: Callable[[Path], object]  # what a loader does to stop at this fault


def _train_item(voc: Path, index: int) -> None:
    VOCClassification(voc, "train")[index]


FAULTS: dict[str, Fault] = {
    "truncated jpeg": Fault(truncate_jpeg, "cannot decode image", lambda v: _train_item(v, 0)),
    "malformed xml": Fault(break_xml, "malformed XML", lambda v: VOCClassification(v, "train")),
    "unknown class": Fault(
        unknown_class, "unknown class 'unicorn'", lambda v: VOCClassification(v, "train")
    ),
    "missing jpeg": Fault(delete_jpeg, "not found", lambda v: VOCClassification(v, "train")),
    "mask size": Fault(
        shrink_mask, "does not match image", lambda v: VOCLocalization(v, "val", size=32)[0]
    ),
    "mask values": Fault(
        odd_mask_values, "mask values 42 are neither", lambda v: VOCLocalization(v, "val")[1]
    ),
    "empty split": Fault(
        empty_split, "lists no images", lambda v: VOCLocalization(v, "train", size=32)
    ),
}


def test_every_planted_fault_is_listed(tiny_voc_tree: Path) -> None:
    voc = tiny_voc_tree
    planted = {name: fault.plant(voc) for name, fault in FAULTS.items()}
    report = check_tree(voc, progress=False)
    assert not report.ok
    found = {p.path: p.message for p in report.problems}
    assert set(found) == set(planted.values())  # every fault, and nothing else
    for name, path in planted.items():
        assert FAULTS[name].what in found[path], name
        assert found[path].startswith(str(path)) or f" {path} " in found[path], name
    n = len(FAULTS)
    assert report.summary() == f"{voc}: {n} problems in {n} files"

    # the command line prints the same, and fails
    out = subprocess.run(
        [sys.executable, "-m", "attrlib.datacheck", "check", str(voc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [p.message for p in report.problems] + [report.summary()]


@pytest.mark.parametrize("name", FAULTS)
def test_checker_and_loader_say_the_same(name: str, tiny_voc_tree: Path) -> None:
    fault = FAULTS[name]
    path = fault.plant(tiny_voc_tree)
    problems = check_tree(tiny_voc_tree, progress=False).problems
    assert [p.path for p in problems] == [path]
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        fault.load(tiny_voc_tree)
    assert str(error.value) == problems[0].message


def test_clean_tree_passes(synth_root: Path, synth_params: dict, capsys) -> None:
    n = synth_params["n_train"] + synth_params["n_val"]
    assert main(["check", str(synth_root), "--no-progress"]) == 0
    assert (
        capsys.readouterr().out
        == f"{synth_root}: all {n} images, {n} annotations, {n} masks read\n"
    )
    report = check_tree(synth_root, progress=False)
    assert report.ok and report.read == {"image": n, "annotation": n, "mask": n}  # once each


def test_splits_roots_and_classes(synth_root: Path, tmp_path: Path) -> None:
    problems = check_tree(synth_root, [("Main", "test")], progress=False).problems
    assert [p.message for p in problems] == [
        f"split file {synth_root / 'ImageSets' / 'Main' / 'test.txt'} not found"
    ]
    only_train = check_tree(synth_root, [("Main", "train")], progress=False)
    assert only_train.ok and only_train.read["mask"] == 0  # classification reads no mask
    problems = check_tree(tmp_path / "nowhere", progress=False).problems
    assert len(problems) == 1 and "data root" in problems[0].message
    # with one class, annotations name unknown classes and masks hold values past K = 1
    report = check_tree(synth_root, STUDY_SPLITS, classes=("circle",), progress=False)
    assert {p.path.suffix for p in report.problems} == {".xml", ".png"}
    assert all("unknown class" in p.message for p in report.problems if p.path.suffix == ".xml")
    with pytest.raises(SystemExit):
        main(["check", str(synth_root), "--split", "train"])  # KIND/NAME


def test_unreadable_class_list_is_the_one_problem(tiny_voc_tree: Path) -> None:
    (tiny_voc_tree / MANIFEST).write_text('{"classes": []}')
    problems = check_tree(tiny_voc_tree, progress=False).problems
    assert [p.path for p in problems] == [tiny_voc_tree / MANIFEST]
    assert "'classes' must be a non-empty list" in problems[0].message
