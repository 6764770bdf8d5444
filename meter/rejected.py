"""`meter rejected list|show|reprocess`: the operator's view of the rejected table, and the way
back into the log for messages that are valid now (an account restored in the contracts).

Reprocessing runs the daemon's own `meter.events.parse` on each stored payload, as of its
receive time, with the topic's account for broker rows (file rows, `file:PATH:LINE` and
`stdin:LINE`, have none, as `meter ingest` parses them); the store moves the valid ones into
the log and out of `rejected` in one transaction, so a second run moves nothing.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from meter.config import redact, setting
from meter.errors import MeterError, UsageError
from meter.events import Event, Limits, parse
from meter.ingest import load_contracts
from meter.instants import parse_instant
from meter.source import topic_account
from meter.store import open_store
from meter.store.base import StoredRejected

__all__ = ["run"]


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _escaped(data: bytes) -> str:
    """Bytes as one printable line: ASCII kept, everything else (newlines, non-UTF-8,
    control characters) as Python escapes."""
    return repr(data)[2:-1]


def _line(r: StoredRejected) -> str:
    kept = f"{r.size} bytes" + (f", first {len(r.raw)} kept" if r.truncated else "")
    detail = r.detail.replace("\n", "\\n")
    return f"{r.seq}\t{_when(r.received_us)}\t{r.topic or '-'}\t{r.reason}\t{detail}\t{kept}"


def _setting(args: argparse.Namespace, name: str) -> Any:
    s = setting(name)
    text = getattr(args, name, None) or s.default
    try:
        return s.parse(text)
    except ValueError as exc:
        raise UsageError(f"{s.flag_name}: {exc}") from None


async def _run(args: argparse.Namespace) -> int:
    since_us = (int(parse_instant(args.since, "--since").timestamp() * 1e6)
                if args.since is not None else None)
    if args.action == "show" and args.id is None:
        raise UsageError("show needs the ID of a rejected message (the first column of list)")
    if args.action == "reprocess" and args.contracts is None:
        raise UsageError("reprocess needs --contracts (the contracts to validate against)")
    contracts = load_contracts(args.contracts) if args.action == "reprocess" else None
    store = await open_store(args.db)
    try:
        rows = await store.rejected(account=args.account, reason=args.reason,
                                    since_us=since_us,
                                    seq=args.id if args.action == "show" else None)
        if args.action == "list":
            for r in rows:
                print(_line(r))
            return 0
        if args.action == "show":
            if not rows:
                raise MeterError(f"no rejected message {args.id} in {redact(args.db)}")
            r = rows[0]
            print(_line(r))
            print(f"account: {r.account or '-'}")
            print(f"sha256: {r.sha256 or '-'}")
            state = (f"truncated to its first {len(r.raw)} of {r.size} bytes (cannot be "
                     "reprocessed)" if r.truncated else "whole")
            print(f"payload ({state}): {_escaped(r.raw)}")
            return 0
        assert contracts is not None
        prefix = str(_setting(args, "topic_prefix"))
        max_bytes = _setting(args, "max_bytes")
        future = _setting(args, "max_future")
        limits = Limits(max_bytes=max_bytes, future_skew=timedelta(seconds=future))
        seqs: list[int] = []
        events: list[Event] = []
        stays: Counter[str] = Counter()
        for r in rows:
            if r.truncated:
                stays["truncated (cannot be recovered)"] += 1
                continue
            from_file = r.topic is not None and r.topic.startswith(("file:", "stdin:"))
            account = None if from_file or r.topic is None else topic_account(r.topic, prefix)
            if not from_file and account is None:
                stays[r.reason] += 1  # a topic naming no account stays a tenant mismatch
                continue
            outcome = parse(r.raw, contracts=contracts,
                            received_at=datetime.fromtimestamp(r.received_us / 1e6, UTC),
                            topic_account=account, limits=limits)
            if isinstance(outcome, Event):
                seqs.append(r.seq)
                events.append(outcome)
            else:
                stays[outcome.reason] += 1
        moved, duplicates = await store.reprocess_rejected(seqs, events)
        by_account = Counter(e.account for e in events)
        print(f"moved {moved} rejected messages into the log"
              + (f" ({duplicates} were there already)" if duplicates else "")
              + "".join(f"; {a}: {n}" for a, n in sorted(by_account.items())))
        print(f"{sum(stays.values())} stay rejected"
              + "".join(f"; {why}: {n}" for why, n in sorted(stays.items())))
        return 0
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    """`meter rejected ACTION`; exit 0, 2 for bad usage, 1 for a missing row or store failure."""
    return asyncio.run(_run(args))
