"""The SQLite store: dedupe on (account, id), batch counts, rollback, and schema migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from meter.errors import NotMeterDatabase, StoreError
from meter.events import Event
from meter.store import RejectedMessage, Store, StoredEvent, open_store
from meter.store import sqlite as sqlite_store
from meter.store.sqlite import MIGRATIONS

T0 = datetime(2026, 11, 12, 15, 0, tzinfo=UTC)
T0_US = 1_794_495_600_000_000


def event(n: int, account: str = "acme", minutes: int = 0, **over: Any) -> Event:
    raw = f'{{"id":"e{n}","account":"{account}","extra":{n}}}'.encode()
    base = Event(id=f"e{n}", type="login", account=account, user=f"u{n}",
                 ts=T0 + timedelta(minutes=minutes), pool="agents", session=f"s{n}", raw=raw)
    return replace(base, **over)


def rejected(topic: str | None, raw: bytes = b"nope", reason: str = "not_json") -> RejectedMessage:
    return RejectedMessage(received_us=T0_US, topic=topic, account=None, reason=reason,
                           detail="bad", raw=raw)


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    s = await open_store(db_path)
    yield s
    await s.close()


async def test_a_new_database_is_created_at_the_latest_version_in_wal_full(store: Store) -> None:
    """Opening a missing file creates it, applies every migration, WAL and synchronous=FULL."""
    assert len(MIGRATIONS) == await store.schema_version()
    assert [("wal",)] == await store.execute_fetchall("PRAGMA journal_mode")
    assert [(2,)] == await store.execute_fetchall("PRAGMA synchronous")  # 2 = FULL
    assert {"events": 0, "rejected": 0} == await store.counts()


async def test_a_batch_reports_new_and_duplicate_events(store: Store) -> None:
    """New rows and duplicates of (account, id) are counted, in the batch and across batches."""
    first = await store.add([event(1), event(2), event(1)], [rejected("meter/acme/events")],
                            received_us=T0_US)
    assert (2, 1, 1) == (first.new, first.duplicates, first.rejected)
    second = await store.add([event(2), event(3), event(1, account="globex")], received_us=T0_US)
    assert (2, 1, 0) == (second.new, second.duplicates, second.rejected)
    assert {"events": 4, "rejected": 1} == await store.counts()


async def test_fresh_names_the_new_events_of_a_batch_in_order(store: Store) -> None:
    """`fresh` lists the positions of the events that were stored: not those already in the
    store, and only the first copy of an id repeated within the batch."""
    await store.add([event(2)], received_us=T0_US)
    result = await store.add([event(1), event(2), event(3), event(1), event(2, account="globex")],
                             received_us=T0_US)
    assert ((0, 2, 4), 3, 2) == (result.fresh, result.new, result.duplicates)
    assert () == (await store.add([event(1), event(3)], received_us=T0_US)).fresh
    # Without `which` (meter ingest) the lookup is skipped; the counts stay exact.
    result = await store.add([event(4), event(1), event(4)], received_us=T0_US, which=False)
    assert ((), 1, 2) == (result.fresh, result.new, result.duplicates)
    # Bound rows instead of one statement: the same answer.
    result = await store.add([event(5), event(1), event(5)], received_us=T0_US,
                             one_statement=False)
    assert ((0,), 1, 2) == (result.fresh, result.new, result.duplicates)


TRICKY_TEXT = ["quote \" and backslash \\", "tab\tnewline\n", "\u00e9t\u00e9 \U0001f642",
               "\\u0000 spelled out", "nul \x00 inside", "[\"looks\", \"like\", 1, null]"]


@pytest.mark.parametrize("text", TRICKY_TEXT)
async def test_text_fields_and_payloads_are_stored_exactly(store: Store, text: str) -> None:
    """Every field and the raw payload come back byte for byte, whichever way the batch is
    written (one JSON statement, or bound rows: asked for, or for text JSON cannot carry, such
    as a NUL), and a second copy of the batch is recognised as duplicates either way."""
    raw = f'{{"id": {text!r}, "k": "\u00e9"}}'.encode()
    events = [event(1, id=text, user=text, session=text, raw=raw), event(2, user=text, pool=None)]
    assert ((0, 1), 2) == ((r := await store.add(events, received_us=T0_US)).fresh, r.new)
    assert ((), 2) == ((r := await store.add(events, received_us=T0_US)).fresh, r.duplicates)
    again = await store.add(events, received_us=T0_US, one_statement=False)
    assert ((), 2) == (again.fresh, again.duplicates)
    rows = await store.execute_fetchall(
        "SELECT id, user, session, pool, raw, ts_us, received_us FROM events ORDER BY seq")
    assert [(text, text, text, "agents", raw, T0_US, T0_US),
            ("e2", text, "s2", None, events[1].raw, T0_US, T0_US)] == rows


async def test_a_duplicate_keeps_the_first_copy(store: Store) -> None:
    """A redelivery with the same (account, id) never replaces the stored event."""
    await store.add([event(1, user="first")], received_us=T0_US)
    result = await store.add([event(1, user="second", minutes=5)], received_us=T0_US + 1)
    assert (0, 1) == (result.new, result.duplicates)
    (stored,) = await store.events()
    assert ("first", T0_US, T0_US) == (stored.user, stored.ts_us, stored.received_us)


async def test_events_are_returned_in_event_time_order_with_filters(store: Store) -> None:
    """events() orders by event time (ties by arrival) and filters by account and [start, end)."""
    await store.add([event(1, minutes=10), event(2, minutes=0), event(3, minutes=10),
                     event(4, account="globex", minutes=5)], received_us=T0_US)
    assert ["e2", "e4", "e1", "e3"] == [e.id for e in await store.events()]
    assert ["e2", "e1", "e3"] == [e.id for e in await store.events(account="acme")]
    window = await store.events(start_us=T0_US, end_us=T0_US + 10 * 60_000_000)
    assert ["e2", "e4"] == [e.id for e in window]
    (e4,) = await store.events(account="globex")
    assert StoredEvent(seq=4, account="globex", id="e4", type="login", user="u4", pool="agents",
                       session="s4", ts_us=T0_US + 5 * 60_000_000, received_us=T0_US) == e4


async def test_the_raw_payload_is_stored_with_unknown_fields(store: Store) -> None:
    """The payload is kept byte for byte."""
    await store.add([event(7)], received_us=T0_US)
    assert [(b'{"id":"e7","account":"acme","extra":7}',)] == await store.execute_fetchall(
        "SELECT raw FROM events")


async def test_a_failing_batch_is_rolled_back_whole(store: Store) -> None:
    """An error anywhere in a batch stores nothing of it; the store stays usable."""
    await store.add([event(1)], received_us=T0_US)
    broken = replace(event(3), user=None)  # type: ignore[arg-type]  # NOT NULL violation
    with pytest.raises(StoreError, match="batch not stored") as info:
        await store.add([event(2), broken], received_us=T0_US)
    assert info.value.retriable is False
    with pytest.raises(StoreError):
        await store.add([event(4)], [rejected("t", reason=None)],  # type: ignore[arg-type]
                        received_us=T0_US)
    assert {"events": 1, "rejected": 0} == await store.counts()
    result = await store.add([event(2)], received_us=T0_US)
    assert (1, 0) == (result.new, result.duplicates)


async def test_a_locked_database_is_a_retriable_error(db_path: Path) -> None:
    """When another writer holds the lock past the busy timeout, the error says retry."""
    store = await open_store(db_path, busy_timeout_ms=50)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError) as info:
            await store.add([event(1)], received_us=T0_US)
        assert info.value.retriable is True
        other.execute("ROLLBACK")
        assert 1 == (await store.add([event(1)], received_us=T0_US)).new
    finally:
        other.close()
        await store.close()


async def test_rejections_are_counted_by_reason(store: Store) -> None:
    """rejected_by_reason groups the rejected table."""
    await store.add([], [rejected("a"), rejected("b"), rejected("c", reason="schema")],
                    received_us=T0_US)
    assert {"not_json": 2, "schema": 1} == await store.rejected_by_reason()


async def test_a_file_line_rejected_twice_is_stored_once(store: Store) -> None:
    """Rejections located at file:PATH:LINE or stdin:LINE are kept once; broker ones every time."""
    batch = [rejected("file:a.jsonl:3"), rejected("stdin:3"), rejected("meter/acme/events"),
             rejected("file:a.jsonl:4")]
    await store.add([], batch, received_us=T0_US)
    await store.add([], batch, received_us=T0_US + 1)
    rows = await store.execute_fetchall("SELECT topic FROM rejected ORDER BY seq")
    assert [("file:a.jsonl:3",), ("stdin:3",), ("meter/acme/events",), ("file:a.jsonl:4",),
            ("meter/acme/events",)] == rows


async def test_synchronous_is_checked() -> None:
    """Only SQLite's synchronous levels are accepted."""
    with pytest.raises(StoreError, match="synchronous must be"):
        await open_store("unused.db", synchronous="SOMETIMES")


# --- migrations on databases made by hand -------------------------------------------------------

def _make(path: Path, version: int, script: str = "") -> None:
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:version]:
        db.executescript(step)
    if script:
        db.executescript(script)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


async def test_a_version_0_database_with_other_tables_is_refused(db_path: Path) -> None:
    """An existing file without our schema is not a meter database: refused, and left as it was
    (it used to get every migration beside its own tables, a new empty history)."""
    _make(db_path, 0, "CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');")
    before = _bytes(db_path)
    with pytest.raises(NotMeterDatabase, match="no meter schema"):
        await open_store(db_path)
    assert before == _bytes(db_path)


async def test_a_version_1_database_keeps_its_rows_and_gains_file_dedupe(db_path: Path) -> None:
    """A v1 file keeps every event; repeated file rejections collapse to one, broker ones stay."""
    _make(db_path, 1, f"""
        INSERT INTO events (account, id, type, user, pool, session, ts_us, received_us, raw)
        VALUES ('acme', 'e1', 'login', 'u1', 'agents', 's1', {T0_US}, {T0_US}, x'7b7d');
        INSERT INTO rejected (received_us, topic, account, reason, detail, raw) VALUES
          (1, 'file:a.jsonl:2', NULL, 'not_json', 'bad', x'6e6f'),
          (2, 'file:a.jsonl:2', NULL, 'not_json', 'bad', x'6e6f'),
          (3, 'meter/acme/events', 'acme', 'schema', 'bad', x'6e6f'),
          (4, 'meter/acme/events', 'acme', 'schema', 'bad', x'6e6f');
    """)  # noqa: S608 - a test's own constant, no input
    async with await open_store(db_path) as store:
        assert len(MIGRATIONS) == await store.schema_version()
        assert ["e1"] == [e.id for e in await store.events()]
        assert [(1, "file:a.jsonl:2"), (3, "meter/acme/events"), (4, "meter/acme/events")] == (
            await store.execute_fetchall("SELECT received_us, topic FROM rejected ORDER BY seq"))
        assert 0 == (await store.add([event(1)], received_us=T0_US)).new
        await store.add([], [rejected("file:a.jsonl:2", raw=b"no")], received_us=T0_US)
        assert {"events": 1, "rejected": 3} == await store.counts()


async def test_reopening_a_current_database_changes_nothing(db_path: Path) -> None:
    """Migrations run once: a second open finds the latest version and keeps the data."""
    async with await open_store(db_path) as store:
        await store.add([event(1)], [rejected("file:x:1")], received_us=T0_US)
    async with await open_store(db_path) as store:
        assert len(MIGRATIONS) == await store.schema_version()
        assert {"events": 1, "rejected": 1} == await store.counts()


async def test_a_database_from_a_newer_meter_is_refused(db_path: Path) -> None:
    """A schema version above what this meter knows is an error, and the file is left alone."""
    _make(db_path, 0, "CREATE TABLE future_table (x);")
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"schema version {len(MIGRATIONS) + 5} is newer"):
        await open_store(db_path)
    db = sqlite3.connect(db_path)
    assert [(len(MIGRATIONS) + 5,)] == db.execute("PRAGMA user_version").fetchall()
    db.close()


async def test_a_failed_migration_leaves_the_previous_version(db_path: Path) -> None:
    """A migration that fails is rolled back: the version and the data stay as they were."""
    # A v1 database that already has an object named like the one migration 2 creates.
    _make(db_path, 1, "CREATE INDEX rejected_file_line ON rejected (reason);"
                      "INSERT INTO rejected (received_us, topic, account, reason, detail, raw) "
                      "VALUES (1, 'file:a:1', NULL, 'x', 'y', x'00'),"
                      "       (2, 'file:a:1', NULL, 'x', 'y', x'00');")
    with pytest.raises(StoreError, match="cannot prepare database"):
        await open_store(db_path)
    db = sqlite3.connect(db_path)
    assert [(1,)] == db.execute("PRAGMA user_version").fetchall()
    assert [(2,)] == db.execute("SELECT count(*) FROM rejected").fetchall()
    db.close()


async def test_a_version_4_database_keeps_its_rejected_payloads_whole(db_path: Path) -> None:
    """Migration 5 bounds new garbage only: older rejected rows keep their raw and gain a size
    (no digest: the raw is there to hash)."""
    _make(db_path, 4, """
        INSERT INTO rejected (received_us, topic, account, reason, detail, raw) VALUES
          (1, 'meter/acme/events', 'acme', 'oversized', 'big', zeroblob(5000));
    """)
    async with await open_store(db_path) as store:
        assert len(MIGRATIONS) == await store.schema_version()
        (row,) = await store.rejected()
        assert (5000, 5000, None, False) == (len(row.raw), row.size, row.sha256, row.truncated)


async def test_a_version_5_database_gains_hour_keyed_inserts_and_account_spans(
        db_path: Path) -> None:
    """Migration 6 swaps the (account, ts_us) index for (hour, account, ts_us) and a seat-event
    index, and fills each account's span of hours from the events it has; later inserts keep
    it. (T0 is on the hour, so T0 - 5 us is in the hour before.)"""
    _make(db_path, 5, f"""
        INSERT INTO events (account, id, type, user, pool, session, ts_us, received_us, raw)
        VALUES ('acme', 'e1', 'login', 'u1', 'agents', 's1', {T0_US + 7}, 1, x'7b7d'),
               ('acme', 'e2', 'assign', 'u1', 'named', NULL, {T0_US - 5}, 1, x'7b7d'),
               ('globex', 'g1', 'login', 'u2', 'agents', NULL, {T0_US}, 1, x'7b7d');
    """)  # noqa: S608 - a test's own constant, no input
    async with await open_store(db_path) as store:
        assert len(MIGRATIONS) == await store.schema_version()
        hour = T0_US // 3_600_000_000
        assert [("acme", hour - 1, hour), ("globex", hour, hour)] == (
            await store.execute_fetchall("SELECT * FROM account_span ORDER BY account"))
        assert [("events_by_hour",), ("events_seats",), ("sqlite_autoindex_events_1",)] == (
            await store.execute_fetchall("SELECT name FROM sqlite_schema WHERE type = 'index' "
                                         "AND tbl_name = 'events' ORDER BY name"))
        assert 2 == (await store.add([event(3, minutes=-60), event(1, account="globex")],
                                     received_us=T0_US)).new
        assert [("acme", hour - 1, hour), ("globex", hour, hour)] == (  # within the span
            await store.execute_fetchall("SELECT * FROM account_span ORDER BY account"))
        assert {"acme": T0_US + 7, "globex": T0_US} == await store.latest_event_times()
        assert ["e3", "e2", "e1"] == [e.id for e in await store.events(account="acme")]
        assert ["e2"] == [e.id for e in await store.seat_events_before(T0_US)]


async def test_each_read_of_a_window_seeks_the_index_it_was_built_for(store: Store) -> None:
    """The plans the layout is for: an account's window and its arrivals seek events_by_hour
    per hour, seats before a window seek events_seats, so none of them scans the month."""
    plans = {}
    for name in ("_WINDOW_ROWS", "_WINDOW_LAST", "_ARRIVED", "_SEATS_BEFORE_ROWS", "_SEAT_EVENTS",
                 "_LATEST_IN_HOUR", "_ANY_BEFORE"):
        text = getattr(sqlite_store, name)
        rows = await store.execute_fetchall(  # type: ignore[attr-defined]
            f"EXPLAIN QUERY PLAN {text}", [None] * text.count("?"))
        plans[name] = " | ".join(str(r[-1]) for r in rows)
    assert "SEARCH events USING INDEX events_by_hour (<expr>=? AND account=?" in plans[
        "_WINDOW_ROWS"]
    assert "USING COVERING INDEX events_by_hour (<expr>=? AND account=?" in plans["_WINDOW_LAST"]
    assert "USING COVERING INDEX events_by_hour (<expr>=? AND account=?" in plans["_ARRIVED"]
    assert "SEARCH events USING INDEX events_seats (account=? AND ts_us<?)" in plans[
        "_SEATS_BEFORE_ROWS"]
    assert "SCAN events USING INDEX events_seats" in plans["_SEAT_EVENTS"]
    assert "SEARCH events USING COVERING INDEX events_by_hour (<expr>=? AND account=?)" in plans[
        "_LATEST_IN_HOUR"]
    assert "SEARCH events USING COVERING INDEX events_by_hour (<expr>=? AND account=? AND " \
           "ts_us<?)" in plans["_ANY_BEFORE"]


async def test_an_event_inside_an_accounts_hours_writes_no_span(store: Store) -> None:
    """The span holds hours: an event inside them changes no row (and dirties no page), one
    outside widens it."""
    await store.add([event(1), event(2, minutes=59)], received_us=T0_US)
    sql = store.execute_fetchall  # type: ignore[attr-defined]
    hour = T0_US // 3_600_000_000
    assert [("acme", hour, hour)] == await sql("SELECT * FROM account_span")
    (before,) = await sql("SELECT total_changes()")
    await store.add([event(3, minutes=30)], received_us=T0_US)
    (after,) = await sql("SELECT total_changes()")
    assert 1 == after[0] - before[0]  # the event's own row, nothing in account_span
    await store.add([event(4, minutes=60), event(5, minutes=-1)], received_us=T0_US)
    assert [("acme", hour - 1, hour + 1)] == await sql("SELECT * FROM account_span")
