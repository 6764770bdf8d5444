"""The dedupe-index study: insert throughput as the events table grows, per dedupe design.

Each variant inserts N rows (default 10M) in batches of 1,000, one transaction per batch, WAL and
synchronous=FULL like the store, and reports rows/s per tenth of the run, so a design that slows
down as the table grows shows it. Every exact variant is then checked: a replay of 10,000 stored
rows must add nothing.

    python bench/store_index.py                       # all variants, 10M rows each
    python bench/store_index.py --rows 2000000 --variants v1,hash
"""

# ruff: noqa: S608 - every statement is built from constant column lists, never from input
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Run, results_arg, table

_EVENTS_V1 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, account TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
    user TEXT NOT NULL, pool TEXT, session TEXT, ts_us INTEGER NOT NULL,
    received_us INTEGER NOT NULL, raw BLOB NOT NULL {unique});
CREATE INDEX events_by_time ON events (account, ts_us);
"""
_COLS = "account, id, type, user, pool, session, ts_us, received_us, raw"
_Q9 = "?, ?, ?, ?, ?, ?, ?, ?, ?"
_DAY_US = 86_400 * 1_000_000


def dedupe_key(account: str, id_: str) -> int:
    """64-bit signed key of (account, id): what the store's `dedupe` table holds."""
    digest = hashlib.blake2b(f"{account}\x00{id_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Variant:
    """One dedupe design: its schema, its insert statement and how a row becomes parameters."""

    name: str
    what: str
    exact: bool
    schema: str
    insert: str
    params: Callable[[tuple[object, ...]], tuple[object, ...]]


def _plain(row: tuple[object, ...]) -> tuple[object, ...]:
    return row


def _with_key(row: tuple[object, ...]) -> tuple[object, ...]:
    return (dedupe_key(str(row[0]), str(row[1])), *row)


def _with_day_key(row: tuple[object, ...]) -> tuple[object, ...]:
    key = dedupe_key(str(row[0]), str(row[1]))
    day = int(row[6]) // _DAY_US  # type: ignore[call-overload]
    return ((day << 40) | (key & ((1 << 40) - 1)), *row)


class _RealStore:
    """The `store` variant: meter's own `SqliteStore` (its migrations, pragmas and `add`, the
    JSON batch that `meter serve` writes, its new rows read back as one JSON text), driven
    through asyncio as the daemon drives it. Its rows/s include making `Event`s of the rows, as
    the daemon makes them."""

    def __init__(self, path: Path, *, mmap: bool = False) -> None:
        import asyncio
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # meter's `rating`
        from meter.store.sqlite import SqliteStore
        self._loop = asyncio.new_event_loop()
        self.store = self._loop.run_until_complete(SqliteStore.connect(path, mmap=mmap))

    def add(self, rows: list[tuple[object, ...]]) -> int:
        from meter.events import Event
        events = [Event(id=str(r[1]), type=r[2], account=str(r[0]), user=str(r[3]),  # type: ignore[arg-type]
                        ts=datetime.fromtimestamp(int(r[6]) / 1e6, UTC),  # type: ignore[call-overload]
                        pool=str(r[4]), session=str(r[5]), raw=r[8])  # type: ignore[arg-type]
                  for r in rows]
        return self._loop.run_until_complete(self.store.add(events, received_us=1)).new

    def count(self) -> int:
        return int(self._loop.run_until_complete(self.store.counts())["events"])

    def close(self) -> None:
        self._loop.run_until_complete(self.store.close())
        self._loop.close()


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("store", "meter's SqliteStore.add as shipped (its schema, pragmas and upkeep)",
            True, "", "", _plain),
    Variant("v1", "UNIQUE (account, id) text index (schema v1)", True,
            _EVENTS_V1.format(unique=", UNIQUE (account, id)"),
            f"INSERT OR IGNORE INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("none", "no dedupe index (not exact; the floor)", False,
            _EVENTS_V1.format(unique=""),
            f"INSERT INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("append", "no index at all, rowid appends only (the disk's floor)", False,
            _EVENTS_V1.format(unique="").replace(
                "CREATE INDEX events_by_time ON events (account, ts_us);", ""),
            f"INSERT INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("hashidx", "INTEGER dkey column + index events(dkey); exact check on a hit", True,
            _EVENTS_V1.format(unique=", dkey INTEGER NOT NULL") +
            "CREATE INDEX events_by_dkey ON events (dkey);",
            f"INSERT INTO events (dkey, {_COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
            "WHERE NOT EXISTS (SELECT 1 FROM events WHERE dkey = ?1 AND account = ?2 AND id = ?3)",
            _with_key),
    Variant("hashtrig", "same index; a BEFORE INSERT trigger does the exact check (RAISE(IGNORE))",
            True,
            _EVENTS_V1.format(unique=", dkey INTEGER NOT NULL") +
            "CREATE INDEX events_by_dkey ON events (dkey);"
            "CREATE TRIGGER events_dedupe BEFORE INSERT ON events WHEN EXISTS ("
            "SELECT 1 FROM events WHERE dkey = NEW.dkey AND account = NEW.account AND id = NEW.id) "
            "BEGIN SELECT RAISE(IGNORE); END;",
            f"INSERT INTO events (dkey, {_COLS}) VALUES (?, {_Q9})", _with_key),
    Variant("tsid", "no dedupe index: a trigger finds (account, ts_us, id) via events_by_time",
            True,
            _EVENTS_V1.format(unique="") +
            "CREATE TRIGGER events_dedupe BEFORE INSERT ON events WHEN EXISTS ("
            "SELECT 1 FROM events WHERE account = NEW.account AND ts_us = NEW.ts_us AND id = NEW.id) "
            "BEGIN SELECT RAISE(IGNORE); END;",
            f"INSERT INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("tsuniq", "UNIQUE (account, ts_us, id) replaces both v1 indexes (copies share ts)",
            True,
            _EVENTS_V1.format(unique=", UNIQUE (account, ts_us, id)").replace(
                "CREATE INDEX events_by_time ON events (account, ts_us);", ""),
            f"INSERT OR IGNORE INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("tsfirst", "UNIQUE (ts_us, account, id) only: one hot tail, but account queries scan",
            True,
            _EVENTS_V1.format(unique=", UNIQUE (ts_us, account, id)").replace(
                "CREATE INDEX events_by_time ON events (account, ts_us);", ""),
            f"INSERT OR IGNORE INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("hour", "no dedupe index; time index (hour of ts_us, account, ts_us)", False,
            _EVENTS_V1.format(unique="").replace(
                "CREATE INDEX events_by_time ON events (account, ts_us);",
                "CREATE INDEX events_by_hour ON events (ts_us / 3600000000, account, ts_us);"),
            f"INSERT INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("v1hour", "UNIQUE (account, id) + time index (hour of ts_us, account, ts_us)", True,
            _EVENTS_V1.format(unique=", UNIQUE (account, id)").replace(
                "CREATE INDEX events_by_time ON events (account, ts_us);",
                "CREATE INDEX events_by_hour ON events (ts_us / 3600000000, account, ts_us);"),
            f"INSERT OR IGNORE INTO events ({_COLS}) VALUES ({_Q9})", _plain),
    Variant("hourhash", "hour time index + INTEGER dkey index; exact check on a hit", True,
            _EVENTS_V1.format(unique=", dkey INTEGER NOT NULL").replace(
                "CREATE INDEX events_by_time ON events (account, ts_us);",
                "CREATE INDEX events_by_hour ON events (ts_us / 3600000000, account, ts_us);") +
            "CREATE INDEX events_by_dkey ON events (dkey);",
            f"INSERT INTO events (dkey, {_COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
            "WHERE NOT EXISTS (SELECT 1 FROM events WHERE dkey = ?1 AND account = ?2 AND id = ?3)",
            _with_key),
    Variant("dayhash", "index on (event day << 40 | 40-bit hash): hot tail, exact per day only",
            False,
            _EVENTS_V1.format(unique=", dkey INTEGER NOT NULL") +
            "CREATE INDEX events_by_dkey ON events (dkey);",
            f"INSERT INTO events (dkey, {_COLS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
            "WHERE NOT EXISTS (SELECT 1 FROM events WHERE dkey = ?1 AND account = ?2 AND id = ?3)",
            _with_day_key),
)}


def _uuid7(ts_us: int) -> str:
    """A time-ordered UUID (version 7 layout: 48-bit milliseconds, then random bits)."""
    ms = ts_us // 1000
    rand = random.getrandbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def rows(n: int, ordered: bool, accounts: int, seed: int = 7) -> Iterator[tuple[object, ...]]:
    """N realistic event rows over a month, in time order, ids random (v4) or time-ordered (v7)."""
    rng = random.Random(seed)
    start_us = 1_793_491_200_000_000  # 2026-11-01T00:00:00Z
    step = (30 * _DAY_US) // max(n, 1)
    types = ("login", "heartbeat", "heartbeat", "logout")
    for i in range(n):
        ts = start_us + i * step
        account = f"acct{rng.randrange(accounts):04d}"
        user = f"u{rng.randrange(1000):04d}"
        id_ = _uuid7(ts) if ordered else str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kind = types[i & 3]
        raw = (f'{{"id":"{id_}","type":"{kind}","account":"{account}","user":"{user}",'
               f'"ts":"2026-11-01T00:00:00Z","session":"s{i % 97}"}}').encode()
        yield (account, id_, kind, user, "agents", f"s{i % 97}", ts, ts, raw)


def _wchar() -> int:
    """Bytes this process has written through write(2) so far (WAL frames and checkpoints)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_variant(variant: Variant, n: int, *, ordered: bool, batch: int, accounts: int,
                cache_mb: int, workdir: Path, pragmas: tuple[str, ...] = ()) -> dict[str, object]:
    """Insert n rows with one variant; rows/s per tenth of the run, then an exact-replay check."""
    path = workdir / f"{variant.name}-{'v7' if ordered else 'v4'}.db"
    real = _RealStore(path, mmap="mmap" in pragmas) if variant.name == "store" else None
    db = sqlite3.connect(":memory:" if real else path, isolation_level=None)  # unused for `store`
    if real is None:
        for pragma in pragmas:
            if pragma.startswith("page_size"):
                db.execute(f"PRAGMA {pragma}")  # only before WAL and the first table
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute(f"PRAGMA cache_size = -{cache_mb * 1024}")
        for pragma in pragmas:
            if not pragma.startswith("page_size"):
                db.execute(f"PRAGMA {pragma}")
        db.executescript(variant.schema)
    tenth = max(n // 10, batch)
    slices: list[float] = []
    cpu_us: list[float] = []
    written: list[float] = []
    c_slice = time.process_time()
    w_slice = _wchar()
    pending: list[tuple[object, ...]] = []
    inserted_rows = 0
    t_slice = t0 = time.perf_counter()

    added = 0

    def flush() -> None:
        nonlocal inserted_rows, added
        if real is not None:
            added += real.add(pending)
        else:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(variant.insert, pending)
            db.execute("COMMIT")
        inserted_rows += len(pending)
        pending.clear()

    sample: list[tuple[object, ...]] = []
    for done, row in enumerate(rows(n, ordered, accounts), 1):
        pending.append(variant.params(row))
        if done % 1000 == 1 and len(sample) < 10_000:
            sample.append(pending[-1])
        if len(pending) >= batch:
            flush()
        if done % tenth == 0:
            now = time.perf_counter()
            slices.append(tenth / (now - t_slice))
            c_now, w_now = time.process_time(), _wchar()
            cpu_us.append((c_now - c_slice) * 1e6 / tenth)
            written.append((w_now - w_slice) / tenth)
            t_slice, c_slice, w_slice = now, c_now, w_now
    if pending:
        flush()
    elapsed = time.perf_counter() - t0
    before = added if real else db.total_changes
    if variant.exact:
        pending.extend(sample)
        flush()
    added_on_replay = (added if real else db.total_changes) - before if variant.exact else None
    if real is not None:
        count = real.count()
        real.close()
    else:
        count = db.execute("SELECT count(*) FROM events").fetchone()[0]
    db.close()
    size_mb = sum(f.stat().st_size for f in workdir.glob(path.name + "*")) / 1e6
    for f in workdir.glob(path.name + "*"):
        f.unlink()
    return {
        "variant": variant.name, "ids": "uuid7" if ordered else "uuid4", "rows": count,
        "rows_per_s": n / elapsed, "first_tenth_rows_per_s": slices[0] if slices else n / elapsed,
        "last_tenth_rows_per_s": slices[-1] if slices else n / elapsed,
        "tenths_rows_per_s": [round(s) for s in slices],
        "tenths_cpu_us_per_row": [round(c, 1) for c in cpu_us],
        "tenths_written_bytes_per_row": [round(w) for w in written],
        "last_tenth_cpu_us_per_row": round(cpu_us[-1], 1) if cpu_us else None,
        "last_tenth_written_bytes_per_row": round(written[-1]) if written else None,
        "exact": variant.exact, "added_on_replay_of_stored": added_on_replay,
        "db_mb": round(size_mb, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--cache-mb", type=int, default=64, help="SQLite page cache per connection")
    ap.add_argument("--variants", default="v1,none,hashidx,hashtrig,dayhash")
    ap.add_argument("--ids", default="uuid4,uuid7", help="uuid4 (random), uuid7 (time-ordered)")
    ap.add_argument("--pragma", action="append", default=[],
                    help="extra PRAGMA for every variant, e.g. wal_autocheckpoint=10000 (the "
                         "`store` variant takes only `mmap`: the store's own mmap option)")
    ap.add_argument("--dir", help="where the databases go (default: a temp folder)")
    ap.add_argument("--out", help="results JSON (default bench/results/store_index.json)")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    run = Run("store_index", {k: v for k, v in vars(args).items() if k not in ("out", "dir")})
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    results = []
    try:
        for ids in args.ids.split(","):
            for name in names:
                r = run_variant(VARIANTS[name], args.rows, ordered=ids == "uuid7", batch=args.batch,
                                accounts=args.accounts, cache_mb=args.cache_mb, workdir=workdir,
                                pragmas=tuple(args.pragma))
                results.append(r)
                print(f"  {name:8} {ids}: {r['rows_per_s']:,.0f} rows/s, tenths {r['tenths_rows_per_s']}"
                      f"\n{'':18}cpu us/row {r['tenths_cpu_us_per_row']}"
                      f"\n{'':18}written B/row {r['tenths_written_bytes_per_row']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(["variant", "ids", "rows", "rows/s", "first 10%", "last 10%", "last/first",
                 "cpu us/row", "B written/row", "exact", "replay adds", "MB"],
                [(r["variant"], r["ids"], r["rows"], r["rows_per_s"], r["first_tenth_rows_per_s"],
                  r["last_tenth_rows_per_s"],
                  f"{r['last_tenth_rows_per_s'] / r['first_tenth_rows_per_s']:.2f}",  # type: ignore[operator]
                  r["last_tenth_cpu_us_per_row"], r["last_tenth_written_bytes_per_row"], r["exact"],
                  r["added_on_replay_of_stored"], r["db_mb"]) for r in results]))
    for name in names:
        print(f"  {name}: {VARIANTS[name].what}")
    run.save({"variants": results}, results_arg(args.out, "store_index"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
