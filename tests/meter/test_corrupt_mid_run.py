"""Damage the open does not look for (past the size it checks whole) met by a query later: one
line on stderr naming the database, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.cli import main
from meter.store import sqlite
from tests.meter.test_damaged_db import CONTRACTS, _corrupt_pages


def test_corrupt_pages_met_by_the_report_are_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With the whole-file check off (as for a file over 256 MiB), the report's reads meet the
    overwritten pages: `meter report: PATH: database disk image is malformed`, exit 2."""
    db = tmp_path / "meter.db"
    _corrupt_pages(db)
    monkeypatch.setattr(sqlite, "_QUICK_CHECK_MAX_BYTES", 0)
    capsys.readouterr()
    code = main(["report", "--db", str(db), "--contracts", str(CONTRACTS), "--period", "2026-11"])
    err = capsys.readouterr().err
    assert (2, [f"meter report: {db}: database disk image is malformed"]) == (code, err.splitlines())
