"""A synthetic data set written in the exact PASCAL VOC2012 folder layout.

Ten shape-defined classes on textured, cluttered backgrounds: colour, rotation, scale and
position are random, so a classifier can only succeed by looking at the object's shape,
which is what makes localization metrics (pointing game, AUC) meaningful (SPEC: Data).
The same loader (`attrlib.data`) reads this tree and the real VOC2012.

Layout written under `root/VOCdevkit/VOC2012/`:
  JPEGImages/<id>.jpg, Annotations/<id>.xml, SegmentationClass/<id>.png (palette PNG,
  index = class + 1, 0 background, 255 void border), ImageSets/Main/{split}.txt,
  ImageSets/Main/<cls>_{split}.txt, ImageSets/Segmentation/{split}.txt, synthvoc.json.

Image `i` is rendered from its own RNG seeded by (seed, i), so the files are byte-identical
for any number of worker processes. The manifest `synthvoc.json` is written last: a tree
without it is incomplete.

Deviation from VOC: objects never leave the image (truncated = 0, difficult = 0), and an
object that would hide too much of an earlier one is re-placed (or dropped) instead of
being drawn and left unlabelled, so every visible shape is labelled.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from attrlib.progress import progress_bar

VERSION = 4  # bump whenever the rendered images change
SYNTH_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "arrow",
    "semicircle",
    "bar",
    "crescent",
)
SUBDIRS = ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets")
MANIFEST = "synthvoc.json"
MARKER = ".synthvoc-incomplete"  # present while a generation is running or was interrupted

SUPERSAMPLE = 4  # objects and clutter are drawn at 4x, then box-downsampled (anti-aliasing)
ASPECT_JITTER = (0.85, 1.15)  # width and height each in this range x image_size
# Rotations within +-30 degrees: every shape still appears in many poses, but a from-scratch
# VGG learns the classes in the few CPU minutes the default study has (full 360-degree
# rotation left the teacher near chance after 10 epochs).
MAX_ROTATION = math.radians(30)
# Large objects, at most two: a from-scratch VGG16-BN at 64 px learns these classes in the
# few CPU minutes of the default study (with 1-3 objects of 0.32-0.58 the teacher was still
# near chance after 10 epochs), and a 4x4 attribution map can point at them.
OBJECT_SIZE = (0.42, 0.7)  # circumscribed-circle diameter, fraction of the shorter side
MAX_OBJECTS = 2
MIN_VISIBLE = 0.6  # every object keeps at least this fraction of its area visible
PLACEMENT_TRIES = 20
MIN_CONTRAST = 90.0  # RGB distance between an object's colour and the background under it
NOISE_STD = 6.0  # grey levels of per-pixel noise added last
VOID = 255


# ----------------------------------------------------------------------------- shapes


def _normalise(poly: np.ndarray) -> np.ndarray:
    """Centre a polygon (N, 2) on its bounding box and scale it into the unit circle."""
    poly = poly - (poly.min(0) + poly.max(0)) / 2
    return poly / np.linalg.norm(poly, axis=1).max()


def _arc(t0: float, t1: float, n: int, cx: float = 0.0, r: float = 1.0) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + r * np.cos(t), r * np.sin(t)], 1)  # (n, 2)


def _crescent(d: float = 0.7, rb: float = 0.8) -> np.ndarray:
    """Unit disc minus a disc of radius `rb` centred at (d, 0): a moon thick enough to hold
    its bounding-box centre."""
    x = (1 + d * d - rb * rb) / (2 * d)  # intersection abscissa
    y = math.sqrt(1 - x * x)
    theta = math.atan2(y, x)
    outer = _arc(theta, 2 * math.pi - theta, 48)  # upper -> left -> lower, on the unit disc
    psi_lo, psi_hi = math.atan2(-y, x - d) + 2 * math.pi, math.atan2(y, x - d)
    inner = _arc(psi_lo, psi_hi, 32, cx=d, r=rb)  # lower -> left of B -> upper
    return np.concatenate([outer, inner])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], 1)  # image y points down


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.arange(2 * points) * math.pi / points - math.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _regular(n: int) -> np.ndarray:
    t = np.arange(n) * 2 * math.pi / n - math.pi / 2
    return np.stack([np.cos(t), np.sin(t)], 1)


def _cross(w: float = 0.3) -> np.ndarray:
    return np.array(
        [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w)]
        + [(-1, -w), (-w, -w)],
        dtype=float,
    )


_ARROW = [(-1, -0.2), (0.1, -0.2), (0.1, -0.6), (1, 0), (0.1, 0.6), (0.1, 0.2), (-1, 0.2)]
_BAR = [(-1, -0.31), (1, -0.31), (1, 0.31), (-1, 0.31)]  # aspect 3.2: stays a bar after resizes

# Unit-circle templates (N, 2); chosen to stay distinct at ~20 px and to contain their own
# centre, so a coarse attribution map pointing at an object's middle lands on the object.
SHAPES: dict[str, np.ndarray] = {
    name: _normalise(np.asarray(poly, dtype=float))
    for name, poly in {
        "circle": _regular(64),
        "square": _regular(4),
        "triangle": _regular(3),
        "star": _star(),
        "cross": _cross(),
        "heart": _heart(),
        "arrow": _ARROW,
        "semicircle": np.concatenate([_arc(0, math.pi, 33), [[1.0, 0.0]]]),
        "bar": _BAR,
        "crescent": _crescent(),
    }.items()
}
assert tuple(SHAPES) == SYNTH_CLASSES


# ----------------------------------------------------------------------------- rendering


@functools.cache
def voc_palette() -> tuple[int, ...]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as in the devkit's labelcolormap."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return tuple(palette)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour gradient plus low-frequency colour blotches, float (h, w, 3)."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = xx * math.cos(angle) + yy * math.sin(angle)  # (h, w)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]  # (h, w, 3)
    grid = rng.integers(4, 7)
    blotch = np.clip(128 + rng.normal(0, 40, (grid, grid, 3)), 0, 255).astype(np.uint8)
    blotch = Image.fromarray(blotch).resize((w, h), Image.BICUBIC)
    return img + np.asarray(blotch, dtype=float) - 128  # (h, w, 3)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Thin random line segments and small dots (coordinates at supersampled scale)."""
    s, side = SUPERSAMPLE, min(h, w) / SUPERSAMPLE
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        length = rng.uniform(0.1, 0.45) * side * s
        angle = rng.uniform(0, 2 * math.pi)
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(s, 2 * s + 1)))
    for _ in range(rng.integers(3, 11)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.01, 0.03, 2) * side * s
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)


def _place(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """Random rotation, scale and position of a class template, polygon (N, 2) in 4x pixels."""
    side = min(h, w)  # 1x pixels
    radius = rng.uniform(*OBJECT_SIZE) * side / 2
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    cx = rng.uniform(radius + 1, w - radius - 1)  # the whole object stays inside the image
    cy = rng.uniform(radius + 1, h - radius - 1)
    return (SHAPES[name] @ rot.T * radius + (cx, cy)) * SUPERSAMPLE  # (N, 2)


def _rasterise(poly: np.ndarray, h4: int, w4: int) -> np.ndarray:
    layer = Image.new("L", (w4, h4), 0)
    ImageDraw.Draw(layer).polygon([tuple(p) for p in poly], fill=1)
    return np.asarray(layer, dtype=bool)  # (h4, w4)


def _count(area: np.ndarray) -> int:
    return int(np.count_nonzero(area))


def _block_count(area: np.ndarray) -> np.ndarray:
    """Covered sub-pixels in each SUPERSAMPLE^2 block of a (h4, w4) bool map -> (h, w) int16."""
    scaled = Image.fromarray(area.view(np.uint8) * np.uint8(SUPERSAMPLE * SUPERSAMPLE))
    return np.asarray(scaled.reduce(SUPERSAMPLE), dtype=np.int16)  # exact: a mean of 0s and 16s


def _colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A uniformly random colour, re-drawn until it stands out from `under` (mean RGB)."""
    best, best_dist = None, -1.0
    for _ in range(PLACEMENT_TRIES):
        colour = rng.integers(0, 256, 3)
        dist = float(np.linalg.norm(colour - under))
        if dist >= MIN_CONTRAST:
            return tuple(int(v) for v in colour)
        if dist > best_dist:
            best, best_dist = colour, dist
    return tuple(int(v) for v in best)


def _void_border(instances: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds two instances: a ~2 px band on every boundary."""
    padded = np.pad(instances, 1, mode="edge")
    h, w = instances.shape
    shifts = [padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    stack = np.stack(shifts)  # (9, h, w)
    return stack.max(0) != stack.min(0)  # (h, w)


def render(
    index: int, seed: int, image_size: int
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]], np.ndarray]:
    """Draw image `index` of the set seeded by `seed`: pure, deterministic.

    Returns the image (H, W, 3) uint8 with H, W in [0.85, 1.15] x image_size; the objects
    as (class name, (xmin, ymin, xmax, ymax)) with VOC's 1-based inclusive pixel boxes of
    the visible part; and the class mask (H, W) uint8 (0 background, k+1 class k, 255 void).
    """
    rng = np.random.default_rng([seed, index])
    w = int(round(image_size * rng.uniform(*ASPECT_JITTER)))
    h = int(round(image_size * rng.uniform(*ASPECT_JITTER)))
    s = SUPERSAMPLE
    h4, w4 = h * s, w * s

    background = np.clip(_background(rng, h, w), 0, 255).astype(np.uint8)  # (h, w, 3)
    # Nearest 4x upsampling: the final box-downsample gives the background back exactly.
    canvas = Image.fromarray(background).resize((w4, h4), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, h4, w4)

    names: list[str] = []
    visible: list[np.ndarray] = []  # (h4, w4) bool per object, what is left uncovered
    full: list[int] = []  # each object's whole area, 4x pixels
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        name = SYNTH_CLASSES[rng.integers(len(SYNTH_CLASSES))]
        for _ in range(PLACEMENT_TRIES):
            poly = _place(rng, name, h, w)
            area = _rasterise(poly, h4, w4)
            kept = [_count(v & ~area) for v in visible]
            if all(k >= MIN_VISIBLE * a for k, a in zip(kept, full, strict=True)):
                break
        else:
            continue  # no placement leaves the earlier objects visible enough: drop it
        x0, y0 = np.floor(poly.min(0)).astype(int).clip(0)
        x1, y1 = np.ceil(poly.max(0)).astype(int) + 1
        crop = np.asarray(canvas.crop((x0, y0, x1, y1)))  # (y1-y0, x1-x0, 3)
        under = crop[area[y0:y1, x0:x1]].mean(0)  # (3,) mean colour under the object
        draw.polygon([tuple(p) for p in poly], fill=_colour(rng, under))
        visible = [v & ~area for v in visible] + [area]
        full.append(_count(area))
        names.append(name)

    image = np.asarray(canvas.reduce(s), dtype=float)  # (h, w, 3) box filter = anti-aliasing
    image = image + rng.normal(0, NOISE_STD, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)  # (h, w, 3)

    # Each 1x pixel goes to whatever covers most of its 4x4 block (background included).
    coverage = [_block_count(v) for v in visible]  # each (h, w), 0..16 sub-pixels
    background_cov = s * s - sum(coverage, np.zeros((h, w), dtype=np.int16))
    instances = np.argmax(np.stack([background_cov, *coverage]), 0).astype(np.uint8)  # (h, w)

    mask = np.zeros((h, w), dtype=np.uint8)
    objects = []
    for i, name in enumerate(names):
        pixels = instances == i + 1
        if not pixels.any():
            continue
        mask[pixels] = SYNTH_CLASSES.index(name) + 1
        ys, xs = np.nonzero(pixels)
        objects.append(
            (name, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1))
        )
    mask[_void_border(instances)] = VOID
    return image, objects, mask


# ----------------------------------------------------------------------------- files


def image_id(index: int) -> str:
    """VOC-style id of image `index` (0-based): '2012_000001', ..."""
    return f"2012_{index + 1:06d}"


def annotation_xml(
    name: str, width: int, height: int, objects: Sequence[tuple[str, Sequence[int]]]
) -> str:
    """A VOC2012 annotation document for one image."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = f"{name}.jpg"
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = "attrlib synthetic VOC"
    ET.SubElement(source, "annotation").text = "attrlib.synthvoc"
    ET.SubElement(source, "image").text = "rendered"
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "1"
    for cls, box in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode") + "\n"


def _write_one(job: tuple[str, int, int, int]) -> tuple[int, ...]:
    """Render image `index` and write its JPEG, XML and mask; returns its class indices."""
    voc, index, seed, image_size = job
    voc_path = Path(voc)
    name = image_id(index)
    image, objects, mask = render(index, seed, image_size)
    Image.fromarray(image).save(voc_path / "JPEGImages" / f"{name}.jpg", quality=95, subsampling=0)
    png = Image.fromarray(mask, mode="P")
    png.putpalette(list(voc_palette()))
    png.save(voc_path / "SegmentationClass" / f"{name}.png")
    xml = annotation_xml(name, image.shape[1], image.shape[0], objects)
    (voc_path / "Annotations" / f"{name}.xml").write_text(xml)
    return tuple(sorted({SYNTH_CLASSES.index(cls) for cls, _ in objects}))


def _write_lists(
    voc: Path, splits: dict[str, list[str]], present: dict[str, tuple[int, ...]]
) -> None:
    """ImageSets/Main (+ per-class files, '<id> 1' / '<id> -1') and ImageSets/Segmentation."""
    main, seg = voc / "ImageSets" / "Main", voc / "ImageSets" / "Segmentation"
    main.mkdir(parents=True, exist_ok=True)
    seg.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        listing = "".join(f"{i}\n" for i in ids)
        (main / f"{split}.txt").write_text(listing)
        (seg / f"{split}.txt").write_text(listing)
        for k, cls in enumerate(SYNTH_CLASSES):
            lines = "".join(f"{i} {1 if k in present[i] else -1:2d}\n" for i in ids)
            (main / f"{cls}_{split}.txt").write_text(lines)


def _params(n_train: int, n_val: int, image_size: int, seed: int) -> dict:
    return {
        "generator": "attrlib.synthvoc",
        "version": VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "image_size": image_size,
        "seed": seed,
        "classes": list(SYNTH_CLASSES),
    }


def _check_existing(voc: Path, params: dict, overwrite: bool) -> bool:
    """True when `voc` already holds this exact data set; raise when it must not be touched."""
    from attrlib.io import read_json

    manifest = voc / MANIFEST
    if manifest.is_file():
        old = read_json(manifest)
        differing = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        if not differing:
            return True
        if not overwrite:
            fields = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differing.items())
            raise FileExistsError(
                f"{manifest} was written with other parameters ({fields}); "
                "pass overwrite=True (--overwrite) to regenerate"
            )
    elif voc.is_dir() and any(voc.iterdir()) and not (voc / MARKER).exists():
        raise FileExistsError(
            f"{voc} is not empty and has no {MANIFEST}: not a synthvoc tree, refusing to write "
            "into it (delete it by hand if it is disposable)"
        )
    return False


def generate(
    root: str | Path,
    n_train: int,
    n_val: int,
    image_size: int,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic set under `root/VOCdevkit/VOC2012` and return that folder.

    Images 0..n_train-1 form `train`, the next n_val form `val`. A no-op when the manifest
    already records the same parameters; FileExistsError when it records others, unless
    `overwrite`. `workers=None` uses every CPU; the output does not depend on it.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if image_size < 24:
        raise ValueError(f"image_size must be >= 24 px, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    from attrlib.io import write_json_atomic

    voc = Path(root) / "VOCdevkit" / "VOC2012"
    params = _params(n_train, n_val, image_size, seed)
    if _check_existing(voc, params, overwrite):
        return voc

    # Start from a clean tree; the marker says "ours, incomplete" until the manifest exists.
    voc.mkdir(parents=True, exist_ok=True)
    (voc / MARKER).write_text("generation in progress or interrupted\n")
    (voc / MANIFEST).unlink(missing_ok=True)
    for sub in SUBDIRS:
        shutil.rmtree(voc / sub, ignore_errors=True)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass"):
        (voc / sub).mkdir()

    total = n_train + n_val
    workers = max(1, min(workers or os.cpu_count() or 1, total))
    jobs = [(str(voc), i, seed, image_size) for i in range(total)]
    bar = progress_bar(total=total, desc="synthvoc", unit="img", enabled=progress)
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_write_one(job))
            bar.update()
    else:
        # spawn: workers never inherit a parent's torch/OpenMP state
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = []
            for r in pool.imap(_write_one, jobs, chunksize=max(1, min(64, total // (4 * workers)))):
                results.append(r)
                bar.update()
    bar.close()

    ids = [image_id(i) for i in range(total)]
    present = dict(zip(ids, results, strict=True))
    splits = {"train": ids[:n_train], "val": ids[n_train:], "trainval": ids}
    _write_lists(voc, splits, present)
    write_json_atomic(voc / MANIFEST, params)  # last: its presence means "complete"
    (voc / MARKER).unlink()
    return voc


def ensure_generated(data_root: str | Path, prof, seed: int = 0) -> Path | None:
    """Generate profile `prof`'s data set when `data_root` is its folder (where `make data`
    puts it, the configs' default) and it is not there yet, as `make data` would; a no-op
    for any other folder (real data, a user's tree). Returns the folder it checked."""
    from attrlib.config import synthetic_root

    if prof.synth is None or Path(data_root) != Path(synthetic_root(prof)):
        return None
    spec = prof.synth
    return generate(Path(data_root).parents[1], spec.n_train, spec.n_val, spec.image_size, seed)


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: generate the synthetic set of a profile (`python -m attrlib.synthvoc`)."""
    from attrlib.config import get_profile

    parser = argparse.ArgumentParser(
        prog="python -m attrlib.synthvoc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", default="data/synthvoc", help="folder that will hold VOCdevkit/")
    parser.add_argument("--profile", default="default", help="a name or a .yaml file")
    parser.add_argument("--set", default="", help="overrides: 'synth.n_train=500 ...'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="default: all CPUs")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        spec = get_profile(args.profile, args.set).synth
    except KeyError as e:
        parser.error(str(e.args[0]))
    except ValueError as e:  # attrlib.profiles.ProfileError
        parser.error(str(e))
    if spec is None:
        parser.error(f"profile {args.profile!r} has no synthetic data spec (it reads real VOC)")
    voc = generate(
        args.root,
        spec.n_train,
        spec.n_val,
        spec.image_size,
        args.seed,
        args.workers,
        args.overwrite,
    )
    print(voc)
    return voc


if __name__ == "__main__":
    main()
