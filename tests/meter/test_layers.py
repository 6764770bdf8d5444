"""The shell's layers: SQL only in the store, no import cycle in `meter`, renderers that see only
the report document.

Each check reads the source with `ast` (imports) or as text (SQL), so a regression names the
file and line instead of surfacing later as a second store implementation that cannot be written.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METER = ROOT / "meter"
#: SQL statements and the DB-API call that runs them (DML and the read every report needs).
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b|\bexecute(many)?\(|\bPRAGMA\b")
RENDERERS = ("render_csv", "render_html", "render_json", "render_pdf", "render_text")
#: What a renderer may import of `meter` besides the document: the PDF prints the HTML page (in
#: the printer processes) and says which extra to install with a UsageError.
RENDERER_EXTRAS = {"render_pdf": {"meter.report.render_html", "meter.errors", "meter.printer"}}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _meter_modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(METER.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """The `meter` modules `path` imports, anywhere in the file, with their line."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from meter.store import sqlite` imports the submodule when there is one.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                yield name, node.lineno


def _graph() -> dict[str, set[str]]:
    modules = _meter_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # A package's __init__ importing its submodules is no cycle: a submodule needs its
        # package started, not finished. A submodule importing names from its package is one.
        graph[name] = {dep for dep, _ in _imports(path, known) if dep != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_sql_outside_the_store() -> None:
    """No module of `meter/` outside `meter/store/` holds SQL or calls execute: callers name what
    they want from the `Store` interface."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(METER.rglob("*.py")) if "store" not in path.relative_to(METER).parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SQL.search(line)
    ]
    assert [] == found


def test_the_sql_check_sees_a_statement() -> None:
    """The pattern above finds each kind of statement (so the test above can fail)."""
    for line in ('rows = db.execute("x")', "SELECT id FROM events", "INSERT INTO rejected",
                 "DELETE FROM events", "UPDATE finalized SET", "PRAGMA mmap_size = 1"):
        assert SQL.search(line), line
    assert SQL.search("the selected events") is None


def test_no_import_cycle_in_meter() -> None:
    """`meter`'s modules import each other without a cycle (lazy imports inside functions
    count too: a cycle there is one refactor away from an ImportError)."""
    assert None is _cycle(_graph())


def test_the_cycle_finder_finds_a_cycle() -> None:
    """A two-module loop and a self-contained chain are told apart."""
    assert ["a", "b", "a"] == _cycle({"a": {"b"}, "b": {"a"}})
    assert None is _cycle({"a": {"b"}, "b": {"c"}, "c": set()})


@pytest.mark.parametrize("renderer", RENDERERS)
def test_renderers_import_only_the_document(renderer: str) -> None:
    """A renderer takes the report document: of `meter` it imports `meter.report.document` only,
    never the code that rates, stores or builds the report."""
    modules = _meter_modules()
    path = modules[f"meter.report.{renderer}"]
    imported = {dep for dep, _ in _imports(path, set(modules))}
    assert set() == imported - {"meter.report.document"} - RENDERER_EXTRAS.get(renderer, set())
