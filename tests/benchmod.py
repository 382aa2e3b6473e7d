"""Load a script of benchmarks/ as a module, so its tests can call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(filename: str) -> ModuleType:
    """`benchmarks/<filename>` imported under the name `bench_<stem>`."""
    path = BENCHMARKS / filename
    if str(BENCHMARKS) not in sys.path:  # as when run as a script: its siblings import
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
