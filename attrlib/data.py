"""VOC2012-layout data: multi-label classification and localization (image, labels, mask).

Reads the real PASCAL VOC2012 and the synthetic set of `attrlib.synthvoc` alike; `root` is
always the `VOC2012` folder (the one holding JPEGImages/, Annotations/, ImageSets/).
Labels of an image = the classes of the objects in its XML, `difficult` ones included, as
in the authors' code (SPEC: Data). Files are decoded with PIL (as torchvision's VOC
datasets do; torchvision.io's decoders are deprecated since 0.29), transforms are
torchvision.transforms.v2; random transforms draw from torch's global RNG.

Every check of a file is one function here (`read_split`, `parse_labels`, `read_image`,
`read_mask`, `check_mask`, `missing_file_message`): the loaders raise its error at the first
problem, `attrlib.datacheck` (`python -m attrlib.datacheck check ROOT`) collects them all.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info
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
# Where the files of image <id> live under the VOC2012 folder: (folder, suffix) per kind.
ITEM_FILES: dict[str, tuple[str, str]] = {
    "image": ("JPEGImages", ".jpg"),
    "annotation": ("Annotations", ".xml"),
    "mask": ("SegmentationClass", ".png"),
}
CACHE_BYTES = 2**30  # default budget of each data set's cache (see ItemCache)


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


def split_path(root: str | Path, split: str, kind: str = "Main") -> Path:
    """`root/ImageSets/<kind>/<split>.txt`, the listing of a split."""
    return check_root(root) / "ImageSets" / kind / f"{split}.txt"


def read_split(root: str | Path, split: str, kind: str = "Main") -> list[str]:
    """Image ids listed in `root/ImageSets/<kind>/<split>.txt` (first column of each line).

    FileNotFoundError when the file is missing, ValueError when it lists no image.
    """
    path = split_path(root, split, kind)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no images")
    return ids


def item_paths(root: Path, ids: Sequence[str], kind: str) -> list[Path]:
    """The `kind` file ("image", "annotation" or "mask") of each image id."""
    folder, suffix = ITEM_FILES[kind]
    return [root / folder / f"{i}{suffix}" for i in ids]


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


def check_mask(
    mask: torch.Tensor, image_size: Sequence[int], num_classes: int, path: Path, image_path: Path
) -> None:
    """ValueError unless `mask` (1, H, W) has the image's (H, W) and only values 0..K and 255.

    A value above K would be no class and no void: `class_masks` would silently count its
    pixels as background of every class.
    """
    if tuple(mask.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"{path}: mask size {tuple(mask.shape[-2:])} (H, W) does "
            f"not match image {image_path} size {tuple(image_size)}"
        )
    bad = mask[(mask > num_classes) & (mask != VOID)].unique()  # (n,) sorted
    if bad.numel():
        shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.numel() > 5 else "")
        raise ValueError(
            f"{path}: mask values {shown} are neither 0 (background), 1..{num_classes} "
            f"(the classes) nor {VOID} (void)"
        )


def missing_file_message(kind: str, path: Path, listing: Path) -> str:
    """What is wrong when `listing` names an image whose `kind` file `path` does not exist."""
    return f"{kind} {path} listed in {listing} not found"


def _require_files(paths: Sequence[Path], listing: Path, kind: str) -> None:
    """FileNotFoundError naming the first missing file (and how many are missing)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise FileNotFoundError(missing_file_message(kind, missing[0], listing) + more)


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


class ItemCache:
    """Items of a data set kept after their first decode, in the main process, within a budget.

    Main process only: a DataLoader worker's copy would die with the worker at the end of
    its epoch (`engine.fit` starts workers afresh each epoch, persistent_workers=False), and
    the next epoch's shuffle hands it other images anyway; until then each worker held its
    share of the split, decoded. So with workers the training split is decoded in the
    workers every epoch, beside training, and with none (the smoke and default profiles)
    later epochs read the cache. What the main process did cache before a loader forks its
    workers, they read without a copy. Within `max_bytes` of tensor storage: past it, items
    are decoded on every access, so a real-VOC-sized split cannot fill the machine's memory.

    Measured on 2026-12-02 with `benchmarks/data_memory.py` (2-core CPU, Python 3.11, fork):
    one DataLoader pass over 11,540 synthetic training images of VOC's mean size (0.536 MiB
    each decoded, 6.2 GiB in all) as TrainViews at 227 px, peak of the main process's RSS
    plus the workers' private pages. With 2 workers: 7,630 MiB with the former per-worker
    cache (6,935 MiB of it in the workers), 1,097 MiB with this one, 1,064 MiB with none.
    With no workers: 7,583 MiB before, 2,055 MiB now (1,907 images kept in 1 GiB), 935 MiB
    with none. Cached or not, with or without workers, the batches are the same (tested).
    """

    def __init__(self, size: int, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0  # storage held by the kept items
        self._items: list[tuple[torch.Tensor, ...] | None] = [None] * size

    def __len__(self) -> int:
        """Number of items kept."""
        return sum(item is not None for item in self._items)

    def __getstate__(self) -> dict:
        # A worker started by spawn or forkserver (not fork) receives its data set pickled:
        # it starts with an empty cache rather than a copy of this process's.
        return {**self.__dict__, "nbytes": 0, "_items": [None] * len(self._items)}

    def get(self, index: int) -> tuple[torch.Tensor, ...] | None:
        return self._items[index]

    def put(self, index: int, item: tuple[torch.Tensor, ...]) -> None:
        """Keep `item` unless in a DataLoader worker or past the budget (then it is dropped)."""
        if get_worker_info() is not None or self._items[index] is not None:
            return
        size = sum(t.untyped_storage().nbytes() for t in item)
        if self.nbytes + size <= self.max_bytes:
            self._items[index] = item
            self.nbytes += size


class VOCClassification(Dataset):
    """Multi-label classification: items (image float (3, H, W) after `transform`, labels (K,)).

    `transform=None` only converts to float in [0, 1]. `cache=True` keeps the decoded uint8
    images after first access, in the main process and up to `cache_bytes` (`ItemCache`);
    results are unchanged, since transforms run on every access.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: Sequence[str] | None = None,
        transform: v2.Transform | None = None,
        cache: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.root = check_root(root)
        self.split = split
        self.classes = tuple(classes) if classes is not None else load_classes(self.root)
        self.ids = read_split(self.root, split, "Main")
        listing = split_path(self.root, split, "Main")
        self.image_paths = item_paths(self.root, self.ids, "image")
        xml_paths = item_paths(self.root, self.ids, "annotation")
        _require_files(self.image_paths, listing, "image")
        _require_files(xml_paths, listing, "annotation")
        self.labels = torch.stack([parse_labels(p, self.classes) for p in xml_paths])  # (N, K)
        self.transform = transform
        self.cache = ItemCache(len(self.ids), cache_bytes if cache else 0)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> torch.Tensor:
        """Decoded image `index`, uint8 (3, H, W), from the cache when it holds it."""
        item = self.cache.get(index)
        if item is not None:
            return item[0]
        image = read_image(self.image_paths[index])  # (3, H, W) uint8
        self.cache.put(index, (image,))
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
    resized item is kept after its first access (main process, up to `cache_bytes`:
    `ItemCache`) and its image returned again (do not modify it in place).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        classes: Sequence[str] | None = None,
        size: int = 227,
        cache: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.root = check_root(root)
        self.split = split
        self.size = size
        self.classes = tuple(classes) if classes is not None else load_classes(self.root)
        self.ids = read_split(self.root, split, "Segmentation")
        listing = split_path(self.root, split, "Segmentation")
        self.image_paths = item_paths(self.root, self.ids, "image")
        self.mask_paths = item_paths(self.root, self.ids, "mask")
        xml_paths = item_paths(self.root, self.ids, "annotation")
        _require_files(self.image_paths, listing, "image")
        _require_files(self.mask_paths, listing, "mask")
        _require_files(xml_paths, listing, "annotation")
        self.labels = torch.stack([parse_labels(p, self.classes) for p in xml_paths])  # (N, K)
        self.transform = eval_transform(size)
        # resized items, not decoded files: the transform is deterministic, and an evaluation
        # reads the same images once per model and method
        self.cache = ItemCache(len(self.ids), cache_bytes if cache else 0)

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded image uint8 (3, H, W) and mask uint8 (1, H, W), checked (`check_mask`)."""
        image = read_image(self.image_paths[index])  # (3, H, W)
        mask = read_mask(self.mask_paths[index])  # (1, H, W)
        check_mask(
            mask,
            image.shape[-2:],
            len(self.classes),
            self.mask_paths[index],
            self.image_paths[index],
        )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item = self.cache.get(index)
        if item is None:
            image, mask = self.raw(index)
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            # the mask kept as uint8, an eighth of int64's bytes
            item = (image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0])
            self.cache.put(index, item)  # (3, S, S) float, (S, S) uint8
        image, mask = item
        return image, self.labels[index], mask.long()  # (3, S, S), (K,), (S, S) int64
