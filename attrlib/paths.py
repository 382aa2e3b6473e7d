"""The repository root: every relative path of a profile, config or notebook names a file
under it, whatever the working directory (JupyterLab starts kernels in notebooks/)."""

from __future__ import annotations

import os
from pathlib import Path

# attrlib/ sits in the repository (installed editable, as the Makefile does)
ROOT = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The checkout holding this package, or the working directory when installed elsewhere."""
    return (
        ROOT
        if (ROOT / "pyproject.toml").is_file() and (ROOT / "notebooks").is_dir()
        else Path.cwd()
    )


def work_in_repo_root() -> None:
    """Make the repository root the working directory.

    Notebooks call this first: a kernel JupyterLab starts in notebooks/ then reads and writes
    the same files (data/, runs/) as the kernels `make` starts in the root.
    """
    os.chdir(repo_root())
