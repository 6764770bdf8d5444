"""`meter report` and `meter verify`: load a period's events, rate them, render, finalize, verify.

A report is one JSON document (DESIGN section 3) per period: deterministic (sorted keys, no
wall-clock times inside), with an input hash per account over the events it rated, the account's
contract and the rating version. `--finalize` stores each account's part; a finalized period is
always rendered from what was stored, and events that arrive for it later become `adjustment`
lines of the next period.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import re
import sqlite3
import sys
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from meter.errors import UsageError
from meter.events import to_us
from meter.store import Store
from rating.bill import RATING_VERSION, AccountBill, Line, Row, adjustments, grace_text, rate_rows
from rating.contracts import Account, Contracts, parse_contracts
from rating.money import format_money, format_price
from rating.periods import Period, monthly_period, period_of_month
from rating.seatchanges import QuantitySteps, apply_orders
from rating.usage import from_us, iso

__all__ = [
    "AccountReport",
    "Inputs",
    "Report",
    "account_contract",
    "account_contracts",
    "finalize_due",
    "input_hash",
    "make_report",
    "parse_month",
    "render_json",
    "run",
    "run_verify",
    "verify",
]

#: How many finalized periods back a report looks for late events (a year of monthly periods).
_LOOKBACK = 12


@dataclass(frozen=True, slots=True)
class Inputs:
    """The events an account's report rated: those of its input window with `seq <= through_seq`,
    as rows (id, type, user, pool, session, ts_us) in (ts_us, id) order."""

    rows: tuple[Row, ...]
    count: int
    through_seq: int
    digest: str


@dataclass(frozen=True, slots=True)
class AccountReport:
    """One account's part of a report: the JSON object, the chart series, whether it is frozen."""

    account: str
    doc: Mapping[str, Any]
    charts: Mapping[str, Any]
    finalized: bool


@dataclass(frozen=True, slots=True)
class Report:
    """A period's report over one or more accounts."""

    month: str
    accounts: tuple[AccountReport, ...]
    finalized_now: tuple[str, ...] = field(default=())

    def doc(self) -> dict[str, Any]:
        """The whole report as a JSON-ready dict (DESIGN section 3 keys)."""
        starts = [a.doc["period"]["start"] for a in self.accounts]
        ends = [a.doc["period"]["end"] for a in self.accounts]
        digest = hashlib.sha256("".join(a.doc["input_hash"] for a in self.accounts).encode())
        return {
            "period": {"month": self.month, "start": min(starts, default=None),
                       "end": max(ends, default=None)},
            "rating_version": RATING_VERSION,
            "input_hash": digest.hexdigest(),
            "accounts": [a.doc for a in self.accounts],
        }


# --- canonical inputs and their hash -------------------------------------------------------------


def _int(value: object) -> int:
    """An integer column of a fetched row (the store types rows as objects)."""
    if not isinstance(value, int):
        raise TypeError(f"expected an integer column, got {value!r}")
    return value



def _iso_us(us: int) -> str:
    return iso(from_us(us))


def account_contracts(contracts_text: str) -> dict[str, str]:
    """Each account's `[[account]]` table as canonical JSON (comments and other accounts ignored),
    by account id; the file is parsed once however many accounts it holds."""
    doc = tomllib.loads(contracts_text)
    return {
        str(table["id"]): json.dumps(table, sort_keys=True, separators=(",", ":"), default=str)
        for table in doc.get("account", []) if isinstance(table, dict) and "id" in table
    }


def account_contract(contracts_text: str, account_id: str) -> str:
    """One account's canonical contract (see `account_contracts`)."""
    try:
        return account_contracts(contracts_text)[account_id]
    except KeyError:
        raise UsageError(f"contracts: no account {account_id!r}") from None


def input_hash(contract: str, rows: Sequence[Sequence[Any]]) -> str:
    """sha256 over the rating version, the account's canonical contract and its events.

    `rows` are (id, type, user, pool, session, ts_us) in (ts_us, id) order, so arrival order,
    which never changes a bill, never changes the hash either. They are written as one JSON
    array (one C-speed encoding for the whole list).
    """
    h = hashlib.sha256()
    h.update(f"license-meter inputs\nrating {RATING_VERSION}\n".encode())
    h.update(contract.encode())
    h.update(b"\n")
    h.update(json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode())
    return h.hexdigest()


def _window(account: Account, period: Period) -> tuple[int, int]:
    return (to_us(period.start - account.session_timeout), to_us(period.end + account.session_timeout))


# Two ranges of the (account, ts_us) index: the input window, and (for accounts with named pools)
# the seat events before it. Each is ordered by (ts_us, id), and the second lies wholly before
# the first, so their concatenation is in (ts_us, id) order. SQLite compares text by its UTF-8
# bytes, which is code-point order, the order Python would sort the ids in.
_WINDOW_ROWS = (
    "SELECT id, type, user, pool, session, ts_us FROM events "
    "WHERE account = ? AND seq <= ? AND ts_us >= ? AND ts_us < ? ORDER BY ts_us, id"
)
_WINDOW_LAST = (
    "SELECT coalesce(max(seq), 0) FROM events "
    "WHERE account = ? AND seq <= ? AND ts_us >= ? AND ts_us < ?"
)
_SEAT_ROWS = (
    "SELECT id, type, user, pool, session, ts_us FROM events "
    "WHERE account = ? AND seq <= ? AND ts_us < ? AND type IN ('assign', 'unassign') "
    "ORDER BY ts_us, id"
)
_SEAT_LAST = (
    "SELECT coalesce(max(seq), 0) FROM events "
    "WHERE account = ? AND seq <= ? AND ts_us < ? AND type IN ('assign', 'unassign')"
)


async def load_inputs(store: Store, account: Account, contract: str, period: Period,
                      through_seq: int) -> Inputs:
    """The events rating `period` needs, up to arrival `through_seq`, and their hash.

    That is the input window `[start - session_timeout, end + session_timeout)` (sessions open at
    the start, timeouts near the end) plus, where the account has named pools, every earlier
    assign/unassign (the rosters).
    """
    lo, hi = _window(account, period)
    rows: list[Any] = []
    last = 0
    if any(p.model == "named" for p in account.pools):
        seats = (account.id, through_seq, lo)
        rows += await store.execute_fetchall(_SEAT_ROWS, seats)
        last = _int((await store.execute_fetchall(_SEAT_LAST, seats))[0][0])
    window = (account.id, through_seq, lo, hi)
    rows += await store.execute_fetchall(_WINDOW_ROWS, window)
    last = max(last, _int((await store.execute_fetchall(_WINDOW_LAST, window))[0][0]))
    return Inputs(rows=tuple(rows), count=len(rows), through_seq=last,
                  digest=input_hash(contract, rows))


async def _map(store: Store) -> None:
    """Read the database through mmap: a report reads rows scattered over the whole file, and
    mapped pages skip a read() copy each (about a quarter of the fetch time measured)."""
    await store.execute_fetchall("PRAGMA mmap_size = 4294967296")


async def _max_seq(store: Store) -> int:
    rows = await store.execute_fetchall("SELECT coalesce(max(seq), 0) FROM events")
    return _int(rows[0][0])


# --- the JSON document ---------------------------------------------------------------------------


def _steps_json(steps: QuantitySteps) -> list[list[int]]:
    return [[to_us(t), int(v)] for t, v in steps]


def _line_json(line: Line, exp: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": line.kind,
        "target": line.target,
        "quantity": line.quantity,
        "amount": format_money(line.amount, exp),
        "unit_price": None if line.unit_price is None else format_price(line.unit_price, exp),
        "at": None if line.at is None else iso(line.at),
        "description": line.description,
    }
    if line.for_period is not None:
        out["for_period"] = {"start": iso(line.for_period.start), "end": iso(line.for_period.end)}
    return out


def bill_json(bill: AccountBill, inputs: Inputs) -> dict[str, Any]:
    """An account's bill as the report's JSON object (amounts as strings in the minor unit)."""
    account = bill.account
    exp = account.exponent
    pools = []
    for use in bill.pools:
        pool = use.pool
        pools.append({
            "pool": pool.id,
            "model": pool.model,
            "tier": pool.tier,
            "licensed": use.licensed,
            "users": use.users,
            "peak": use.peak,
            "peak_at": None if use.peak_at is None else iso(use.peak_at),
            "billable_peak": use.billable_peak,
            "overage_seats": use.overage_seats,
            "overage_price": (None if pool.overage_price is None
                              else format_price(pool.overage_price, exp)),
            "overage_amount": format_money(use.overage_amount, exp),
            "grace": ({"seconds": int(pool.grace.total_seconds()), "mode": pool.grace_mode,
                       "rule": grace_text(pool)} if pool.model == "concurrent" else None),
            "episodes": [
                {
                    "start": iso(e.start),
                    "end": iso(e.end),
                    "duration_seconds": e.duration // timedelta(seconds=1),
                    "peak_excess": e.peak_excess,
                    "sustained_level": e.sustained_level,
                    "within_grace": e.within_grace,
                }
                for e in use.episodes
            ],
        })
    return {
        "account": account.id,
        "currency": account.currency,
        "timezone": account.timezone,
        "period": {"start": iso(bill.period.start), "end": iso(bill.period.end)},
        "input_hash": inputs.digest,
        "inputs": {"events": inputs.count, "through_seq": inputs.through_seq},
        "finalized": False,
        "pools": pools,
        "named": [
            {
                "pool": n.pool,
                "licensed": n.licensed,
                "assigned": n.assigned,
                "active_users": n.active_users,
                "unlicensed_users": n.unlicensed_users,
                "unlicensed": list(n.unlicensed),
                "refused_assigns": n.refused_assigns,
                "idle_seats": n.idle_seats,
            }
            for n in bill.named
        ],
        "addons": [
            {"addon": a.addon, "required": a.required, "purchased": a.purchased,
             "shortfall": a.shortfall}
            for a in bill.addons
        ],
        "charges": [_line_json(c, exp) for c in bill.charges],
        "refused": [
            {"kind": r.kind, "target": r.target, "at": iso(r.at), "quantity": r.quantity,
             "reason": r.reason}
            for r in bill.refused
        ],
        "right_sizing": [
            {
                "pool": s.pool,
                "licensed": s.licensed,
                "billable_peak": s.billable_peak,
                "recommended": s.recommended,
                "current_cost": format_money(s.current_cost, exp),
                "recommended_cost": format_money(s.recommended_cost, exp),
                "saving": format_money(s.saving, exp),
                "rule": s.rule,
            }
            for s in bill.right_sizing
        ],
        "unresolved_events": bill.unresolved_events,
        "total": format_money(bill.total, exp),
    }


def bill_charts(bill: AccountBill) -> dict[str, Any]:
    """The step functions the HTML charts draw: per pool c(t) and E(t) as [t_us, value] pairs."""
    charts: dict[str, Any] = {}
    for use in bill.pools:
        c = use.concurrency
        curve = ([] if c is None else
                 [list(p) for p in zip(c.times.tolist(), c.values.tolist(), strict=True)])
        charts[use.pool.id] = {"c": curve, "e": _steps_json(use.licensed_steps)}
    return charts


def render_json(report: Report) -> str:
    """The report as deterministic JSON text: sorted keys, two-space indent, a final newline."""
    return json.dumps(report.doc(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _canonical(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- finalization and late events -----------------------------------------------------------------

_FINALIZED_COLUMNS = "period_start_us, period_end_us, report, charts, input_hash, cutoff_seq"


async def _finalized(store: Store, account: str, period: Period) -> tuple[Any, ...] | None:
    rows = await store.execute_fetchall(
        f"SELECT {_FINALIZED_COLUMNS} FROM finalized "  # noqa: S608 - fixed column list
        "WHERE account = ? AND period_start_us = ?", (account, to_us(period.start)))
    return rows[0] if rows else None


def _previous(account: Account, period: Period) -> Period:
    return monthly_period(account, period.start - timedelta(microseconds=1))


def _label(account: Account, period: Period) -> str:
    return period.start.astimezone(account.tz).strftime("%Y-%m")


async def _late_adjustments(store: Store, account: Account, contract: str, period: Period,
                            cutoff: int) -> list[Line]:
    """Adjustment lines for the finalized periods just before `period`.

    Walks back over finalized periods (stopping at the first one that is not finalized: an
    unfinalized period's bill was never sent, so it has nothing to adjust). For each one with
    events that arrived after its finalization, the period is rated again with everything known
    and compared with what was billed: its finalized report plus the adjustments already billed
    in the finalized periods after it.
    """
    frozen: list[tuple[Period, tuple[Any, ...]]] = []
    p = _previous(account, period)
    for _ in range(_LOOKBACK):
        row = await _finalized(store, account.id, p)
        if row is None:
            break
        frozen.append((p, row))
        p = _previous(account, p)
    lines: list[Line] = []
    ledger = None
    for index, (q, row) in enumerate(frozen):
        lo, hi = _window(account, q)
        late_rows = await store.execute_fetchall(
            "SELECT count(*) FROM events WHERE account = ? AND seq > ? AND seq <= ? "
            "AND ts_us >= ? AND ts_us < ?", (account.id, int(row[5]), cutoff, lo, hi))
        late = _int(late_rows[0][0])
        if not late:
            continue
        billed: dict[str, tuple[int, Decimal]] = {}
        for pool in json.loads(str(row[2]))["pools"]:
            billed[pool["pool"]] = (int(pool["overage_seats"]), Decimal(pool["overage_amount"]))
        # Adjustments for q already billed by the finalized periods between q and `period`.
        q_start = iso(q.start)
        for _later, later_row in frozen[:index]:
            for charge in json.loads(str(later_row[2]))["charges"]:
                if charge["kind"] == "adjustment" and charge.get("for_period", {}).get("start") == q_start:
                    seats, amount = billed.get(charge["target"], (0, Decimal(0)))
                    billed[charge["target"]] = (seats + int(charge["quantity"]),
                                                amount + Decimal(charge["amount"]))
        inputs = await load_inputs(store, account, contract, q, cutoff)
        ledger = ledger or apply_orders(account)
        again = rate_rows(account, inputs.rows, q, ledger=ledger)
        lines += adjustments(account, q, billed, again, late_events=late, label=_label(account, q))
    return lines


def _insert_finalized(path: Path, params: tuple[object, ...]) -> bool:
    # The store's connection is read-mostly and owned by its module; this one insert runs on a
    # short connection of its own (WAL lets it write beside the reader, busy_timeout waits).
    with closing(sqlite3.connect(path, timeout=10)) as db, db:
        cur = db.execute(
            "INSERT OR IGNORE INTO finalized (account, period_start_us, period_end_us, report, "
            "charts, input_hash, cutoff_seq, finalized_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", params)
        return cur.rowcount > 0


async def _store_finalized(store: Store, account: str, period: Period, *, doc: Mapping[str, Any],
                           charts: Mapping[str, Any], cutoff: int, now: datetime) -> bool:
    """Insert the finalized row; False when another finalization got there first."""
    params = (account, to_us(period.start), to_us(period.end), _canonical(doc), _canonical(charts),
              str(doc["input_hash"]), cutoff, to_us(now))
    return await asyncio.to_thread(_insert_finalized, store.path, params)


# --- building a report ----------------------------------------------------------------------------


def parse_month(text: str) -> tuple[int, int]:
    """`YYYY-MM` as (year, month); a `UsageError` otherwise."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text or "")
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise UsageError(f"--period: expected YYYY-MM, got {text!r}")
    return int(match.group(1)), int(match.group(2))


async def _rate_one(store: Store, account: Account, period: Period, contract: str, cutoff: int,
                    *, charts: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """One account's report object and chart series, rated from the store."""
    inputs = await load_inputs(store, account, contract, period, cutoff)
    late = await _late_adjustments(store, account, contract, period, cutoff)
    bill = rate_rows(account, inputs.rows, period, adjustment_lines=late)
    return bill_json(bill, inputs), (bill_charts(bill) if charts else {})


@dataclass(frozen=True, slots=True)
class _Shard:
    """What a worker process needs to rate its share of the accounts (picklable)."""

    db: str
    contracts_text: str
    month: str
    ids: tuple[str, ...]
    cutoff: int
    charts: bool


def _rate_shard(shard: _Shard) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """A worker process: rate the shard's accounts (none finalized) on a connection of its own."""
    contracts = parse_contracts(shard.contracts_text)
    canonical = account_contracts(shard.contracts_text)
    year, mon = parse_month(shard.month)
    db, ids, cutoff, charts = shard.db, shard.ids, shard.cutoff, shard.charts

    async def rate() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        out = []
        async with await Store.open(db) as store:
            await _map(store)
            for account_id in ids:
                account = contracts.get(account_id)
                assert account is not None
                doc, series = await _rate_one(store, account, period_of_month(account, year, mon),
                                              canonical[account_id], cutoff, charts=charts)
                out.append((account_id, doc, series))
        return out

    return asyncio.run(rate())


#: Reports of at least this many accounts to rate are spread over worker processes.
PARALLEL_MIN = 48


def _workers(todo: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, 4) if todo >= PARALLEL_MIN else 1


async def _rate_parallel(store: Store, contracts_text: str, month: str, ids: Sequence[str], *,
                         cutoff: int, charts: bool, workers: int) -> dict[str, tuple[Any, Any]]:
    """Rate `ids` in `workers` processes (spawned: a forked asyncio program is not safe)."""
    loop = asyncio.get_running_loop()
    shards = [_Shard(str(store.path), contracts_text, month, tuple(ids[i::workers]), cutoff, charts)
              for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = await asyncio.gather(*(loop.run_in_executor(pool, _rate_shard, shard)
                                         for shard in shards))
    return {account_id: (doc, series) for shard in results for account_id, doc, series in shard}


async def make_report(store: Store, contracts: Contracts, contracts_text: str, month: str, *,
                      accounts: Sequence[str] | None = None, finalize: bool = False,
                      now: datetime | None = None, charts: bool = True,
                      workers: int | None = None) -> Report:
    """Rate (or read back, where finalized) each account's period `month` ("YYYY-MM").

    With `finalize`, accounts not yet finalized are stored as finalized (`now` is recorded beside
    them, never inside the report). `charts=False` leaves out the chart series (JSON and CSV do
    not draw; finalization always stores them). Many accounts are rated in `workers` processes
    (default: one per core, up to 4, from `PARALLEL_MIN` accounts); the result is the same.
    """
    year, mon = parse_month(month)
    label = f"{year:04d}-{mon:02d}"
    chosen = list(contracts.accounts)
    if accounts:
        unknown = [a for a in accounts if a not in contracts]
        if unknown:
            raise UsageError(f"--account: no account {unknown[0]!r} in the contracts")
        chosen = [a for a in chosen if a.id in accounts]
    await _map(store)
    cutoff = await _max_seq(store)
    charts = charts or finalize
    frozen: dict[str, AccountReport] = {}
    todo: list[Account] = []
    for account in chosen:
        row = await _finalized(store, account.id, period_of_month(account, year, mon))
        if row is None:
            todo.append(account)
        else:
            frozen[account.id] = AccountReport(account.id, json.loads(str(row[2])),
                                               json.loads(str(row[3])), True)
    rated: dict[str, tuple[Any, Any]] = {}
    count = workers if workers is not None else _workers(len(todo))
    if count > 1 and todo:
        rated = await _rate_parallel(store, contracts_text, label, [a.id for a in todo],
                                     cutoff=cutoff, charts=charts, workers=count)
    else:
        canonical = account_contracts(contracts_text) if todo else {}
        for account in todo:
            rated[account.id] = await _rate_one(store, account, period_of_month(account, year, mon),
                                                canonical[account.id], cutoff, charts=charts)
    parts: list[AccountReport] = []
    finalized_now: list[str] = []
    for account in chosen:
        if account.id in frozen:
            parts.append(frozen[account.id])
            continue
        doc, series = rated[account.id]
        if finalize:
            period = period_of_month(account, year, mon)
            doc["finalized"] = True
            stored = await _store_finalized(store, account.id, period, doc=doc, charts=series,
                                            cutoff=cutoff, now=now or datetime.now(UTC))
            if not stored:  # finalized concurrently: what was stored is the report
                again = await _finalized(store, account.id, period)
                assert again is not None
                doc, series = json.loads(str(again[2])), json.loads(str(again[3]))
            else:
                finalized_now.append(account.id)
            # Round-trip through the stored text so this render is byte-identical to later ones.
            doc = json.loads(_canonical(doc))
        parts.append(AccountReport(account.id, doc, series, finalize))
    return Report(month=label, accounts=tuple(parts), finalized_now=tuple(finalized_now))


async def finalize_due(db: str | Path, contracts: str | Path, now: datetime,
                       lateness: timedelta = timedelta(hours=1)) -> list[tuple[str, str]]:
    """Finalize each account's last completed period once `lateness` has passed since its end.

    For `meter serve`: call it periodically (say each minute) with the current time. Returns the
    (account, "YYYY-MM") pairs finalized by this call. An account with no events before the
    period's end is left alone (nothing was used; a fresh install does not freeze empty months).
    """
    text = await asyncio.to_thread(Path(contracts).read_text, encoding="utf-8")
    parsed = parse_contracts(text, source=str(contracts))
    done: list[tuple[str, str]] = []
    async with await Store.open(db) as store:
        for account in parsed.accounts:
            current = monthly_period(account, now - lateness)
            due = _previous(account, current)
            if await _finalized(store, account.id, due) is not None:
                continue
            used = await store.execute_fetchall(
                "SELECT 1 FROM events WHERE account = ? AND ts_us < ? LIMIT 1",
                (account.id, to_us(due.end)))
            if not used:
                continue
            label = _label(account, due)
            report = await make_report(store, parsed, text, label, accounts=[account.id],
                                       finalize=True, now=now)
            done += [(a, label) for a in report.finalized_now]
    return done


# --- verify ---------------------------------------------------------------------------------------


async def verify(store: Store, contracts: Contracts, contracts_text: str,
                 doc: Mapping[str, Any]) -> list[tuple[str, bool, str, str]]:
    """Recompute each account's input hash: (account, matches, reported, recomputed)."""
    results = []
    canonical = account_contracts(contracts_text)
    for part in doc.get("accounts", []):
        account_id = str(part.get("account"))
        reported = str(part.get("input_hash"))
        account = contracts.get(account_id)
        if account is None:
            results.append((account_id, False, reported, "account not in the contracts"))
            continue
        start = datetime.fromisoformat(part["period"]["start"])
        end = datetime.fromisoformat(part["period"]["end"])
        contract = canonical[account_id]
        through = int(part.get("inputs", {}).get("through_seq", 0))
        inputs = await load_inputs(store, account, contract, Period(start, end), through)
        results.append((account_id, inputs.digest == reported, reported, inputs.digest))
    return results


# --- CLI ------------------------------------------------------------------------------------------


def _read_contracts(path: str) -> tuple[Contracts, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read contracts: {exc.__class__.__name__}") from None
    return parse_contracts(text, source=path), text


def _check_db(path: str) -> None:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such database")


async def _open(path: str) -> Store:
    _check_db(path)
    return await Store.open(path)


def write_outputs(report: Report, fmt: str, out: Path | None) -> list[Path]:
    """Render `report` as `fmt` into `out` (or JSON/CSV to stdout when `out` is None)."""
    if fmt == "json":
        text = render_json(report)
        if out is None:
            sys.stdout.write(text)
            return []
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"report-{report.month}.json"
        path.write_text(text, encoding="utf-8")
        return [path]
    if fmt == "csv":
        from meter.render_csv import render_charges, render_pools  # noqa: PLC0415 - lazy: pandas

        if out is None:
            sys.stdout.write(render_charges(report))
            return []
        out.mkdir(parents=True, exist_ok=True)
        charges = out / f"charges-{report.month}.csv"
        pools = out / f"pools-{report.month}.csv"
        charges.write_text(render_charges(report), encoding="utf-8")
        pools.write_text(render_pools(report), encoding="utf-8")
        return [charges, pools]
    from meter.render_html import write_html  # noqa: PLC0415 - lazy: matplotlib is slow to import

    if out is None:
        raise UsageError("--format html writes one file per account: give --out DIR")
    return write_html(report, out)


async def _report(args: argparse.Namespace) -> int:
    if args.format == "html" and not args.out:
        raise UsageError("--format html writes one file per account: give --out DIR")
    contracts, text = _read_contracts(args.contracts)
    store = await _open(args.db)
    async with store:
        report = await make_report(store, contracts, text, args.period,
                                   accounts=[args.account] if args.account else None,
                                   finalize=bool(args.finalize), charts=args.format == "html")
    paths = write_outputs(report, args.format, Path(args.out) if args.out else None)
    for path in paths:
        print(path)
    for account in report.finalized_now:
        print(f"finalized {account} {report.month}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """`meter report`."""
    return asyncio.run(_report(args))


async def _verify(args: argparse.Namespace, doc: Any) -> int:
    if not isinstance(doc, dict) or not isinstance(doc.get("accounts"), list):
        raise UsageError(f"{args.report}: not a report: no `accounts` list")
    if doc.get("rating_version") != RATING_VERSION:
        print(f"mismatch: report made by rating version {doc.get('rating_version')!r}, "
              f"this is {RATING_VERSION!r}")
        return 1
    contracts, text = _read_contracts(args.contracts)
    store = await _open(args.db)
    async with store:
        results = await verify(store, contracts, text, doc)
    ok = all(match for _, match, _, _ in results) and bool(results)
    for account, match, reported, recomputed in results:
        if match:
            print(f"{account}: match {reported}")
        else:
            print(f"{account}: MISMATCH report {reported}, recomputed {recomputed}")
    print("match" if ok else "mismatch")
    return 0 if ok else 1


def run_verify(args: argparse.Namespace) -> int:
    """`meter verify`: exit 0 when every account's input hash matches, 1 otherwise."""
    try:
        doc = json.loads(Path(args.report).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{args.report}: not a report: {exc}") from None
    return asyncio.run(_verify(args, doc))
