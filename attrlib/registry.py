"""One tiny registry type: attribution methods, matching losses and pruning criteria are entries.

A registry is the only list of its names: evaluation defaults, notebook defaults and the
paper's columns read it, so one decorated function is a new method end to end. Plugins are
modules that register entries when imported (`load_plugins`, the notebooks' `plugins`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict filled by a decorator; lookups of unknown names list the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """In registration order: built-ins in their paper order, then plugins'."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def load_plugins(modules: Sequence[str]) -> None:
    """Import each module (dotted name) so that its decorators register their entries."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                f"plugin {name!r} not found ({e}); give an importable module name, "
                "e.g. a module on PYTHONPATH or in the working folder"
            ) from None
