"""VOC-layout loaders, transforms and class masks, on the tiny synthetic tree and corrupted copies."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from attrlib.data import (
    MEAN,
    STD,
    VOC_CLASSES,
    VOCClassification,
    VOCLocalization,
    class_masks,
    eval_transform,
    load_classes,
    parse_labels,
    read_split,
    train_transform,
)
from attrlib.synthvoc import SYNTH_CLASSES

XML_TEMPLATE = """<annotation>
  <filename>x.jpg</filename>
  <size><width>10</width><height>10</height><depth>3</depth></size>
  {objects}
</annotation>
"""


def write_xml(path: Path, *names: str, difficult: tuple[str, ...] = ()) -> Path:
    objects = "".join(
        f"<object><name>{n}</name><difficult>{int(n in difficult)}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for n in names
    )
    path.write_text(XML_TEMPLATE.format(objects=objects))
    return path


def first_id(voc: Path, kind: str = "Main", split: str = "train") -> str:
    return read_split(voc, split, kind)[0]


# ----------------------------------------------------------------------------- files


def test_load_classes(synth_root: Path, tmp_path: Path) -> None:
    assert load_classes(synth_root) == SYNTH_CLASSES
    assert load_classes(tmp_path) == VOC_CLASSES
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane"
    assert VOC_CLASSES[-1] == "tvmonitor"


def test_read_split(synth_root: Path, synth_params: dict, tmp_path: Path) -> None:
    assert len(read_split(synth_root, "train")) == synth_params["n_train"]
    assert read_split(synth_root, "val", "Segmentation") == read_split(synth_root, "val")
    assert read_split(synth_root, "circle_train") == read_split(synth_root, "train")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt"):
        read_split(synth_root, "test")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        read_split(missing, "train")
    empty = tmp_path / "ImageSets" / "Main" / "train.txt"
    empty.parent.mkdir(parents=True)
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"Main/train\.txt lists no images"):
        read_split(tmp_path, "train")


def test_parse_labels_counts_difficult(tmp_path: Path) -> None:
    xml = write_xml(tmp_path / "a.xml", "dog", "person", "dog", difficult=("person",))
    labels = parse_labels(xml, VOC_CLASSES)
    assert labels.dtype == torch.float32 and labels.shape == (20,)
    expected = torch.zeros(20)
    expected[[VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]] = 1
    torch.testing.assert_close(labels, expected)
    assert parse_labels(write_xml(tmp_path / "b.xml"), VOC_CLASSES).sum() == 0


def test_parse_labels_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.xml"
    bad.write_text("<annotation><object><name>dog</name></annotation>")
    with pytest.raises(ValueError, match=r"broken\.xml: malformed XML"):
        parse_labels(bad, VOC_CLASSES)
    unknown = write_xml(tmp_path / "unknown.xml", "dog", "unicorn")
    with pytest.raises(ValueError, match=r"unknown\.xml: unknown class 'unicorn'.*aeroplane"):
        parse_labels(unknown, VOC_CLASSES)
    nameless = tmp_path / "nameless.xml"
    nameless.write_text("<annotation><object><pose>Left</pose></object></annotation>")
    with pytest.raises(ValueError, match=r"nameless\.xml.*no <name>"):
        parse_labels(nameless, VOC_CLASSES)


# ----------------------------------------------------------------------------- transforms


def test_transforms_shapes_and_rng() -> None:
    image = torch.randint(0, 256, (3, 37, 45), dtype=torch.uint8)
    train = train_transform(32, 0.5)
    torch.manual_seed(0)
    a = train(image)
    torch.manual_seed(0)
    b = train(image)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)  # randomness comes from torch's global RNG
    out = eval_transform(24)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    flat = torch.full((3, 10, 12), 255, dtype=torch.uint8)
    expected = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(eval_transform(8)(flat)[:, 0, 0], expected)


def test_class_masks_hand_made() -> None:
    masks = torch.tensor(
        [
            [[0, 1, 1], [255, 1, 2], [2, 2, 0]],
            [[3, 3, 255], [0, 0, 0], [1, 3, 255]],
        ]
    )  # (2, 3, 3)
    classes = torch.tensor([1, 2])  # class 1 -> index 2, class 2 -> index 3
    target, valid = class_masks(masks, classes)
    assert target.dtype == torch.bool and valid.dtype == torch.bool
    assert target.tolist() == [
        [[False, False, False], [False, False, True], [True, True, False]],
        [[True, True, False], [False, False, False], [False, True, False]],
    ]
    assert valid.tolist() == [
        [[True, True, True], [False, True, True], [True, True, True]],
        [[True, True, False], [True, True, True], [True, True, False]],
    ]


# ----------------------------------------------------------------------------- classification


def test_classification_items(synth_root: Path, synth_params: dict) -> None:
    ds = VOCClassification(synth_root, "train", transform=eval_transform(32))
    assert len(ds) == synth_params["n_train"] and ds.classes == SYNTH_CLASSES
    image, labels = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert labels.shape == (len(SYNTH_CLASSES),) and labels.dtype == torch.float32
    xml = synth_root / "Annotations" / f"{ds.ids[3]}.xml"
    torch.testing.assert_close(labels, parse_labels(xml, SYNTH_CLASSES))
    raw, _ = VOCClassification(synth_root, "train")[3]  # no transform: float in [0, 1]
    jpeg = np.asarray(Image.open(synth_root / "JPEGImages" / f"{ds.ids[3]}.jpg"))
    assert raw.shape == (3, *jpeg.shape[:2]) and 0 <= raw.min() and raw.max() <= 1
    assert (ds.labels.sum(1) >= 1).all()
    images, labels = next(iter(DataLoader(ds, batch_size=5)))
    assert images.shape == (5, 3, 32, 32) and labels.shape == (5, len(SYNTH_CLASSES))


def test_cache_does_not_change_results(synth_root: Path) -> None:
    transform = train_transform(32, 0.5)
    cached = VOCClassification(synth_root, "train", transform=transform, cache=True)
    fresh = VOCClassification(synth_root, "train", transform=transform, cache=False)
    for epoch in range(2):  # the second epoch reads the cache
        outputs = {}
        for key, ds in (("cached", cached), ("fresh", fresh)):
            torch.manual_seed(epoch)
            outputs[key] = torch.stack([ds[i][0] for i in range(4)])  # (4, 3, 32, 32)
        torch.testing.assert_close(outputs["cached"], outputs["fresh"])
    assert len(cached.cache) == 4 and len(fresh.cache) == 0


def test_cache_keeps_to_its_budget(synth_root: Path) -> None:
    two = sum(
        VOCClassification(synth_root, "train").image(i).untyped_storage().nbytes() for i in (0, 1)
    )
    ds = VOCClassification(synth_root, "train", cache_bytes=two)
    fresh = VOCClassification(synth_root, "train", cache=False)
    for _ in range(2):
        for i in range(len(ds)):
            torch.testing.assert_close(ds[i][0], fresh[i][0], rtol=0, atol=0)
    assert len(ds.cache) == 2 and ds.cache.nbytes == two  # the first two, then no more
    assert ds.cache.get(0) is not None and ds.cache.get(2) is None


class _WithCacheSize(Dataset):
    """Items (image, labels, how many images the cache held right after reading this one)."""

    def __init__(self, dataset: VOCClassification) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, labels = self.dataset[index]
        return image, labels, len(self.dataset.cache)


def test_cache_grows_in_the_main_process_only(synth_root: Path) -> None:
    """DataLoader workers read the main process's cache but never add to it (a worker's
    copy would die with the worker); the batches are the same whoever decodes."""
    ds = VOCClassification(synth_root, "train", transform=eval_transform(32))
    fresh = VOCClassification(synth_root, "train", transform=eval_transform(32), cache=False)

    def batches(dataset, workers):
        loader = DataLoader(_WithCacheSize(dataset), batch_size=8, num_workers=workers)
        return list(loader)

    expected = batches(fresh, 0)
    in_workers = batches(ds, 2)
    assert all((sizes == 0).all() for _, _, sizes in in_workers)  # workers kept nothing
    assert len(ds.cache) == 0  # nor did the main process, which decoded nothing
    in_main = batches(ds, 0)
    assert len(ds.cache) == len(ds)
    after = batches(ds, 2)  # forked after the main-process pass: the workers read its cache
    assert all((sizes == len(ds)).all() for _, _, sizes in after)
    for got in (in_workers, in_main, after):
        for (images, labels, _), (images0, labels0, _) in zip(got, expected, strict=True):
            assert torch.equal(images, images0) and torch.equal(labels, labels0)


def test_classification_errors_name_the_file(tiny_voc_tree: Path, tmp_path: Path) -> None:
    voc = tiny_voc_tree
    with pytest.raises(FileNotFoundError, match="data root .*missing_root"):
        VOCClassification(tmp_path / "missing_root")
    with pytest.raises(FileNotFoundError, match=r"must be the VOC2012 folder itself"):
        VOCClassification(voc.parents[1])  # the folder holding VOCdevkit, a common mistake
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt"):
        VOCClassification(voc, "test")

    name = first_id(voc)
    (voc / "JPEGImages" / f"{name}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"image .*{name}\.jpg listed in .*train\.txt"):
        VOCClassification(voc, "train")
    shutil.copy(
        voc / "JPEGImages" / f"{read_split(voc, 'val')[0]}.jpg", voc / "JPEGImages" / f"{name}.jpg"
    )

    jpeg = voc / "JPEGImages" / f"{name}.jpg"
    jpeg.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=rf"{name}\.jpg: cannot decode image"):
        VOCClassification(voc, "train")[0]  # decoding happens on first access
    shutil.copy(voc / "JPEGImages" / f"{read_split(voc, 'val')[0]}.jpg", jpeg)

    xml = voc / "Annotations" / f"{name}.xml"
    original = xml.read_text()
    xml.unlink()
    with pytest.raises(FileNotFoundError, match=rf"annotation .*{name}\.xml"):
        VOCClassification(voc, "train")
    xml.write_text(original[: len(original) // 2])
    with pytest.raises(ValueError, match=rf"{name}\.xml: malformed XML"):
        VOCClassification(voc, "train")
    tree = ET.fromstring(original)
    tree.find("object/name").text = "unicorn"
    xml.write_text(ET.tostring(tree, encoding="unicode"))
    with pytest.raises(ValueError, match=rf"{name}\.xml: unknown class 'unicorn'.*circle"):
        VOCClassification(voc, "train")
    # the same tree read with VOC's names: the synthetic class names are unknown there
    xml.write_text(original)
    with pytest.raises(ValueError, match="valid classes: aeroplane"):
        VOCClassification(voc, "train", classes=VOC_CLASSES)


# ----------------------------------------------------------------------------- localization


def test_localization_items(synth_root: Path, synth_params: dict) -> None:
    ds = VOCLocalization(synth_root, "val", size=40)
    assert len(ds) == synth_params["n_val"]
    image, labels, mask = ds[0]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert mask.shape == (40, 40) and mask.dtype == torch.int64
    assert labels.shape == (len(SYNTH_CLASSES),)
    # the image is exactly what the classification loader gives at evaluation
    cls = VOCClassification(synth_root, "val", transform=eval_transform(40))
    torch.testing.assert_close(image, cls[0][0])
    valid = {0, 255, *range(1, len(SYNTH_CLASSES) + 1)}
    for i in range(len(ds)):
        _, labels, mask = ds[i]
        values = set(mask.unique().tolist())
        assert values <= valid
        for k in values - {0, 255}:  # a class in the mask is a class in the labels
            assert labels[k - 1] == 1
    images, labels, masks = next(iter(DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 40, 40) and masks.shape == (4, 40, 40)
    target, valid_px = class_masks(masks, labels.argmax(1))
    assert target.shape == valid_px.shape == (4, 40, 40)


def test_localization_mask_is_nearest_resized(synth_root: Path) -> None:
    ds = VOCLocalization(synth_root, "val", size=64)
    for i in range(3):
        _, raw_mask = ds.raw(i)
        _, _, mask = ds[i]
        # nearest-neighbour: every output value occurs in the input, boundaries stay void
        assert set(mask.unique().tolist()) <= set(raw_mask.unique().tolist())
        assert (mask == 255).any()


def test_localization_errors_name_the_file(tiny_voc_tree: Path) -> None:
    voc = tiny_voc_tree
    name = first_id(voc, "Segmentation", "val")
    png = voc / "SegmentationClass" / f"{name}.png"
    mask = Image.open(png)
    small = mask.resize((mask.width - 3, mask.height), Image.NEAREST)
    small.save(png)
    ds = VOCLocalization(voc, "val", size=32)
    with pytest.raises(ValueError, match=rf"{name}\.png: mask size .* does not match image"):
        ds[0]
    odd = np.asarray(mask).copy()
    odd[0, :2] = (len(SYNTH_CLASSES) + 1, 42)  # no class, not void
    odd = Image.fromarray(odd, mode="P")
    odd.putpalette(mask.getpalette())  # without one, PIL renumbers the indices it saves
    odd.save(png)
    with pytest.raises(ValueError, match=rf"{name}\.png: mask values 11, 42 are neither"):
        VOCLocalization(voc, "val", size=32)[0]
    mask.convert("RGB").save(png)
    with pytest.raises(ValueError, match=rf"{name}\.png: a mask must be a palette"):
        VOCLocalization(voc, "val", size=32)[0]
    png.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"mask .*{name}\.png listed in .*Segmentation/val"
    ):
        VOCLocalization(voc, "val")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/test\.txt"):
        VOCLocalization(voc, "test")


def test_localization_cache_keeps_resized_items(tiny_voc_tree: Path) -> None:
    cached = VOCLocalization(tiny_voc_tree, "val", size=40)
    uncached = VOCLocalization(tiny_voc_tree, "val", size=40, cache=False)
    first = cached[0]
    for got, want in zip(first, uncached[0], strict=True):  # same item, cached or not
        assert torch.equal(got, want) and got.dtype == want.dtype
    (tiny_voc_tree / "JPEGImages" / f"{cached.ids[0]}.jpg").unlink()  # the disk copy is gone
    again = cached[0]
    assert again[0] is first[0] and torch.equal(again[2], first[2])  # served from memory
    with pytest.raises(ValueError, match="cannot decode image"):  # read from disk each time
        uncached[0]
