"""`meter report` and `meter verify`: parse, open the store, build, write the formats asked for."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meter.config import is_postgres
from meter.errors import UsageError
from meter.instants import parse_instant
from meter.report.build import make_report, parse_month, verify
from meter.report.document import Report
from meter.report.render_json import render_json
from meter.store import Store, open_store
from rating.bill import RATING_VERSION
from rating.contracts import Contracts, parse_contracts
from rating.durations import parse_duration
from rating.periods import period_of_month
from rating.usage import to_us

__all__ = ["run", "run_verify", "write_outputs"]


def _read_contracts(path: str) -> tuple[Contracts, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read contracts: {exc.__class__.__name__}") from None
    return parse_contracts(text, source=path), text


def _check_db(path: str | Path) -> None:
    # A report never creates a store: a mistyped path must not pass for an empty month. (A
    # PostgreSQL URL names a server's database: the open says when it is not there.)
    if not is_postgres(path) and not Path(path).is_file():
        raise UsageError(f"{path}: no such database")


async def _open(path: str | Path) -> Store:
    _check_db(path)
    return await open_store(path, mmap=True)


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
        from meter.report.render_csv import render_charges, render_pools  # noqa: PLC0415 - lazy: pandas

        if out is None:
            sys.stdout.write(render_charges(report))
            return []
        out.mkdir(parents=True, exist_ok=True)
        charges = out / f"charges-{report.month}.csv"
        pools = out / f"pools-{report.month}.csv"
        charges.write_text(render_charges(report), encoding="utf-8")
        pools.write_text(render_pools(report), encoding="utf-8")
        return [charges, pools]
    from meter.report.render_html import write_html  # noqa: PLC0415 - lazy: matplotlib is slow to import

    if out is None:
        raise UsageError("--format html writes one file per account: give --out DIR")
    return write_html(report, out)


def _refuse_early(contracts: Contracts, month: str, account: str | None, after_text: str,
                  now: datetime) -> None:
    """A `UsageError` when a chosen account's period `month` has not ended plus `after_text`."""
    try:
        after = parse_duration(after_text)
    except ValueError as exc:
        raise UsageError(f"--finalize-after: {exc}") from None
    year, mon = parse_month(month)
    for acc in contracts.accounts:
        if account and acc.id != account:
            continue
        end = period_of_month(acc, year, mon).end
        if now < end + after:
            raise UsageError(
                f"--finalize: {acc.id} {month} ends {end.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}; "
                f"finalizing it before {(end + after).astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} "
                f"(its end plus --finalize-after {after_text}) needs --force")


async def _without_events(store: Store, contracts: Contracts, month: str,
                          account: str | None) -> list[str]:
    """The chosen accounts with no event stored in their period `month`: a database that is
    the wrong one, or a feed that never arrived, would otherwise pass for a quiet month."""
    year, mon = parse_month(month)
    out = []
    for acc in contracts.accounts:
        if account and acc.id != account:
            continue
        period = period_of_month(acc, year, mon)
        if not await store.count_arrived(acc.id, to_us(period.start), to_us(period.end),
                                         after_seq=0, through_seq=2**63 - 1):
            out.append(acc.id)
    return out


async def _report(args: argparse.Namespace) -> int:
    if args.format == "html" and not args.out:
        raise UsageError("--format html writes one file per account: give --out DIR")
    contracts, text = _read_contracts(args.contracts)
    as_of = None
    if args.as_of is not None:
        if args.finalize:
            raise UsageError("--as-of: a finalized bill is rated to the period's end plus the "
                             "session timeout, not as of a time; leave out one of the two")
        as_of = parse_instant(None if args.as_of == "now" else args.as_of, "--as-of")
    if args.finalize and not args.force:
        _refuse_early(contracts, args.period, args.account, args.finalize_after,
                      datetime.now(UTC))
    store = await _open(args.db)
    async with store:
        report = await make_report(store, contracts, text, args.period,
                                   accounts=[args.account] if args.account else None,
                                   finalize=bool(args.finalize), charts=args.format == "html",
                                   as_of=as_of)
        empty = await _without_events(store, contracts, args.period, args.account)
    paths = write_outputs(report, args.format, Path(args.out) if args.out else None)
    for path in paths:
        print(path)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"meter report: no events stored for {shown} in {report.month} (the bill may "
              "still be right: a named pool bills by quantity)", file=sys.stderr)
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
