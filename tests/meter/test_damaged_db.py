"""A `--db` file that exists but is not a meter database is refused with exit 2 and one line on
stderr, by every command; a new database is made only where nothing is at the path."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from meter.errors import NotMeterDatabase
from meter.store import open_store
from meter.store.sqlite import MIGRATIONS
from rating.bill import RATING_VERSION

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "sample_sessions" / "contracts.toml"


def _meter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meter", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL, check=False)


def _empty(path: Path) -> str:
    path.write_bytes(b"")
    return "empty file"


def _foreign(path: Path) -> str:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE notes (x TEXT); CREATE TABLE tags (y TEXT);"
                     "INSERT INTO notes VALUES ('keep me');")
    db.close()
    return "no meter schema (user_version 0, tables: notes, tags)"


def _foreign_with_version(path: Path) -> str:
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE events (x TEXT); PRAGMA user_version = 2;")
    db.close()
    return "no meter schema (user_version 2, tables: events)"


def _garbage(path: Path) -> str:
    path.write_bytes(os.urandom(3 * 4096))
    return "not a SQLite file"


def _corrupt_pages(path: Path) -> str:
    """A real meter database (the sample month ingested) with pages in its middle overwritten."""
    done = _meter("ingest", str(ROOT / "sample_sessions" / "events-2026-11.jsonl"),
                  "--db", str(path), "--contracts", str(CONTRACTS))
    assert 0 == done.returncode, done.stderr
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = path.stat().st_size
    assert size > 40 * 4096
    with path.open("r+b") as f:
        f.seek((size // 4096 // 2) * 4096)
        f.write(b"\xa5" * 4 * 4096)
    return "corrupt"


DAMAGE = {"empty": _empty, "foreign": _foreign, "foreign_with_version": _foreign_with_version,
          "garbage": _garbage, "corrupt_pages": _corrupt_pages}


@pytest.mark.parametrize("kind", list(DAMAGE))
async def test_open_store_refuses_a_file_that_is_not_a_meter_database(tmp_path: Path,
                                                                       kind: str) -> None:
    """The error names the path and what is wrong, and the file is left as it was."""
    path = tmp_path / "meter.db"
    what = DAMAGE[kind](path)
    before = path.read_bytes()
    with pytest.raises(NotMeterDatabase) as info:
        await open_store(path)
    assert 2 == info.value.exit_code
    assert str(info.value).startswith(f"{path}: not a meter database: ")
    assert what in str(info.value)
    assert before == path.read_bytes()


async def test_a_new_database_is_made_where_nothing_is(tmp_path: Path) -> None:
    """No file: created and migrated; opened again, it is accepted."""
    path = tmp_path / "new.db"
    async with await open_store(path) as store:
        assert len(MIGRATIONS) == await store.schema_version()
    async with await open_store(path) as store:
        assert len(MIGRATIONS) == await store.schema_version()


async def test_a_file_made_before_its_first_migration_is_migrated(tmp_path: Path) -> None:
    """A SQLite file with no tables and user_version 0 (a first open that stopped early) holds
    nothing to lose: it is migrated."""
    path = tmp_path / "meter.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.close()
    async with await open_store(path) as store:
        assert len(MIGRATIONS) == await store.schema_version()


@pytest.mark.parametrize("kind", ["empty", "foreign", "garbage", "corrupt_pages"])
@pytest.mark.parametrize("command", ["serve", "ingest", "report", "verify"])
def test_every_command_exits_2_with_one_line(tmp_path: Path, kind: str, command: str) -> None:
    """serve, ingest, report and verify: exit 2, one line on stderr naming the file, no
    traceback; the daemon does not start."""
    path = tmp_path / "meter.db"
    DAMAGE[kind](path)
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "e1", "type": "login", "account": "acme", "user": "u1", '
                      '"ts": "2026-11-02T10:00:00Z", "pool": "agents"}\n')
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"accounts": [], "rating_version": RATING_VERSION}))
    args = {
        "serve": ["serve", "--broker", "mqtt://127.0.0.1:9", "--db", str(path),
                  "--contracts", str(CONTRACTS), "--metrics-addr", "127.0.0.1:0"],
        "ingest": ["ingest", str(events), "--db", str(path), "--contracts", str(CONTRACTS)],
        "report": ["report", "--db", str(path), "--contracts", str(CONTRACTS),
                   "--period", "2026-11"],
        "verify": ["verify", str(report), "--db", str(path), "--contracts", str(CONTRACTS)],
    }[command]
    result = _meter(*args)
    # serve logs its settings before it opens the store; that INFO line is not an error line
    lines = [line for line in result.stderr.strip().splitlines() if " INFO " not in line]
    assert (2, 1) == (result.returncode, len(lines)), result.stderr
    assert "not a meter database" in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr


def test_report_of_a_period_without_events_says_so_and_still_reports(tmp_path: Path) -> None:
    """A meter database with no events in the period: the report is written (exit 0) and one
    line on stderr says no events are stored; a period with events gets no such line."""
    path = tmp_path / "meter.db"
    done = _meter("ingest", str(ROOT / "sample_sessions" / "events-2026-11.jsonl"),
                  "--db", str(path), "--contracts", str(CONTRACTS))
    assert 0 == done.returncode, done.stderr
    quiet = _meter("report", "--db", str(path), "--contracts", str(CONTRACTS), "--period", "2026-05")
    assert 0 == quiet.returncode, quiet.stderr
    assert json.loads(quiet.stdout)["accounts"]
    lines = quiet.stderr.strip().splitlines()
    assert 1 == len(lines), quiet.stderr
    assert lines[0].startswith("meter report: no events stored for acme, ")
    assert "in 2026-05 (the bill may still be right: a named pool bills by quantity)" in lines[0]
    busy = _meter("report", "--db", str(path), "--contracts", str(CONTRACTS), "--period", "2026-11",
                  "--account", "acme")
    assert 0 == busy.returncode, busy.stderr
    assert "no events stored" not in busy.stderr
