"""The PostgreSQL tables the members of a cluster share for finalization (schema step 4):
`finalize_job`, one row per (account, period) to finalize, and `slot_link`, what each ingest
slot's holder last said about its broker connection. The statements only; `meter.cluster.jobs`
owns the rules (who works what, when the cluster counts as connected).

A job is taken with `FOR UPDATE SKIP LOCKED` and its row lock is held, in an open transaction on
the worker's own connection, until the job is marked done: a worker killed meanwhile loses its
connection, the server rolls the transaction back, and the job is queued and free again (its
`attempts` count rolled back with it: `attempts` counts the takes that ended, done or failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

__all__ = ["Job", "JobQueue", "SlotLink", "add_jobs", "put_slot_link", "slot_links"]


@dataclass(frozen=True, slots=True)
class Job:
    """One account's period to finalize: `[period_start_us, period_end_us)` and its label, the
    "YYYY-MM" it starts in (as `meter report --period` names it)."""

    account: str
    period_start_us: int
    period_end_us: int
    label: str


@dataclass(frozen=True, slots=True)
class SlotLink:
    """A `slot_link` row: what `holder` of ingest slot `slot` said at `updated_us` (None: not
    connected; no message received yet)."""

    slot: int
    holder: str
    connected_since_us: int | None
    last_received_us: int | None
    updated_us: int


_ADD: Final = (
    "INSERT INTO finalize_job (account, period_start_us, period_end_us, label, queued_us) "
    "SELECT a, s, e, l, %s FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[]) "
    "AS j(a, s, e, l) ON CONFLICT DO NOTHING"
)
# The first queued job no one holds (by period, then account), leaving out those this worker
# already failed at in this run; locked until the worker's transaction ends.
_TAKE: Final = (
    "SELECT account, period_start_us, period_end_us, label FROM finalize_job "
    "WHERE state = 'queued' AND (account, period_start_us) NOT IN ("
    " SELECT * FROM unnest(%s::text[], %s::bigint[])) "
    "ORDER BY period_start_us, account FOR UPDATE SKIP LOCKED LIMIT 1"
)
_BUMP: Final = (
    "UPDATE finalize_job SET attempts = attempts + 1 WHERE account = %s AND period_start_us = %s"
)
_DONE: Final = (
    "UPDATE finalize_job SET state = 'done', worker = %s, done_us = %s "
    "WHERE account = %s AND period_start_us = %s"
)
# Waits for whoever holds the row (no SKIP LOCKED), then reads it as that holder left it.
_WAIT: Final = (
    "SELECT state FROM finalize_job WHERE account = %s AND period_start_us = %s FOR UPDATE"
)
_LINKS: Final = (
    "SELECT slot, holder, connected_since_us, last_received_us, updated_us FROM slot_link "
    "WHERE slot >= 0 AND slot < %s ORDER BY slot"
)
_PUT_LINK: Final = (
    "INSERT INTO slot_link (slot, holder, connected_since_us, last_received_us, updated_us) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (slot) DO UPDATE SET holder = excluded.holder, "
    "connected_since_us = excluded.connected_since_us, "
    "last_received_us = excluded.last_received_us, updated_us = excluded.updated_us"
)


async def add_jobs(conn: psycopg.AsyncConnection[Any], jobs: Sequence[Job],
                   queued_us: int) -> int:
    """Queue `jobs` in one statement, each at most once (a row already there, queued or done,
    stays as it is); returns how many were new."""
    cur = await conn.execute(_ADD, (queued_us, [j.account for j in jobs],
                                    [j.period_start_us for j in jobs],
                                    [j.period_end_us for j in jobs], [j.label for j in jobs]))
    return max(cur.rowcount, 0)


class JobQueue:
    """A worker's own connection (not autocommit) to the job table: `take` returns a job with
    its row locked in an open transaction, which `done` commits and `release` rolls back."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def take(self, skip: Sequence[Job] = ()) -> Job | None:
        """The first queued job (by period, then account) that no one holds and is not in
        `skip`, now held here with its `attempts` counted; None when there is none."""
        cur = await self._conn.execute(_TAKE, ([j.account for j in skip],
                                               [j.period_start_us for j in skip]))
        row = await cur.fetchone()
        if row is None:
            await self._conn.rollback()
            return None
        job = Job(str(row[0]), int(row[1]), int(row[2]), str(row[3]))
        await self._conn.execute(_BUMP, (job.account, job.period_start_us))
        return job

    async def done(self, job: Job, *, worker: str, done_us: int) -> None:
        """Mark the held `job` done by `worker` and commit (its lock goes with the commit)."""
        await self._conn.execute(_DONE, (worker, done_us, job.account, job.period_start_us))
        await self._conn.commit()

    async def failed(self) -> None:
        """Give the held job back, queued, with this attempt counted."""
        await self._conn.commit()

    async def release(self) -> None:
        """Roll back: the held job is queued and free again, this attempt uncounted (as when the
        worker is killed)."""
        await self._conn.rollback()

    async def wait(self, job: Job) -> bool:
        """Wait until no one holds `job`; True when it is done (or gone)."""
        cur = await self._conn.execute(_WAIT, (job.account, job.period_start_us))
        row = await cur.fetchone()
        await self._conn.rollback()
        return row is None or row[0] == "done"


async def slot_links(conn: psycopg.AsyncConnection[Any], slots: int) -> list[SlotLink]:
    """The `slot_link` rows of slots 0..slots-1, by slot."""
    cur = await conn.execute(_LINKS, (slots,))
    return [SlotLink(int(s), str(h), None if c is None else int(c),
                     None if r is None else int(r), int(u))
            for s, h, c, r, u in await cur.fetchall()]


async def put_slot_link(conn: psycopg.AsyncConnection[Any], link: SlotLink) -> None:
    """Replace slot `link.slot`'s row (in the caller's transaction, or as one on autocommit)."""
    await conn.execute(_PUT_LINK, (link.slot, link.holder, link.connected_since_us,
                                   link.last_received_us, link.updated_us))
