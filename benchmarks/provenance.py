"""When and at which commit a benchmark's result was measured, written beside its numbers."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def stamp() -> dict[str, str | None]:
    """{"date": today (ISO), "commit": the short HEAD of this repository, or None outside
    git}. A working tree with changes still names its HEAD: say so where it matters."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"date": datetime.date.today().isoformat(), "commit": commit}
