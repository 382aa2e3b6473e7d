"""Every `python -m attrlib.<module>` answers --help with its own name and purpose."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    p.parent.name if p.name == "__main__.py" else p.stem
    for p in (ROOT / "attrlib").rglob("*.py")
    if p.name == "__main__.py" or 'if __name__ == "__main__"' in p.read_text()
)


def _help(module: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", f"attrlib.{module}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_command_line_modules_are_found():
    assert {"nbrun", "profiles", "study", "synthvoc", "stages", "datacheck", "paper"} <= set(
        MODULES
    )


@pytest.mark.parametrize("module", MODULES)
def test_help_names_the_module_and_says_what_it_does(module):
    text = _help(module)
    assert text.startswith(f"usage: python -m attrlib.{module} ")
    usage_end = text.index("\n\n")
    description = text[usage_end:].strip().split("\n\n")[0]
    assert description and not description.startswith(("positional", "options")), text


def test_descriptions_differ():
    """(targets once showed the stages module's description)"""
    firsts = {m: _help(m).split("\n\n")[1].strip() for m in MODULES}
    assert len(set(firsts.values())) == len(firsts), firsts


def test_nbrun_lists_a_notebooks_parameters_with_defaults():
    out = subprocess.run(
        [sys.executable, "-m", "attrlib.nbrun", "--params", "notebooks/02_distill.ipynb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.strip().startswith('matching = "none"') and "sswa" in line for line in lines)
    assert any(line.strip() == "seed = 0" for line in lines)
