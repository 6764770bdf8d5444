"""`meter report` and `meter verify`: parse, open the store, build, write the formats asked for."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from meter.config import is_postgres, share_password
from meter.errors import UsageError
from meter.instants import parse_instant
from meter.printer import Printers
from meter.report.build import chosen_period, make_report, parse_month, verify
from meter.report.document import Report
from meter.report.late import period_label
from meter.report.render_json import render_json
from meter.store import Store, open_store
from rating.bill import RATING_VERSION
from rating.contracts import Contracts, parse_contracts
from rating.durations import parse_duration
from rating.usage import to_us

__all__ = ["FORMATS", "Format", "parse_formats", "parse_on", "run", "run_verify", "write_outputs"]


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
    share_password(path)  # the rating workers open the store's location, which has none
    return await open_store(path, mmap=True)


def _write_json(report: Report, out: Path | None) -> list[Path]:
    text = render_json(report)
    if out is None:
        sys.stdout.write(text)
        return []
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"report-{report.month}.json"
    path.write_text(text, encoding="utf-8")
    return [path]


def _write_csv(report: Report, out: Path | None) -> list[Path]:
    from meter.report.render_csv import CSV_FILES, render_charges  # noqa: PLC0415 - lazy: pandas

    if out is None:
        sys.stdout.write(render_charges(report))
        return []
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, render in CSV_FILES.items():
        path = out / f"{name}-{report.month}.csv"
        path.write_text(render(report), encoding="utf-8")
        paths.append(path)
    return paths


def _lazy(module: str, function: str) -> Callable[..., list[Path]]:
    """A writer `module.function(report, out_dir, **options)` imported on first use (the HTML
    and PDF renderers import heavy libraries that JSON and CSV runs should not pay for)."""

    def write(report: Report, out: Path | None, **options: Any) -> list[Path]:
        assert out is not None  # the format `needs_out`: checked before rating
        writer = getattr(importlib.import_module(module), function)
        paths: list[Path] = writer(report, out, **options)
        return paths

    return write


@dataclass(frozen=True, slots=True)
class Format:
    """An output format: its writer (the report, the --out directory or None for stdout ->
    the files written), whether it draws charts, whether it needs --out, and whether it prints
    with `meter.printer.Printers` (passed to the writer as `printers=`)."""

    write: Callable[..., list[Path]]
    charts: bool = False
    needs_out: bool = False
    printed: bool = False


#: The formats `--format` takes, in the order a comma list is written.
FORMATS: dict[str, Format] = {
    "json": Format(_write_json),
    "csv": Format(_write_csv),
    "html": Format(_lazy("meter.report.render_html", "write_html"), charts=True, needs_out=True),
    "pdf": Format(_lazy("meter.report.render_pdf", "write_pdf"), charts=True, needs_out=True,
                  printed=True),
}


def parse_formats(text: str) -> list[str]:
    """`--format json,csv,html` as format names (each once, in the order given)."""
    names = [part.strip() for part in (text or "").split(",")]
    for name in names:
        if name not in FORMATS:
            raise UsageError(f"--format: unknown format {name!r} (one or more of "
                             f"{', '.join(FORMATS)}, comma-separated)")
    return list(dict.fromkeys(names))


def write_outputs(report: Report, fmt: str, out: Path | None,
                  printers: Printers | None = None) -> list[Path]:
    """Render `report` as `fmt` into `out` (or JSON/CSV to stdout when `out` is None); a
    printed format (PDF) prints with `printers`, or starts its own."""
    spec = FORMATS.get(fmt)
    if spec is None:
        raise UsageError(f"--format: unknown format {fmt!r}")
    if spec.needs_out and out is None:
        raise UsageError(f"--format {fmt} writes one file per account: give --out DIR")
    if spec.printed:
        return spec.write(report, out, printers=printers)
    return spec.write(report, out)


def parse_on(text: str) -> date:
    """`--on YYYY-MM-DD` as a date; a `UsageError` otherwise."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--on: expected a date YYYY-MM-DD, got {text!r}") from None


def _refuse_early(contracts: Contracts, month: str | None, on: date | None,
                  account: str | None, after_text: str, *, now: datetime) -> None:
    """A `UsageError` when a chosen account's period has not ended plus `after_text`."""
    try:
        after = parse_duration(after_text)
    except ValueError as exc:
        raise UsageError(f"--finalize-after: {exc}") from None
    for acc in contracts.accounts:
        if account and acc.id != account:
            continue
        period = chosen_period(acc, month, on)
        end = period.end
        if now < end + after:
            label = period.start.astimezone(acc.tz).strftime("%Y-%m")
            raise UsageError(
                f"--finalize: {acc.id} {label} ends {end.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}; "
                f"finalizing it before {(end + after).astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} "
                f"(its end plus --finalize-after {after_text}) needs --force")


async def _without_events(store: Store, contracts: Contracts, month: str | None,
                          on: date | None, account: str | None) -> list[str]:
    """The chosen accounts with no event stored in their chosen period: a database that is
    the wrong one, or a feed that never arrived, would otherwise pass for a quiet month."""
    out = []
    for acc in contracts.accounts:
        if account and acc.id != account:
            continue
        period = chosen_period(acc, month, on)
        if not await store.count_arrived(acc.id, to_us(period.start), to_us(period.end),
                                         after_seq=0, through_seq=2**63 - 1):
            out.append(acc.id)
    return out


def _progress(total: int) -> Any:
    """A progress bar on stderr when it is a terminal (quiet otherwise, so logs stay clean)."""
    from tqdm import tqdm  # noqa: PLC0415 - lazy: only `meter report` draws one

    return tqdm(total=total, unit="step", desc="meter report", leave=False,
                disable=not sys.stderr.isatty(), file=sys.stderr)


async def _finalize_jobs(args: argparse.Namespace, contracts: Contracts, month: str | None,
                         on: date | None, progress: Callable[[int], None]
                         ) -> tuple[set[str], list[tuple[str, str]]]:
    """`--finalize` on PostgreSQL: the chosen accounts' periods through the job table
    (`meter.cluster.jobs.finish`), shared with every other worker on the database and safe to
    kill. Returns the chosen accounts this run finalized, and the other jobs (account, period)
    it worked while there."""
    from meter.cluster.jobs import Job, finish  # noqa: PLC0415 - psycopg: PostgreSQL runs only

    jobs = []
    for acc in contracts.accounts:
        if args.account and acc.id != args.account:
            continue
        period = chosen_period(acc, month, on)
        jobs.append(Job(acc.id, to_us(period.start), to_us(period.end), period_label(acc, period)))
    worker = f"meter report pid {os.getpid()} on host {socket.gethostname()}"
    done = await finish(str(args.db), args.contracts, jobs, worker=worker, now=datetime.now(UTC),
                        progress=progress)
    chosen = {(j.account, j.label) for j in jobs}
    return {a for a, label in done if (a, label) in chosen}, [d for d in done if d not in chosen]


async def _report(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    for name in formats:
        if FORMATS[name].needs_out and not args.out:
            raise UsageError(f"--format {name} writes one file per account: give --out DIR")
    if not args.out and len(formats) > 1:
        raise UsageError("--format: several formats need --out DIR (stdout takes one)")
    month = args.period
    on = parse_on(args.on) if getattr(args, "on", None) else None
    if month is not None and on is None:
        parse_month(month)
    contracts, text = _read_contracts(args.contracts)
    as_of = None
    if args.as_of is not None:
        if args.finalize:
            raise UsageError("--as-of: a finalized bill is rated to the period's end plus the "
                             "session timeout, not as of a time; leave out one of the two")
        as_of = parse_instant(None if args.as_of == "now" else args.as_of, "--as-of")
    if args.finalize and not args.force:
        _refuse_early(contracts, month, on, args.account, args.finalize_after,
                      now=datetime.now(UTC))
    chosen = 1 if args.account else len(contracts.accounts)
    mine: set[str] = set()
    others: list[tuple[str, str]] = []
    # Started by the CLI before this module was imported, the printers import WeasyPrint on
    # other cores while this process rates (without them, the PDF writer starts its own).
    printers: Printers | None = getattr(args, "printers", None)
    with _progress(chosen + len(formats)) as bar:
        store = await _open(args.db)
        async with store:
            bar.set_description("rating")
            if args.finalize and is_postgres(args.db):
                mine, others = await _finalize_jobs(args, contracts, month, on, bar.update)
            report = await make_report(store, contracts, text, month, on=on,
                                       accounts=[args.account] if args.account else None,
                                       finalize=bool(args.finalize),
                                       charts=any(FORMATS[f].charts for f in formats),
                                       as_of=as_of, progress=bar.update)
            empty = await _without_events(store, contracts, month, on, args.account)
        if args.finalize and is_postgres(args.db):
            # Read back above (the jobs stored them); named as this run's where it stored them.
            report = replace(report, finalized_now=tuple(a.account for a in report.accounts
                                                         if a.account in mine))
        if printers is not None:  # a missing WeasyPrint is one line before any file is written
            from meter.report.render_pdf import ready  # noqa: PLC0415 - lazy: the HTML renderer

            ready(printers)
        paths: list[Path] = []
        for name in formats:  # rated once, written in every format asked for
            bar.set_description(f"writing {name}")
            paths += write_outputs(report, name, Path(args.out) if args.out else None, printers)
            bar.update(1)
    for path in paths:
        print(path)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"meter report: no events stored for {shown} in {report.month} (the bill may "
              "still be right: a named pool bills by quantity)", file=sys.stderr)
    for account in report.finalized_now:
        print(f"finalized {account} {report.month}", file=sys.stderr)
    for account, label in others:
        print(f"finalized {account} {label}", file=sys.stderr)
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
