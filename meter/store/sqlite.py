"""The SQLite store: accepted and rejected events and finalized reports in one file, through
aiosqlite. Every SQL statement of `meter` is in this module.

WAL, `synchronous=FULL` by default, schema versioned by `PRAGMA user_version`. Accepted events
are unique on (account, id): the database, not the caller, absorbs redeliveries. A batch is one
transaction; nothing is acknowledged by callers until `add` has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
import msgspec

from meter.errors import NotMeterDatabase, StoreError
from meter.events import Event
from meter.store.base import (
    BatchResult,
    EventRecord,
    FinalizedReport,
    RatingRows,
    RejectedMessage,
    Store,
    StoredEvent,
    StoredRejected,
)

__all__ = ["MIGRATIONS", "SqliteStore"]

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Schema migrations, applied in order; `PRAGMA user_version` is how many have run.
#: Append new steps; never edit a step that has shipped.
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: accepted and rejected events
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,        -- arrival order
        account     TEXT    NOT NULL,
        id          TEXT    NOT NULL,
        type        TEXT    NOT NULL,
        user        TEXT    NOT NULL,
        pool        TEXT,
        session     TEXT,
        ts_us       INTEGER NOT NULL,           -- event time, microseconds since epoch, UTC
        received_us INTEGER NOT NULL,           -- receive time, same unit
        raw         BLOB    NOT NULL,           -- the payload as received, unknown fields kept
        UNIQUE (account, id)
    );
    CREATE INDEX events_by_time ON events (account, ts_us);
    CREATE TABLE rejected (
        seq         INTEGER PRIMARY KEY,
        received_us INTEGER NOT NULL,
        topic       TEXT,
        account     TEXT,
        reason      TEXT    NOT NULL,
        detail      TEXT    NOT NULL,
        raw         BLOB    NOT NULL
    );
    """,
    # 2: a line of a file rejected again on re-ingest is stored once (`meter ingest` names the
    # line in `topic` as file:PATH:LINE or stdin:LINE). Broker messages keep every copy.
    """
    DELETE FROM rejected
     WHERE (topic LIKE 'file:%' OR topic LIKE 'stdin:%')
       AND seq NOT IN (SELECT min(seq) FROM rejected
                        WHERE topic LIKE 'file:%' OR topic LIKE 'stdin:%'
                        GROUP BY topic, raw);
    CREATE UNIQUE INDEX rejected_file_line ON rejected (topic, raw)
     WHERE topic LIKE 'file:%' OR topic LIKE 'stdin:%';
    """,
    # 3: finalized reports (`meter report --finalize`): each account's period frozen as rendered.
    # Events with seq > cutoff_seq arrived after finalization; they adjust the next period.
    """
    CREATE TABLE finalized (
        account         TEXT    NOT NULL,
        period_start_us INTEGER NOT NULL,
        period_end_us   INTEGER NOT NULL,
        report          TEXT    NOT NULL,   -- the account's report JSON, canonical text
        charts          TEXT    NOT NULL,   -- the c(t) and E(t) series the HTML draws
        input_hash      TEXT    NOT NULL,
        cutoff_seq      INTEGER NOT NULL,   -- the last event seq known when it was finalized
        finalized_us    INTEGER NOT NULL,   -- wall clock, kept beside the report, never in it
        PRIMARY KEY (account, period_start_us)
    );
    """,
    # 4: the live tracker's checkpoint (`meter.checkpoint`), one row: a restart restores it and
    # replays only the events with seq > its seq.
    """
    CREATE TABLE checkpoint (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        seq         INTEGER NOT NULL,       -- the newest event seq the tracker had applied
        blob        BLOB    NOT NULL
    );
    """,
    # 5: bounded garbage. A rejected payload over the store's `rejected_keep_bytes` keeps only
    # its first bytes, beside its size and sha256 (`truncated` = 1). Older rows keep their raw
    # whole: their size is backfilled, their digest left NULL (the raw is there to hash).
    # The index serves the retention's delete by receive time.
    """
    ALTER TABLE rejected ADD COLUMN size INTEGER;
    ALTER TABLE rejected ADD COLUMN sha256 TEXT;
    ALTER TABLE rejected ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
    UPDATE rejected SET size = length(CAST(raw AS BLOB));
    CREATE INDEX rejected_by_time ON rejected (received_us);
    """,
    # 6: inserts that stay local as the month fills. The (account, ts_us) index took one leaf
    # page per account per batch, ~630 pages of a 1,000-row batch over 1,000 accounts, each
    # written to the WAL and again at the checkpoint: without a dedupe index, 6.7 KB written
    # per row against 0.55 with no index at all (bench/store_index.py, 1M rows). Keyed by the
    # event's hour first, a batch writes into the few pages of the current hour: 0.67 KB per
    # row. (`UNIQUE (account, id)` stays: its random pages are the rest.) A window is read as
    # one seek per (hour, account); `account_span` (kept by the trigger, for every insert path)
    # bounds those hours and leads to an account's first and latest event without an index on
    # account. It holds hours, not times, so a row changes once an hour at most: the trigger
    # writes nothing for an event inside the span, and a batch dirties no span page (with event
    # times each batch rewrote the span rows of its accounts: p99 publish-to-commit at 5,000
    # events/s rose ~30 ms, bench/ingest.py --only latency).
    # Seat events, rare, keep an (account, ts_us) index of their own for the seats held before
    # a window, which has no lower bound.
    """
    CREATE TABLE account_span (
        account     TEXT    PRIMARY KEY,
        first_hour  INTEGER NOT NULL,       -- min(ts_us / 3600000000) of the account's events
        last_hour   INTEGER NOT NULL        -- max(ts_us / 3600000000)
    ) WITHOUT ROWID;
    INSERT INTO account_span
    SELECT account, min(ts_us / 3600000000), max(ts_us / 3600000000) FROM events GROUP BY account;
    CREATE TRIGGER events_span AFTER INSERT ON events BEGIN
        INSERT INTO account_span (account, first_hour, last_hour)
        VALUES (NEW.account, NEW.ts_us / 3600000000, NEW.ts_us / 3600000000)
        ON CONFLICT (account) DO UPDATE SET first_hour = min(first_hour, excluded.first_hour),
                                            last_hour = max(last_hour, excluded.last_hour)
        WHERE excluded.first_hour < first_hour OR excluded.last_hour > last_hour;
    END;
    CREATE INDEX events_by_hour ON events (ts_us / 3600000000, account, ts_us);
    CREATE INDEX events_seats ON events (account, ts_us) WHERE type IN ('assign', 'unassign');
    DROP INDEX events_by_time;
    """,
)

#: The bucket of `events_by_hour`: `ts_us / _HOUR_US`, as SQLite divides (toward zero). Every
#: query that seeks it spells the expression as the index does, or SQLite does not use it.
_HOUR_US: Final = 3_600_000_000
_BY_HOUR: Final = "ts_us / 3600000000 IN (SELECT value FROM json_each(?))"

# ON CONFLICT DO NOTHING, not INSERT OR IGNORE: only a uniqueness conflict (a duplicate) is
# skipped; OR IGNORE would also drop a row violating NOT NULL and count it as a duplicate.
_INSERT_EVENT: Final = (
    "INSERT INTO events "
    "(account, id, type, user, pool, session, ts_us, received_us, raw) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# A whole batch as one statement over one JSON array of rows (`Store.add(one_statement=True)`).
# executemany needs the GIL for every row it binds, and a busy event loop holds it for up to
# the switch interval each time, so 1,000 rows waited on the loop 1,000 times (the convoy
# effect): 300 rows/s against a busy thread, 31,000 like this (measured). One sqlite3_step runs
# all of it with the GIL released, at ~20% more SQLite work per row than bound rows.
# `WHERE true` lets SQLite parse the upsert clause after a SELECT.
_INSERT_EVENTS_JSON: Final = (
    "INSERT INTO events "
    "(account, id, type, user, pool, session, ts_us, received_us, raw) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'), "
    "json_extract(value, '$[5]'), json_extract(value, '$[6]'), ?, "
    "CAST(json_extract(value, '$[7]') AS BLOB) "
    "FROM json_each(?) WHERE true ON CONFLICT DO NOTHING"
)
_NEWEST_SEQ: Final = "SELECT coalesce(max(seq), 0) FROM events"
# The (account, id) of the rows after a seq, as one JSON array of pairs.
_KEYS_AFTER: Final = "SELECT json_group_array(json_array(account, id)) FROM events WHERE seq > ?"
_KEYS: Final = msgspec.json.Decoder(list[tuple[str, str]])
#: SQLite's page cache per connection, in KiB (its default is 2 MiB). A batch over 1,000 accounts
#: dirties a page per account in each account-keyed index; with 2 MiB those pages are read back
#: from the OS for every batch (more system than user time). 64 MiB: 35-37 -> 26-31 us CPU per
#: row for batches of 4,000 on a fresh store (scratch bench beside bench/store_index.py).
_CACHE_KIB: Final = 65536
_SQL_PARAMS: Final = 998  # bound parameters per existence query (SQLite's lowest limit is 999)
_INSERT_REJECTED: Final = (
    "INSERT INTO rejected (received_us, topic, account, reason, detail, raw, size, sha256, "
    "truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_REJECTED_COLUMNS: Final = (
    "seq, received_us, topic, account, reason, detail, raw, "
    "coalesce(size, length(CAST(raw AS BLOB))), sha256, truncated"
)
# The oldest rows beyond `max_bytes` of stored payload, counted from the newest down.
_REJECTED_OVER_BYTES: Final = (
    "DELETE FROM rejected WHERE seq IN (SELECT seq FROM ("
    " SELECT seq, sum(length(CAST(raw AS BLOB))) OVER (ORDER BY seq DESC) AS total"
    " FROM rejected) WHERE total > ?)"
)
_JSON_ROWS: Final = msgspec.json.Encoder()

_EVENT_COLUMNS: Final = "seq, account, id, type, user, pool, session, ts_us, received_us"
_SEAT_EVENTS: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM events "  # noqa: S608 - a fixed column list
    "WHERE type IN ('assign', 'unassign') AND ts_us < ? ORDER BY ts_us, seq"
)
# Two reads: the window (the hours it meets, `_hours_of`, each one seek of `events_by_hour`), and
# (for `seats_before`) the seat events before it (`events_seats`). Each is ordered by (ts_us, id),
# and the second lies wholly before the first, so their concatenation is in (ts_us, id) order.
# SQLite compares text by its UTF-8 bytes, which is code-point order, the order Python sorts the
# ids in.
_WINDOW_ROWS: Final = (
    "SELECT id, type, user, pool, session, ts_us FROM events "  # noqa: S608 - fixed clauses
    f"WHERE {_BY_HOUR} AND account = ? AND seq <= ? AND ts_us >= ? AND ts_us < ? "
    "ORDER BY ts_us, id"
)
_WINDOW_LAST: Final = (
    "SELECT coalesce(max(seq), 0) FROM events "  # noqa: S608 - fixed clauses
    f"WHERE {_BY_HOUR} AND account = ? AND seq <= ? AND ts_us >= ? AND ts_us < ?"
)
_SEATS_BEFORE_ROWS: Final = (
    "SELECT id, type, user, pool, session, ts_us FROM events "
    "WHERE account = ? AND seq <= ? AND ts_us < ? AND type IN ('assign', 'unassign') "
    "ORDER BY ts_us, id"
)
_SEATS_BEFORE_LAST: Final = (
    "SELECT coalesce(max(seq), 0) FROM events "
    "WHERE account = ? AND seq <= ? AND ts_us < ? AND type IN ('assign', 'unassign')"
)
_ARRIVED: Final = (
    "SELECT count(*) FROM events "  # noqa: S608 - fixed clauses
    f"WHERE {_BY_HOUR} AND account = ? AND seq > ? AND seq <= ? AND ts_us >= ? AND ts_us < ?"
)
_SPAN: Final = "SELECT first_hour, last_hour FROM account_span WHERE account = ?"
# An account's newest event time: one seek of its last hour. (Written as a correlated subquery
# over account_span, SQLite does not match the index's expression and walks the (account, id)
# index instead: one query per account, at a restart only.)
_LATEST_IN_HOUR: Final = (
    "SELECT max(ts_us) FROM events WHERE ts_us / 3600000000 = ? AND account = ?"
)
# Whether the account has an event before a time: its first hour holds its earliest events.
_ANY_BEFORE: Final = (
    "SELECT 1 FROM events WHERE ts_us / 3600000000 = ? AND account = ? AND ts_us < ? LIMIT 1"
)
_FINALIZED_COLUMNS: Final = (
    "account, period_start_us, period_end_us, report, charts, input_hash, cutoff_seq, finalized_us"
)
_FINALIZED: Final = (
    f"SELECT {_FINALIZED_COLUMNS} FROM finalized "  # noqa: S608 - a fixed column list
    "WHERE account = ? AND period_start_us = ?"
)
_INSERT_FINALIZED: Final = (
    f"INSERT INTO finalized ({_FINALIZED_COLUMNS}) "  # noqa: S608 - a fixed column list
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


def _json_rows(events: Sequence[Event]) -> str | None:
    """The batch as a JSON array of rows, or None where JSON cannot carry it exactly (a NUL,
    which SQLite's JSON functions would cut text at, or a payload that is not UTF-8). Text, not
    bytes: SQLite from 3.45 reads a BLOB argument as its binary JSONB."""
    try:
        text = _JSON_ROWS.encode([
            (e.account, e.id, e.type, e.user, e.pool, e.session, e.ts_us, e.raw.decode())
            for e in events
        ])
    except (UnicodeError, msgspec.EncodeError):
        return None
    return None if b"\\u0000" in text else text.decode()


@dataclass(frozen=True)
class _Batch:
    """What `_add_batch` writes: the events (`json`: as `_json_rows`, or None to bind them row
    by row), whether to find which were new, and the rejected messages' rows."""

    received_us: int
    events: Sequence[Event]
    json: str | None
    which: bool
    rejected: list[tuple[object, ...]]


def _add_batch(conn: sqlite3.Connection, b: _Batch) -> tuple[int, set[tuple[str, str]]]:
    """On the connection's thread, inside the batch's transaction: insert it; returns how many
    events were new and (with `which`) the batch's (account, id) keys stored before it."""
    known: set[tuple[str, str]] = set()
    # `new` is the insert's own count (a cursor's rowcount): `total_changes` would also count
    # the rows the `events_span` trigger writes.
    new = 0
    if b.json is not None and b.which:
        # The rows the insert kept are the ones above the newest seq before it (this
        # transaction is the only writer), read back as one JSON text: one row to step, where
        # RETURNING steps once per row and the thread takes the GIL back each time, waiting on
        # a busy event loop (4,000 rows beside a busy thread: 159-228 us a row, 28 like this).
        before = conn.execute(_NEWEST_SEQ).fetchone()[0]
        new = conn.execute(_INSERT_EVENTS_JSON, (b.received_us, b.json)).rowcount
        inserted = {(a, i) for a, i in _KEYS.decode(
            conn.execute(_KEYS_AFTER, (before,)).fetchone()[0])}
        known = {(e.account, e.id) for e in b.events} - inserted
    elif b.json is not None:
        new = conn.execute(_INSERT_EVENTS_JSON, (b.received_us, b.json)).rowcount
    elif b.events:
        if b.which:
            known = _known(conn, b.events)
        new = conn.executemany(_INSERT_EVENT, [
            (e.account, e.id, e.type, e.user, e.pool, e.session, e.ts_us, b.received_us, e.raw)
            for e in b.events]).rowcount
    if b.rejected:
        conn.executemany(_INSERT_REJECTED, b.rejected)
    return new, known


def _known(conn: sqlite3.Connection, events: Sequence[Event]) -> set[tuple[str, str]]:
    """Which (account, id) of `events` are stored already, by bound parameters (the path for a
    batch that JSON cannot carry)."""
    known: set[tuple[str, str]] = set()
    step = _SQL_PARAMS // 2
    for i in range(0, len(events), step):
        chunk = events[i:i + step]
        values = ",".join(["(?, ?)"] * len(chunk))
        rows = conn.execute(
            f"WITH batch(account, id) AS (VALUES {values}) "  # noqa: S608 - placeholders only
            "SELECT e.account, e.id FROM batch JOIN events e "
            "ON e.account = batch.account AND e.id = batch.id",
            [v for e in chunk for v in (e.account, e.id)]).fetchall()
        known.update((str(a), str(x)) for a, x in rows)
    return known


def _rejected_row(r: RejectedMessage, keep: int) -> tuple[object, ...]:
    """The row of a rejected message: whole up to `keep` bytes (so `meter rejected reprocess`
    can still read it), else its first `keep` bytes beside the size and digest of all of it."""
    raw = r.raw
    truncated = len(raw) > keep
    return (r.received_us, r.topic, r.account, r.reason, r.detail,
            raw[:keep] if truncated else raw, len(raw), hashlib.sha256(raw).hexdigest(),
            int(truncated))


def _retriable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL,
                    sqlite3.SQLITE_IOERR) or "locked" in str(exc) or "full" in str(exc)


# `PRAGMA quick_check` reads every page, so it is run at open only on files up to this size:
# 0.66 GB/s measured (a 741 MB file of 3M events: 1.1 s warm; integrity_check 4.7 s, not used).
# Up to 256 MiB (about 1M events) that is at most ~0.4 s on a daemon start or a report, and it
# finds corrupt pages before the first bill is read from them. Beyond it the open stays O(1):
# only the header and the schema are read, and damage surfaces when a query meets it.
_QUICK_CHECK_MAX_BYTES: Final = 256 * 1024 * 1024


async def _run(db: aiosqlite.Connection, sql: str) -> list[sqlite3.Row]:
    """Run `sql` to its end and close its cursor: a statement left with rows unread keeps its
    read transaction (and its snapshot) open."""
    async with db.execute(sql) as cur:
        return list(await cur.fetchall())


async def _user_version(db: aiosqlite.Connection) -> int:
    rows = await _run(db, "PRAGMA user_version")
    return int(rows[0][0]) if rows else 0


def _tables_at(version: int) -> set[str]:
    """The tables the first `version` migrations leave, read from their text."""
    tables: set[str] = set()
    for step in MIGRATIONS[:version]:
        for verb, old, new in re.findall(
                r"\b(CREATE TABLE|DROP TABLE|ALTER TABLE)\s+(?:IF (?:NOT )?EXISTS\s+)?(\w+)"
                r"(?:\s+RENAME TO\s+(\w+))?", step, flags=re.IGNORECASE):
            if verb.upper() == "CREATE TABLE":
                tables.add(old)
            elif verb.upper() == "DROP TABLE":
                tables.discard(old)
            elif new:
                tables.discard(old)
                tables.add(new)
    return tables


def _statements(script: str) -> list[str]:
    """The statements of a migration, one by one (one `execute` each, inside the caller's
    transaction): split at each `;` that ends a complete statement, so a trigger's body stays
    whole."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return [s for s in out if s.strip(" \n;")]


def _check_file(path: Path) -> int | None:
    """The size of the file at `path`, or None where there is none (a new database is made).
    `NotMeterDatabase` for an empty file or something that is not a file.

    The file is never opened here, only stat'ed: SQLite locks with POSIX advisory locks, which
    close() of any descriptor of the file drops for the whole process, so reading its header in
    Python beside a live connection (the finalizer opens a store inside the daemon) let two
    writers in at once and corrupted the database. SQLite itself says when a file is not one.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open database: {exc.strerror or exc}") from None
    if not path.is_file():
        raise NotMeterDatabase(f"{path}: not a meter database: not a regular file")
    if st.st_size == 0:
        # A new meter database has its first page written by `connect` (journal_mode), so an
        # empty file is a truncated copy or a path that names something else.
        raise NotMeterDatabase(f"{path}: not a meter database: empty file")
    return st.st_size


async def _check_schema(db: aiosqlite.Connection, path: Path, size: int) -> None:
    """`NotMeterDatabase` unless the existing file at `path` holds a meter schema (or none yet:
    a file made by `connect` that stopped before its first migration) and, up to
    `_QUICK_CHECK_MAX_BYTES`, passes `PRAGMA quick_check`."""
    rows = await _run(db, "SELECT name FROM sqlite_schema WHERE type = 'table' "
                          "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
    tables = {str(r[0]) for r in rows}
    version = await _user_version(db)
    if version > len(MIGRATIONS):
        return  # a newer meter's schema: `_migrate` says to upgrade, whatever its tables are
    missing = _tables_at(version) - tables
    if (version == 0 and tables) or missing:
        listed = ", ".join(sorted(tables)) or "none"
        raise NotMeterDatabase(f"{path}: not a meter database: no meter schema "
                               f"(user_version {version}, tables: {listed})")
    if size <= _QUICK_CHECK_MAX_BYTES:
        result = await _run(db, "PRAGMA quick_check(1)")
        first = " ".join(str(result[0][0]).split()) if result else "no answer"  # one line
        if first != "ok":
            raise NotMeterDatabase(f"{path}: not a meter database: corrupt: {first}")


def _code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of `exc`, if it has one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _corrupt(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged or not a database at all."""
    return _code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class SqliteStore(Store):
    """The store in one SQLite file (WAL). Open it with `meter.store.open_store(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: Path, *, json: bool = True) -> None:
        self._db = db
        self.path = path
        self.location = str(path)
        self._json = json  # whether this SQLite has json_each (built in since 3.38)
        # One connection, one transaction at a time: a checkpoint saved while a batch is being
        # written must wait for its COMMIT, not BEGIN inside it.
        self._writing = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str | Path, *, synchronous: str = "FULL",
                      busy_timeout_ms: int = 5000, mmap: bool = False) -> SqliteStore:
        """Open and migrate the database at `path`, creating it only where nothing is there.

        A file that exists must be a meter database (`NotMeterDatabase` otherwise, exit 2): an
        empty file, another program's SQLite file or a corrupt one is refused, never treated as a
        new history. Every cursor opened here is closed before returning: a statement left
        unfinished holds a read transaction, and a later BEGIN IMMEDIATE on that stale snapshot
        fails with SQLITE_BUSY at once instead of waiting `busy_timeout_ms` for another writer.
        """
        path = Path(path)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        existing = _check_file(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open database: {exc}") from None
        try:
            await _run(db, f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if existing is not None:
                # Before journal_mode: switching to WAL would write into a foreign file.
                await _check_schema(db, path, existing)
            await _run(db, "PRAGMA journal_mode = WAL")
            await _run(db, f"PRAGMA synchronous = {synchronous.upper()}")
            await _run(db, f"PRAGMA cache_size = -{_CACHE_KIB}")
            if mmap:
                # Mapped pages skip a read() copy each: about a quarter of a report's fetch time.
                await _run(db, "PRAGMA mmap_size = 4294967296")
            await cls._migrate(db, path)
            try:
                await _run(db, "SELECT count(*) FROM json_each('[]')")
                has_json = True
            except sqlite3.OperationalError:
                has_json = False  # an SQLite built without JSON: batches are written as bound rows
        except sqlite3.DatabaseError as exc:
            await db.close()
            if _corrupt(exc):
                what = ("not a SQLite file" if _code(exc) == sqlite3.SQLITE_NOTADB
                        else f"corrupt: {exc}")
                raise NotMeterDatabase(f"{path}: not a meter database: {what}") from None
            raise StoreError(f"{path}: cannot prepare database: {exc}",
                             retriable=_retriable(exc)) from None
        except BaseException:
            await db.close()
            raise
        return cls(db, path, json=has_json)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
        version = await _user_version(db)
        if version > len(MIGRATIONS):
            raise StoreError(f"{path}: schema version {version} is newer than this meter "
                             f"({len(MIGRATIONS)}); upgrade the meter")
        for step in range(version, len(MIGRATIONS)):
            await _run(db, "BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[step]):
                    await _run(db, statement)
                await _run(db, f"PRAGMA user_version = {step + 1}")
                await _run(db, "COMMIT")
            except BaseException:
                await _run(db, "ROLLBACK")
                raise

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._db.close()

    async def schema_version(self) -> int:
        """The applied schema version."""
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def add(self, events: Sequence[Event],
                  rejected: Sequence[RejectedMessage] = (),
                  *, received_us: int = 0, which: bool = True, one_statement: bool = True,
                  meanwhile: Callable[[], None] | None = None) -> BatchResult:
        """Insert a batch in one transaction; duplicates of (account, id) are ignored and counted,
        and `fresh` says which events were new (with `which`; without, it is empty and the
        lookup of the stored ids is skipped).

        `one_statement` writes the batch as one statement that holds the GIL once: for a caller
        whose thread stays busy meanwhile (`meter serve`: 60% -> 80% of the aiomqtt ceiling).
        Without it the rows are bound one by one, which is less work for SQLite and faster for
        a caller that mostly waits on the store (`meter ingest`: 71% against 60% of the ceiling
        with one statement, bench/ingest_file.py).

        `meanwhile` runs on the event loop once the transaction is on the connection's thread.

        Returns only after COMMIT; on any error the whole batch is rolled back and `StoreError`
        says whether a retry can succeed.
        """
        batch = _json_rows(events) if events and one_statement and self._json else None
        keep = self.rejected_keep_bytes
        new, known = await self._in_one_call("batch", _add_batch, _Batch(
            received_us=received_us, events=events, json=batch, which=which,
            rejected=[_rejected_row(r, keep) for r in rejected]), meanwhile=meanwhile)
        if not which:
            return BatchResult(new=new, duplicates=len(events) - new, rejected=len(rejected))
        fresh: list[int] = []
        for i, e in enumerate(events):
            key = (e.account, e.id)
            if key not in known:
                known.add(key)  # a second copy within the batch is a duplicate too
                fresh.append(i)
        if len(fresh) != new:
            # Committed, but the lookup disagrees with SQLite: a bug. Not retriable: the daemon
            # stops loudly and its restart rebuilds the live view from what was stored.
            raise StoreError(f"{self.path}: batch committed with {new} new events where the id "
                             f"lookup expected {len(fresh)}; this is a bug", retriable=False)
        return BatchResult(new=new, duplicates=len(events) - new, rejected=len(rejected),
                           fresh=tuple(fresh))

    async def events(self, account: str | None = None, start_us: int | None = None,
                     end_us: int | None = None) -> list[StoredEvent]:
        """Accepted events, optionally of one account and with `start_us <= ts_us < end_us`,
        in event-time order (ties by arrival)."""
        hours = None
        if account is not None:
            hours = await self._hours_of(account, start_us, end_us)
            if hours is None:
                return []
        where, params = _where((_BY_HOUR, hours), ("account = ?", account),
                               ("ts_us >= ?", start_us), ("ts_us < ?", end_us))
        if account is None and start_us is not None:
            # A range of the index's first column: only the hours from the start are read.
            where += " AND ts_us / 3600000000 >= ?"
            params.append(_bucket(start_us))
        sql = ("SELECT seq, account, id, type, user, pool, session, ts_us, received_us "  # noqa: S608 - clauses are fixed strings, values are bound
               f"FROM events {where} ORDER BY ts_us, seq")
        async with self._db.execute(sql, params) as cur:
            return [StoredEvent(*row) for row in await cur.fetchall()]

    async def _hours_of(self, account: str, start_us: int | None, end_us: int | None
                        ) -> str | None:
        """The hours of `[start_us, end_us)` (unbounded where None) that hold events of the
        account, as the JSON array `_BY_HOUR` binds; None where there are none."""
        rows = await self.execute_fetchall(_SPAN, (account,))
        if not rows:
            return None
        lo, hi = _as_int(rows[0][0]), _as_int(rows[0][1])
        if start_us is not None:
            lo = max(lo, _bucket(start_us))
        if end_us is not None:
            hi = min(hi, _bucket(end_us - 1))
        return _bucket_list(lo, hi) if lo <= hi else None

    async def seat_events_before(self, end_us: int) -> list[StoredEvent]:
        async with self._db.execute(_SEAT_EVENTS, (end_us,)) as cur:
            return [StoredEvent(*row) for row in await cur.fetchall()]

    async def latest_event_times(self) -> dict[str, int]:
        spans = await self.execute_fetchall("SELECT account, last_hour FROM account_span")
        return {str(a): await self._int(_LATEST_IN_HOUR, (hour, a)) for a, hour in spans}

    async def rating_rows(self, account: str, start_us: int, end_us: int, *, through_seq: int,
                          seats_before: bool = False) -> RatingRows:
        rows: list[Any] = []
        last = 0
        if seats_before:
            seats = (account, through_seq, start_us)
            rows += await self.execute_fetchall(_SEATS_BEFORE_ROWS, seats)
            last = await self._int(_SEATS_BEFORE_LAST, seats)
        hours = await self._hours_of(account, start_us, end_us)
        if hours is not None:
            window = (hours, account, through_seq, start_us, end_us)
            rows += await self.execute_fetchall(_WINDOW_ROWS, window)
            last = max(last, await self._int(_WINDOW_LAST, window))
        return RatingRows(rows=tuple(rows), last_seq=last)

    async def has_events_before(self, account: str, end_us: int) -> bool:
        rows = await self.execute_fetchall(_SPAN, (account,))
        return bool(rows) and bool(await self.execute_fetchall(
            _ANY_BEFORE, (rows[0][0], account, end_us)))

    async def count_arrived(self, account: str, start_us: int, end_us: int, *, after_seq: int,
                            through_seq: int) -> int:
        hours = await self._hours_of(account, start_us, end_us)
        if hours is None:
            return 0
        return await self._int(_ARRIVED, (hours, account, after_seq, through_seq, start_us,
                                          end_us))

    async def last_seq(self) -> int:
        return await self._int("SELECT coalesce(max(seq), 0) FROM events")

    async def events_after(self, seq: int, *, limit: int | None = None,
                           account: str | None = None) -> list[StoredEvent]:
        sql = (f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? "  # noqa: S608 - a fixed column list
               "AND (?2 IS NULL OR account = ?2) ORDER BY seq LIMIT ?3")
        async with self._db.execute(sql, (seq, account, -1 if limit is None else limit)) as cur:
            return [StoredEvent(*row) for row in await cur.fetchall()]

    async def save_checkpoint(self, seq: int, blob: bytes) -> None:
        async with self._transaction("checkpoint"):
            await self._db.execute(
                "INSERT INTO checkpoint (id, seq, blob) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, blob = excluded.blob",
                (seq, blob))

    async def load_checkpoint(self) -> tuple[int, bytes] | None:
        rows = await self.execute_fetchall("SELECT seq, blob FROM checkpoint WHERE id = 1")
        if not rows:
            return None
        seq, blob = rows[0]
        if not isinstance(blob, bytes):
            raise TypeError(f"expected a BLOB checkpoint, got {type(blob).__name__}")
        return _as_int(seq), blob

    async def counts(self) -> dict[str, int]:
        """Row counts: accepted `events` and `rejected`."""
        out = {}
        for table in ("events", "rejected"):
            async with self._db.execute(f"SELECT count(*) FROM {table}") as cur:  # noqa: S608 - fixed names
                row = await cur.fetchone()
            out[table] = int(row[0]) if row else 0
        return out

    async def rejected_by_reason(self) -> dict[str, int]:
        """Rejected messages counted by reason."""
        async with self._db.execute(
            "SELECT reason, count(*) FROM rejected GROUP BY reason ORDER BY reason"
        ) as cur:
            return {str(r): int(n) for r, n in await cur.fetchall()}

    async def rejected(self, *, account: str | None = None, reason: str | None = None,
                       since_us: int | None = None, seq: int | None = None
                       ) -> list[StoredRejected]:
        topic = None if account is None else f"/{account}/events"
        # The payload's account, or the topic's `<prefix>/<account>/events` (an unknown account's
        # row names it only there when the payload did not parse).
        where, params = _where(
            ("(account = ? OR substr(topic, -length(?)) = ?)",
             None if account is None else (account, topic, topic)),
            ("reason = ?", reason), ("received_us >= ?", since_us), ("seq = ?", seq))
        sql = (f"SELECT {_REJECTED_COLUMNS} FROM rejected {where} "  # noqa: S608 - fixed clauses, bound values
               "ORDER BY seq")
        return [_stored_rejected(row) for row in await self.execute_fetchall(sql, params)]

    async def reprocess_rejected(self, seqs: Sequence[int], events: Sequence[Event]
                                 ) -> tuple[int, int]:
        if len(seqs) != len(events):
            raise ValueError(f"{len(seqs)} rejected rows for {len(events)} events")
        moved = duplicates = 0
        async with self._transaction("reprocessed rejected messages"):
            for seq, e in zip(seqs, events, strict=True):
                async with self._db.execute(
                        "SELECT received_us FROM rejected WHERE seq = ?", (seq,)) as cur:
                    row = await cur.fetchone()
                if row is None:
                    continue  # moved (or pruned) already
                async with self._db.execute(_INSERT_EVENT, (
                        e.account, e.id, e.type, e.user, e.pool, e.session, e.ts_us, row[0],
                        e.raw)) as cur:
                    duplicates += cur.rowcount == 0
                await self._db.execute("DELETE FROM rejected WHERE seq = ?", (seq,))
                moved += 1
        return moved, duplicates

    async def prune_rejected(self, older_than_us: int, max_bytes: int) -> int:
        async with self._transaction("rejected retention"):
            before = self._db.total_changes
            await self._db.execute("DELETE FROM rejected WHERE received_us < ?", (older_than_us,))
            await self._db.execute(_REJECTED_OVER_BYTES, (max_bytes,))
            return self._db.total_changes - before

    async def execute_fetchall(self, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
        """Run a read-only query with bound parameters. For this module and for tests that look
        at the file directly; not part of the `Store` interface."""
        async with self._db.execute(sql, tuple(params)) as cur:
            return [tuple(r) for r in await cur.fetchall()]


    async def finalized(self, account: str, period_start_us: int) -> FinalizedReport | None:
        rows = await self.execute_fetchall(_FINALIZED, (account, period_start_us))
        if not rows:
            return None
        a, start, end, report, charts, digest, cutoff, at = rows[0]
        return FinalizedReport(account=str(a), period_start_us=_as_int(start),
                               period_end_us=_as_int(end), report=str(report), charts=str(charts),
                               input_hash=str(digest), cutoff_seq=_as_int(cutoff),
                               finalized_us=_as_int(at))

    async def finalized_reports(self) -> list[FinalizedReport]:
        rows = await self.execute_fetchall(
            f"SELECT {_FINALIZED_COLUMNS} FROM finalized "  # noqa: S608 - a fixed column list
            "ORDER BY account, period_start_us")
        return [FinalizedReport(account=str(a), period_start_us=_as_int(start),
                                period_end_us=_as_int(end), report=str(report),
                                charts=str(charts), input_hash=str(digest),
                                cutoff_seq=_as_int(cutoff), finalized_us=_as_int(at))
                for a, start, end, report, charts, digest, cutoff, at in rows]

    async def event_records(self, after_seq: int, *, limit: int) -> list[EventRecord]:
        rows = await self.execute_fetchall(
            f"SELECT {_EVENT_COLUMNS}, raw FROM events WHERE seq > ? "  # noqa: S608 - a fixed column list
            "ORDER BY seq LIMIT ?", (after_seq, limit))
        return [(StoredEvent(*row[:-1]), _as_bytes(row[-1])) for row in rows]  # type: ignore[arg-type]

    async def rejected_after(self, after_seq: int, *, limit: int) -> list[StoredRejected]:
        rows = await self.execute_fetchall(
            f"SELECT {_REJECTED_COLUMNS} FROM rejected WHERE seq > ? "  # noqa: S608 - a fixed column list
            "ORDER BY seq LIMIT ?", (after_seq, limit))
        return [_stored_rejected(row) for row in rows]

    async def import_events(self, rows: Sequence[EventRecord]) -> int:
        # Plain INSERT: a seq or (account, id) stored already fails the whole copy. SQLite
        # numbers later rows after the largest seq by itself (INTEGER PRIMARY KEY).
        async with self._transaction("imported events"):
            await self._db.executemany(
                "INSERT INTO events (seq, account, id, type, user, pool, session, ts_us, "
                "received_us, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.seq, e.account, e.id, e.type, e.user, e.pool, e.session, e.ts_us,
                  e.received_us, raw) for e, raw in rows])
        return len(rows)

    async def import_rejected(self, rows: Sequence[StoredRejected]) -> int:
        async with self._transaction("imported rejected messages"):
            await self._db.executemany(
                "INSERT INTO rejected (seq, received_us, topic, account, reason, detail, raw, "
                "size, sha256, truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.seq, r.received_us, r.topic, r.account, r.reason, r.detail, r.raw, r.size,
                  r.sha256, int(r.truncated)) for r in rows])
        return len(rows)

    async def add_finalized(self, report: FinalizedReport) -> bool:
        r = report
        async with self._transaction("finalized report"):
            before = self._db.total_changes
            await self._db.execute(_INSERT_FINALIZED, (
                r.account, r.period_start_us, r.period_end_us, r.report, r.charts, r.input_hash,
                r.cutoff_seq, r.finalized_us))
            return self._db.total_changes > before

    @contextlib.contextmanager
    def _not_stored(self, what: str) -> Iterator[None]:
        """An SQLite error inside becomes a `StoreError` naming `what` and whether a retry can
        succeed."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {what} not stored: {exc}",
                             retriable=_retriable(exc)) from None

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[None]:
        """One write transaction (BEGIN IMMEDIATE .. COMMIT), rolled back whole on any error; an
        SQLite error becomes a `StoreError` naming `what` and whether a retry can succeed."""
        with self._not_stored(what):
            async with self._writing:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    await self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        await self._db.execute("ROLLBACK")
                    raise

    async def _in_one_call(self, what: str, fn: Callable[[sqlite3.Connection, _T], _R],
                           arg: _T, *, meanwhile: Callable[[], None] | None = None) -> _R:
        """`fn(connection, arg)` as one write transaction (BEGIN IMMEDIATE .. COMMIT, rolled back
        whole on any error), all of it in one call on the connection's thread: `_transaction`
        hands each statement to the thread and waits for the event loop to send the next, and a
        busy loop (validating the next batch) kept the thread idle between them. An SQLite error
        becomes a `StoreError` naming `what` and whether a retry can succeed.

        `meanwhile()` is called on the event loop once the call is in the thread's queue, to
        overlap work with it. Once handed over the transaction runs to its end, committed or
        rolled back: a caller cancelled (or a `meanwhile` failing) waits for that end before
        the cancellation goes on, so the store is never written behind the back of a lock
        already given up (the batch may be committed all the same: `Ingestor.unsure`).
        """
        def transaction(conn: sqlite3.Connection) -> _R:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn, arg)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return out

        with self._not_stored(what):
            async with self._writing:
                # aiosqlite runs every call of a connection on its own thread; `_execute` is how
                # its public methods hand one over (there is no public form for a callable).
                execute: Callable[..., Awaitable[_R]] = self._db._execute
                done = asyncio.ensure_future(execute(transaction, self._db._conn))
                try:
                    if meanwhile is not None:
                        await asyncio.sleep(0)  # `done` runs first: it queues the call
                        meanwhile()
                    return await asyncio.shield(done)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(done)
                    raise

    async def _int(self, sql: str, params: Iterable[object] = ()) -> int:
        """The one integer a query answers."""
        rows = await self.execute_fetchall(sql, params)
        return _as_int(rows[0][0])


def _bucket(ts_us: int) -> int:
    """The `events_by_hour` bucket of `ts_us`, divided toward zero as SQLite divides."""
    q = abs(ts_us) // _HOUR_US
    return -q if ts_us < 0 else q


def _bucket_list(first: int, last: int) -> str:
    """The buckets `first..last` as the JSON array `_BY_HOUR` binds."""
    return msgspec.json.encode(list(range(first, last + 1))).decode()


def _hours(start_us: int, end_us: int) -> str:
    """The buckets a non-empty `[start_us, end_us)` meets (for a reader with no span at hand,
    such as bench/report.py's load ceiling)."""
    return _bucket_list(_bucket(start_us), _bucket(end_us - 1))


def _where(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """A WHERE clause of the fixed `conditions` whose value is not None, and its bound values (a
    tuple value binds each of its items, for a condition with several `?`)."""
    used = [(text, value) for text, value in conditions if value is not None]
    params: list[object] = []
    for _, value in used:
        params += list(value) if isinstance(value, tuple) else [value]
    return (f"WHERE {' AND '.join(text for text, _ in used)}" if used else ""), params


def _as_int(value: object) -> int:
    """An integer column of a fetched row (aiosqlite types rows as objects)."""
    if not isinstance(value, int):
        raise TypeError(f"expected an integer column, got {value!r}")
    return value


def _as_bytes(value: object) -> bytes:
    """A BLOB column (a TEXT one, written by an old meter, as its UTF-8)."""
    return value if isinstance(value, bytes) else str(value).encode()


def _stored_rejected(row: Sequence[object]) -> StoredRejected:
    """A row of `_REJECTED_COLUMNS`."""
    q, at, t, a, why, d, raw, n, h, cut = row
    return StoredRejected(
        seq=_as_int(q), received_us=_as_int(at), topic=None if t is None else str(t),
        account=None if a is None else str(a), reason=str(why), detail=str(d),
        raw=_as_bytes(raw), size=_as_int(n), sha256=None if h is None else str(h),
        truncated=bool(cut))
