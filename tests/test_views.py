"""Training views drawn per (view epoch, image index): reproducible, torchvision's crop."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from attrlib.config import get_profile
from attrlib.data import MEAN, STD, VOCClassification
from attrlib.synthvoc import generate
from attrlib.views import (
    TrainViews,
    ViewCollate,
    ViewKeys,
    ViewSpec,
    channel_keep,
    make_views,
    view_params,
)

SPEC = ViewSpec(32, 0.5)
# sizes (H, W) of the random test images: square, wide, tall, smaller and larger than S
SIZES = [(40, 40), (35, 47), (48, 33), (24, 60), (64, 30), (31, 31), (80, 53), (20, 26)]
INDICES = [3, 17, 0, 42, 5, 11, 29, 8]  # image indices in a training split, unordered


def _images(sizes=SIZES, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    """A synthetic VOC2012 folder of the smoke profile's size (48 train / 16 val, ~40 px)."""
    spec = get_profile("smoke").synth
    root = tmp_path_factory.mktemp("smoke-views")
    return generate(root, spec.n_train, spec.n_val, spec.image_size, workers=1, progress=False)


# ----------------------------------------------------------------------------- reproducibility


def test_view_depends_only_on_spec_epoch_and_index():
    images = _images()
    batch = make_views(images, INDICES, 4, SPEC)
    assert batch.shape == (len(images), 3, SPEC.size, SPEC.size) and batch.dtype == torch.float32
    # alone, whatever torch's global RNG says
    for row, (image, index) in enumerate(zip(images, INDICES, strict=True)):
        torch.manual_seed(1000 + row)
        alone = make_views([image], [index], 4, SPEC)
        assert torch.equal(alone[0], batch[row]), f"row {row} alone differs"
    # another batch order
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = make_views([images[i] for i in order], [INDICES[i] for i in order], 4, SPEC)
    for pos, row in enumerate(order):
        assert torch.equal(shuffled[pos], batch[row]), f"row {row} moved to {pos} differs"
    # other batch mates (two of the images, next to images the first batch did not hold)
    others = _images([(44, 52), (37, 29)], seed=1)
    mixed = make_views([others[0], images[6], others[1], images[1]], [99, 29, 100, 17], 4, SPEC)
    assert torch.equal(mixed[1], batch[6]) and torch.equal(mixed[3], batch[1])


def test_views_change_with_the_epoch_and_the_seed():
    # aspects inside the ratio range: a crop of a (24, 60) image is (nearly) always the
    # deterministic central fallback, so only its flip could change
    images = _images([(40, 40), (35, 42), (48, 40), (31, 31), (80, 66), (20, 26), (57, 50)])
    indices = INDICES[: len(images)]
    base = make_views(images, indices, 0, SPEC)
    next_epoch = make_views(images, indices, 1, SPEC)
    other_seed = make_views(images, indices, 0, ViewSpec(32, 0.5, seed=1))
    for row in range(len(images)):
        assert not torch.equal(base[row], next_epoch[row]), f"row {row}: epochs 0, 1 equal"
        assert not torch.equal(base[row], other_seed[row]), f"row {row}: seeds 0, 1 equal"
    # the boxes themselves move, not only the flips
    sizes = [tuple(im.shape[-2:]) for im in images]
    boxes0, _ = view_params(SPEC, 0, indices, sizes)
    boxes1, _ = view_params(SPEC, 1, indices, sizes)
    assert (boxes0 != boxes1).any(dim=1).sum() >= len(images) - 1


# ----------------------------------------------------------------------------- the crop


def test_make_views_equal_torchvision_resized_crop_flip_normalize():
    images = _images(SIZES * 2, seed=2)
    indices = list(range(100, 100 + len(images)))
    for epoch in (0, 3):
        boxes, flips = view_params(SPEC, epoch, indices, [tuple(im.shape[-2:]) for im in images])
        assert boxes.shape == (len(images), 4) and flips.dtype == torch.bool
        assert 0 < int(flips.sum()) < len(images)  # both branches are exercised
        expected = []
        for image, (x0, y0, x1, y1), flip in zip(images, boxes.tolist(), flips, strict=True):
            assert all(float(v).is_integer() for v in (x0, y0, x1, y1))
            top, left, h, w = int(y0), int(x0), int(y1 - y0), int(x1 - x0)
            crop = TF.resized_crop(image, top, left, h, w, [SPEC.size, SPEC.size], antialias=True)
            if flip:
                crop = TF.horizontal_flip(crop)
            crop = TF.to_dtype(crop, torch.float32, scale=True)
            expected.append(TF.normalize(crop, list(MEAN), list(STD)))
        views = make_views(images, indices, epoch, SPEC)
        torch.testing.assert_close(views, torch.stack(expected), rtol=0, atol=1e-6)


def _fallback_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
    """torchvision's central-crop fallback, (top, left, h, w)."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "spec",
    [
        ViewSpec(32, 0.5),
        ViewSpec(16, 0.08, seed=3),
        ViewSpec(64, 1.0),
        ViewSpec(32, 0.25, ratio=(0.5, 2.0)),
    ],
    ids=["smoke", "voc-scale", "scale-1", "wide-ratio"],
)
def test_boxes_inside_image_with_area_and_aspect_in_range(spec):
    g = torch.Generator().manual_seed(7)
    n = 400
    sizes = [tuple(int(v) for v in torch.randint(8, 300, (2,), generator=g)) for _ in range(n)]
    sizes += [(10, 200), (200, 10), (1, 1), (2, 300)]  # extreme aspects: always the fallback
    indices = list(range(len(sizes)))
    boxes, _ = view_params(spec, 2, indices, sizes)
    r0, r1 = spec.ratio
    fallbacks = 0
    for (height, width), box in zip(sizes, boxes.tolist(), strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (height, width, box)
        top, left, h, w = y0, x0, y1 - y0, x1 - x0
        if (top, left, h, w) == _fallback_box(height, width, spec.ratio):
            fallbacks += 1
            continue
        # w = round(sqrt(t * a)), h = round(sqrt(t / a)) with t in [scale_min, 1] * area and
        # a in the ratio range: bounds on t and a, widened by the rounding
        area = height * width
        assert (w + 0.5) * (h + 0.5) >= spec.scale_min * area, (height, width, box)
        assert (w - 0.5) * (h - 0.5) <= area
        assert (w + 0.5) / max(h - 0.5, 1e-9) >= r0 and (w - 0.5) / (h + 0.5) <= r1, (h, w)
        if min(height, width) >= 100:  # rounding is negligible: the plain bounds hold
            assert spec.scale_min - 0.02 <= h * w / area <= 1.0
    assert fallbacks >= 3  # (10, 200), (200, 10), (2, 300) at least
    for height, width in [(10, 200), (200, 10)]:  # torchvision's fallback for these
        tv = RandomResizedCrop(spec.size, scale=(spec.scale_min, 1.0), ratio=spec.ratio)
        expected = tv.make_params([torch.zeros(3, height, width)])
        boxes, _ = view_params(spec, 0, [0], [(height, width)])
        x0, y0, x1, y1 = boxes[0].int().tolist()
        got = {"top": y0, "left": x0, "height": y1 - y0, "width": x1 - x0}
        assert got == expected


def test_crop_distribution_matches_torchvision():
    """Same algorithm as RandomResizedCrop.make_params: equal means of area share and log aspect."""
    height, width, n = 90, 120, 3000
    spec = ViewSpec(32, 0.3)
    boxes, _ = view_params(spec, 0, list(range(n)), [(height, width)] * n)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.manual_seed(0)
    tv = RandomResizedCrop(32, scale=(0.3, 1.0))
    params = [tv.make_params([torch.zeros(3, height, width)]) for _ in range(n)]
    tw = torch.tensor([p["width"] for p in params], dtype=torch.float32)
    th = torch.tensor([p["height"] for p in params], dtype=torch.float32)
    area = height * width
    # area share sd ~0.2, log aspect sd ~0.17: 3000 draws give mean sd ~0.004, 0.003
    assert abs((w * h).mean() / area - (tw * th).mean() / area) < 0.025
    assert abs((w / h).log().mean() - (tw / th).log().mean()) < 0.02
    # centres: uniform offsets make both means the image centre
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert abs(cx.mean().item() - width / 2) < 2.0


def test_flips_about_half_and_none_without_flip():
    sizes = [(40, 40)] * 2000
    _, flips = view_params(SPEC, 0, list(range(2000)), sizes)
    assert 0.45 < flips.float().mean().item() < 0.55  # binomial sd 0.011
    _, flips_next = view_params(SPEC, 1, list(range(2000)), sizes)
    assert 0.4 < (flips != flips_next).float().mean().item() < 0.6  # independent across epochs
    _, none = view_params(ViewSpec(32, 0.5, flip=False), 0, list(range(200)), sizes[:200])
    assert not none.any()


# ----------------------------------------------------------------------------- channel drops


@pytest.mark.parametrize(("channels", "fraction"), [(20, 0.3), (10, 0.25), (7, 0.5), (32, 0.0)])
def test_channel_keep_drops_exactly_round_f_c_per_row(channels, fraction):
    indices = [4, 0, 13, 7, 21, 2]
    keep = channel_keep(5, 1, indices, channels, fraction)
    assert keep.shape == (len(indices), channels) and keep.dtype == torch.float32
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    n_drop = round(fraction * channels)
    assert ((keep == 0).sum(dim=1) == n_drop).all()
    assert torch.equal(keep, channel_keep(5, 1, indices, channels, fraction))  # reproducible
    if n_drop:
        assert len({tuple(r.tolist()) for r in keep}) > 1  # rows differ


def test_channel_keep_rows_independent_and_fresh_per_epoch_and_seed():
    indices = [4, 0, 13, 7, 21, 2]
    keep = channel_keep(5, 1, indices, 20, 0.3)
    torch.manual_seed(123)  # not torch's RNG
    for row, index in enumerate(indices):
        alone = channel_keep(5, 1, [index], 20, 0.3)[0]
        assert torch.equal(alone, keep[row])
        mates = channel_keep(5, 1, [99, index, 55], 20, 0.3)[1]
        assert torch.equal(mates, keep[row])
    other_epoch = channel_keep(5, 2, indices, 20, 0.3)
    other_seed = channel_keep(6, 1, indices, 20, 0.3)
    for row in range(len(indices)):
        assert not torch.equal(other_epoch[row], keep[row]), f"row {row}: epochs 1, 2 equal"
        assert not torch.equal(other_seed[row], keep[row]), f"row {row}: seeds 5, 6 equal"


# ----------------------------------------------------------------------------- data loading


def _loader_batches(train: TrainViews, epoch: int, num_workers: int) -> list:
    loader = DataLoader(
        train,
        batch_size=10,
        shuffle=True,
        generator=torch.Generator().manual_seed(11),
        num_workers=num_workers,
        collate_fn=train.collate(epoch),
    )
    return list(loader)


def test_train_views_through_a_dataloader(smoke_root):
    spec = ViewSpec(32, 0.5, seed=2)
    voc = VOCClassification(smoke_root, "train")
    train = TrainViews(voc, spec)
    assert len(train) == len(voc) and train.ids == voc.ids
    assert isinstance(train.collate(3), ViewCollate)
    batches = _loader_batches(train, 3, num_workers=0)
    seen = []
    for views, labels, indices in batches:
        assert views.dtype == torch.float32 and views.shape[1:] == (3, 32, 32)
        assert indices.dtype == torch.int64 and len(indices) == len(views) == len(labels)
        assert torch.equal(labels, voc.labels[indices])
        for row, index in enumerate(indices.tolist()):
            alone = make_views([voc.image(index)], [index], 3, spec)[0]
            assert torch.equal(views[row], alone), f"image {index}"
        seen += indices.tolist()
    assert sorted(seen) == list(range(len(voc)))
    assert seen != sorted(seen)  # shuffled
    assert [len(b[0]) for b in batches] == [10, 10, 10, 10, 8]
    # the views of an epoch do not depend on the order a loader serves them in
    again = _loader_batches(train, 3, num_workers=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_dataloader_workers_give_the_same_batches(smoke_root):
    train = TrainViews(VOCClassification(smoke_root, "train"), SPEC)
    serial = _loader_batches(train, 1, num_workers=0)
    workers = _loader_batches(train, 1, num_workers=2)
    assert len(serial) == len(workers)
    for a, b in zip(serial, workers, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_view_collate_and_keys():
    images = _images()[:3]
    labels = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])]
    items = [(im, lab, i) for im, lab, i in zip(images, labels, [8, 2, 5], strict=True)]
    views, stacked, indices = ViewCollate(SPEC, 6)(items)
    assert torch.equal(views, make_views(images, [8, 2, 5], 6, SPEC))
    assert torch.equal(stacked, torch.stack(labels))
    assert torch.equal(indices, torch.tensor([8, 2, 5]))
    keys = ViewKeys(6, indices)
    assert keys.epoch == 6 and torch.equal(keys.indices, indices)


# ----------------------------------------------------------------------------- validation


def test_view_spec_validation():
    for size in (0, -3):
        with pytest.raises(ValueError, match=f"view size must be >= 1 px, got {size}"):
            ViewSpec(size, 0.5)
    for scale_min in (0.0, -0.1, 1.01, 2.0):
        with pytest.raises(ValueError, match="scale_min must be in"):
            ViewSpec(32, scale_min)
    spec = ViewSpec(1, 1.0, ratio=[0.5, 2])  # the bounds are valid; ratio stored as floats
    assert spec.ratio == (0.5, 2.0)
    assert spec.to_dict() == {
        "size": 1,
        "scale_min": 1.0,
        "seed": 0,
        "ratio": [0.5, 2.0],
        "flip": True,
    }
    assert math.isclose(ViewSpec(32, 0.5).ratio[1], 4 / 3)
