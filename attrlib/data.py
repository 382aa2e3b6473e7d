"""VOC2012-layout data: multi-label classification and localization (image, labels, mask).

Reads the real PASCAL VOC2012 and the synthetic set of `attrlib.synthvoc` alike; `root` is
always the `VOC2012` folder (the one holding JPEGImages/, Annotations/, ImageSets/).
Labels of an image = the classes of the objects in its XML, `difficult` ones included, as
in the authors' code (SPEC: Data). Files are decoded with PIL (as torchvision's VOC
datasets do; torchvision.io's decoders are deprecated since 0.29), transforms are
torchvision.transforms.v2; random transforms draw from torch's global RNG.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import VOCDetection
from torchvision.transforms import v2

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
MEAN: tuple[float, float, float] = (0.4589, 0.4355, 0.4032)  # the authors' VOC statistics
STD: tuple[float, float, float] = (0.2239, 0.2186, 0.2206)
VOID = 255  # mask index of the border around every object, part of no class
MANIFEST = "synthvoc.json"  # written by attrlib.synthvoc


# ----------------------------------------------------------------------------- files


def check_root(root: str | Path) -> Path:
    """`root` as a Path; FileNotFoundError (with a hint) unless it is an existing folder."""
    root = Path(root)
    inner = root / "VOCdevkit" / "VOC2012"
    if root.is_dir() and inner.is_dir() and not (root / "ImageSets").exists():
        raise FileNotFoundError(
            f"{root} holds VOCdevkit/: the data root must be the VOC2012 folder itself ({inner})"
        )
    if root.is_dir():
        return root
    raise FileNotFoundError(
        f"data root {root} not found; generate the synthetic set with "
        "`python -m attrlib.synthvoc --root data/synthvoc` or point to a VOC2012 folder"
    )


def load_classes(root: str | Path) -> tuple[str, ...]:
    """Class names of the set at `root`: from `synthvoc.json` when present, else VOC's 20."""
    from attrlib.io import read_json

    manifest = check_root(root) / MANIFEST
    if not manifest.is_file():
        return VOC_CLASSES
    classes = read_json(manifest).get("classes")
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{manifest}: 'classes' must be a non-empty list of names")
    return tuple(classes)


def read_split(root: str | Path, split: str, kind: str = "Main") -> list[str]:
    """Image ids listed in `root/ImageSets/<kind>/<split>.txt` (first column of each line)."""
    path = check_root(root) / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def parse_labels(xml_path: str | Path, classes: Sequence[str]) -> torch.Tensor:
    """Multi-hot labels (K,) float of one VOC annotation; `difficult` objects count as present."""
    xml_path = Path(xml_path)
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: malformed XML ({e})") from None
    annotation = VOCDetection.parse_voc_xml(tree.getroot()).get("annotation")
    if not isinstance(annotation, dict):
        raise ValueError(f"{xml_path}: malformed VOC annotation (no <annotation> root element)")
    index = {name: k for k, name in enumerate(classes)}
    labels = torch.zeros(len(classes))  # (K,)
    for obj in annotation.get("object", []):
        name = obj.get("name") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"{xml_path}: malformed VOC annotation (an <object> has no <name>)")
        if name not in index:
            raise ValueError(
                f"{xml_path}: unknown class {name!r}; valid classes: {', '.join(classes)}"
            )
        labels[index[name]] = 1.0
    return labels


def read_image(path: Path) -> torch.Tensor:
    """Decode a JPEG (or any image) as RGB uint8 (3, H, W); errors name the file."""
    try:
        with Image.open(path) as pic:
            return v2.functional.pil_to_tensor(pic.convert("RGB"))  # (3, H, W)
    except OSError as e:  # includes PIL.UnidentifiedImageError and truncated files
        raise ValueError(f"{path}: cannot decode image ({e})") from None


def read_mask(path: Path) -> torch.Tensor:
    """Decode a palette (or greyscale) PNG as its indices, uint8 (1, H, W)."""
    try:
        with Image.open(path) as pic:
            if pic.mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: a mask must be a palette or greyscale PNG, got mode {pic.mode}"
                )
            return v2.functional.pil_to_tensor(pic)  # (1, H, W) palette indices
    except OSError as e:
        raise ValueError(f"{path}: cannot decode mask ({e})") from None


def _require_files(paths: Sequence[Path], listing: Path, what: str) -> None:
    """FileNotFoundError naming the first missing file (and how many are missing)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{what} {missing[0]} listed in {listing} not found{more}")


# ----------------------------------------------------------------------------- transforms


def train_transform(size: int, scale_min: float) -> v2.Compose:
    """RandomResizedCrop(size, scale=(scale_min, 1)) + horizontal flip + float + Normalize."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(scale_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def eval_transform(size: int) -> v2.Compose:
    """Resize the whole image to (size, size), aspect not kept (as the authors) + Normalize.

    Masks passed along as `tv_tensors.Mask` are resized nearest-neighbour and not rescaled.
    """
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),  # images only; masks keep their dtype
            v2.Normalize(MEAN, STD),
        ]
    )


def class_masks(masks: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of class `classes[b]` in `masks[b]`, and the non-void pixels.

    masks (B, S, S) int64 with 0 background, k+1 class k, 255 void; classes (B,) int64.
    Returns target (B, S, S) bool and valid (B, S, S) bool (= mask != 255).
    """
    target = masks == (classes + 1).view(-1, 1, 1)  # (B, S, S)
    valid = masks != VOID  # (B, S, S)
    return target, valid


# ----------------------------------------------------------------------------- data sets


class VOCClassification(Dataset):
    """Multi-label classification: items (image float (3, H, W) after `transform`, labels (K,)).

    `transform=None` only converts to float in [0, 1]. `cache=True` keeps the decoded uint8
    images in memory after first access (per DataLoader worker process); results are
    unchanged, since transforms run on every access.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: Sequence[str] | None = None,
        transform: v2.Transform | None = None,
        cache: bool = True,
    ) -> None:
        self.root = check_root(root)
        self.split = split
        self.classes = tuple(classes) if classes is not None else load_classes(self.root)
        self.ids = read_split(self.root, split, "Main")
        listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not self.ids:
            raise ValueError(f"{listing} lists no images")
        self.image_paths = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        xml_paths = [self.root / "Annotations" / f"{i}.xml" for i in self.ids]
        _require_files(self.image_paths, listing, "image")
        _require_files(xml_paths, listing, "annotation")
        self.labels = torch.stack([parse_labels(p, self.classes) for p in xml_paths])  # (N, K)
        self.transform = transform
        self.cache = cache
        self._images: list[torch.Tensor | None] = [None] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> torch.Tensor:
        """Decoded image `index`, uint8 (3, H, W), from the cache when enabled."""
        image = self._images[index]
        if image is None:
            image = read_image(self.image_paths[index])  # (3, H, W) uint8
            if self.cache:
                self._images[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image(index)
        if self.transform is None:
            image = v2.functional.to_dtype(image, torch.float32, scale=True)  # (3, H, W)
        else:
            image = self.transform(image)  # (3, S, S)
        return image, self.labels[index]


class VOCLocalization(Dataset):
    """Segmentation split with masks: items (image (3, S, S) normalised, labels (K,), mask (S, S)).

    The image is resized to S x S bilinear (aspect not kept, as the authors), the mask
    nearest-neighbour; mask values are 0 background, k+1 class k, 255 void (int64).
    Labels come from the XML annotation, like VOCClassification's. With `cache=True` each
    resized item is kept after its first access and returned again (do not modify it in place).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        classes: Sequence[str] | None = None,
        size: int = 227,
        cache: bool = True,
    ) -> None:
        self.root = check_root(root)
        self.split = split
        self.size = size
        self.classes = tuple(classes) if classes is not None else load_classes(self.root)
        self.ids = read_split(self.root, split, "Segmentation")
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not self.ids:
            raise ValueError(f"{listing} lists no images")
        self.image_paths = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.mask_paths = [self.root / "SegmentationClass" / f"{i}.png" for i in self.ids]
        xml_paths = [self.root / "Annotations" / f"{i}.xml" for i in self.ids]
        _require_files(self.image_paths, listing, "image")
        _require_files(self.mask_paths, listing, "mask")
        _require_files(xml_paths, listing, "annotation")
        self.labels = torch.stack([parse_labels(p, self.classes) for p in xml_paths])  # (N, K)
        self.transform = eval_transform(size)
        self.cache = cache
        # resized items, not decoded files: the transform is deterministic, and an evaluation
        # reads the same images once per model and method
        self._items: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded image uint8 (3, H, W) and mask uint8 (1, H, W), sizes checked."""
        image = read_image(self.image_paths[index])  # (3, H, W)
        mask = read_mask(self.mask_paths[index])  # (1, H, W)
        if mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"{self.mask_paths[index]}: mask size {tuple(mask.shape[-2:])} (H, W) does "
                f"not match image {self.image_paths[index]} size {tuple(image.shape[-2:])}"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = self._items[index]
        if item is None:
            image, mask = self.raw(index)
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            item = (image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0].long())
            if self.cache:
                self._items[index] = item  # (3, S, S) float, (S, S) int64
        image, mask = item
        return image, self.labels[index], mask
