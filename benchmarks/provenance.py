"""When and at which commit a benchmark's result was measured, written beside its numbers."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def git_commit(short: bool = True) -> str | None:
    """HEAD of the repository this file is in (abbreviated unless `short` is False), or None
    outside git. A working tree with changes still names its HEAD: say so where it matters."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def stamp() -> dict[str, str | None]:
    """{"date": today (ISO), "commit": `git_commit()`}."""
    return {"date": datetime.date.today().isoformat(), "commit": git_commit()}
