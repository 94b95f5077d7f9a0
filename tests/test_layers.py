"""Layers point down: the import graph of src/lymphomil (every import statement, those inside
functions and under ``TYPE_CHECKING`` included) has no cycle, no library module imports the
command-line layer, and the bottom modules import nothing of lymphomil but the errors."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lymphomil"
#: the command-line layer (commands.progress: its bars and lines; the library reports through
#: runtime.progress_protocol, and the CLI installs them there)
CLI = ("lymphomil.cli", "lymphomil.commands", "lymphomil.__main__")
#: modules every layer may use, that use nothing of lymphomil themselves (but its errors)
BOTTOM = ("lymphomil.runtime.engine", "lymphomil.runtime.errors", "lymphomil.evaluation.metrics",
          "lymphomil.runtime.progress_protocol", "lymphomil.runtime.environment")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lymphomil modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: imports(name, path, known) for name, path in known.items()}
    # a package's __init__ that re-exports its own children is not a loop of design
    return {name: {t for t in targets if not (t.startswith(name + ".")
                                              and known[name].name == "__init__.py")}
            for name, targets in edges.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def is_cli(name: str) -> bool:
    return any(name == c or name.startswith(c + ".") for c in CLI)


def test_the_graph_is_read() -> None:
    edges = graph()
    assert len(edges) > 40
    assert "lymphomil.models.base" in edges["lymphomil.models.neural"]
    assert {"lymphomil.commands.app", "lymphomil.commands.models"} <= edges["lymphomil.cli"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_no_library_module_imports_the_cli() -> None:
    upward = sorted((name, target) for name, targets in graph().items() if not is_cli(name)
                    for target in targets if is_cli(target))
    assert upward == []


def test_the_bottom_imports_nothing_above_it() -> None:
    edges = graph()
    for name in BOTTOM:
        assert edges[name] <= {"lymphomil.runtime.errors"}, (name, edges[name])


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """`lymphomil --help` only builds the Typer app: none of the numeric or rendering libraries
    is imported for it (scikit-learn and scipy alone took 2.5 s of a 3 s `--help`)."""
    import subprocess
    import sys

    heavy = ("sklearn", "scipy", "torch", "pandas", "safetensors", "PIL", "jinja2", "matplotlib",
             "ray")
    code = ("import sys, lymphomil.cli; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_import_inside_a_function_hides_one_of_its_parameters() -> None:
    """A command defers its imports into its body (start-up time); a module imported under a
    parameter's name replaces the user's value (``cv --no-referral`` once ran the nested pass:
    ``from lymphomil import referral`` hid the ``referral`` flag)."""
    hidden = []
    for name, path in modules().items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = fn.args
            params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    hidden += [f"{name}.{fn.name}: {alias.asname or alias.name}"
                               for alias in node.names
                               if (alias.asname or alias.name).split(".")[0] in params]
    assert not hidden, hidden


#: at most this many imports of lymphomil modules inside functions (issue 31): each defers a
#: cost (`--help` start-up, torch, Ray) and says so in a comment
MAX_DEFERRED_IMPORTS = 40
#: no module longer than this (issue 31: a module that grows past it holds two jobs)
MAX_MODULE_LINES = 450


def deferred_imports() -> list[tuple[str, int, bool]]:
    """(module, line, commented) of every import of a lymphomil module inside a function: the
    comment on its line, or on a comment line above its block of imports."""
    found = []
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    ours = node.level > 0 or (node.module or "").startswith("lymphomil")
                elif isinstance(node, ast.Import):
                    ours = any(a.name.startswith("lymphomil") for a in node.names)
                else:
                    continue
                if not ours:
                    continue
                i = node.lineno - 1
                commented = "#" in lines[i]
                while not commented and i > 0 and lines[i - 1].strip().startswith(
                        ("from ", "import ", "#")):
                    i -= 1
                    commented = lines[i].strip().startswith("#")
                found.append((name, node.lineno, commented))
    return found


def test_deferred_imports_are_few_and_each_says_why() -> None:
    found = deferred_imports()
    assert len(found) <= MAX_DEFERRED_IMPORTS, len(found)
    assert [f"{name}:{line}" for name, line, commented in found if not commented] == []


def test_no_module_is_longer_than_the_bound() -> None:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines())
               for name, path in modules().items()}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}
