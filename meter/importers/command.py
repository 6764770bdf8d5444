"""`meter import flexlm|asterisk`: read the logs, then write the events as JSONL or ingest them.

Every file is opened before anything is read, and a bad line stops the import before anything
is written (one stderr line naming file, line and field; exit 2). With `--db` the events go
through `meter.ingest.ingest`, the same validation and dedupe as `meter ingest`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meter.errors import UsageError
from meter.importers.asterisk import AsteriskImport
from meter.importers.common import Imported, Quiet, longest_quiet, render_duration, rfc3339
from meter.importers.flexlm import FlexlmImport
from meter.ingest import ingest, load_contracts, parse_as_of
from meter.progress import byte_size
from meter.store import open_store
from rating.contracts import Contracts

__all__ = ["load_pool_map", "run", "timeout_note"]

_PROGRESS_EVERY: Final = 2_000  # lines between progress bar moves


def load_pool_map(path: str) -> dict[str, str]:
    """`--pool-map FILE`: a TOML file of `"FEATURE" = "pool"` pairs."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--pool-map {path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--pool-map {path}: not TOML: {exc}") from None
    for feature, pool in doc.items():
        if not isinstance(pool, str) or not pool:
            raise UsageError(f"--pool-map {path}: feature {feature!r}: the pool must be a "
                             f"non-empty string, got {pool!r}")
    return dict(doc)


def timeout_note(source: str, account: str, quiet: Quiet, timeout: timedelta | None) -> list[str]:
    """What the import says about `session_timeout`: sessions of these logs go `quiet.longest`
    without an event, and a timeout at most that long closes them at their last event."""
    why = ("FlexLM logs have no heartbeats: a checkout is one login and one logout"
           if source == "flexlm" else
           "queue_log has activity lines only while an agent takes calls or pauses")
    lines = [f"note: {why}; a session quiet for longer than the account's session_timeout is "
             "closed at its last event and the rest of it vanishes from the bill."]
    if quiet.longest > timedelta(0):
        days = max(1, math.ceil(quiet.longest / timedelta(days=1)) + 1)
        since = rfc3339(quiet.since) if quiet.since else "?"
        lines.append(
            f"note: longest quiet stretch here: {render_duration(quiet.longest)} (session "
            f"{quiet.session} in pool {quiet.pool or '(none given)'} from {since}); "
            f"give account {account} a longer one, e.g. session_timeout = \"{days}d\".")
    if quiet.open_at_end:
        lines.append(f"note: {quiet.open_at_end} sessions are still open at the end of the logs: "
                     "once session_timeout has passed since their last event, the meter ends "
                     "them there.")
    if timeout is not None:
        verdict = ("is longer: nothing here is closed early" if timeout > quiet.longest else
                   f"is NOT longer than {render_duration(quiet.longest)}: those sessions will "
                   "be closed early")
        lines.append(f"note: account {account}'s session_timeout {render_duration(timeout)} "
                     f"{verdict}.")
    return lines


def _open(stack: ExitStack, names: Sequence[str]) -> list[tuple[str, IO[bytes]]]:
    sources: list[tuple[str, IO[bytes]]] = []
    for name in names:
        if name == "-":
            sources.append((name, sys.stdin.buffer))
            continue
        try:
            sources.append((name, stack.enter_context(Path(name).open("rb"))))  # noqa: SIM115 - closed by the stack
        except OSError as exc:
            raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return sources


def _progress(stack: ExitStack, sources: Sequence[tuple[str, IO[bytes]]]
              ) -> Callable[[], None] | None:
    """A tqdm bar on a terminal: bytes read of all the files (with an ETA), or lines from a
    pipe; None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # noqa: PLC0415 - only a terminal pays for importing tqdm

    sizes = [byte_size(stream) for _, stream in sources]
    streams = [stream for _, stream in sources]
    if any(size is None for size in sizes):
        lines: Any = stack.enter_context(tqdm(unit=" lines", unit_scale=True, file=sys.stderr,
                                              desc="import", mininterval=0.5))
        return lambda: lines.update(_PROGRESS_EVERY)
    bar: Any = stack.enter_context(tqdm(total=sum(s or 0 for s in sizes), unit="B",
                                        unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                        desc="import", mininterval=0.5))

    def update() -> None:
        # Files are read in order; a binary file's tell() is where its reader is.
        bar.update(sum(stream.tell() for stream in streams) - bar.n)

    return update


def _lines(name: str, stream: IO[bytes], tick: Callable[[], None] | None) -> Iterator[bytes]:
    try:
        for n, line in enumerate(stream, 1):
            if tick is not None and not n % _PROGRESS_EVERY:
                tick()
            yield line
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if tick is not None:
        tick()


def _importer(args: argparse.Namespace) -> FlexlmImport | AsteriskImport:
    if args.source == "flexlm":
        try:
            tz = ZoneInfo(args.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"--timezone: unknown time zone {args.timezone!r} "
                             "(an IANA name such as Europe/Madrid)") from None
        pool_map = load_pool_map(args.pool_map) if args.pool_map else None
        return FlexlmImport(args.account, tz, pool_map)
    return AsteriskImport(args.account, args.pool)


def _write(events: Sequence[Imported], out: str) -> None:
    if out == "-":
        for event in events:
            sys.stdout.buffer.write(event.to_json() + b"\n")
        sys.stdout.buffer.flush()
        return
    try:
        with Path(out).open("wb") as f:
            for event in events:
                f.write(event.to_json() + b"\n")
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write: {exc.strerror or exc}") from None


async def _ingest(args: argparse.Namespace, events: Sequence[Imported], contracts: Contracts,
                  received_at: datetime) -> str:
    lines: Iterable[bytes] = (event.to_json() for event in events)
    async with await open_store(args.db) as store:
        summary = await ingest([(f"{args.source} import", lines)], store, contracts,
                               received_at=received_at)
    return summary.render()


def _rows(rows: Iterable[tuple[str, int]]) -> str:
    return "".join(f"{name:<18}{value:>10}\n" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    """`meter import flexlm|asterisk LOG... --account A (--out FILE | --db PATH --contracts F)`."""
    if (args.out is None) == (args.db is None):
        raise UsageError("give --out FILE (- for stdout) or --db PATH with --contracts, "
                         "not both or neither")
    if args.db is not None and args.contracts is None:
        raise UsageError("--db needs --contracts FILE (the events are validated against it)")
    contracts = load_contracts(args.contracts) if args.contracts else None
    account = contracts.get(args.account) if contracts is not None else None
    if contracts is not None and account is None:
        raise UsageError(f"--account {args.account}: no such account in {args.contracts}")
    received_at = parse_as_of(args.as_of)
    importer = _importer(args)
    with ExitStack() as stack:
        sources = _open(stack, args.logs)
        tick = _progress(stack, sources)
        for name, stream in sources:
            importer.feed(name, _lines(name, stream, tick))
    events, counts = importer.finish()
    # Stable: events of one instant keep their log order.
    events.sort(key=lambda e: e.ts)
    report = _rows([*counts.rows(), ("events", len(events)),
                    ("  login", sum(e.type == "login" for e in events)),
                    ("  logout", sum(e.type == "logout" for e in events)),
                    ("  heartbeat", sum(e.type == "heartbeat" for e in events))])
    if args.db is not None:
        assert contracts is not None
        report += asyncio.run(_ingest(args, events, contracts, received_at))
    else:
        _write(events, args.out)
    timeout = account.session_timeout if account is not None else None
    notes = timeout_note(args.source, args.account, longest_quiet(events), timeout)
    summary = sys.stderr if args.out == "-" else sys.stdout
    summary.write(report + "".join(f"{line}\n" for line in notes))
    return 0
