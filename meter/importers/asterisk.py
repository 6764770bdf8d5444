"""Asterisk `queue_log` in, login/logout/heartbeat events out.

A line is `epoch|callid|queue|agent|event|data...` with the time in seconds since the epoch
(UTC). AGENTLOGIN and AGENTCALLBACKLOGIN are logins of the agent, AGENTLOGOFF and
AGENTCALLBACKLOGOFF its logouts (of all its sessions: queue_log names none); the lines that show
an agent at work (CONNECT, COMPLETE*, RINGNOANSWER, transfers, PAUSE/UNPAUSE, ...) are
heartbeats, so an agent whose login is older than the log still counts from its first call.
Lines about callers or queues (ENTERQUEUE, ABANDON, QUEUESTART, ...) are counted and skipped.
Pure: lines in, events and counts out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from meter.importers.common import BadLine, Imported, Kind, event_id, rfc3339

__all__ = ["ACTIVITY", "AsteriskCounts", "AsteriskImport"]

LOGINS: Final = frozenset({"AGENTLOGIN", "AGENTCALLBACKLOGIN"})
LOGOFFS: Final = frozenset({"AGENTLOGOFF", "AGENTCALLBACKLOGOFF"})
#: Events whose agent field is an agent doing something: it is signed in at that time.
ACTIVITY: Final = frozenset({
    "CONNECT", "COMPLETEAGENT", "COMPLETECALLER", "RINGNOANSWER", "RINGCANCELED", "TRANSFER",
    "BLINDTRANSFER", "ATTENDEDTRANSFER", "AGENTDUMP", "PAUSE", "UNPAUSE", "PAUSEALL",
    "UNPAUSEALL", "PAUSEREASON",
})
_EPOCH: Final = re.compile(r"\d{1,12}(?:\.\d{1,6})?")


@dataclass(slots=True)
class AsteriskCounts:
    """What an import read and did."""

    files: int = 0
    lines: int = 0
    blank: int = 0
    logins: int = 0
    logoffs: int = 0
    heartbeats: int = 0
    other: int = 0  # caller and queue lines, and activity of no agent (NONE)

    def rows(self) -> list[tuple[str, int]]:
        """The counts as (name, value)."""
        return [("files", self.files), ("lines", self.lines), ("blank", self.blank),
                ("logins", self.logins), ("logoffs", self.logoffs),
                ("heartbeats", self.heartbeats), ("other", self.other)]


def _instant(name: str, lineno: int, text: str) -> datetime:
    if not _EPOCH.fullmatch(text):
        raise BadLine(name, lineno, "time", f"expected seconds since the epoch, got {text!r}")
    whole, _, fraction = text.partition(".")
    try:
        return datetime.fromtimestamp(int(whole), UTC) + timedelta(
            microseconds=int(fraction.ljust(6, "0")) if fraction else 0)
    except (OverflowError, OSError, ValueError):
        raise BadLine(name, lineno, "time", f"{text} is out of range") from None


class AsteriskImport:
    """An import of queue_log files; `finish` returns the events (in file order) and counts."""

    def __init__(self, account: str, pool: str | None = None) -> None:
        self.account = account
        self.pool = pool
        self.counts = AsteriskCounts()
        self._events: list[Imported] = []

    def feed(self, name: str, lines: Iterable[bytes]) -> None:
        """Read one queue_log file's lines (bytes, as from a binary file)."""
        self.counts.files += 1
        for lineno, line in enumerate(lines, 1):
            self.counts.lines += 1
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text.strip():
                self.counts.blank += 1
                continue
            self._line(name, lineno, text)

    def finish(self) -> tuple[list[Imported], AsteriskCounts]:
        """The events made, and what was read."""
        return list(self._events), self.counts

    def _line(self, name: str, lineno: int, text: str) -> None:
        fields = text.split("|")
        if len(fields) < 5:
            raise BadLine(name, lineno, "event",
                          f"expected epoch|callid|queue|agent|event|..., got {len(fields)} fields")
        when, _callid, _queue, agent, event = (f.strip() for f in fields[:5])
        ts = _instant(name, lineno, when)
        if not event:
            raise BadLine(name, lineno, "event", "empty event name")
        kind: Kind
        if event in LOGINS:
            kind = "login"
        elif event in LOGOFFS:
            kind = "logout"
        elif event in ACTIVITY and agent not in ("", "NONE"):
            kind = "heartbeat"
        else:
            self.counts.other += 1
            return
        if agent in ("", "NONE"):
            raise BadLine(name, lineno, "agent", f"{event} names no agent")
        self.counts.logins += kind == "login"
        self.counts.logoffs += kind == "logout"
        self.counts.heartbeats += kind == "heartbeat"
        self._events.append(Imported(
            id=event_id("asterisk", self.account, kind, self.pool or "", agent, rfc3339(ts),
                        text.strip()),
            type=kind, account=self.account, user=agent, ts=ts, pool=self.pool, session=None,
            origin=f"{name}:{lineno}"))
