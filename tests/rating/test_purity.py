"""The functional core is pure: no I/O, no clock, no environment, no logging, no import of the
shell or of I/O libraries. Checked by walking the syntax tree of every module under rating/ and
of the shell's pure modules: the live tracker and the event model (and the errors they raise)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATING = ROOT / "rating"
#: meter modules that take values and return values; callers pass "now" and the event bytes.
PURE_METER = ("meter/tracker.py", "meter/events.py", "meter/errors.py")
#: What a pure meter module may import of meter: only modules that are checked here themselves.
ALLOWED_METER = frozenset(p.removesuffix(".py").replace("/", ".") for p in PURE_METER)
MODULES = sorted(RATING.rglob("*.py")) + [ROOT / p for p in PURE_METER]

FORBIDDEN_IMPORTS = {"meter", "asyncio", "sqlite3", "aiosqlite", "aiomqtt", "paho",
                     "prometheus_client", "socket", "subprocess", "urllib", "http",
                     # the clock, files, the environment and chance have no place in a bill
                     "os", "time", "pathlib", "io", "shutil", "tempfile", "random", "secrets",
                     # logging writes to handlers (I/O): pure code returns what happened instead
                     "logging", "sys", "signal"}
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
    (None, "getenv"),
}
FORBIDDEN_ATTRS = {("os", "environ")}


def _imported(node: ast.Import | ast.ImportFrom, package: str,
              allowed: frozenset[str]) -> list[str]:
    """The absolute module names an import statement reads (a relative one resolved in
    `package`). `from p import x` reads module p.x where that is allowed, else p itself."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        module = node.module or ""
    else:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        module = f"{base}.{node.module}" if node.module else base
    return [f"{module}.{a.name}" if f"{module}.{a.name}" in allowed else module
            for a in node.names]


def _import_violations(node: ast.Import | ast.ImportFrom, package: str,
                       allowed: frozenset[str]) -> list[str]:
    found = []
    for name in dict.fromkeys(_imported(node, package, allowed)):
        if name.split(".")[0] in FORBIDDEN_IMPORTS and name not in allowed:
            found.append(f"import {name}" if isinstance(node, ast.Import)
                         else f"from {name} import ...")
    if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
            a.name == "environ" for a in node.names):
        found.append("from os import environ")
    return found


def _call_violation(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
        return f"{func.id}()"
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        if (owner, func.attr) in FORBIDDEN_ATTR_CALLS or (None, func.attr) in FORBIDDEN_ATTR_CALLS:
            return f"{owner or '...'}.{func.attr}()"
    return None


def violations(tree: ast.AST, package: str = "rating",
               allowed: frozenset[str] = frozenset()) -> list[str]:
    """Every forbidden import, call or attribute in `tree`, a module of `package` that may
    import the modules `allowed` (and nothing else of a forbidden package)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found += _import_violations(node, package, allowed)
        elif isinstance(node, ast.Call):
            call = _call_violation(node)
            if call is not None:
                found.append(call)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id, node.attr) in FORBIDDEN_ATTRS):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def check(module: Path) -> list[str]:
    """The violations of one module file (a meter module may import the pure meter modules)."""
    package = module.relative_to(ROOT).parts[0]
    allowed = ALLOWED_METER if package == "meter" else frozenset()
    return violations(ast.parse(module.read_text(encoding="utf-8"), str(module)), package, allowed)


def test_there_are_modules_to_check() -> None:
    """The walk finds the rating package and the pure meter modules (a wrong path would make
    every check pass)."""
    names = {str(m.relative_to(ROOT)) for m in MODULES if m.is_file()}
    assert {"rating/__init__.py", "rating/pool.py", "rating/sessions.py", "rating/grace.py",
            *PURE_METER} <= names


@pytest.mark.parametrize("module", MODULES, ids=[str(m.relative_to(ROOT)) for m in MODULES])
def test_module_is_pure(module: Path) -> None:
    """No forbidden import, clock read, environment read, logging or file access in the module."""
    assert [] == check(module)


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
        ("datetime.utcnow()", ["datetime.utcnow()"]),
        ("datetime.today()", ["datetime.today()"]),
        ("time.time()", ["time.time()"]),
        ("time.monotonic()", ["time.monotonic()"]),
        ("time.perf_counter()", ["time.perf_counter()"]),
        ("os.getenv('X')", ["os.getenv()"]),
        ("os.environ.get('X')", ["os.environ"]),
        ("import logging", ["import logging"]),
        ("from logging import getLogger", ["from logging import ..."]),
        ("import sys", ["import sys"]),
    ],
)
def test_the_checker_catches_each_kind(source: str, expected: list[str]) -> None:
    """The checker itself flags each forbidden form (so a pass means something)."""
    assert expected == violations(ast.parse(source))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from meter.errors import UsageError", []),
        ("import meter.events", []),
        ("from meter.store import Store", ["from meter.store import ..."]),
        ("import meter.serve", ["import meter.serve"]),
        ("import meter", ["import meter"]),
        ("from meter import store", ["from meter import ..."]),
        ("from .store import Store", ["from meter.store import ..."]),
        ("from . import metrics", ["from meter import ..."]),
        ("from . import errors, tracker", []),
        ("from meter import errors", []),
        ("from .errors import UsageError", []),
        ("from rating.usage import to_us\nimport msgspec", []),
    ],
)
def test_a_pure_meter_module_imports_only_pure_meter_modules(
        source: str, expected: list[str]) -> None:
    """The tracker and the event model may import rating and the meter modules checked here;
    any other meter module (the store, the daemon, metrics) is the shell."""
    assert expected == violations(ast.parse(source), "meter", ALLOWED_METER)


def test_rating_imports_no_meter_module_at_all() -> None:
    """Even a pure meter module is the shell's: the rating core imports none."""
    assert ["from meter.errors import ..."] == violations(ast.parse(
        "from meter.errors import UsageError"))
