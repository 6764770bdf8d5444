"""A cluster member's leases (`meter.cluster`): PostgreSQL advisory locks held by one connection of
its own.

Advisory locks rather than lease rows with an expiry: the server drops a session's locks the
moment its connection ends (a SIGKILLed member's slot is free at once, with no clock to trust
and no expiry to tune), and `pg_locks` says who holds what. A host that vanishes without closing
its connection keeps its locks until the server notices: the connection sets the server's
keepalives for its own session (`connect(keepalive=True)`: ~40 s); meanwhile its slot's broker
session only waits, nothing is lost. A member whose lease
connection is lost stops (exit 1) rather than go on without knowing what it still holds.

Keys use the two-int4 form (`classid`, `objid`), apart from the one-bigint daemon lock that a
single `meter serve` takes exclusively and every member takes shared: a cluster and a lone
daemon never write one database at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, LiteralString

import psycopg

from meter.errors import ConfigError, DatabaseInUse, StoreError
from meter.store.postgres import DAEMON_LOCK, connect, one_line, retriable, without_password

__all__ = ["MEMBERS", "PARTITION", "SLOT", "Leases", "Shape"]

log = logging.getLogger("meter.cluster")

#: Advisory lock classes (the first int4 of a two-int4 key): "met" + 1, 2, 3.
MEMBERS: Final = 0x6D657401  # held shared by every member while it runs
SLOT: Final = 0x6D657402  # objid = slot number
PARTITION: Final = 0x6D657403  # objid = partition number
#: How often the lease connection is checked (a lost connection has lost every lease).
CHECK_EVERY_S: Final = 2.0

_HOLDERS: Final = (
    "SELECT l.objid::int, a.application_name FROM pg_locks AS l "
    "JOIN pg_stat_activity AS a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = %s "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class Shape:
    """The cluster's fixed numbers, as recorded in the `cluster` table."""

    def __init__(self, slots: int, partitions: int) -> None:
        self.slots = slots
        self.partitions = partitions

    def __repr__(self) -> str:
        return f"{self.slots} slots and {self.partitions} partitions"


class Leases:
    """The advisory locks of one member, on one autocommit connection (`open`, then `close`).

    Only the member's event loop uses it; every call is a short statement.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], url: str, name: str) -> None:
        self._conn = conn
        self.url = url
        #: Who this member is, as other members and operators see it (`application_name`).
        self.name = name
        self.slot: int | None = None
        self.partitions: set[int] = set()
        #: Slots of a cluster whose --slots was lowered that still need retiring (their
        #: broker sessions drained and taken out of the shared group).
        self.retiring = range(0)
        #: Set when the connection (and with it every lease) was lost.
        self.lost = asyncio.Event()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, *, slots: int, partitions: int) -> Leases:
        """Join the cluster on `url` (a migrated meter database): take the shared daemon lock
        and the member lock, and check (or, alone, set) the cluster's shape. `DatabaseInUse`
        when a lone `meter serve` holds the database; `ConfigError` when running members use
        another number of slots or partitions."""
        name = f"meter serve pid {os.getpid()} on host {socket.gethostname()}"[:63]
        conn = await connect(url, autocommit=True, application_name=name, keepalive=True)
        leases = cls(conn, url, name)
        try:
            if not await leases._try("SELECT pg_try_advisory_lock_shared(%s)", DAEMON_LOCK):
                raise DatabaseInUse(f"--db {without_password(url)}: in use by a meter serve "
                                    "without --slots; stop it before starting a cluster on it")
            await leases._try("SELECT pg_advisory_lock_shared(%s, 0)", MEMBERS)
            await leases._set_shape(Shape(slots, partitions))
        except psycopg.Error as exc:
            await leases.close()
            raise lease_error(url, exc) from None
        except BaseException:
            await leases.close()
            raise
        return leases

    async def _try(self, query: LiteralString, *key: int) -> bool:
        cur = await self._conn.execute(query, key)
        row = await cur.fetchone()
        return bool(row and row[0] is not False)

    async def _set_shape(self, want: Shape) -> None:
        async with self._conn.transaction():
            # Members starting together on a new database: the first insert wins, the others
            # wait for it and then read its row (a plain insert failed them on the key).
            cur = await self._conn.execute(
                "INSERT INTO cluster (id, slots, partitions, changed_us) VALUES (1, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING RETURNING id",
                (want.slots, want.partitions, int(time.time() * 1e6)))
            if await cur.fetchone() is not None:
                return
            cur = await self._conn.execute(
                "SELECT slots, partitions, retiring FROM cluster WHERE id = 1 FOR UPDATE")
            row = await cur.fetchone()
            assert row is not None
            have = Shape(int(row[0]), int(row[1]))
            retiring = int(row[2])
            if (have.slots, have.partitions) == (want.slots, want.partitions):
                self.retiring = range(want.slots, retiring)
                return
            others = len(await self.holders(MEMBERS)) - 1
            if others > 0:
                raise ConfigError(
                    f"--slots {want.slots} --partitions {want.partitions}: the cluster on "
                    f"{without_password(self.url)} runs with {have} ({others} other member"
                    f"{'s' if others != 1 else ''} running); every member must use the same; "
                    "to change them stop every member first (README: Changing the number of "
                    "slots)")
            # Lowered: the slots above the new N keep sessions on the broker until retired;
            # raised past them: they are slots again, their sessions resumed by their holders.
            retiring = max(retiring, have.slots) if want.slots < have.slots else retiring
            retiring = 0 if want.slots >= retiring else retiring
            await self._conn.execute(
                "UPDATE cluster SET slots = %s, partitions = %s, retiring = %s, changed_us = %s "
                "WHERE id = 1", (want.slots, want.partitions, retiring, int(time.time() * 1e6)))
            self.retiring = range(want.slots, retiring)
            log.warning("cluster changed from %s to %s", have, want)

    async def retired(self) -> None:
        """Record that every slot of `retiring` was retired."""
        if not self.retiring:
            return
        async with self._using():
            await self._conn.execute(
                "UPDATE cluster SET retiring = 0 WHERE id = 1 AND retiring = %s AND slots = %s",
                (self.retiring.stop, self.retiring.start))
        self.retiring = range(0)

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[None]:
        """The connection, one statement at a time; a failure there loses every lease: `lost`
        is set and it is a `StoreError` the member stops on (not a psycopg traceback)."""
        async with self._lock:
            try:
                yield
            except psycopg.Error as exc:
                self.lost.set()
                raise StoreError(f"{without_password(self.url)}: the lease connection failed "
                                 f"({one_line(exc)}); every lease with it", retriable=False) from None

    async def holders(self, cls: int) -> dict[int, list[str]]:
        """Who holds each lock of class `cls` (objid -> application names)."""
        async with self._using():
            cur = await self._conn.execute(_HOLDERS, (cls,))
            rows = await cur.fetchall()
        held: dict[int, list[str]] = {}
        for objid, app in rows:
            held.setdefault(int(objid), []).append(str(app))
        return held

    async def members(self) -> int:
        """How many members are running (this one included)."""
        return max(1, len((await self.holders(MEMBERS)).get(0, [])))

    async def take(self, cls: int, objid: int) -> bool:
        """Try to take one lease; True when this member holds it now."""
        async with self._using():
            cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (cls, objid))
            row = await cur.fetchone()
        return bool(row and row[0])

    async def release(self, cls: int, objid: int) -> None:
        """Give one lease back."""
        async with self._using():
            await self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (cls, objid))

    async def take_slot(self, slots: int) -> int | None:
        """The first free ingest slot, now held by this member; None when all are held."""
        for k in range(slots):
            if await self.take(SLOT, k):
                self.slot = k
                return k
        return None

    async def take_partitions(self, free: Sequence[int], want: int) -> list[int]:
        """Up to `want` of the `free` partitions, now held by this member."""
        taken: list[int] = []
        for p in free:
            if len(taken) >= want:
                break
            if await self.take(PARTITION, p):
                taken.append(p)
                self.partitions.add(p)
        return taken

    async def release_partition(self, p: int) -> None:
        await self.release(PARTITION, p)
        self.partitions.discard(p)

    async def keep(self, stop: asyncio.Event) -> None:
        """Check the connection every `CHECK_EVERY_S` until `stop`; when it is lost, every lease
        went with it: set `lost` and `stop` (the member exits 1 and its supervisor restarts it,
        so it joins again with a clean slate)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_EVERY_S)
            try:
                async with self._lock:
                    await self._conn.execute("SELECT 1")
            except psycopg.Error as exc:
                log.error("%s: the lease connection was lost (%s); every lease with it: "
                          "stopping", without_password(self.url), one_line(exc))
                self.lost.set()
                stop.set()
                return

    async def close(self) -> None:
        """End the connection: the server releases every lease of this member."""
        with contextlib.suppress(psycopg.Error):
            await self._conn.close()


def lease_error(url: str, exc: psycopg.Error) -> StoreError:
    """A lease statement that failed, as the store's error."""
    return StoreError(f"{without_password(url)}: lease: {one_line(exc)}", retriable=retriable(exc))
