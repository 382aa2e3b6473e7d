"""Progress bars for a person at a terminal, and nothing for a log or a notebook.

tqdm redraws its bar with a carriage return up to ten times a second. A terminal overwrites
the line in place; everything else keeps every redraw: a papermill kernel sends each one as
a stderr output of its own (one executed teacher notebook held 2,352 of them, 170 KB, in its
training cell), papermill's log prints each as a new line, and a redirected log grows the
same way. So a bar is drawn only where stderr is an interactive terminal. A Jupyter kernel's
stderr (ipykernel's stream, papermill's or JupyterLab's) never is, nor is a pipe or a file;
there the stages print one line per epoch or per model instead (attrlib.engine.fit,
attrlib.stages.evaluate_checkpoint).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether `stream` (default: the current `sys.stderr`, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # None (pythonw), closed, or not a file
        return False


def progress_bar(
    iterable: Iterable | None = None, *, desc: str, enabled: bool = True, **kwargs: Any
) -> tqdm:
    """`tqdm(iterable, desc=desc, **kwargs)`, drawn only when `enabled` and stderr is a
    terminal; otherwise a disabled bar that iterates, updates and closes silently."""
    return tqdm(iterable, desc=desc, disable=not (enabled and interactive()), **kwargs)
