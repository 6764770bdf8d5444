"""Store faults with the daemon as a process: the database locked by another process, the disk
full, and a SIGTERM drain. Nothing is acknowledged before it is committed: the proof is a SIGKILL
while the store is failing, after which every event still arrives once the store is back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.faults.harness import (
    Daemon,
    Publisher,
    in_background,
    iter_events,
    set_check,
    settle_stored,
    stored_ids,
    table_count,
    wait_for,
    wait_stored,
)


def _errors(daemon: Daemon) -> float:
    return daemon.total("meter_store_errors_total")


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view: a connection holding BEGIN EXCLUSIVE on the daemon's database."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.mark.broker
@pytest.mark.slow
def test_locked_database_delays_acks_until_commit_and_never_crashes(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """With the database locked (BEGIN EXCLUSIVE elsewhere) the daemon retries, counts store
    errors, stays up and acknowledges nothing; after the lock goes, everything is stored. A
    SIGKILL while locked loses nothing: the broker still held every unacknowledged event."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.start()
    pid = daemon.proc.pid if daemon.proc else 0
    publisher = Publisher(broker, topic_prefix)
    try:
        publisher.publish_many(iter_events(200, prefix="warm"))
        wait_stored(daemon.db, 200)
        with exclusive_lock(daemon.db):
            publisher.publish_many(iter_events(500, prefix="locked"))
            wait_for(lambda: _errors(daemon) >= 1, 60, "a store error while locked")
            assert 200 == table_count(daemon.db, "events")
            assert 0.0 == daemon.value("meter_store_healthy")
            assert daemon.alive
        wait_stored(daemon.db, 700)
        wait_for(lambda: daemon.value("meter_store_healthy") == 1.0, 30, "the store to be healthy")
        assert daemon.proc is not None
        assert pid == daemon.proc.pid
        assert daemon.alive

        # Locked again, and the daemon dies while its batch is uncommitted.
        with exclusive_lock(daemon.db):
            errors = _errors(daemon)
            publisher.publish_many(iter_events(500, prefix="killed"))
            wait_for(lambda: _errors(daemon) > errors, 60, "a store error while locked")
            daemon.kill()
        daemon.start()
        publisher.wait_all_acked()
        settle_stored(daemon.db, 1200)
    finally:
        daemon.stop()
        publisher.close()
    verdict = set_check(publisher.sent, publisher.acked(), stored_ids(daemon.db))
    assert 1200 == verdict.stored
    assert frozenset() == verdict.lost
    assert frozenset() == verdict.double_counted
    assert "will retry" in daemon.log_text()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of our own (root only): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0777", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the filesystem is full; returns it (delete it to free space)."""
    ballast = disk / "ballast"
    with ballast.open("ab", buffering=0) as f:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    assert 0 == os.statvfs(disk).f_bavail
    return ballast


@pytest.mark.broker
@pytest.mark.slow
def test_full_disk_acks_nothing_reports_it_and_resumes(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, tiny_disk: Path) -> None:
    """On a full disk the daemon stores and acknowledges nothing, counts store errors, logs them
    and stays up; when space returns it resumes by itself. A SIGKILL while full loses nothing."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.db = tiny_disk / "meter.db"
    daemon.start()
    pid = daemon.proc.pid if daemon.proc else 0
    publisher = Publisher(broker, topic_prefix)
    try:
        publisher.publish_many(iter_events(200, prefix="warm"))
        wait_stored(daemon.db, 200)
        ballast = fill(tiny_disk)
        # Enough events that the WAL must grow beyond what it already holds.
        publisher.publish_many(iter_events(6000, prefix="full"))
        wait_for(lambda: _errors(daemon) >= 1, 60, "a store error on the full disk")
        assert 0.0 == daemon.value("meter_store_healthy")
        stuck = table_count(daemon.db, "events")
        assert daemon.alive
        os.unlink(ballast)
        wait_stored(daemon.db, 6200)
        wait_for(lambda: daemon.value("meter_store_healthy") == 1.0, 30, "the store to be healthy")
        assert daemon.proc is not None
        assert pid == daemon.proc.pid

        # Full again, and the daemon dies while its batch is uncommitted.
        ballast = fill(tiny_disk)
        errors = _errors(daemon)
        publisher.publish_many(iter_events(6000, prefix="killed"))
        wait_for(lambda: _errors(daemon) > errors, 60, "a store error on the full disk")
        daemon.kill()
        os.unlink(ballast)
        daemon.start()
        publisher.wait_all_acked()
        settle_stored(daemon.db, 12200)
    finally:
        daemon.stop()
        publisher.close()
    verdict = set_check(publisher.sent, publisher.acked(), stored_ids(daemon.db))
    print(f"\ndisk full: stuck at {stuck} stored while full; {verdict.summary()}")
    assert stuck < 6200
    assert 12200 == verdict.stored
    assert frozenset() == verdict.lost
    assert frozenset() == verdict.double_counted
    assert "full" in daemon.log_text()


@pytest.mark.broker
@pytest.mark.slow
def test_sigterm_drains_exits_0_and_nothing_is_redelivered(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """SIGTERM mid-stream: exit code 0 within 5 s; after a restart the broker redelivers nothing
    the first run had stored (no duplicates), and nothing is lost."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.start()
    publisher = Publisher(broker, topic_prefix)
    done = threading.Event()

    def publish() -> None:
        publisher.publish_many(iter_events(6000, prefix="drain"), rate=2000)
        done.set()

    thread = in_background(publish, "publisher")
    try:
        wait_stored(daemon.db, 1500)
        started = time.monotonic()
        code = daemon.terminate(timeout=5)
        took = time.monotonic() - started
        stored_by_first = table_count(daemon.db, "events")
        thread.join(60)
        assert done.is_set()
        publisher.wait_all_acked()
        daemon.start()
        wait_stored(daemon.db, 6000)
        duplicates = daemon.total("meter_events_duplicate_total")
        received = daemon.total("meter_events_received_total")
    finally:
        daemon.stop()
        publisher.close()
    verdict = set_check(publisher.sent, publisher.acked(), stored_ids(daemon.db))
    print(f"\nSIGTERM drain: exit {code} after {took:.2f}s; {stored_by_first} stored by the first run")
    assert 0 == code
    assert 0.0 == duplicates
    assert 6000 - stored_by_first == received
    assert frozenset() == verdict.lost
    assert 6000 == verdict.stored
