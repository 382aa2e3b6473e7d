"""The synthetic VOC2012-layout set: layout, agreement with `render`, determinism, manifest."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from torchvision.datasets import VOCDetection, VOCSegmentation

from attrlib import synthvoc
from attrlib.synthvoc import SYNTH_CLASSES, generate, image_id, render, voc_palette

SPLITS = ("train", "val", "trainval")


def all_ids(params: dict) -> list[str]:
    return [image_id(i) for i in range(params["n_train"] + params["n_val"])]


def xml_objects(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    root = ET.parse(path).getroot()
    return [
        (
            obj.findtext("name"),
            tuple(int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")),
        )
        for obj in root.iter("object")
    ]


def tree_bytes(voc: Path) -> dict[str, bytes]:
    return {str(p.relative_to(voc)): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- layout


def test_torchvision_reads_the_tree(synth_root: Path, synth_params: dict) -> None:
    devkit_parent = synth_root.parents[1]
    seg = VOCSegmentation(devkit_parent, year="2012", image_set="val")
    assert len(seg) == synth_params["n_val"]
    image, mask = seg[0]
    assert image.mode == "RGB" and mask.mode == "P"
    assert image.size == mask.size
    det = VOCDetection(devkit_parent, year="2012", image_set="train")
    assert len(det) == synth_params["n_train"]
    _, target = det[0]
    objects = target["annotation"]["object"]
    assert objects and all(o["name"] in SYNTH_CLASSES for o in objects)
    assert target["annotation"]["size"]["depth"] == "3"


def test_files_match_render(synth_root: Path, synth_params: dict) -> None:
    for index, name in enumerate(all_ids(synth_params)):
        image, objects, mask = render(index, synth_params["seed"], synth_params["image_size"])
        jpeg = np.asarray(Image.open(synth_root / "JPEGImages" / f"{name}.jpg"), dtype=float)
        assert jpeg.shape == image.shape
        assert np.abs(jpeg - image).mean() < 4.5  # JPEG quality 95, 4:4:4, of a noisy image
        png = Image.open(synth_root / "SegmentationClass" / f"{name}.png")
        assert png.mode == "P"
        assert png.getpalette()[: 3 * 256] == list(voc_palette())
        np.testing.assert_array_equal(np.asarray(png), mask)
        xml = ET.parse(synth_root / "Annotations" / f"{name}.xml").getroot()
        assert xml.findtext("filename") == f"{name}.jpg"
        assert int(xml.findtext("size/width")) == image.shape[1]
        assert int(xml.findtext("size/height")) == image.shape[0]
        assert xml_objects(synth_root / "Annotations" / f"{name}.xml") == [
            (cls, box) for cls, box in objects
        ]


def test_masks_boxes_and_void_border_agree() -> None:
    size = 48
    for index in range(40):
        image, objects, mask = render(index, 3, size)
        h, w = mask.shape
        assert 1 <= len(objects) <= 3
        assert set(np.unique(mask)) <= {0, 255, *range(1, len(SYNTH_CLASSES) + 1)}
        for cls, (x0, y0, x1, y1) in objects:
            assert 1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h  # 1-based inclusive, inside
            box = mask[y0 - 1 : y1, x0 - 1 : x1]
            k = SYNTH_CLASSES.index(cls) + 1
            assert (box == k).any()
            assert (box == 255).any()  # the void border runs along the object
            assert max(x1 - x0, y1 - y0) + 1 >= 0.18 * size  # large enough to point at
        # every class pixel lies in a box of that class
        for k in set(np.unique(mask)) - {0, 255}:
            cls = SYNTH_CLASSES[k - 1]
            covered = np.zeros_like(mask, dtype=bool)
            for c, (x0, y0, x1, y1) in objects:
                if c == cls:
                    covered[y0 - 1 : y1, x0 - 1 : x1] = True
            assert covered[mask == k].all()
        # no two different labels touch without void between them (4-neighbourhood)
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()
        if len(objects) > 1:
            continue  # occluded thin parts (star spikes) may turn wholly void: check one-object images
        # the void band is thin: every void pixel is within 2 px of a non-void pixel
        # (1 px on a plain edge; a star's thin spike tip is void across its width)
        near_label = np.zeros_like(mask, dtype=bool)
        padded = np.pad(mask != 255, 2)
        for dy in range(5):
            for dx in range(5):
                near_label |= padded[dy : dy + h, dx : dx + w]
        assert near_label[mask == 255].all()
        assert (mask == 255).mean() < 0.35


def test_render_is_pure_and_varied() -> None:
    a = render(5, 0, 40)
    b = render(5, 0, 40)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    assert not np.array_equal(render(6, 0, 40)[0][:10, :10], a[0][:10, :10])
    sizes = {render(i, 1, 40)[0].shape[:2] for i in range(20)}
    assert len(sizes) > 5  # aspect jitter
    assert all(34 <= s <= 46 for hw in sizes for s in hw)  # 0.85..1.15 x 40
    seen = {cls for i in range(60) for cls, _ in render(i, 2, 40)[1]}
    assert seen == set(SYNTH_CLASSES)


def test_every_shape_contains_its_centre() -> None:
    # a coarse map pointing at an object's middle must land on the object
    for name, poly in synthvoc.SHAPES.items():
        layer = Image.new("L", (240, 240), 0)
        ImageDraw.Draw(layer).polygon([tuple(p) for p in poly * 100 + 120], fill=1)
        assert np.asarray(layer)[116:125, 116:125].all(), name
        assert np.linalg.norm(poly, axis=1).max() == pytest.approx(1.0)


def test_split_files(synth_root: Path, synth_params: dict) -> None:
    main = synth_root / "ImageSets" / "Main"
    ids = all_ids(synth_params)
    lists = {s: (main / f"{s}.txt").read_text().split() for s in SPLITS}
    assert lists["train"] == ids[: synth_params["n_train"]]
    assert lists["val"] == ids[synth_params["n_train"] :]
    assert lists["trainval"] == ids
    for s in SPLITS:
        seg = (synth_root / "ImageSets" / "Segmentation" / f"{s}.txt").read_text().split()
        assert seg == lists[s]
    present = {i: {c for c, _ in xml_objects(synth_root / "Annotations" / f"{i}.xml")} for i in ids}
    for cls in SYNTH_CLASSES:
        for s in SPLITS:
            lines = (main / f"{cls}_{s}.txt").read_text().splitlines()
            assert [line.split()[0] for line in lines] == lists[s]
            for line in lines:
                name, flag = line[:11], line[11:]
                assert flag == ("  1" if cls in present[name] else " -1")  # VOC's "%s %2d"


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_for_any_workers(tmp_path: Path) -> None:
    params = {"n_train": 5, "n_val": 3, "image_size": 32, "seed": 7, "progress": False}
    one = generate(tmp_path / "a", **params, workers=1)
    two = generate(tmp_path / "b", **params, workers=2)
    assert tree_bytes(one) == tree_bytes(two)
    other = generate(tmp_path / "c", **{**params, "seed": 8}, workers=1)
    assert tree_bytes(other) != tree_bytes(one)


def test_rerun_is_a_noop_and_other_params_raise(tmp_path: Path) -> None:
    params = {"n_train": 4, "n_val": 2, "image_size": 32, "seed": 0, "progress": False}
    voc = generate(tmp_path, **params, workers=1)
    manifest = voc / "synthvoc.json"
    stamp = manifest.stat().st_mtime_ns
    jpeg = voc / "JPEGImages" / "2012_000001.jpg"
    jpeg.write_bytes(b"sentinel")  # a regeneration would rewrite it
    assert generate(tmp_path, **params, workers=1) == voc
    assert jpeg.read_bytes() == b"sentinel" and manifest.stat().st_mtime_ns == stamp

    with pytest.raises(FileExistsError, match=r"synthvoc\.json.*n_train.*image_size"):
        generate(tmp_path, **{**params, "n_train": 3, "image_size": 36}, workers=1)

    generate(tmp_path, **{**params, "n_train": 3}, workers=1, overwrite=True)
    assert len(list((voc / "JPEGImages").iterdir())) == 5  # stale images removed
    assert (voc / "ImageSets" / "Main" / "train.txt").read_text().split() == [
        image_id(i) for i in range(3)
    ]


def test_interrupted_run_is_redone(tmp_path: Path) -> None:
    params = {"n_train": 3, "n_val": 2, "image_size": 32, "seed": 0, "progress": False}
    voc = generate(tmp_path / "ref", **params, workers=1)
    broken = tmp_path / "broken" / "VOCdevkit" / "VOC2012"
    (broken / "JPEGImages").mkdir(parents=True)
    (broken / "JPEGImages" / "2012_000001.jpg").write_bytes(b"half")
    (broken / synthvoc.MARKER).write_text("interrupted")
    assert generate(tmp_path / "broken", **params, workers=1) == broken
    assert not (broken / synthvoc.MARKER).exists()
    assert tree_bytes(broken) == tree_bytes(voc)


def test_refuses_to_write_into_a_foreign_tree(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "JPEGImages" / "2007_000027.jpg").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="not a synthvoc tree"):
        generate(tmp_path, 2, 2, 32, workers=1, progress=False, overwrite=True)
    assert (voc / "JPEGImages" / "2007_000027.jpg").read_bytes() == b"real data"


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="n_train"):
        generate("/nonexistent", 0, 2, 32)
    with pytest.raises(ValueError, match="image_size"):
        generate("/nonexistent", 2, 2, 8)


# ----------------------------------------------------------------------------- CLI


def test_cli_profile_without_synthetic_spec(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        synthvoc.main(["--root", str(tmp_path), "--profile", "voc"])
    with pytest.raises(SystemExit):
        synthvoc.main(["--root", str(tmp_path), "--profile", "no-such-profile"])
    assert not (tmp_path / "VOCdevkit").exists()


def test_cli_smoke_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attrlib.config import get_profile

    spec = get_profile("smoke").synth
    voc = synthvoc.main(["--root", str(tmp_path), "--profile", "smoke", "--workers", "1"])
    assert str(voc) in capsys.readouterr().out
    assert len((voc / "ImageSets" / "Main" / "train.txt").read_text().split()) == spec.n_train
    assert len((voc / "ImageSets" / "Main" / "val.txt").read_text().split()) == spec.n_val
