"""Finalization as a job table that every member and operator on one PostgreSQL database shares,
and the cluster-wide broker link the finalization rule reads (the tables and their statements:
`meter.store.job_table`).

`finalize_job` holds one row per (account, period). A worker takes the first queued job no one
holds and keeps its row lock, on a connection of its own, while it rates and stores the report,
then marks the job done in the same transaction: a SIGKILLed worker's connection ends, the
server rolls it back, and the job is queued and free again. `finalized`'s primary key keeps each
period to one report; a job whose report is there already (its worker died after storing it,
before marking it done) is only marked done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import psycopg

from meter.errors import StoreError, UsageError
from meter.finalization import Link
from meter.report.build import Watch, chosen_period, due_periods, make_report, read_contracts
from meter.store import Store, open_store
from meter.store.job_table import Job, JobQueue, SlotLink, add_jobs, put_slot_link, slot_links
from meter.store.postgres import connect, one_line, retriable, without_password
from rating.contracts import Contracts
from rating.usage import from_us, to_us

__all__ = ["LINK_FRESH", "Job", "enqueue", "finalize_due_jobs", "finish", "link", "report_link",
           "work"]

#: A slot's `slot_link` row older than this says nothing about its broker connection now (its
#: holder reports every second; one that stopped may have died with its backlog undelivered).
LINK_FRESH: Final = timedelta(seconds=10)

log = logging.getLogger("meter.cluster")


@contextlib.asynccontextmanager
async def _errors(url: str, what: str) -> AsyncIterator[None]:
    """A database error inside as one `StoreError` line naming `what` (retriable where waiting
    can fix it)."""
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"{without_password(url)}: {what}: {one_line(exc)}",
                         retriable=retriable(exc)) from None


async def enqueue(url: str, jobs: Iterable[Job], *, now: datetime) -> int:
    """Queue `jobs` (each at most once: one already in the table, queued or done, is left as it
    is); returns how many were new."""
    rows = list(jobs)
    if not rows:
        return 0
    async with _errors(url, "finalization jobs not queued"):
        conn = await connect(url, autocommit=True)
        async with conn:
            return await add_jobs(conn, rows, to_us(now))


async def _finalize(store: Store, contracts: Contracts, text: str, job: Job, *, now: datetime,
                    progress: Callable[[int], None] | None) -> bool:
    """Rate and finalize `job` through the normal path (`make_report(..., finalize=True)`);
    True when this call stored its report, False when it was there already."""
    if await store.finalized(job.account, job.period_start_us) is not None:
        return False
    account = contracts.get(job.account)
    if account is None:
        raise UsageError(f"finalization job {job.account} {job.label}: no account "
                         f"{job.account!r} in the contracts")
    start = chosen_period(account, job.label).start
    if to_us(start) != job.period_start_us:
        # The contracts moved the account's periods since it was queued: nothing is rated; the
        # job stays queued for a person to look at.
        raise UsageError(f"finalization job {job.account} {job.label}: the contracts start "
                         f"the period of {job.label} at {start.isoformat()}, the job at "
                         f"{from_us(job.period_start_us).isoformat()}")
    report = await make_report(store, contracts, text, job.label, accounts=[job.account],
                               finalize=True, now=now, workers=1, progress=progress)
    return job.account in report.finalized_now


async def work(url: str, contracts_path: str | Path, *, worker: str, now: datetime,
               stop: asyncio.Event | None = None,
               progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
    """Work the job table until no queued job is free (or `stop` is set): take one, finalize
    it, mark it done, take the next. `worker` names this worker in the table; `now` is the
    finalization time (the invoices' `issued_at`). Returns the (account, label) pairs this
    call finalized. `stop` is only polled between jobs (`is_set`), so it may belong to another
    thread's event loop (serve's finalizer runs this in a thread of its own).

    A job that fails is given back queued, its attempt counted, and logged; the others are
    worked on, and once none is left the first failure is raised (a bad account's job does not
    hold up the rest of the month's).
    """
    contracts, text = await read_contracts(contracts_path)
    finalized: list[tuple[str, str]] = []
    failed: list[tuple[Job, Exception]] = []
    async with await open_store(url, mmap=True) as store, _errors(url, "finalization job"):
        conn = await connect(url, application_name=f"meter finalize {worker}"[:63],
                             keepalive=True)
        async with conn:
            queue = JobQueue(conn)
            while stop is None or not stop.is_set():
                job = await queue.take([j for j, _ in failed])
                if job is None:
                    break
                try:
                    stored = await _finalize(store, contracts, text, job, now=now,
                                             progress=progress)
                except Exception as exc:  # given back, and raised once the rest are done
                    log.error("finalization of %s %s failed (left queued): %s", job.account,
                              job.label, exc)
                    await queue.failed()
                    failed.append((job, exc))
                    continue
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        await queue.release()
                    raise
                await queue.done(job, worker=worker, done_us=to_us(now))
                if stored:
                    finalized.append((job.account, job.label))
    if failed:
        raise failed[0][1]
    return finalized


async def finish(url: str, contracts_path: str | Path, jobs: Sequence[Job], *, worker: str,
                 now: datetime, stop: asyncio.Event | None = None,
                 progress: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
    """Queue `jobs` and work the table until every one of them is done, whoever does it (a job
    another worker holds is waited for; if that worker dies, it is worked here). What
    `meter report --finalize` on PostgreSQL runs. Returns what this call finalized."""
    await enqueue(url, jobs, now=now)
    finalized: list[tuple[str, str]] = []
    pending = list(jobs)
    while pending and (stop is None or not stop.is_set()):
        finalized += await work(url, contracts_path, worker=worker, now=now, stop=stop,
                                progress=progress)
        async with _errors(url, "finalization job"):
            conn = await connect(url, keepalive=True)
            async with conn:
                queue = JobQueue(conn)
                pending = [job for job in pending if not await queue.wait(job)]
    return finalized


async def finalize_due_jobs(db: str, contracts: str | Path, now: datetime,
                            lateness: timedelta = timedelta(hours=1), *,
                            quiet: timedelta = timedelta(0), watch: Watch | None = None,
                            worker: str, stop: asyncio.Event | None = None
                            ) -> list[tuple[str, str]]:
    """`meter.report.build.finalize_due` for a cluster: each due period (`due_periods`, the same
    rule, with `watch.link` the cluster's `link`) is queued, then the table is worked, the
    periods other members queued included. Returns what this call finalized."""
    parsed, _ = await read_contracts(contracts)
    async with await open_store(db, mmap=True) as store:
        due = await due_periods(store, parsed, now, lateness, quiet=quiet, watch=watch)
    await enqueue(db, [Job(d.account, to_us(d.period.start), to_us(d.period.end), d.label)
                       for d in due], now=now)
    return await work(db, contracts, worker=worker, now=now, stop=stop)


async def link(url: str, slots: int, now: datetime) -> Link:
    """The cluster's broker link for `meter.finalization.wait_reason`, from `slot_link`:
    connected only when every slot 0..slots-1 has a row updated within `LINK_FRESH` of `now`
    that says it is connected; then since the latest connection start (the last to connect may
    still be delivering its queue). `last_received` is the latest message of any slot."""
    async with _errors(url, "slot links not read"):
        conn = await connect(url, autocommit=True)
        async with conn:
            rows = await slot_links(conn, slots)
    received = [r.last_received_us for r in rows if r.last_received_us is not None]
    last = from_us(max(received)) if received else None
    fresh = to_us(now - LINK_FRESH)
    connected = {r.slot: r.connected_since_us for r in rows
                 if r.connected_since_us is not None and r.updated_us >= fresh}
    if len(connected) < slots:
        return Link(None, last)
    return Link(from_us(max(connected.values())), last)


async def report_link(url_or_conn: str | psycopg.AsyncConnection[Any], slot: int, holder: str, *,
                      connected_since: datetime | None, last_received: datetime | None,
                      now: datetime) -> None:
    """Record what slot `slot`'s holder knows of its broker connection at `now` (its slot code
    calls this every second). On a connection it runs in a transaction (a savepoint inside the
    caller's), else on a connection of its own."""
    row = SlotLink(slot, holder, None if connected_since is None else to_us(connected_since),
                   None if last_received is None else to_us(last_received), to_us(now))
    if isinstance(url_or_conn, str):
        async with _errors(url_or_conn, "slot link not recorded"):
            conn = await connect(url_or_conn, autocommit=True)
            async with conn:
                await put_slot_link(conn, row)
        return
    async with url_or_conn.transaction():
        await put_slot_link(url_or_conn, row)
