"""CLI error paths: each bad input is exit 2 (or 1 for other failures) and ONE line on stderr."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from meter.cli import main
from meter.store import Store

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "sample_sessions" / "contracts.toml"

ZERO_TIMEOUT = """
[[account]]
id = "acme"
timezone = "UTC"
currency = "USD"
billing = "monthly"
anchor = "2026-01-01"
policy = "prorate"
session_timeout = "0s"
"""


def _empty_db(path: Path) -> Path:
    async def make() -> None:
        store = await Store.open(path)
        await store.close()

    asyncio.run(make())
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err.splitlines()


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["report", "--db", "{db}", "--contracts", "{zero}", "--period", "2026-11"], 2,
         "key 'session_timeout': must be longer than 0s"),
        (["report", "--db", "{db}", "--contracts", "{missing}", "--period", "2026-11"], 2,
         "missing.toml"),
        (["ingest", "{missing}", "--db", "{db}", "--contracts", str(CONTRACTS)], 2,
         "missing.toml"),
        (["ingest", "x.jsonl", "--db", "{db}"], 2, "--contracts"),
        (["report", "--db", "{db}", "--contracts", str(CONTRACTS), "--period", "November"], 2,
         "November"),
        (["nonsense"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_the_right_exit_code(
    argv: list[str], code: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad flags, missing files and bad contracts give the documented code and one stderr line
    that names what was wrong."""
    zero = tmp_path / "zero.toml"
    zero.write_text(ZERO_TIMEOUT)
    subs = {"{db}": str(_empty_db(tmp_path / "m.db")), "{zero}": str(zero),
            "{missing}": str(tmp_path / "missing.toml")}
    argv = [subs.get(a, a) for a in argv]
    got, lines = _run(argv, capsys)
    assert code == got
    assert 1 == len(lines), lines
    assert needle in lines[0]


def test_report_out_under_a_file_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --out that cannot be a directory fails with one line naming the path, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    got, lines = _run(["report", "--db", str(_empty_db(tmp_path / "m.db")), "--contracts", str(CONTRACTS),
                       "--period", "2026-11", "--format", "csv", "--out", str(blocker / "sub")],
                      capsys)
    assert got in (1, 2)
    assert 1 == len(lines), lines
    assert str(blocker) in lines[0]


def test_python_dash_m_meter_prints_the_version() -> None:
    """`python -m meter` is the same CLI as the console script."""
    out = subprocess.run([sys.executable, "-m", "meter", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("meter ")


def test_every_serve_setting_is_a_flag() -> None:
    """README: every settings key is also a `meter serve` flag, except the password (a flag
    would put it in the process list); and serve forwards each flag it parses."""
    from meter import config, serve
    from meter.cli import build_parser

    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest for a in serve_parser._actions} - {"help"}
    keys = set(config._PARSERS) - {"password"}
    assert keys | {"config"} == dests
    assert dests == set(serve.FLAG_KEYS)
