"""`meter ingest` beside `meter serve` on one database: a locked database is waited for, not an
error, and a batch is stored whole or not at all. Real processes against a broker of the test's
own."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.errors import StoreError
from meter.ingest import ingest
from meter.store import open_store
from rating.contracts import parse_contracts
from tests.meter.test_serve import CONTRACTS, stored


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
