"""Building a period's report: rate each account (or read it back where finalized), finalize,
and verify a report against the store.

A report is deterministic (sorted keys, no wall-clock times inside), with an input hash per
account over the events it rated, the account's contract and the rating version. A finalized
period is always rendered from what was stored.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from meter.errors import UsageError
from meter.finalization import Link, wait_reason
from meter.report.compose import canonical, customer_doc, invoice_number, local_period
from meter.report.document import AccountDoc, AccountReport, Charts, Report
from meter.report.inputs import account_contracts, load_inputs
from meter.report.late import period_label, previous_period
from meter.report.rate import Rated, rate_one, rate_parallel, workers_for
from meter.store import FinalizedReport, Store, open_store
from rating.contracts import Account, Contracts, parse_contracts
from rating.periods import Period, local_midnight, monthly_period, period_of_month
from rating.usage import from_us, iso, to_us

__all__ = ["Due", "Watch", "chosen_period", "due_periods", "finalize_due", "make_report", "parse_month",
           "read_contracts", "verify"]


def parse_month(text: str) -> tuple[int, int]:
    """`YYYY-MM` as (year, month); a `UsageError` otherwise."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text or "")
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise UsageError(f"--period: expected YYYY-MM, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def chosen_period(account: Account, month: str | None = None, on: date | None = None) -> Period:
    """The account's period a report names: the one holding local day `on` in the account's
    timezone (`--on DATE`), else the one starting in calendar month `month` (`--period`)."""
    if on is not None:
        return monthly_period(account, local_midnight(on, account.tz))
    year, mon = parse_month(month or "")
    return period_of_month(account, year, mon)


def _chosen(contracts: Contracts, accounts: Sequence[str] | None) -> list[Account]:
    if not accounts:
        return list(contracts.accounts)
    unknown = [a for a in accounts if a not in contracts]
    if unknown:
        raise UsageError(f"--account: no account {unknown[0]!r} in the contracts")
    return [a for a in contracts.accounts if a.id in accounts]


def _frozen(row: FinalizedReport, account: Account | None = None) -> AccountReport:
    doc: AccountDoc = json.loads(row.report)
    charts: Charts = json.loads(row.charts)
    if "invoice" not in doc and account is not None:
        _complete(doc, account, row)
    return AccountReport(row.account, doc, charts, True)


def _complete(doc: AccountDoc, account: Account, row: FinalizedReport) -> None:
    """A report finalized before reports carried the invoice keys: add them on reading (the
    stored row is never rewritten; every render of it adds the same)."""
    local = local_period(account, from_us(row.period_start_us), from_us(row.period_end_us))
    doc["local_period"] = local
    doc["invoice"] = {"number": invoice_number(account.id, local["label"]),
                      "issued_at": iso(from_us(row.finalized_us)),
                      "customer": customer_doc(account)}
    for pool in doc["pools"]:
        pool.setdefault("usage_by_user", [])
        pool.setdefault("daily", [])


async def _finalize(store: Store, account: Account, period: Period, rated: Rated, *,
                    cutoff: int, now: datetime) -> tuple[AccountReport, bool]:
    """Store `rated` as the account's finalized period; returns the part as stored (another
    finalization may have got there first) and whether this call stored it."""
    doc, charts = rated
    doc["finalized"] = True
    # The invoice is issued when the period is frozen; stored with it, so it never changes.
    doc["invoice"]["issued_at"] = iso(now)
    row = FinalizedReport(account=account.id, period_start_us=to_us(period.start),
                          period_end_us=to_us(period.end), report=canonical(doc),
                          charts=canonical(charts), input_hash=doc["input_hash"],
                          cutoff_seq=cutoff, finalized_us=to_us(now))
    if await store.add_finalized(row):
        # Parsed back from the stored text, so this render is byte-identical to later ones.
        return _frozen(row, account), True
    again = await store.finalized(account.id, row.period_start_us)
    assert again is not None
    return _frozen(again, account), False


@functools.lru_cache(maxsize=2)
def _account_contracts(contracts_text: str) -> Mapping[str, str]:
    """`account_contracts`, kept for the last texts seen: a finalizer makes one report per
    account from the same file, and parsing all of it for each one made finalizing N accounts
    O(N^2) (300 accounts: 29 of 35 s parsing TOML)."""
    return MappingProxyType(account_contracts(contracts_text))


async def make_report(store: Store, contracts: Contracts, contracts_text: str,
                      month: str | None, *, on: date | None = None,
                      accounts: Sequence[str] | None = None, finalize: bool = False,
                      now: datetime | None = None, charts: bool = True,
                      workers: int | None = None, as_of: datetime | None = None,
                      progress: Callable[[int], None] | None = None) -> Report:
    """Rate (or read back, where finalized) each account's period `month` ("YYYY-MM": the
    period starting in that month), or with `on` the period holding that local date (the
    report is then named by the date, "YYYY-MM-DD").

    With `finalize`, accounts not yet finalized are stored as finalized (`now` is recorded beside
    them, never inside the report). `charts=False` leaves out the chart series (JSON and CSV do
    not draw; finalization always stores them). Many accounts are rated in `workers` processes
    (default `workers_for`); the result is the same. `as_of` rates a period still running as of
    that time (`meter report --as-of`): a session open then counts as open up to it, as the live
    view counts it; without it the horizon is the period's end plus the session timeout.
    `progress` is called with the number of accounts each step has just rated or read.
    """
    if on is None:
        year, mon = parse_month(month or "")
        label = f"{year:04d}-{mon:02d}"
    else:
        label = on.isoformat()
    chosen = _chosen(contracts, accounts)
    periods = {a.id: chosen_period(a, month, on) for a in chosen}
    cutoff = await store.last_seq()
    charts = charts or finalize
    frozen: dict[str, AccountReport] = {}
    todo: list[Account] = []
    for account in chosen:
        row = await store.finalized(account.id, to_us(periods[account.id].start))
        if row is None:
            todo.append(account)
        else:
            frozen[account.id] = _frozen(row, account)
    if frozen and progress is not None:
        progress(len(frozen))
    if finalize:
        as_of = None  # a finalized bill keeps the horizon of the period's end + session timeout
    # Accounts rate by the calendar month their period starts in (with --on they may differ).
    groups: dict[tuple[int, int], list[Account]] = {}
    for account in todo:
        local = periods[account.id].start.astimezone(account.tz)
        groups.setdefault((local.year, local.month), []).append(account)
    rated: dict[str, Rated] = {}
    canonical_contracts: Mapping[str, str] = {}
    for (year, mon), group in groups.items():
        count = workers if workers is not None else workers_for(len(group))
        if count > 1:
            rated |= await rate_parallel(store, contracts_text, year, mon, [a.id for a in group],
                                         cutoff=cutoff, charts=charts, workers=count, as_of=as_of,
                                         progress=progress)
            continue
        canonical_contracts = canonical_contracts or _account_contracts(contracts_text)
        for account in group:
            rated[account.id] = await rate_one(store, account, periods[account.id],
                                               canonical_contracts[account.id], cutoff,
                                               charts=charts, as_of=as_of)
            if progress is not None:
                progress(1)
    parts: list[AccountReport] = []
    finalized_now: list[str] = []
    for account in chosen:
        if account.id in frozen:
            parts.append(frozen[account.id])
        elif finalize:
            part, stored = await _finalize(store, account, periods[account.id],
                                           rated[account.id], cutoff=cutoff,
                                           now=now or datetime.now(UTC))
            parts.append(part)
            finalized_now += [account.id] if stored else []
        else:
            doc, series = rated[account.id]
            parts.append(AccountReport(account.id, doc, series, False))
    return Report(month=label, accounts=tuple(parts), finalized_now=tuple(finalized_now))


@dataclass(slots=True)
class Watch:
    """A finalizer's memory between checks of `finalize_due` (one finalizer owns it).

    The caller sets `link` before each check; `finalize_due` notes how far into the store it has
    looked (`seq`), when it last saw an event for a waiting period arrive, and leaves in
    `waiting` each account whose last ended period waits, as (period "YYYY-MM", reason).
    """

    #: When the daemon started: events stored before it count as arriving then (their arrival
    #: was not watched, so a restart waits `finalize_after` again rather than guess).
    started: datetime
    link: Link | None = None
    seq: int | None = None
    arrivals: dict[tuple[str, int], datetime] = field(default_factory=dict)
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Due:
    """An account's ended period that may be finalized now: `[start, end)` and its label (the
    "YYYY-MM" it starts in, as `meter report --period` names it)."""

    account: str
    period: Period
    label: str


async def due_periods(store: Store, contracts: Contracts, now: datetime, lateness: timedelta, *,
                      quiet: timedelta = timedelta(0), watch: Watch | None = None) -> list[Due]:
    """Each account's last ended period that `meter.finalization.wait_reason` lets go at `now`
    and that is not finalized yet; with `watch`, updates it (see `Watch`) as one check.

    An account with no events before the period's end is left out (nothing was used; a fresh
    install does not freeze empty months). The one rule of which periods are due, for the
    daemon's own finalizer (`finalize_due`) and for a cluster's job table
    (`meter.cluster.jobs.finalize_due_jobs`).
    """
    due: list[Due] = []
    waiting: dict[str, tuple[str, str]] = {}
    seq = await store.last_seq()
    for account in contracts.accounts:
        period = previous_period(account, monthly_period(account, now))
        start_us, end_us = to_us(period.start), to_us(period.end)
        if await store.finalized(account.id, start_us) is not None:
            continue
        if not await store.has_events_before(account.id, end_us):
            continue
        label = period_label(account, period)
        arrival = None
        if watch is not None:
            key = (account.id, start_us)
            if watch.seq is None:
                watch.arrivals.setdefault(key, watch.started)
            elif await store.count_arrived(account.id, start_us, end_us,
                                           after_seq=watch.seq, through_seq=seq):
                watch.arrivals[key] = now
            arrival = watch.arrivals.get(key)
        reason = wait_reason(period.end, now, finalize_after=lateness, quiet=quiet,
                             link=watch.link if watch is not None else None,
                             last_arrival=arrival)
        if reason is None:
            due.append(Due(account.id, period, label))
        else:
            waiting[account.id] = (label, reason)
    if watch is not None:
        watch.seq = seq
        watch.waiting = waiting
        live = {(a.id, to_us(previous_period(a, monthly_period(a, now)).start))
                for a in contracts.accounts}
        watch.arrivals = {k: v for k, v in watch.arrivals.items() if k in live}
    return due


async def read_contracts(path: str | Path) -> tuple[Contracts, str]:
    """The contracts file at `path`, parsed, and its text (read in a thread)."""
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    return parse_contracts(text, source=str(path)), text


async def finalize_due(db: str | Path, contracts: str | Path, now: datetime,
                       lateness: timedelta = timedelta(hours=1), *,
                       quiet: timedelta = timedelta(0),
                       watch: Watch | None = None) -> list[tuple[str, str]]:
    """Finalize each account's last ended period once `meter.finalization.wait_reason` says so
    (`due_periods`).

    For `meter serve`: call it periodically with the current time and the same `watch` (without
    one, only the lateness counts: there is no broker to drain). Returns the (account,
    "YYYY-MM") pairs finalized by this call.
    """
    parsed, text = await read_contracts(contracts)
    done: list[tuple[str, str]] = []
    async with await open_store(db, mmap=True) as store:
        for due in await due_periods(store, parsed, now, lateness, quiet=quiet, watch=watch):
            report = await make_report(store, parsed, text, due.label, accounts=[due.account],
                                       finalize=True, now=now)
            done += [(a, due.label) for a in report.finalized_now]
    return done


async def verify(store: Store, contracts: Contracts, contracts_text: str,
                 doc: Mapping[str, Any]) -> list[tuple[str, bool, str, str]]:
    """Recompute each account's input hash: (account, matches, reported, recomputed)."""
    results = []
    canonical_contracts = account_contracts(contracts_text)
    for part in doc.get("accounts", []):
        account_id = str(part.get("account"))
        reported = str(part.get("input_hash"))
        account = contracts.get(account_id)
        if account is None:
            results.append((account_id, False, reported, "account not in the contracts"))
            continue
        period = Period(datetime.fromisoformat(part["period"]["start"]),
                        datetime.fromisoformat(part["period"]["end"]))
        through = int(part.get("inputs", {}).get("through_seq", 0))
        # Under the layout the report was hashed with (reports from before layouts: 1).
        version = int(part.get("inputs", {}).get("hash_version", 1))
        inputs = await load_inputs(store, account, canonical_contracts[account_id], period, through,
                                   hash_version=version)
        results.append((account_id, inputs.digest == reported, reported, inputs.digest))
    return results
