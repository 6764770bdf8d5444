"""The PostgreSQL store: the daemon's batch insert against the server's ceiling, and `meter report`
of a 1,000-account month on PostgreSQL beside SQLite.

1. Insert: `Store.add` of daemon-sized batches (`--batch`, the daemon's `batch_max` 1,000), one
   transaction each with the exact `(account, id)` dedupe, until `--rows` are stored (1M and 10M
   by default), rows/s per tenth so a slowdown as the table grows shows. In the same run, the
   same rows by one plain binary `COPY` into an unindexed table: the ceiling, printed as a ratio.
   A replay of 10,000 stored rows must add nothing (the dedupe is exact).
2. Report: the month of `--accounts` accounts (sample_sessions/generate.py) loaded with
   `meter ingest` into SQLite and into PostgreSQL, then `python -m meter report --format json`
   timed as a whole process on each, best of `--repeat`; the two reports must be byte-identical.

The server is a private cluster (tests/pgserver.py: initdb on a free loopback port, fsync on),
or `--url` of one you run. Writes bench/results/store_pg.json.

    python bench/store_pg.py                            # 1M and 10M rows, 1,000 accounts
    python bench/store_pg.py --rows 1000000 --accounts 100
"""


from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import PYTHON, ROOT, Run, results_arg, table

from meter.events import Event
from meter.store import open_store

AS_OF = "2026-12-02T00:00:00Z"
_START = datetime(2026, 11, 1, tzinfo=UTC)
_COPY_TABLE = "bench_copy_ceiling"


def events(count: int, accounts: int, *, offset: int = 0) -> Iterator[Event]:
    """`count` distinct login/logout events over `accounts` accounts, uuid4 ids, a month of
    event times: what a busy daemon stores."""
    for i in range(offset, offset + count):
        account = f"a{i % accounts}"
        user = f"u{(i // accounts) % 500}"
        kind = "login" if (i // accounts // 500) % 2 == 0 else "logout"
        ts = _START + timedelta(microseconds=i * 250_000 % (30 * 86_400 * 10**6))
        id_ = str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 1) % 2**128, version=4))
        raw = json.dumps({"id": id_, "type": kind, "account": account, "user": user,
                          "ts": ts.isoformat(), "pool": "agents", "session": user}).encode()
        yield Event(id=id_, type=kind, account=account, user=user, ts=ts, pool="agents",
                    session=user, raw=raw)


async def _insert(url: str, rows: int, batch: int, accounts: int) -> dict[str, Any]:
    """`Store.add` in batches until `rows` are stored; rows/s per tenth and overall."""
    tenths: list[float] = []
    store = await open_store(url)
    try:
        stored = 0
        received_us = int(time.time() * 1e6)
        source = events(rows, accounts)
        tenth = max(rows // 10, batch)
        # Only the `add` calls are timed: making the events is the benchmark's cost, not the
        # store's (the daemon has them parsed already when it commits).
        seconds = busy = 0.0
        mark = 0
        while stored < rows:
            chunk = [e for _, e in zip(range(min(batch, rows - stored)), source, strict=False)]
            t = time.perf_counter()
            result = await store.add(chunk, received_us=received_us)
            took = time.perf_counter() - t
            seconds += took
            busy += took
            assert result.new == len(chunk), (result, len(chunk))
            stored += len(chunk)
            if stored - mark >= tenth or stored == rows:
                tenths.append(round((stored - mark) / busy))
                mark, busy = stored, 0.0
                print(f"  add: {stored:,} rows, {tenths[-1]:,} rows/s in the last tenth",
                      file=sys.stderr)
        replay = list(events(min(10_000, rows), accounts))
        again = 0
        for i in range(0, len(replay), batch):
            again += (await store.add(replay[i:i + batch], received_us=received_us)).new
        assert again == 0, f"a replay of stored rows added {again}"
        return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
                "rows_per_s_by_tenth": tenths, "replay_added": again}
    finally:
        await store.close()


def _copy(url: str, rows: int, accounts: int) -> dict[str, Any]:
    """The same rows by one binary COPY into an unindexed table, committed once: the server's
    ceiling. As for `add`, only the server's part is timed, not making the rows."""
    with psycopg.connect(url) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {_COPY_TABLE}")
        conn.execute(f"CREATE TABLE {_COPY_TABLE} (account text NOT NULL, id text NOT NULL, "
                     "type text NOT NULL, \"user\" text NOT NULL, pool text, session text, "
                     "ts_us bigint NOT NULL, received_us bigint NOT NULL, raw bytea NOT NULL)")
        conn.commit()
        received_us = int(time.time() * 1e6)
        source = events(rows, accounts)
        seconds = 0.0
        with conn.cursor() as cur:
            t = time.perf_counter()
            with cur.copy(f"COPY {_COPY_TABLE} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "text", "text", "text", "text", "int8", "int8",
                                "bytea"])
                done = 0
                while done < rows:
                    chunk = [(e.account, e.id, e.type, e.user, e.pool, e.session, e.ts_us,
                              received_us, e.raw)
                             for _, e in zip(range(min(10_000, rows - done)), source,
                                             strict=False)]
                    t = time.perf_counter()
                    for row in chunk:
                        copy.write_row(row)
                    seconds += time.perf_counter() - t
                    done += len(chunk)
                t = time.perf_counter()
            conn.commit()  # the COPY's end (the server has every row) and the commit
            seconds += time.perf_counter() - t
        conn.execute(f"DROP TABLE {_COPY_TABLE}")
        conn.commit()
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds)}


def _reset(url: str) -> None:
    """An empty database for the next size (the store makes its schema again)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def _meter(*args: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "meter", *args], check=True, capture_output=True, cwd=ROOT,
                   env=env)
    return time.perf_counter() - started


def _report_bench(url: str, work: Path, accounts: int, days: int, repeat: int) -> dict[str, Any]:
    """Ingest the month into both stores and time `meter report` on each."""
    month, contracts = work / "events.jsonl", work / "contracts.toml"
    subprocess.run([PYTHON, str(ROOT / "sample_sessions" / "generate.py"), "--accounts",
                    str(accounts), "--days", str(days), "--out", str(month), "--contracts-out",
                    str(contracts)], check=True, capture_output=True)
    stores = {"sqlite": str(work / "meter.db"), "postgresql": url}
    out: dict[str, Any] = {"accounts": accounts}
    docs = {}
    for name, db in stores.items():
        out[f"{name}_ingest_s"] = round(_meter("ingest", str(month), "--db", db, "--contracts",
                                               str(contracts), "--as-of", AS_OF), 1)
        times = []
        for _ in range(repeat):
            target = work / f"out-{name}"
            shutil.rmtree(target, ignore_errors=True)
            times.append(round(_meter("report", "--db", db, "--contracts", str(contracts),
                                      "--period", "2026-11", "--out", str(target)), 2))
        out[f"{name}_report_s"] = times
        out[f"{name}_report_best_s"] = min(times)
        docs[name] = (work / f"out-{name}" / "report-2026-11.json").read_bytes()
        print(f"  report on {name}: best {min(times):.1f}s of {times}", file=sys.stderr)
    out["reports_identical"] = docs["sqlite"] == docs["postgresql"]
    out["postgresql_of_sqlite"] = round(out["postgresql_report_best_s"]
                                        / out["sqlite_report_best_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000",
                        help="stored-row sizes of the insert runs, comma-separated "
                             "(default 1M and 10M)")
    parser.add_argument("--batch", type=int, default=1000, help="events per Store.add (the "
                        "daemon's batch_max)")
    parser.add_argument("--insert-accounts", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=1000, help="accounts of the report month "
                        "(0: skip the report part)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--with-sqlite", action="store_true",
                        help="also time Store.add on a SQLite file (synchronous=FULL) per size")
    parser.add_argument("--url", help="a PostgreSQL database of your own (emptied!); default: a "
                        "private cluster in a temporary folder")
    parser.add_argument("--out", help="results file (default bench/results/store_pg.json)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",") if s]
    params = {"rows": sizes, "batch": args.batch, "insert_accounts": args.insert_accounts,
              "with_sqlite": args.with_sqlite,
              "accounts": args.accounts, "days": args.days, "repeat": args.repeat,
              "server": "url" if args.url else "private cluster (tests/pgserver.py, fsync on)"}
    run = Run("store_pg", params)
    server = None
    work = Path(tempfile.mkdtemp(prefix="bench-store-pg-"))
    try:
        if args.url:
            url = args.url
        else:
            from tests.pgserver import PgServer

            server = PgServer.create()
            server.start()
            url = server.create_database()
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        results: dict[str, Any] = {"server_version": version[0] if version else "?",
                                   "insert": []}
        for rows in sizes:
            _reset(url)
            print(f"insert {rows:,} rows in batches of {args.batch}", file=sys.stderr)
            add = asyncio.run(_insert(url, rows, args.batch, args.insert_accounts))
            ceiling = _copy(url, rows, args.insert_accounts)
            sqlite_rows_per_s = None
            if args.with_sqlite:
                db = work / f"insert-{rows}.db"
                sqlite_rows_per_s = asyncio.run(_insert(str(db), rows, args.batch,
                                                        args.insert_accounts))["rows_per_s"]
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            results["insert"].append({
                "rows": rows, "sqlite_add_rows_per_s": sqlite_rows_per_s,
                "add_rows_per_s": add["rows_per_s"],
                "add_rows_per_s_by_tenth": add["rows_per_s_by_tenth"],
                "add_seconds": add["seconds"], "copy_rows_per_s": ceiling["rows_per_s"],
                "copy_seconds": ceiling["seconds"],
                "add_of_copy": round(add["rows_per_s"] / ceiling["rows_per_s"], 3),
                "replay_added": add["replay_added"]})
        print(table(["rows", "PG Store.add rows/s", "PG COPY rows/s", "add/COPY",
                     "last tenth rows/s", "SQLite Store.add rows/s"],
                    [(r["rows"], r["add_rows_per_s"], r["copy_rows_per_s"], r["add_of_copy"],
                      r["add_rows_per_s_by_tenth"][-1], r["sqlite_add_rows_per_s"] or "-")
                     for r in results["insert"]]))
        if args.accounts:
            _reset(url)
            results["report"] = _report_bench(url, work, args.accounts, args.days, args.repeat)
            rep = results["report"]
            print(table(["store", "ingest s", "report best s"],
                        [(s, rep[f"{s}_ingest_s"], rep[f"{s}_report_best_s"])
                         for s in ("sqlite", "postgresql")]))
            print(f"report on PostgreSQL / on SQLite: {rep['postgresql_of_sqlite']}; "
                  f"identical JSON: {rep['reports_identical']}")
        run.save(results, results_arg(args.out, "store_pg"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.destroy()


if __name__ == "__main__":
    main()
