"""The README's Layout section lists every module of src/lymphomil, one line each, and nothing
that is not there (a renamed or removed module shows up here)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lymphomil"


def listed() -> list[str]:
    """The module paths the Layout block names (``pkg/`` lines open a package)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths, package = [], None
    for line in block.splitlines():
        match = re.match(r"^( +)(\S+)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        if indent == 2:
            package = name if name.endswith("/") else None
            if not package:
                paths.append(name)
        elif indent == 4 and package:
            paths.append(package + name)
    return paths


def actual() -> list[str]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and path.parent != PACKAGE:
            continue  # a package's own line stands for its __init__
        out.append(relative)
    return out


def test_every_module_is_listed_once_and_nothing_else() -> None:
    names = listed()
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert sorted(names) == sorted(actual())
