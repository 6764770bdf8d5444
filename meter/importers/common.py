"""What every importer shares: the event it makes, its deterministic id, the bad-line error,
and the quiet-stretch figure that says how long a `session_timeout` the imported sessions need.

Pure: values in, values out. Reading files and writing or ingesting the events is
`meter.importers.command`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from meter.errors import UsageError

__all__ = ["BadLine", "Imported", "Quiet", "event_id", "longest_quiet", "render_duration"]

Kind = Literal["login", "logout", "heartbeat"]


class BadLine(UsageError):
    """A log line an importer cannot read: the message names file, line and field (exit 2)."""

    def __init__(self, name: str, lineno: int, field: str, why: str) -> None:
        super().__init__(f"{name}:{lineno}: field {field}: {why}")
        self.name, self.lineno, self.field = name, lineno, field


def event_id(source: str, *parts: str) -> str:
    """A deterministic event id: the same log line imported again gets the same id, so the
    store's (account, id) constraint keeps it once. `parts` must name the event completely."""
    digest = hashlib.sha256("\x1f".join((source, *parts)).encode()).hexdigest()
    return f"{source}-{digest[:32]}"


@dataclass(frozen=True, slots=True)
class Imported:
    """One event made from a log line; `ts` aware UTC; `origin` is `file:line`, kept in the
    payload (an unknown field, stored as is) so an operator can find the line again."""

    id: str
    type: Kind
    account: str
    user: str
    ts: datetime
    pool: str | None
    session: str | None
    origin: str

    def to_json(self) -> bytes:
        """The event as one JSON line (no newline), in the schema `meter ingest` reads."""
        doc: dict[str, str] = {"id": self.id, "type": self.type, "account": self.account,
                               "user": self.user, "ts": rfc3339(self.ts)}
        if self.pool is not None:
            doc["pool"] = self.pool
        if self.session is not None:
            doc["session"] = self.session
        doc["origin"] = self.origin
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def rfc3339(ts: datetime) -> str:
    """`ts` in UTC as RFC 3339 with a `Z` (whole seconds stay without a fraction)."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Quiet:
    """The longest stretch without an event inside one imported session (login or heartbeat to
    the next event of it). A `session_timeout` at most this long closes that session early:
    at its last event, so the rest of it is missing from the bill."""

    longest: timedelta
    pool: str | None
    session: str | None
    since: datetime | None
    open_at_end: int  # sessions the logs leave open: their quiet stretch has no end in them


def longest_quiet(events: Iterable[Imported]) -> Quiet:
    """The `Quiet` figure of `events` (in time order per session, as importers emit them).

    A logout without a session closes all of the user's sessions in the pool, as the meter
    applies it."""
    last: dict[tuple[str | None, str, str | None], datetime] = {}
    best = timedelta(0)
    where: tuple[str | None, str | None, datetime | None] = (None, None, None)
    for event in events:
        pool_user = (event.pool, event.user)
        if event.type == "logout" and event.session is None:
            keys = [k for k in last if (k[0], k[1]) == pool_user]
        else:
            keys = [(event.pool, event.user, event.session)]
        for key in keys:
            before = last.get(key)
            if before is not None and event.ts - before > best:
                best = event.ts - before
                where = (key[0], key[2] or key[1], before)
            if event.type == "logout":
                last.pop(key, None)
            else:
                last[key] = event.ts
    return Quiet(longest=best, pool=where[0], session=where[1], since=where[2],
                 open_at_end=len(last))


def render_duration(span: timedelta) -> str:
    """`span` in the duration grammar of the contracts file, whole seconds ("3d4h5m6s")."""
    total = int(span.total_seconds())
    if total <= 0:
        return "0s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"),
                                                (seconds, "s")) if n)
