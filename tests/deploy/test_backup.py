"""The backup recipe in the README's "Running in production" section copies a live WAL database
consistently, including commits that are still only in the WAL, where copying the file does not."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from tests.deploy.tools import ROOT


def _readme_backup_script() -> str:
    section = (ROOT / "README.md").read_text().split("### Backups", 1)[1].split("\n### ", 1)[0]
    scripts: list[str] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    (script,) = scripts
    return script


def _live_wal_db(path: Path) -> sqlite3.Connection:
    """A WAL database whose 500 rows are committed but not checkpointed; the connection stays
    open as a running meter's would."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, raw TEXT NOT NULL)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (raw) VALUES (?)", [(f"event {i}",) for i in range(500)])
    db.execute("COMMIT")
    return db


def test_readme_backup_recipe_copies_every_committed_row(tmp_path: Path) -> None:
    """The README's Python backup, run while the database is open, says "ok" and holds all rows."""
    live = _live_wal_db(tmp_path / "meter.db")
    try:
        (tmp_path / "backup.py").write_text(_readme_backup_script())
        result = subprocess.run(
            [sys.executable, str(tmp_path / "backup.py"), str(tmp_path / "meter.db"),
             str(tmp_path / "copy.db")],
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert "ok\n" == result.stdout
        with closing(sqlite3.connect(tmp_path / "copy.db")) as copy:
            assert 500 == copy.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        live.close()


def test_copying_only_the_database_file_of_a_live_wal_db_misses_commits(tmp_path: Path) -> None:
    """Why the README says never cp: the main file alone does not hold the WAL's commits."""
    live = _live_wal_db(tmp_path / "meter.db")
    try:
        shutil.copyfile(tmp_path / "meter.db", tmp_path / "cp.db")
        with closing(sqlite3.connect(tmp_path / "cp.db")) as copy:
            assert [] == copy.execute(
                "SELECT name FROM sqlite_master WHERE name = 'events'").fetchall()
    finally:
        live.close()
