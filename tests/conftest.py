"""Shared fixtures: one tiny synthetic VOC tree per test session, copied when a test corrupts it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from attrlib.synthvoc import generate

ROOT = Path(__file__).resolve().parent.parent
SYNTH_PARAMS = {"n_train": 24, "n_val": 8, "image_size": 48, "seed": 0}


@pytest.fixture(scope="session", autouse=True)
def outside_make():
    """Tests run make as a user does; under `make test` the parent's jobserver flags would
    reach the child makes and add a jobserver warning to the output some tests read."""
    saved = {k: os.environ.pop(k) for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL") if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def synth_params() -> dict:
    """Parameters of the session's synthetic set (n_train, n_val, image_size, seed)."""
    return dict(SYNTH_PARAMS)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VOC2012 folder of a tiny synthetic set (24 train / 8 val, ~48 px); do not modify."""
    root = tmp_path_factory.mktemp("synthvoc")
    return generate(root, **SYNTH_PARAMS, workers=1, progress=False)


def write_notebook(path: Path, *cells: str) -> Path:
    """A notebook at `path`: a parameters cell (out = 'x', n = 1), then one code cell each."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("out = 'x'\nn = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


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


@dataclass(frozen=True)
class SmokeStudy:
    """An uninterrupted `make all PROFILE=smoke`: its runs and data folders and its command."""

    runs: Path
    data: Path
    command: tuple[str, ...]


def smoke_make(runs: Path, data: Path, *extra: str) -> list[str]:
    """The smoke study's `make all` writing into `runs`, its synthetic data in `data`."""
    return ["make", "all", "PROFILE=smoke", f"RUNS={runs}", f"SYNTH_ROOT={data}", *extra]


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> SmokeStudy:
    """The whole smoke study, run once per session for the slow tests that read or compare
    with it; do not modify its folders."""
    base = tmp_path_factory.mktemp("smoke_study")
    command = smoke_make(base / "runs", base / "data")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SmokeStudy(base / "runs", base / "data", tuple(command))


@pytest.fixture
def plugin_sandbox(monkeypatch: pytest.MonkeyPatch):
    """Registries as they were before the test, and the extension plugin importable afresh:
    a test that imports a plugin in this process leaves no entries behind for later tests
    (registries are process state)."""
    import sys

    from attrlib.architectures import ARCHITECTURES
    from attrlib.attribution import FEATURE_METHODS, METHODS
    from attrlib.distill import MATCHINGS
    from attrlib.faithfulness import FAITHFULNESS
    from attrlib.prune import STRUCTURED_CRITERIA, UNSTRUCTURED_CRITERIA
    from attrlib.study import COMPRESSION, STAGES

    registries = (ARCHITECTURES, FEATURE_METHODS, METHODS, MATCHINGS, FAITHFULNESS)
    registries += (STRUCTURED_CRITERIA, UNSTRUCTURED_CRITERIA, COMPRESSION, STAGES)
    for registry in registries:
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    plugin = "tests.extension_plugin"
    had = sys.modules.pop(plugin, None)
    yield plugin
    sys.modules.pop(plugin, None)
    if had is not None:
        sys.modules[plugin] = had
