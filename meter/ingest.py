"""`meter ingest`: JSONL event files into the store, with the same validation and dedupe as serve.

Each line goes through `meter.events.parse`; accepted events and rejected lines are written in
large batches, one transaction each. A bad line is stored as rejected and never aborts a file.
A batch that finds the database locked (`meter serve` writing it) is retried whole with capped
backoff for up to `BUSY_WAIT_SECONDS`, then the ingest stops with one line; a failed batch is
rolled back whole, so a run again stores the rest and skips what was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from meter.config import is_postgres
from meter.errors import StoreError, UsageError
from meter.events import REASONS, Event, Limits, Rejection, parse, to_us
from meter.instants import parse_instant
from meter.progress import byte_size
from meter.store import BatchResult, RejectedMessage, Store, open_store
from rating.contracts import Contracts, parse_contracts
from rating.durations import parse_duration

__all__ = ["BATCH_LINES", "BUSY_WAIT_SECONDS", "Summary", "ingest", "load_contracts", "parse_as_of",
           "run"]

#: Lines per transaction: large enough that commits (one fsync each) cost nothing per line.
BATCH_LINES: Final = 5_000
#: The longest one batch keeps retrying a locked database before the ingest gives up. A daemon
#: holds the write lock for one batch at a time (milliseconds), so this only runs out when
#: something else holds it for good (a stuck backup, a `sqlite3` shell left in a transaction).
BUSY_WAIT_SECONDS: Final = 60.0
#: Backoff between retries of a locked batch: doubling from the first, capped, with jitter.
_RETRY_FIRST, _RETRY_MAX = 0.02, 1.0
_RNG: Final = random.Random()  # noqa: S311 - retry jitter, not cryptography


@dataclass(frozen=True, slots=True)
class Summary:
    """What an ingest did. `lines` counts every line read: accepted + duplicates + rejected + blank."""

    files: int
    lines: int
    blank: int
    accepted: int
    duplicates: int
    rejected: Mapping[str, int]  # every reason of `REASONS`, zero included

    @property
    def rejected_total(self) -> int:
        """All rejected lines, whatever the reason."""
        return sum(self.rejected.values())

    def render(self) -> str:
        """The summary as printed by `meter ingest`: one `name value` pair per line."""
        rows = [
            ("files", self.files),
            ("lines", self.lines),
            ("blank", self.blank),
            ("accepted", self.accepted),
            ("duplicates", self.duplicates),
            ("rejected", self.rejected_total),
        ]
        rows += [(f"  {reason}", self.rejected[reason]) for reason in REASONS]
        return "\n".join(f"{name:<18}{value:>10}" for name, value in rows) + "\n"


def load_contracts(path: str | Path) -> Contracts:
    """Read and parse a contracts file; an unreadable file is a `UsageError` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read contracts: {_why(exc)}") from None
    return parse_contracts(text, source=str(path))


def parse_as_of(text: str | None) -> datetime:
    """The `--as-of` receive time (aware, UTC), or now when absent."""
    return parse_instant(text, "--as-of")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _location(name: str, lineno: int) -> str:
    # Stored in the rejected row's `topic`, so an operator finds the line; with the topic the
    # store also recognises the same line ingested again and keeps it once.
    return f"stdin:{lineno}" if name == "-" else f"file:{name}:{lineno}"


async def ingest(
    sources: Iterable[tuple[str, Iterable[bytes]]],
    store: Store,
    contracts: Contracts,
    *,
    received_at: datetime,
    limits: Limits | None = None,
    batch_lines: int = BATCH_LINES,
    progress: Callable[[int], object] | None = None,
    busy_wait: float = BUSY_WAIT_SECONDS,
) -> Summary:
    """Validate and store every line of `sources` (name, lines); return the counts.

    `received_at` is the receive time recorded for every line and used for the `future` check.
    `progress` is called with the number of lines done after each committed batch. A batch that
    finds the database locked is retried for up to `busy_wait` seconds, then `StoreError`
    (not retriable) says so; every batch before it is committed, nothing of it is.
    """
    limits = limits or Limits()
    received_us = to_us(received_at)
    rejected_by: dict[str, int] = dict.fromkeys(REASONS, 0)
    files = lines = blank = accepted = duplicates = 0
    events: list[Event] = []
    rejected: list[RejectedMessage] = []
    # Bound once: this loop runs per line, and attribute lookups add up at 100k lines/s.
    add_event, add_rejected = events.append, rejected.append

    # One batch commits in the store's thread while the next is parsed here (SQLite releases the
    # GIL), so a file takes about max(parse, insert) rather than their sum. Batches still commit
    # one at a time, in file order.
    committing: asyncio.Future[BatchResult] | None = None

    async def settle() -> None:
        nonlocal accepted, duplicates, committing
        if committing is None:
            return
        result = await committing
        committing = None
        accepted += result.new
        duplicates += result.duplicates
        if progress is not None:
            progress(result.new + result.duplicates + result.rejected)

    async def flush() -> None:
        nonlocal committing
        await settle()
        committing = asyncio.ensure_future(_add_retrying(
            store, events.copy(), rejected.copy(), received_us=received_us, busy_wait=busy_wait))
        events.clear()
        rejected.clear()

    try:
        for name, stream in sources:
            files += 1
            lineno = 0
            for line in stream:
                lineno += 1
                payload = line.rstrip(b"\r\n")
                if not payload.strip():
                    blank += 1
                    continue
                outcome = parse(payload, contracts=contracts, received_at=received_at, limits=limits)
                if type(outcome) is Rejection:
                    rejected_by[outcome.reason] += 1
                    add_rejected(RejectedMessage(received_us, _location(name, lineno), outcome.account,
                                                 outcome.reason, outcome.detail, payload))
                else:
                    add_event(outcome)  # type: ignore[arg-type]  # parse returns Event or Rejection
                if len(events) + len(rejected) >= batch_lines:
                    await flush()
                elif committing is not None and not lineno % 256:
                    await asyncio.sleep(0)  # let the commit move on to its next statement
            lines += lineno
        if events or rejected:
            await flush()
    finally:
        # A read error mid-file leaves every batch before it committed, as without the overlap.
        await settle()
    return Summary(files=files, lines=lines, blank=blank, accepted=accepted,
                   duplicates=duplicates, rejected=rejected_by)


async def _add_retrying(store: Store, events: list[Event], rejected: list[RejectedMessage], *,
                        received_us: int, busy_wait: float) -> BatchResult:
    """`store.add` of one batch, retried while the database is locked (SQLITE_BUSY: another
    writer, usually `meter serve`, holds it), for up to `busy_wait` seconds in all."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await store.add(events, rejected, received_us=received_us, which=False,
                                   one_statement=False)
        except (StoreError, sqlite3.OperationalError) as exc:
            retriable = exc.retriable if isinstance(exc, StoreError) else True
            delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** min(attempt, 30)) * _RNG.uniform(0.5, 1)
            waited = time.monotonic() - started
            if not retriable:
                raise
            if waited + delay > busy_wait:
                raise StoreError(
                    f"{store.location}: still locked after {waited:.0f}s of {attempt + 1} tries "
                    f"({exc}); the batches before this one are stored, none of it: run the same "
                    "ingest again to store the rest (what is stored is skipped)",
                    retriable=False) from None
            attempt += 1
            await asyncio.sleep(delay)


def _open_sources(stack: ExitStack, names: Sequence[str]) -> list[tuple[str, IO[bytes]]]:
    # Every file is opened before anything is written: a typo in the last name must not leave
    # the first files half-ingested behind an error.
    sources: list[tuple[str, IO[bytes]]] = []
    for name in names:
        if name == "-":
            sources.append((name, sys.stdin.buffer))
            continue
        try:
            stream = stack.enter_context(Path(name).open("rb"))  # noqa: SIM115 - closed by the stack
            sources.append((name, stream))
        except OSError as exc:
            raise UsageError(f"{name}: cannot read: {_why(exc)}") from None
    return sources


def _reading(sources: Sequence[tuple[str, IO[bytes]]]) -> Iterable[tuple[str, Iterable[bytes]]]:
    # A read error mid-file names the file, like an open error.
    for name, stream in sources:
        yield name, _lines(name, stream)


def _lines(name: str, stream: IO[bytes]) -> Iterable[bytes]:
    try:
        yield from stream
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {_why(exc)}") from None


def _progress_bar(stack: ExitStack, sources: Sequence[tuple[str, IO[bytes]]]
                  ) -> Callable[[int], object] | None:
    """A tqdm bar on stderr when it is a terminal; nothing when piped (only the summary).

    Files give a total, so the bar shows bytes read of all of them and an ETA; from a pipe it
    counts lines."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # noqa: PLC0415 - only a terminal pays for importing tqdm

    sizes = [byte_size(stream) for _, stream in sources]
    if any(size is None for size in sizes):
        lines: Any = stack.enter_context(tqdm(unit=" lines", unit_scale=True, file=sys.stderr,
                                              desc="ingest", mininterval=0.5))
        return lines.update  # type: ignore[no-any-return]
    bar: Any = stack.enter_context(tqdm(total=sum(s or 0 for s in sizes), unit="B",
                                        unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                        desc="ingest", mininterval=0.5))
    streams = [stream for _, stream in sources]

    def update(_lines: int) -> None:
        # Files are read in order; a binary file's tell() is where its reader is.
        bar.update(sum(stream.tell() for stream in streams) - bar.n)

    return update


async def _main(args: argparse.Namespace, contracts: Contracts, received_at: datetime,
                limits: Limits) -> Summary:
    with ExitStack() as stack:
        sources = _open_sources(stack, args.files)
        progress = _progress_bar(stack, sources)
        async with await open_store(args.db) as store:
            return await ingest(_reading(sources), store, contracts, received_at=received_at,
                                limits=limits, progress=progress)


def run(args: argparse.Namespace) -> int:
    """`meter ingest FILE... --db PATH --contracts FILE [--as-of TS] [--max-future DURATION]`."""
    started = time.monotonic()
    contracts = load_contracts(args.contracts)
    received_at = parse_as_of(args.as_of)
    try:
        skew = parse_duration(args.max_future)
    except ValueError as exc:
        # Word for word what `meter serve --max-future` says (a ConfigError there).
        raise UsageError(f"--max-future: {exc}") from None
    db_dir = None if is_postgres(args.db) else Path(args.db).parent
    if db_dir is not None and not db_dir.is_dir():
        raise UsageError(f"--db {args.db}: directory {str(db_dir)!r} does not exist")
    limits = Limits(future_skew=skew)
    summary = asyncio.run(_main(args, contracts, received_at, limits))
    sys.stdout.write(summary.render())
    if sys.stderr.isatty():
        elapsed = max(time.monotonic() - started, 1e-9)
        print(f"ingest: {summary.lines / elapsed:,.0f} lines/s in {elapsed:.1f} s", file=sys.stderr)
    return 0
