"""`meter migrate --from STORE --to STORE`: copy a whole store into an empty one (SQLite to
PostgreSQL, or back), then prove the copy.

What is copied: accepted events with their `seq` and raw payload, rejected messages, finalized
reports (and the tracker checkpoint). The target must be empty: a merge of two logs cannot keep
both arrival orders, and a finalized report's cutoff is a `seq`, so a half-merged database would
bill silently wrong. Neither store may have a `meter serve` on it meanwhile (both daemon locks
are held while copying). The proof: equal counts and last `seq`, and every finalized report's
input hash recomputed on the target (as `meter verify` does) equal to the one it was stored with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meter.config import is_postgres, redact
from meter.errors import UsageError
from meter.report.build import verify
from meter.serve import hold
from meter.store import Store, open_store
from rating.contracts import Contracts, parse_contracts

__all__ = ["PAGE", "Copied", "migrate", "run"]

#: Rows read and written per round trip (one transaction each on the target).
PAGE: Final = 5_000


@dataclass(frozen=True, slots=True)
class Copied:
    """What a migration copied and what its verification found."""

    events: int
    rejected: int
    finalized: int
    last_seq: int
    #: One line per failed check (empty: the copy is proven).
    problems: tuple[str, ...]


async def _empty(store: Store) -> str | None:
    """Why `store` is not empty (None when it is)."""
    counts = await store.counts()
    finalized = len(await store.finalized_reports())
    held = [f"{n} {what}" for what, n in (("events", counts["events"]),
                                          ("rejected messages", counts["rejected"]),
                                          ("finalized reports", finalized)) if n]
    if await store.load_checkpoint() is not None:
        held.append("a checkpoint")
    return ", ".join(held) or None


async def _hash_problems(source: Store, target: Store, contracts: Contracts,
                         contracts_text: str) -> list[str]:
    """Each finalized report whose input hash, recomputed on the target, is not the stored one;
    where the source does not match either, the contracts are not those it was finalized with."""
    problems = []
    for row in await target.finalized_reports():
        doc: dict[str, Any] = {"accounts": [json.loads(row.report)]}
        ((account, match, stored, recomputed),) = await verify(target, contracts, contracts_text,
                                                               doc)
        if match:
            continue
        ((_, source_match, _, _),) = await verify(source, contracts, contracts_text, doc)
        why = ("the source matches: the copy differs" if source_match else
               "the source does not match either: --contracts is not the file it was "
               "finalized with")
        problems.append(f"finalized report {account} {doc['accounts'][0]['period']['start']}: "
                        f"input hash {stored}, recomputed on the target {recomputed} ({why})")
    return problems


async def migrate(source: Store, target: Store, contracts: Contracts, contracts_text: str, *,
                  progress: Callable[[int], object] | None = None, page: int = PAGE) -> Copied:
    """Copy `source` into the empty `target`, then verify; `progress` gets rows done per page."""
    why = await _empty(target)
    if why is not None:
        raise UsageError(f"{redact(target.location)}: not empty ({why}); migrate copies into an "
                         "empty store only (a merge would renumber arrivals): drop and create "
                         "the database, or name a new file")
    events = rejected = 0
    async for rows in source.export_events(page=page):
        await target.import_events(rows)
        events += len(rows)
        if progress is not None:
            progress(len(rows))
    async for stored in source.export_rejected(page=page):
        await target.import_rejected(stored)
        rejected += len(stored)
        if progress is not None:
            progress(len(stored))
    finalized = 0
    for report in await source.finalized_reports():
        finalized += await target.add_finalized(report)
    checkpoint = await source.load_checkpoint()
    if checkpoint is not None:
        await target.save_checkpoint(*checkpoint)
    problems: list[str] = []
    want, got = await source.counts(), await target.counts()
    for what in ("events", "rejected"):
        if want[what] != got[what]:
            problems.append(f"{what}: the source holds {want[what]}, the target {got[what]}")
    want_seq, got_seq = await source.last_seq(), await target.last_seq()
    if want_seq != got_seq:
        problems.append(f"last seq: the source's is {want_seq}, the target's {got_seq}")
    held = len(await source.finalized_reports())
    if finalized != held:
        problems.append(f"finalized reports: the source holds {held}, {finalized} copied")
    problems += await _hash_problems(source, target, contracts, contracts_text)
    return Copied(events=events, rejected=rejected, finalized=finalized, last_seq=got_seq,
                  problems=tuple(problems))


def _same(a: Path | str, b: Path | str) -> bool:
    """Whether two `--db` values name one store (paths compared resolved; URLs as written)."""
    if is_postgres(a) or is_postgres(b):
        return str(a) == str(b)
    return Path(a).resolve() == Path(b).resolve()


def _check_source(db: Path | str) -> None:
    if not is_postgres(db) and not Path(db).is_file():
        raise UsageError(f"--from {db}: no such database")


def _check_target(db: Path | str) -> None:
    if is_postgres(db):
        return
    path = Path(db)
    if not path.parent.is_dir():
        raise UsageError(f"--to {db}: directory {str(path.parent)!r} does not exist")


@contextlib.asynccontextmanager
async def _bar(total: int) -> AsyncIterator[Callable[[int], object] | None]:
    """A tqdm bar on stderr when it is a terminal, as `meter ingest` shows one."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # noqa: PLC0415 - only a terminal pays for importing tqdm

    with tqdm(total=total, unit=" rows", unit_scale=True, file=sys.stderr, desc="migrate",
              mininterval=0.5) as bar:
        yield bar.update


async def _main(args: argparse.Namespace, contracts: Contracts, text: str) -> int:
    async with AsyncExitStack() as stack:
        # No daemon on either side while copying: one on the source would add rows the copy
        # misses, one on the target would add rows of its own.
        await stack.enter_async_context(hold(args.source))
        await stack.enter_async_context(hold(args.target))
        source = await stack.enter_async_context(await open_store(args.source))
        target = await stack.enter_async_context(await open_store(args.target))
        counts = await source.counts()
        bar = await stack.enter_async_context(_bar(counts["events"] + counts["rejected"]))
        copied = await migrate(source, target, contracts, text, progress=bar)
    print(f"copied {copied.events} events (last seq {copied.last_seq}), {copied.rejected} "
          f"rejected messages, {copied.finalized} finalized reports from {redact(args.source)} "
          f"to {redact(args.target)}")
    for problem in copied.problems:
        print(f"MISMATCH {problem}")
    print("verified: counts, last seq and every finalized report's input hash match"
          if not copied.problems else "verification failed: see MISMATCH lines")
    return 0 if not copied.problems else 1


def run(args: argparse.Namespace) -> int:
    """`meter migrate --from STORE --to STORE --contracts FILE`: exit 0 when the copy is
    verified, 2 for bad usage or a target that is not empty, 1 when verification fails."""
    if _same(args.source, args.target):
        raise UsageError("--from and --to name the same store")
    _check_source(args.source)
    _check_target(args.target)
    try:
        text = Path(args.contracts).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{args.contracts}: cannot read contracts: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    contracts = parse_contracts(text, source=str(args.contracts))
    return asyncio.run(_main(args, contracts, text))
