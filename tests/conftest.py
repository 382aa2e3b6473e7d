"""Shared fixtures: one tiny synthetic VOC tree per test session, copied when a test corrupts it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from attrlib.synthvoc import generate

SYNTH_PARAMS = {"n_train": 24, "n_val": 8, "image_size": 48, "seed": 0}


@pytest.fixture(scope="session")
def synth_params() -> dict:
    """Parameters of the session's synthetic set (n_train, n_val, image_size, seed)."""
    return dict(SYNTH_PARAMS)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VOC2012 folder of a tiny synthetic set (24 train / 8 val, ~48 px); do not modify."""
    root = tmp_path_factory.mktemp("synthvoc")
    return generate(root, **SYNTH_PARAMS, workers=1, progress=False)


def copy_voc_tree(voc: Path, dest: Path) -> Path:
    """Copy a VOC2012 folder to `dest/VOCdevkit/VOC2012` and return the copy's VOC2012 path."""
    target = dest / "VOCdevkit" / "VOC2012"
    shutil.copytree(voc, target)
    return target


@pytest.fixture
def tiny_voc_tree(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic VOC2012 folder that a test may corrupt."""
    return copy_voc_tree(synth_root, tmp_path)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and threads stall for seconds on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
