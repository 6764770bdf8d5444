"""`meter ingest` beside `meter serve` on one database: a locked database is waited for, not an
error, and a batch is stored whole or not at all. Real processes against a broker of the test's
own."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.errors import StoreError
from meter.ingest import ingest
from meter.store import open_store
from rating.contracts import parse_contracts
from tests.conftest import Broker
from tests.meter.test_serve import CONTRACTS, Daemon, count, stored, wait_for

pytestmark = pytest.mark.broker

#: Lines of the file ingested, and events the daemon takes from the broker meanwhile.
INGESTED, PUBLISHED, RATE = 100_000, 12_000, 1_000


def write_lines(path: Path, n: int, tag: str) -> None:
    now = datetime.now(UTC).isoformat()
    path.write_text("".join(
        json.dumps({"id": f"{tag}{i}", "type": "heartbeat", "account": "acme",
                    "user": f"u{i % 40}", "ts": now, "session": "s"}) + "\n"
        for i in range(n)))


def test_ingest_completes_while_the_daemon_writes_the_same_file(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """100,000 lines ingested while the daemon stores ~1,000 events/s into the same database:
    both complete and every event is stored once (old code: ingest exit 1 within a second,
    `database is locked`)."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    d = Daemon(broker, tmp_path, topic_prefix)
    d.start()
    live, batch = tmp_path / "live.jsonl", tmp_path / "batch.jsonl"
    write_lines(live, PUBLISHED, "live")
    write_lines(batch, INGESTED, "file")
    pub = subprocess.Popen([sys.executable, "-m", "meter", "publish", str(live), "--broker",
                            broker.url, "--topic-prefix", topic_prefix, "--rate", str(RATE)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: count(d.db) >= 1_000, "the daemon to be storing", timeout=20)
        before = count(d.db)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "meter", "ingest", str(batch), "--db",
                               str(d.db), "--contracts", str(tmp_path / "contracts.toml")],
                              capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
        during = count(d.db) - before - INGESTED
        assert 0 == done.returncode, done.stderr
        assert re.search(rf"^accepted +{INGESTED}$", done.stdout, re.MULTILINE), done.stdout
        out, _ = pub.communicate(timeout=40)
        assert 0 == pub.returncode, out
        wait_for(lambda: count(d.db) >= INGESTED + PUBLISHED, "every published event stored")
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.communicate()
    try:
        check_daemon(d)
    finally:
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait()
    print(f"ingest of {INGESTED} lines took {took:.1f}s while the daemon stored {during} events",
          file=sys.stderr)
    assert during > 0  # the two really wrote at the same time


def check_daemon(d: Daemon) -> None:
    """Every event once, no duplicate seen by the daemon, and it is still running."""
    total, distinct = stored(d.db, "SELECT count(*), count(DISTINCT account || '/' || id) "
                                   "FROM events")[0]
    assert (INGESTED + PUBLISHED, INGESTED + PUBLISHED) == (total, distinct)
    assert 0 == d.value("meter_events_duplicate_total", account="acme")
    assert d.proc is not None
    assert d.proc.poll() is None


async def test_a_database_locked_for_good_stops_the_ingest_with_one_clear_error(
        tmp_path: Path) -> None:
    """Another writer that never lets go: the batch is retried for the bounded wait, then a
    not-retriable StoreError says the database is still locked; nothing of the batch is stored."""
    db = tmp_path / "meter.db"
    contracts = parse_contracts(CONTRACTS, source="contracts.toml")
    lines = [json.dumps({"id": f"e{i}", "type": "heartbeat", "account": "acme", "user": "u",
                         "ts": datetime.now(UTC).isoformat()}).encode() for i in range(10)]
    async with await open_store(db) as store:
        await ingest([("a", lines[:5])], store, contracts, received_at=datetime.now(UTC))
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        try:
            with pytest.raises(StoreError, match=r"still locked after \d+s") as caught:
                await ingest([("b", lines[5:])], store, contracts, received_at=datetime.now(UTC),
                             busy_wait=1.0)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        took = time.monotonic() - started
    assert not caught.value.retriable
    assert 1 == len(str(caught.value).splitlines())
    # One try waits out SQLite's busy_timeout (5 s) first; the bound stops the next ones.
    assert took < 12.0
    assert [(5,)] == stored(db)
