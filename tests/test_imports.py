"""The import graph of attrlib, read from the source with `ast`: no cycles (function-level
imports count: they only postpone a cycle), and `attrlib.masks` below `engine` and `prune`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "attrlib"

# Cycles allowed on purpose, as (importer, imported) edges left out of the check; none today.
# Remove an entry when its cycle goes (test_known_cycle_edges_still_exist says so).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """`{dotted module name: file}` for attrlib/*.py and attrlib/*/*.py."""
    files = sorted(package.glob("*.py")) + sorted(package.glob("*/*.py"))
    names = {}
    for path in files:
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """attrlib modules that importing `name` executes directly, wherever the import sits.

    `from a.b import c` counts `a.b.c` when that is a module, else `a.b`. Importing `a.b.c`
    also runs the packages `a` and `a.b` first; those implicit edges are left out for the
    packages `name` itself lives in (they are already being imported when `name` runs), but
    a module that names its own package explicitly (`from a.b import x` in `a.b.c`) counts.
    """
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    # a module's `if __name__ == "__main__":` block is its script: run as `python -m`, the
    # module is `__main__`, and what that block imports imports the module anew, not back
    tree.body = [node for node in tree.body if not _is_main_block(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importer's package
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.add(candidate if candidate in known else base)
    explicit, implicit = set(), set()
    for target in targets:
        while target and target not in known:  # `import attrlib.x.y` of an attribute path
            target = target.rpartition(".")[0]
        if target:  # else not attrlib
            explicit.add(target)
            implicit.update(a for a in _ancestors(target) if a in known)
    return (explicit | (implicit - set(_ancestors(name)))) - {name}


def _is_main_block(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(
            isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators
        )
    )


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """`{module: modules it imports}` over the package's modules."""
    files = module_files(package)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules `start` imports directly or through others (not itself unless in a cycle)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every edge (a, b) that lies on a cycle: b leads back to a."""
    return sorted(
        (a, b) for a, targets in graph.items() for b in targets if a in reachable(graph, b)
    )


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "attrlib.architectures" in graph["attrlib.engine"]  # top-level `from attrlib.x import y`
    assert "attrlib.distill" in graph["attrlib.config"]  # function-level import
    assert "attrlib.attribution.gradcam" in graph["attrlib.attribution"]  # submodule by name
    assert "attrlib.attribution.base" in graph["attrlib.attribution.gradcam"]
    assert "attrlib.stages" not in graph["attrlib.targets"]  # the stage module imports it
    assert "attrlib.prune" in graph["attrlib.stages"]
    assert "attrlib.prune" not in graph["attrlib.prune.structured"]  # its own package


def test_the_graph_finds_cycles_through_relative_and_late_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def late():\n    from pkg.a import thing\n",
        "f.py": 'import pkg.a\nif __name__ == "__main__":\n    from pkg.c import x\n',
        "c.py": "import pkg.sub.d\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..b import late\nfrom . import e\n",
        "sub/e.py": "import os\n",
    }
    for name, source in sources.items():
        (package / name).write_text(source)
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.sub", "pkg.sub.d"}  # the package runs first
    assert graph["pkg.sub.d"] == {"pkg.b", "pkg.sub.e"}
    assert graph["pkg.sub.e"] == set()
    assert graph["pkg.f"] == {"pkg.a"}  # its script block is not an import of it
    assert cycles(graph) == [("pkg.a", "pkg.b"), ("pkg.b", "pkg.a")]


def test_no_import_cycles() -> None:
    graph = import_graph()
    for a, b in KNOWN_CYCLE_EDGES:
        graph.get(a, set()).discard(b)
    found = cycles(graph)
    assert not found, f"attrlib modules that import each other (importer, imported): {found}"


def test_known_cycle_edges_still_exist() -> None:
    graph = import_graph()
    gone = sorted((a, b) for a, b in KNOWN_CYCLE_EDGES if b not in graph.get(a, set()))
    assert not gone, f"no longer imported, remove from KNOWN_CYCLE_EDGES: {gone}"


def test_masks_sit_below_engine_and_prune() -> None:
    graph = import_graph()
    below = reachable(graph, "attrlib.masks")
    assert not {m for m in below if m == "attrlib.engine" or m.startswith("attrlib.prune")}
    for name in graph:
        if name == "attrlib.prune" or name.startswith("attrlib.prune."):
            assert "attrlib.engine" not in reachable(graph, name), name
    # engine may reach prune through config (criterion names are checked there), not itself
    assert not any(m.startswith("attrlib.prune") for m in graph["attrlib.engine"])
    assert "attrlib.masks" in graph["attrlib.engine"] and "attrlib.masks" in graph["attrlib.prune"]


def test_importing_masks_loads_neither_engine_nor_prune() -> None:
    """The same at run time, in a fresh interpreter: nothing imports them behind ast's back."""
    code = (
        "import sys, attrlib.masks\n"
        "bad = sorted(m for m in sys.modules if m == 'attrlib.engine' or "
        "m.startswith('attrlib.prune'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_script_block_imports_a_module_above_its_own(tmp_path: Path) -> None:
    """A module's `python -m` block runs its own command: importing a module that imports it
    back (e.g. the stage that wires it) would load the module twice under two names."""
    files = module_files()
    graph = import_graph()
    upward = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        blocks = [node for node in tree.body if _is_main_block(node)]
        if not blocks:
            continue
        script = ast.Module(body=[stmt for block in blocks for stmt in block.body], type_ignores=[])
        only = tmp_path / path.name  # the block's body alone, read like a module
        only.write_text(ast.unparse(script))
        targets = imports_of(name, only, set(files))
        upward += [(name, t) for t in targets if name in reachable(graph, t) or t == name]
    assert not upward, f"script blocks importing a module above their own: {upward}"
