"""PostgreSQL specifics of the store, on the test session's own cluster (tests/pgserver.py):
migrations, batches by COPY, collation, errors and reconnection, the daemon lock. The behaviour
both stores share is in test_store_contract.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg.errors
import psycopg_pool
import pytest
from psycopg import sql

from meter.errors import DatabaseInUse, NotMeterDatabase, StoreError
from meter.events import Event
from meter.store import RejectedMessage, open_store, postgres
from meter.store.postgres import (
    MIGRATIONS,
    PostgresStore,
    connect,
    hold_daemon_lock,
    retriable,
    without_password,
)
from tests.conftest import ROOT, free_port
from tests.pgserver import PgServer, query

T0 = datetime(2026, 11, 12, 15, 0, tzinfo=UTC)
T0_US = 1_794_495_600_000_000


def event(id: str, *, account: str = "acme", user: str = "u1", seconds: int = 0) -> Event:
    return Event(id=id, type="login", account=account, user=user, ts=T0 + timedelta(seconds=seconds),
                 pool="agents", session=None, raw=f'{{"id":"{id}"}}'.encode())


def test_each_test_gets_a_fresh_empty_database(pg_server: PgServer, pg_url: str) -> None:
    """`pg_url` names a database of this test's own on the session's cluster, with no tables,
    and the cluster syncs to disk (fsync on: the durability tests mean it)."""
    assert [(0,)] == query(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert [("on",)] == query(pg_url, "SHOW fsync")
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/t_")


# --- migrations -----------------------------------------------------------------------------------

async def test_a_new_database_records_each_migration_once(pg_url: str) -> None:
    """An empty database gets every step, each recorded in `meter_schema`; a reopen applies
    nothing again."""
    async with await open_store(pg_url) as store:
        assert len(MIGRATIONS) == await store.schema_version()
    async with await open_store(pg_url) as store:
        assert 4 == await store.schema_version()
    assert [(1,), (2,), (3,), (4,)] == query(pg_url,
                                             "SELECT version FROM meter_schema ORDER BY version")
    assert [("checkpoint",), ("cluster",), ("events",), ("finalize_job",), ("finalized",),
            ("meter_schema",), ("partition_checkpoint",), ("rejected",), ("slot_link",)] == (
        query(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                      "ORDER BY tablename"))


async def test_an_older_schema_is_migrated_forward_with_its_rows(pg_url: str) -> None:
    """A database at version 1 (events and rejected only) gets steps 2 to 4 and keeps its
    events; the next arrival continues their seq. Step 4's transaction id is left empty on the
    old row (no rewrite of a full table) and set on the new one."""
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE meter_schema (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        conn.execute(MIGRATIONS[0])
        conn.execute("INSERT INTO meter_schema (version) VALUES (1)")
        conn.execute('INSERT INTO events (account, id, type, "user", ts_us, received_us, raw) '
                     "VALUES ('acme', 'old', 'login', 'u1', 5, 6, '\\x7b7d')")
    async with await open_store(pg_url) as store:
        assert 4 == await store.schema_version()
        assert ["old"] == [e.id for e in await store.events()]
        assert (0,) == (await store.add([event("new")], received_us=T0_US)).fresh
        assert 2 == await store.last_seq()
    assert [("old", True), ("new", False)] == query(
        pg_url, "SELECT id, xid IS NULL FROM events ORDER BY seq")


async def test_a_newer_schema_is_refused_with_upgrade_advice(pg_url: str) -> None:
    """A database migrated by a newer meter is a `StoreError` saying to upgrade, and left as
    it is."""
    async with await open_store(pg_url):
        pass
    query(pg_url, "INSERT INTO meter_schema (version) VALUES (99)")
    with pytest.raises(StoreError) as caught:
        await open_store(pg_url)
    assert not isinstance(caught.value, NotMeterDatabase)
    assert (f"{pg_url}: schema version 99 is newer than this meter ({len(MIGRATIONS)}); "
            "upgrade the meter") == str(caught.value)


async def test_a_foreign_database_is_refused_and_left_untouched(pg_url: str) -> None:
    """A database holding another program's tables is `NotMeterDatabase` (exit 2), never taken
    for a new history: no meter table is created in it."""
    query(pg_url, "CREATE TABLE invoices (n integer)")
    with pytest.raises(NotMeterDatabase) as caught:
        await open_store(pg_url)
    assert (f"{pg_url}: not a meter database: no meter schema (no meter_schema table; "
            "tables: invoices)") == str(caught.value)
    assert 2 == caught.value.exit_code
    assert [("invoices",)] == query(
        pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")


async def test_a_schema_version_without_its_tables_is_refused(pg_url: str) -> None:
    """`meter_schema` claiming version 4 with the events table gone is damage, not a store."""
    async with await open_store(pg_url):
        pass
    query(pg_url, "DROP TABLE events")
    with pytest.raises(NotMeterDatabase, match="schema version 4 without its tables events"):
        await open_store(pg_url)


async def test_stores_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    """Four stores opened together on an empty database (a daemon and report workers) run each
    step once between them (the migration takes an advisory lock)."""
    stores = await asyncio.gather(*(open_store(pg_url) for _ in range(4)))
    for store in stores:
        assert 4 == await store.schema_version()
        await store.close()
    assert [(1,), (2,), (3,), (4,)] == query(pg_url,
                                             "SELECT version FROM meter_schema ORDER BY version")


# --- batches by COPY ------------------------------------------------------------------------------

async def test_duplicates_within_and_across_batches(pg_url: str) -> None:
    """The first copy of an (account, id) wins, within a batch and across batches; `fresh`
    names the positions stored, and duplicates use up no seq."""
    async with await open_store(pg_url) as store:
        first = await store.add([event("a"), event("b"), event("a", user="second"), event("c"),
                                 event("b", user="second")], received_us=T0_US)
        assert (3, 2, (0, 1, 3)) == (first.new, first.duplicates, first.fresh)
        second = await store.add([event("c"), event("d"), event("a"), event("e"), event("d")],
                                 received_us=T0_US + 1)
        assert (2, 3, (1, 3)) == (second.new, second.duplicates, second.fresh)
        unnamed = await store.add([event("f"), event("a"), event("f")], received_us=T0_US + 2,
                                  which=False)
        assert (1, 2, ()) == (unnamed.new, unnamed.duplicates, unnamed.fresh)
        assert [(1, "a", "u1", T0_US), (2, "b", "u1", T0_US), (3, "c", "u1", T0_US),
                (4, "d", "u1", T0_US + 1), (5, "e", "u1", T0_US + 1), (6, "f", "u1", T0_US + 2)
                ] == [(e.seq, e.id, e.user, e.received_us) for e in await store.events_after(0)]


async def test_a_10k_event_batch_in_one_transaction(pg_url: str) -> None:
    """10,000 events of three accounts in one batch all arrive in batch order; a second batch
    that repeats half of them stores only the other half, and says which."""
    batch = [event(f"e{i:05d}", account=("acme", "globex", "initech")[i % 3], seconds=-i)
             for i in range(10_000)]
    async with await open_store(pg_url) as store:
        result = await store.add(batch, received_us=T0_US)
        assert (10_000, 0, tuple(range(10_000))) == (result.new, result.duplicates, result.fresh)
        again = batch[5_000:] + [event(f"n{i:05d}", account="acme") for i in range(5_000)]
        result = await store.add(again, received_us=T0_US + 1)
        assert (5_000, 5_000, tuple(range(5_000, 10_000))) == (
            result.new, result.duplicates, result.fresh)
        stored = await store.events_after(0)
        assert [(e.account, e.id) for e in batch + again[5_000:]] == [
            (e.account, e.id) for e in stored]
        assert list(range(1, 15_001)) == [e.seq for e in stored]


async def test_ids_sort_by_code_point_whatever_the_database_collation(
        pg_server: PgServer) -> None:
    """In a database whose default collation is ICU's en-US (a, B, e-acute, Z), the rating's
    rows still come in code-point order (B, Z, a, e-acute), as SQLite orders them."""
    name = "t_icu"
    query(pg_server.url(), f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                           "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    url = pg_server.url(name)
    try:
        assert [("a",), ("B",), ("\u00e9",), ("Z",)] == query(
            url, "SELECT x FROM (VALUES ('Z'), ('a'), ('\u00e9'), ('B')) AS v(x) ORDER BY x")
        async with await open_store(url) as store:
            await store.add([event(i) for i in ("Z", "a", "\u00e9", "B")], received_us=T0_US)
            rows = await store.rating_rows("acme", T0_US, T0_US + 1, through_seq=9)
        assert ["B", "Z", "a", "\u00e9"] == [r[0] for r in rows.rows]
    finally:
        pg_server.drop_database(url)


# --- errors, reconnection, the URL --------------------------------------------------------------

@pytest.mark.parametrize(("exc", "expected"), [
    (psycopg.errors.SerializationFailure("x"), True),
    (psycopg.errors.DeadlockDetected("x"), True),
    (psycopg.errors.AdminShutdown("x"), True),
    (psycopg.errors.DiskFull("x"), True),
    (psycopg.errors.TooManyConnections("x"), True),
    (psycopg.errors.LockNotAvailable("x"), True),
    (psycopg.OperationalError("connection lost"), True),
    (psycopg_pool.PoolTimeout("no connection"), True),
    (psycopg.errors.UniqueViolation("x"), False),
    (psycopg.errors.NotNullViolation("x"), False),
    (psycopg.errors.UndefinedTable("x"), False),
    (psycopg.errors.SyntaxError("x"), False),
    (psycopg.errors.InvalidCatalogName("x"), False),
    (psycopg.InterfaceError("misuse"), False),
    (ValueError("not a database error"), False),
])
def test_errors_say_whether_a_retry_can_succeed(exc: BaseException, expected: bool) -> None:
    """Lost connections, serialization failures, a full disk are retriable; a constraint, a bad
    statement or a missing database are not."""
    assert expected is retriable(exc)


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://meter:s3cret@db.example:5433/meter", "postgresql://meter@db.example:5433/meter"),
    ("postgres://meter@db/meter?sslmode=require&password=s3cret",
     "postgres://meter@db/meter?sslmode=require"),
    ("postgresql:///meter", "postgresql:///meter"),
])
def test_the_location_never_shows_a_password(url: str, expected: str) -> None:
    """What messages and `Store.location` show of a URL: all of it but the password."""
    assert expected == without_password(url)


async def test_an_unreachable_server_is_one_line_naming_host_and_port() -> None:
    """Nothing listening: one retriable `StoreError` line naming host:port, without the
    password."""
    port = free_port()
    with pytest.raises(StoreError) as caught:
        await open_store(f"postgresql://meter:s3cret@127.0.0.1:{port}/meter")
    message = str(caught.value)
    assert message.startswith(f"postgresql://meter@127.0.0.1:{port}/meter: cannot connect to "
                              f"PostgreSQL at 127.0.0.1:{port}: ")
    assert ("s3cret" not in message, "\n" not in message, True) == (
        True, True, caught.value.retriable)


async def test_a_missing_database_is_not_retriable(pg_server: PgServer) -> None:
    """A database that does not exist is not created, and waiting will not make it."""
    url = pg_server.url("no_such_db")
    with pytest.raises(StoreError) as caught:
        await open_store(url)
    assert (False, True) == (caught.value.retriable,
                             'database "no_such_db" does not exist' in str(caught.value))


async def test_a_password_in_the_url_is_left_out_of_the_location(pg_server: PgServer,
                                                                 pg_url: str) -> None:
    """The store connects with the URL's password (trust auth takes any) and names itself
    without it."""
    with_password = pg_url.replace("postgres@", "postgres:hunter2@")
    async with await open_store(with_password) as store:
        assert pg_url == store.location
        assert 0 == await store.last_seq()


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A cluster of this test's own, which it may kill."""
    server = PgServer.create()
    server.start()
    yield server
    server.destroy()


async def test_a_killed_server_is_retriable_and_the_store_reconnects(own_server: PgServer) -> None:
    """While the server is down (SIGKILL) the store's calls fail with a retriable `StoreError`
    naming it; after its restart the same store works again and every batch it committed before
    the crash is there."""
    url = own_server.create_database()
    store = await PostgresStore.connect(url, timeout_s=2)
    try:
        await store.add([event("before")], received_us=T0_US)
        own_server.kill()
        with pytest.raises(StoreError) as caught:
            await store.add([event("during")], received_us=T0_US)
        assert True is caught.value.retriable
        assert str(caught.value).startswith(f"{url}: batch not stored: ")
        with pytest.raises(StoreError) as caught:
            await store.last_seq()
        assert (True, f"{url}: read: no connection to PostgreSQL at 127.0.0.1:{own_server.port} "
                      "within 2s") == (caught.value.retriable, str(caught.value))
        own_server.start()
        waits: list[bool] = []
        for _ in range(20):  # the pool reconnects in the background, with a backoff
            try:
                result = await store.add([event("after")], received_us=T0_US + 1)
                break
            except StoreError as exc:
                waits.append(exc.retriable)
        else:
            pytest.fail(f"no reconnect after {len(waits)} tries")
        assert [True] * len(waits) == waits
        assert ((0,), ["before", "after"]) == (result.fresh,
                                                [e.id for e in await store.events_after(0)])
    finally:
        await store.close()


# --- one daemon per database ----------------------------------------------------------------------

async def test_the_daemon_lock_admits_one_holder_per_database(pg_server: PgServer,
                                                              pg_url: str) -> None:
    """A second holder of the same database gets `DatabaseInUse` naming the first's pid and
    host; another database of the cluster is separate; once released it can be taken again."""
    other = pg_server.create_database()
    try:
        async with hold_daemon_lock(pg_url):
            with pytest.raises(DatabaseInUse) as caught:
                async with hold_daemon_lock(pg_url):
                    pytest.fail("two holders")
            assert (f"--db {pg_url}: in use by another meter serve (pid {os.getpid()} on host "
                    f"{socket.gethostname()}, advisory lock 120282511929858); one daemon per "
                    "database") == str(caught.value)
            assert 2 == caught.value.exit_code
            async with hold_daemon_lock(other):
                pass
        async with hold_daemon_lock(pg_url):
            pass
    finally:
        pg_server.drop_database(other)


async def test_a_killed_holder_releases_the_daemon_lock(pg_url: str) -> None:
    """A holder killed with SIGKILL never blocks its restart: the server ends its session and
    the lock with it."""
    script = ("import asyncio, sys\n"
              "from meter.store.postgres import hold_daemon_lock\n"
              "async def main():\n"
              "    async with hold_daemon_lock(sys.argv[1]):\n"
              "        print('held', flush=True)\n"
              "        await asyncio.sleep(600)\n"
              "asyncio.run(main())\n")
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", script, pg_url,
                                                  stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert holder.stdout is not None
        assert b"held\n" == await holder.stdout.readline()
        with pytest.raises(DatabaseInUse, match=f"pid {holder.pid} on host"):
            async with hold_daemon_lock(pg_url):
                pass
    finally:
        holder.kill()
        await holder.wait()
    for _ in range(100):  # the backend sees its client gone at once; allow it a moment
        try:
            async with hold_daemon_lock(pg_url):
                break
        except DatabaseInUse:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the lock stayed held after its holder was killed")


async def _terminate_lock_session(url: str) -> int:
    """End the daemon lock's backend (what a server restart does to it); how many ended."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'meter serve pid %%' AND datname = current_database()")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_the_daemon_lock_is_taken_again_after_its_connection_is_lost(pg_url: str) -> None:
    """A lost lock connection (a server restart, a terminated backend) loses the lock; the
    holder takes it again on a new connection, so a second daemon is refused again and the
    holder goes on (its `lost` event stays clear)."""
    async with hold_daemon_lock(pg_url, check_every=0.1) as lost:
        assert 1 == await _terminate_lock_session(pg_url)
        for _ in range(200):
            if await _lock_holders(pg_url) == 1:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the lock was never taken again")
        with pytest.raises(DatabaseInUse):
            async with hold_daemon_lock(pg_url):
                pass
        assert not lost.is_set()


async def _lock_holders(url: str) -> int:
    """How many sessions hold the daemon lock now (read from pg_locks, without taking it)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((classid::bigint << 32) | objid::bigint) = 120282511929858")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_a_lock_lost_to_another_daemon_sets_lost(pg_url: str) -> None:
    """If another session takes the lock while the holder's connection was gone, the holder
    cannot take it again and says so: `lost` is set (serve then stops)."""
    async with hold_daemon_lock(pg_url, check_every=0.2) as lost:
        assert 1 == await _terminate_lock_session(pg_url)
        async with hold_daemon_lock(pg_url, check_every=60):  # the other daemon, at once
            await asyncio.wait_for(lost.wait(), timeout=10)
        assert lost.is_set()


def test_sqlite_users_never_import_psycopg(tmp_path: object) -> None:
    """Opening a SQLite store loads no PostgreSQL driver (it is imported on a URL only)."""
    script = ("import asyncio, sys\n"
              "from meter.store import open_store\n"
              "async def main():\n"
              "    async with await open_store(sys.argv[1]):\n"
              "        pass\n"
              "asyncio.run(main())\n"
              "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n")
    out = subprocess.run([sys.executable, "-c", script, f"{tmp_path}/meter.db"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "[]\n" == out.stdout


async def test_a_rejected_message_with_nul_in_its_text_is_still_stored(pg_url: str) -> None:
    """PostgreSQL text holds no NUL: a rejected row's account carrying one (a hostile payload)
    is stored with U+FFFD in its place, never failing the batch; the raw payload keeps it."""
    raw = b'{"account":"a\\u0000b"}'
    async with await open_store(pg_url) as store:
        result = await store.add([], [RejectedMessage(T0_US, "meter/x/events", "a\x00b",
                                                      "unknown_account", "no account 'a\\x00b'",
                                                      raw)], received_us=T0_US)
        (row,) = await store.rejected()
    assert (1, "a\ufffdb", raw) == (result.rejected, row.account, row.raw)


async def test_a_batch_probes_the_index_instead_of_reading_every_event(pg_url: str) -> None:
    """The batch insert's plan looks each staged row up in the (account, id) index; it never
    scans `events` (a hash anti join did, for every batch, however large the log)."""
    async with await open_store(pg_url) as store:
        await store.add([event(f"e{i}") for i in range(5_000)], received_us=T0_US)
    with psycopg.connect(pg_url) as conn:
        conn.execute("ANALYZE events")
        conn.execute(postgres._STAGING)
        with conn.cursor() as cur, cur.copy(postgres._COPY_BATCH) as copy:
            copy.set_types(list(postgres._BATCH_TYPES))
            for i in range(1_000):
                copy.write_row((i, "acme", f"n{i}", "login", "u1", None, None, T0_US, b"{}"))
        plan = "\n".join(str(r[0]) for r in conn.execute(
            "EXPLAIN " + postgres._INSERT_BATCH, (T0_US,)).fetchall())
    assert ("Seq Scan on events" not in plan, "Index Only Scan using events_account_id_key"
            in plan) == (True, True), plan


async def test_writers_take_turns_so_seqs_commit_in_order(pg_url: str) -> None:
    """A batch waits while another transaction holds the store's write lock, and draws its seq
    only after that one committed: a reader never sees a seq before a smaller one that is still
    to commit (the replay after a checkpoint and a report's cutoff rely on it)."""
    async with await open_store(pg_url) as store:
        await store.add([event("e1")], received_us=T0_US)
        async with await psycopg.AsyncConnection.connect(pg_url) as other, \
                await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as watch:
            await other.execute("SELECT pg_advisory_xact_lock(%s)", (postgres._WRITE_LOCK,))
            waiting = asyncio.create_task(store.add([event("e2")], received_us=T0_US))
            for _ in range(500):  # until the batch's backend waits for the lock
                cur = await watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'")
                row = await cur.fetchone()
                if row and row[0] == 1:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the batch never waited for the write lock")
            assert 1 == await store.last_seq()
            await other.commit()
            assert (0,) == (await waiting).fresh
        assert 2 == await store.last_seq()


async def test_a_lock_connection_has_the_servers_keepalives_set_for_its_session(
        pg_url: str) -> None:
    """The daemon's and a cluster member's lock connections ask the server to probe them after
    10 s idle (3 probes 10 s apart), so a host that vanishes loses its locks in ~40 s, not the
    OS's 2 hours; other connections keep the server's defaults."""
    conn = await connect(pg_url, keepalive=True)
    plain = await connect(pg_url)
    try:
        got = []
        for c in (conn, plain):
            row = []
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
                cur = await c.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                row.append((await cur.fetchall())[0][0])
            got.append(row)
    finally:
        await conn.close()
        await plain.close()
    assert ["10", "10", "3"] == got[0]
    assert ["10", "10", "3"] != got[1]
