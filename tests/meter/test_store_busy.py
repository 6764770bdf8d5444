"""A store opened beside another writer waits `busy_timeout` for its lock instead of failing at
once: `connect` leaves no statement (and so no read snapshot) open."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.errors import StoreError
from meter.events import Event
from meter.store import open_store

HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO checkpoint (id, seq, blob) VALUES (1, 1, x'00') "
           "ON CONFLICT (id) DO UPDATE SET seq = seq + 1")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def _holder(db_path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that takes the write lock, says "holding", and commits after `seconds`."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(db_path), str(seconds)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


async def test_a_writer_opened_before_another_commit_waits_for_the_lock(db_path: Path) -> None:
    """Store B is opened, another process commits and then holds the write lock for 0.5 s: B's
    write waits for it and succeeds (on the old `connect`, B failed at once with "database is
    locked": its probe statement kept a snapshot that the commit made stale)."""
    async with await open_store(db_path):
        pass
    async with await open_store(db_path, busy_timeout_ms=5000) as b:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("INSERT INTO checkpoint (id, seq, blob) VALUES (1, 0, x'00')")
        other.close()
        with _holder(db_path, 0.5) as holder:
            assert holder.stdout is not None
            assert "holding" == (await asyncio.to_thread(holder.stdout.readline)).strip()
            started = time.monotonic()
            await b.save_checkpoint(7, b"mine")
            waited = time.monotonic() - started
        assert 0 == holder.returncode
        assert (7, b"mine") == await b.load_checkpoint()
        assert 0.2 < waited < 5.0


async def test_a_writer_still_gives_up_after_busy_timeout(db_path: Path) -> None:
    """Held longer than busy_timeout, the write fails as retriable after waiting, not at once."""
    async with await open_store(db_path):
        pass
    async with await open_store(db_path, busy_timeout_ms=300) as b:
        with _holder(db_path, 2.0) as holder:
            assert holder.stdout is not None
            assert "holding" == (await asyncio.to_thread(holder.stdout.readline)).strip()
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked") as info:
                await b.save_checkpoint(7, b"mine")
            waited = time.monotonic() - started
        assert info.value.retriable
        assert 0.25 < waited < 1.9


OPEN_AND_CLOSE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("SELECT count(*) FROM events").fetchall()
db.close()
"""


async def test_opening_a_second_store_in_a_process_keeps_the_first_ones_locks(
        db_path: Path) -> None:
    """While one store of this process is open, opening (and closing) another store of the same
    file in this process must not drop its locks. SQLite's POSIX locks go with close() of any
    descriptor of the file, so `connect` never opens the file outside SQLite. It used to read
    the header itself: the daemon's finalizer, opening a store beside the daemon's, dropped the
    daemon's shared lock, and a last connection elsewhere checkpointed and deleted the WAL under
    it (a corrupt database, found by the daemon's finalization test). Here: with the first
    store's lock intact, another process closing its connection cannot remove the WAL."""
    first = await open_store(db_path)
    try:
        await first.add([_event()], received_us=1)
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.exists()
        second = await open_store(db_path)
        await second.close()
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", OPEN_AND_CLOSE,
                                                 str(db_path)], check=True, stdin=subprocess.DEVNULL)
        assert wal.exists()
        assert 1 == (await first.counts())["events"]
    finally:
        await first.close()


def _event() -> Event:
    return Event(id="e1", type="login", account="acme", user="u1",
                 ts=datetime(2026, 11, 12, tzinfo=UTC), pool="agents", session=None, raw=b"{}")
