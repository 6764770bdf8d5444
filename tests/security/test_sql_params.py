"""SQL in `meter/` takes values only as bound parameters, never by string formatting.

An AST walk over every module finds each `execute`-like call and proves its SQL text is built
from literals only; the few statements SQLite cannot bind (PRAGMA values, fixed table names) must
say why they are safe in a `noqa: S608 - reason` comment. A store round trip shows hostile text
is stored verbatim, not executed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.events import Event
from meter.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SQL_METHODS = {"execute", "executemany", "executescript", "execute_fetchall", "execute_insert"}
#: Calls whose result is a fixed, validated token SQLite cannot bind (e.g. a PRAGMA's integer).
SAFE_CALLS = {"int", "len"}


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


class _Checker:
    """Decides whether an expression used as SQL text is built from literals only."""

    def __init__(self, path: Path, tree: ast.Module, source: str) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.tree = tree
        self.findings: list[Finding] = []
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    def justified(self, node: ast.AST) -> bool:
        """Whether the source lines of `node` carry a `noqa: S608 - reason` justification."""
        start = getattr(node, "lineno", 0)
        end = getattr(node, "end_lineno", start) or start
        for text in self.lines[start - 1:end]:
            if "noqa: S608" in text and " - " in text.split("noqa: S608", 1)[1]:
                return True
        return False

    def scope_of(self, node: ast.AST) -> ast.AST:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return self.tree

    def assignments(self, name: str, scope: ast.AST) -> list[ast.AST]:
        """Every value assigned to `name` in `scope` (and at module level as a fallback)."""
        found: list[ast.AST] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    found.append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.target.id == name and node.value is not None:
                    found.append(node.value)
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) \
                    and node.target.id == name:
                found.append(node)
        if not found and scope is not self.tree:
            return self.assignments(name, self.tree)
        return found

    def guarded(self, node: ast.AST, scope: ast.AST) -> bool:
        """Whether `node` (e.g. `mode.upper()`) is checked against a literal set, raising otherwise:
        `if mode.upper() not in ("OFF", "FULL"): raise ...` earlier in the same function."""
        text = ast.dump(node)
        for stmt in ast.walk(scope):
            if not (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)):
                continue
            test = stmt.test
            if not (len(test.ops) == 1 and isinstance(test.ops[0], ast.NotIn)):
                continue
            allowed = test.comparators[0]
            if ast.dump(test.left) == text and isinstance(allowed, ast.Tuple | ast.Set | ast.List) \
                    and all(isinstance(e, ast.Constant) for e in allowed.elts) \
                    and any(isinstance(b, ast.Raise) for b in stmt.body):
                return True
        return False

    @staticmethod
    def psycopg_sql(node: ast.AST) -> bool:
        """Whether `node` is `sql.SQL(...)` or `sql.Identifier(...)` (psycopg's composition)."""
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("SQL", "Identifier")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "sql")

    @staticmethod
    def literal_parameter(name: str, scope: ast.AST) -> bool:
        """Whether `name` is a parameter of `scope` typed `LiteralString` (or a union with psycopg's
        `sql.Composed`): mypy then proves every caller passes literal text or a composition."""
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        for arg in [*scope.args.posonlyargs, *scope.args.args, *scope.args.kwonlyargs]:
            if arg.arg == name and arg.annotation is not None:
                text = ast.unparse(arg.annotation)
                parts = {p.strip() for p in text.split("|")}
                return "LiteralString" in parts and parts <= {"LiteralString", "sql.Composed"}
        return False

    def static(self, node: ast.AST, scope: ast.AST, depth: int = 0) -> str | None:
        """None when `node` is literal-only SQL text, else why not."""
        if depth > 10:
            return "SQL text built too indirectly to check"
        if isinstance(node, ast.Constant):
            return None if isinstance(node.value, str | bytes) else "SQL is not a string"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return "SQL built with % formatting"
        if self.psycopg_sql(node):
            # psycopg's composition: sql.SQL(text) / sql.Identifier(name) of literal text.
            return self.static(node.args[0], scope, depth + 1) if node.args else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "format":
            if self.psycopg_sql(node.func.value):
                # sql.SQL("... {} ...").format(sql.SQL(CONSTANT), sql.Identifier("t")): psycopg
                # quotes each part; literal when the template and every part are.
                for part in [node.func.value, *node.args]:
                    if not self.psycopg_sql(part):
                        return "sql.SQL.format with a part that is not sql.SQL or sql.Identifier"
                    problem = self.static(part, scope, depth + 1)
                    if problem:
                        return problem
                return None
            return "SQL built with str.format"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.static(node.left, scope, depth + 1) or self.static(node.right, scope, depth + 1)
        if isinstance(node, ast.IfExp):
            return self.static(node.body, scope, depth + 1) or self.static(node.orelse, scope, depth + 1)
        if isinstance(node, ast.Subscript):
            # MIGRATIONS[step]: a module tuple of literals.
            return self.static(node.value, scope, depth + 1)
        if isinstance(node, ast.Tuple | ast.List):
            for elt in node.elts:
                problem = self.static(elt, scope, depth + 1)
                if problem:
                    return problem
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("strip", "upper", "lower"):
            return self.static(node.func.value, scope, depth + 1)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "split":
            return self.static(node.func.value, scope, depth + 1)
        if isinstance(node, ast.Name):
            if self.literal_parameter(node.id, scope):
                return None
            values = self.assignments(node.id, scope)
            if not values:
                return f"SQL from `{node.id}`, which is not assigned from literals in this module"
            for value in values:
                if isinstance(value, ast.For):
                    problem = self.static(value.iter, scope, depth + 1)
                elif self.justified(value):
                    problem = None
                else:
                    problem = self.static(value, scope, depth + 1)
                if problem:
                    return problem
            return None
        if isinstance(node, ast.JoinedStr):
            if self.justified(node):
                return None
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    value = part.value
                    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
                            and value.func.id in SAFE_CALLS:
                        continue
                    if self.guarded(value, scope):
                        continue
                    if isinstance(value, ast.BinOp) and all(
                            isinstance(v, ast.Name | ast.Constant) for v in (value.left, value.right)) \
                            and isinstance(value.op, ast.Add) and isinstance(value.right, ast.Constant) \
                            and isinstance(value.right.value, int):
                        continue  # e.g. user_version = {step + 1}: an integer counter
                    problem = self.static(value, scope, depth + 1)
                    if problem:
                        return f"f-string interpolates a non-literal value ({problem}); bind it with ?"
            return None
        return f"SQL from a {type(node).__name__} expression that cannot be shown to be literal"

    def run(self) -> list[Finding]:
        for node in ast.walk(self.tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_METHODS and node.args):
                continue
            sql = node.args[0]
            problem = self.static(sql, self.scope_of(node))
            if problem and not self.justified(node):
                self.findings.append(Finding(str(self.path.relative_to(ROOT)), node.lineno, problem))
        return self.findings


def check_source(source: str, path: Path) -> list[Finding]:
    """Findings for one module's source."""
    return _Checker(path, ast.parse(source), source).run()


def sql_calls(path: Path) -> int:
    tree = ast.parse(path.read_text())
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr in SQL_METHODS)


def test_every_sql_execute_in_meter_uses_bound_parameters() -> None:
    """No module under meter/ formats a value into SQL text; values go through `?` parameters."""
    modules = sorted((ROOT / "meter").rglob("*.py"))
    findings = [f for m in modules for f in check_source(m.read_text(), m)]
    assert [] == [str(f) for f in findings]
    # The walk really looked at the store's statements (a checker that sees nothing proves nothing).
    assert 8 <= sum(sql_calls(m) for m in modules)


@pytest.mark.parametrize(("source", "problem"), [
    ('db.execute(f"SELECT * FROM events WHERE id = {event_id}")', "f-string interpolates"),
    ('db.execute("SELECT * FROM events WHERE id = %s" % event_id)', "% formatting"),
    ('db.execute("SELECT * FROM events WHERE id = {}".format(event_id))', "str.format"),
    ('db.execute("SELECT * FROM events WHERE id = \'" + event_id + "\'")', "not assigned"),
    ('sql = "DELETE FROM events WHERE id = " + event_id\ndb.execute(sql)', "not assigned"),
    ('db.executemany(f"INSERT INTO t VALUES ({x})", rows)', "f-string interpolates"),
    ('db.executescript(user_text)', "not assigned"),
    ('def f(mode):\n    if mode not in ("OFF", "FULL"):\n        log(mode)\n'
     '    db.execute(f"PRAGMA synchronous = {mode}")', "f-string interpolates"),
    ('db.execute(sql.SQL("SELECT {} FROM t").format(sql.SQL(user_text)))', "not assigned"),
    ('db.execute(sql.SQL("SELECT * FROM t WHERE id = {}").format(event_id))',
     "not sql.SQL or sql.Identifier"),
    ('def f(query: str):\n    db.execute(query)', "not assigned"),
])
def test_the_checker_catches_formatted_sql(source: str, problem: str) -> None:
    """The checker flags each way of formatting a value into SQL (it is not vacuous)."""
    findings = check_source(source, ROOT / "meter" / "example.py")
    assert 1 == len(findings)
    assert problem in findings[0].problem


@pytest.mark.parametrize("source", [
    'COLUMNS = "a, b"\ndb.execute(sql.SQL("SELECT {} FROM t").format(sql.SQL(COLUMNS)))',
    'db.execute(sql.SQL("SELECT setval({})").format(sql.Identifier("events")))',
    'def f(query: LiteralString | sql.Composed):\n    db.execute(query)',
])
def test_the_checker_accepts_psycopg_composition_of_literals(source: str) -> None:
    """psycopg's sql.SQL/sql.Identifier over literal text, and a parameter mypy proves literal
    (LiteralString), are literal-only SQL."""
    assert [] == check_source(source, ROOT / "meter" / "example.py")


@pytest.mark.parametrize("source", [
    'db.execute("SELECT * FROM events WHERE id = ?", (event_id,))',
    'SQL = "INSERT INTO t VALUES (?)"\ndb.executemany(SQL, rows)',
    'db.execute(f"PRAGMA busy_timeout = {int(ms)}")',
    'for t in ("events", "rejected"):\n    db.execute(f"SELECT count(*) FROM {t}")',
    'db.execute(f"SELECT * FROM {name}")  # noqa: S608 - name is one of a fixed set',
    'def f(mode):\n    if mode.upper() not in ("OFF", "FULL"):\n        raise ValueError(mode)\n'
    '    db.execute(f"PRAGMA synchronous = {mode.upper()}")',
])
def test_the_checker_accepts_bound_and_fixed_sql(source: str) -> None:
    """Bound parameters, literal constants and justified fixed tokens pass."""
    assert [] == check_source(source, ROOT / "meter" / "example.py")


HOSTILE = [
    "x'); DROP TABLE events; --",
    "' OR '1'='1",
    "\"; DELETE FROM rejected; --",
    "a\x00b",
    "🙂' || (SELECT sql FROM sqlite_master) || '",
]


async def test_hostile_text_is_stored_verbatim(db_path: Path) -> None:
    """Ids, users and sessions that look like SQL are stored as data, byte for byte."""
    ts = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    events = [
        Event(id=text, type="login", account="acme", user=text, ts=ts, pool="agents", session=text,
              raw=text.encode())
        for text in HOSTILE
    ]
    async with await open_store(db_path) as store:
        result = await store.add(events)
        stored = await store.events(account="acme")
        counts = await store.counts()
    assert len(HOSTILE) == result.new
    assert {"events": len(HOSTILE), "rejected": 0} == counts
    assert sorted(HOSTILE) == sorted(e.id for e in stored)
    assert sorted(HOSTILE) == sorted(e.user for e in stored)
    assert sorted(HOSTILE) == sorted(e.session or "" for e in stored)
