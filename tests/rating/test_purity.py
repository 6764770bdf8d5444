"""The rating core is pure: no I/O, no clock, no environment, no import of the shell or of I/O
libraries. Checked by walking the syntax tree of every module under rating/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RATING = Path(__file__).resolve().parents[2] / "rating"
MODULES = sorted(RATING.rglob("*.py"))

FORBIDDEN_IMPORTS = {"meter", "asyncio", "sqlite3", "aiosqlite", "aiomqtt", "paho",
                     "prometheus_client", "socket", "subprocess", "urllib", "http",
                     # the clock, files, the environment and chance have no place in a bill
                     "os", "time", "pathlib", "io", "shutil", "tempfile", "random", "secrets"}
#: Names that read the clock, the environment or files when called.
FORBIDDEN_CALLS = {"open", "input", "print", "breakpoint"}
#: Attribute calls that do the same, as (object name, attribute); None matches any object.
FORBIDDEN_ATTR_CALLS = {
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
    ("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("time", "perf_counter"),
    ("os", "getenv"), ("os", "listdir"), ("os", "system"), ("io", "open"),
    (None, "read_text"), (None, "read_bytes"), (None, "write_text"), (None, "write_bytes"),
    # whatever the owner is called (datetime.datetime.now(), Path(...).open(), an alias)
    (None, "now"), (None, "utcnow"), (None, "today"), (None, "open"), (None, "getcwd"),
    (None, "monotonic"), (None, "perf_counter"), (None, "process_time"), (None, "time_ns"),
}
FORBIDDEN_ATTRS = {("os", "environ")}


def violations(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"from {node.module} import ...")
            if node.module == "os" and any(a.name == "environ" for a in node.names):
                found.append("from os import environ")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{func.id}()")
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if (owner, func.attr) in FORBIDDEN_ATTR_CALLS or (
                        (None, func.attr) in FORBIDDEN_ATTR_CALLS):
                    found.append(f"{owner or '...'}.{func.attr}()")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id, node.attr) in FORBIDDEN_ATTRS):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_there_are_modules_to_check() -> None:
    """The walk finds the rating package (a wrong path would make every check pass)."""
    assert {"__init__.py", "pool.py", "sessions.py", "grace.py"} <= {m.name for m in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_module_is_pure(module: Path) -> None:
    """No forbidden import, clock read, environment read or file access in the module."""
    assert [] == violations(ast.parse(module.read_text(encoding="utf-8"), str(module)))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", ["import asyncio"]),
        ("import meter.store as s", ["import meter.store"]),
        ("from prometheus_client import Gauge", ["from prometheus_client import ..."]),
        ("from aiosqlite.core import x", ["from aiosqlite.core import ..."]),
        ("datetime.now(UTC)", ["datetime.now()"]),
        ("date.today()", ["date.today()"]),
        ("open('x')", ["open()"]),
        ("os.environ['X']", ["os.environ"]),
        ("from os import environ", ["from os import ...", "from os import environ"]),
        ("Path('x').read_text()", ["....read_text()"]),
        ("datetime.datetime.now()", ["....now()"]),
        ("Path('x').open()", ["....open()"]),
        ("import time as clock", ["import time"]),
        ("from pathlib import Path", ["from pathlib import ..."]),
        ("import os.path", ["import os.path"]),
        ("dt.time()", []),  # datetime.time() of a value reads no clock
        ("from . import sessions\nimport numpy", []),
    ],
)
def test_the_checker_catches_each_kind(source: str, expected: list[str]) -> None:
    """The checker itself flags each forbidden form (so a pass means something)."""
    assert expected == violations(ast.parse(source))
