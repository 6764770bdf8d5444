"""FlexLM (FlexNet Publisher) debug logs in, login/logout events out.

A debug log line is `H:MM:SS (daemon) text` in the server's local time with no date. The date
comes from `TIMESTAMP M/D/YYYY` lines (lmgrd writes one every few hours) and from the start
lines (`... started on HOST (...) (M/D/YYYY)`, `Server's System Date and Time: Wed Mar 30
2016 ...`); between them a time that goes back is the next day (an unmarked midnight), except
inside a DST fall-back hour of the `--timezone`, where it is the repeated hour. Lines before the
first date are dated back from it.

`OUT: "FEATURE" user@host` opens a checkout and `IN:` closes it: the user counts in the
feature's pool (or `pool_map[feature]`) while at least one of their checkouts from that host is
out, so the event's session is `user@host`; an `IN ... (SHUTDOWN)` returns all of them. A server
start (lmgrd starting, or lmgrd starting a vendor daemon again) closes every checkout the old
process held at the last time the log showed before it. DENIED, QUEUED and UNSUPPORTED lines
are counted and reported, never events. Pure: lines in, events and counts out.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from meter.importers.common import BadLine, Imported, event_id, rfc3339

__all__ = ["FlexlmCounts", "FlexlmImport"]

_LINE: Final = re.compile(r"\s*(\d{1,2}):(\d{2}):(\d{2}) \(([^)\s]+)\) ?(.*)")
_USAGE: Final = re.compile(r"(OUT|IN|DENIED|QUEUED|UNSUPPORTED): \"([^\"]*)\"(.*)")
_TIMESTAMP: Final = re.compile(r"TIMESTAMP (\d{1,2})/(\d{1,2})/(\d{1,4})\s*")
_STARTED: Final = re.compile(r"(?:FlexNet|FLEXnet|FLEXlm)\b.* started on \S+.*"
                             r"\((\d{1,2})/(\d{1,2})/(\d{1,4})\)\s*", re.IGNORECASE)
_SYSTEM_DATE: Final = re.compile(r"Server's System Date and Time: \w+ (\w{3}) (\d{1,2}) (\d{4})\b")
_VENDOR_STARTED: Final = re.compile(r"Started (\S+) \(")
_LICENSES: Final = re.compile(r"\((\d+) licenses\)")
_MONTHS: Final = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAY: Final = timedelta(days=1)


@dataclass(slots=True)
class FlexlmCounts:
    """What an import read and did; `render` prints it as `name value` rows."""

    files: int = 0
    lines: int = 0
    checkouts: int = 0
    checkins: int = 0
    checkins_unknown: int = 0  # IN of nothing out: checked out before the log starts
    restarts: int = 0  # lmgrd starts (the first of a log included)
    closed_by_restart: int = 0
    same_second: int = 0  # checked out and in within one second: no time in use, no events
    open_at_end: int = 0
    queued: int = 0
    unsupported: int = 0
    denied: Counter[str] = field(default_factory=Counter)  # per pool (or feature)
    unmapped: Counter[str] = field(default_factory=Counter)  # OUT lines of features not mapped

    def rows(self) -> list[tuple[str, int]]:
        """The counts as (name, value), per-pool DENIED lines indented under the total."""
        rows = [("files", self.files), ("lines", self.lines), ("checkouts", self.checkouts),
                ("checkins", self.checkins), ("checkins_unknown", self.checkins_unknown),
                ("same_second", self.same_second), ("restarts", self.restarts),
                ("closed_by_restart", self.closed_by_restart), ("open_at_end", self.open_at_end),
                ("denied", sum(self.denied.values()))]
        rows += [(f"  {pool}", n) for pool, n in sorted(self.denied.items())]
        rows += [("queued", self.queued), ("unsupported", self.unsupported),
                 ("unmapped", sum(self.unmapped.values()))]
        rows += [(f"  {feature}", n) for feature, n in sorted(self.unmapped.items())]
        return rows


@dataclass(slots=True)
class _Out:
    """One open (pool, user, session): licenses out per vendor daemon, and its login event."""

    by_vendor: Counter[str]
    login_at: datetime
    login_index: int


@dataclass(frozen=True, slots=True)
class _Raw:
    lineno: int
    seconds: int  # since local midnight
    daemon: str
    text: str


class _Calendar:
    """Local wall-clock times of one file to aware UTC (see the module docstring)."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self.day: date | None = None
        self.prev: int | None = None
        self.prev_utc: datetime | None = None
        self.fold = 0

    def _local(self, seconds: int, fold: int) -> datetime:
        assert self.day is not None
        h, rest = divmod(seconds, 3600)
        return datetime.combine(self.day, time(h, rest // 60, rest % 60, fold=fold), self.tz)

    def _ambiguous(self, seconds: int) -> bool:
        # In a fall-back hour the first pass has the larger offset; in a spring-forward gap the
        # offsets differ the other way round.
        first, second = self._local(seconds, 0).utcoffset(), self._local(seconds, 1).utcoffset()
        return first is not None and second is not None and first > second

    def advance(self, seconds: int) -> datetime:
        """The UTC instant of the next line's time of day (the date must be known)."""
        if self.prev is not None and seconds < self.prev:
            repeated = (self.fold == 0 and self._ambiguous(seconds) and self.prev_utc is not None
                        and self._local(seconds, 1).astimezone(UTC) >= self.prev_utc)
            if repeated:
                self.fold = 1
            else:
                assert self.day is not None
                self.day += _DAY
                self.fold = 0
        elif self.fold and not self._ambiguous(seconds):
            self.fold = 0
        self.prev = seconds
        self.prev_utc = self._local(seconds, self.fold).astimezone(UTC)
        return self.prev_utc

    def set_day(self, day: date) -> None:
        """A date written in the log: it wins over the date counted from rollovers."""
        if day != self.day:
            self.day = day
            self.fold = 0
            if self.prev is not None:
                self.prev_utc = self._local(self.prev, 0).astimezone(UTC)


def _date_in(name: str, raw: _Raw) -> date | None:
    """The date a TIMESTAMP or start line states, if it is one."""
    text = raw.text
    if m := _TIMESTAMP.fullmatch(text) or _STARTED.fullmatch(text):
        month, day, year = int(m[1]), int(m[2]), int(m[3])
    elif m := _SYSTEM_DATE.match(text):
        month = _MONTHS.get(m[1].lower(), 0)
        day, year = int(m[2]), int(m[3])
    else:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        raise BadLine(name, raw.lineno, "date", f"no such date in {text.strip()!r}") from None


def _raw_lines(name: str, lines: Iterable[bytes], counts: FlexlmCounts) -> Iterator[_Raw]:
    for lineno, line in enumerate(lines, 1):
        counts.lines += 1
        text = line.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
        m = _LINE.match(text)
        if m is None:
            continue  # banners, blank lines, "Shut down FlexNet ..." without a time
        h, mi, s = int(m[1]), int(m[2]), int(m[3])
        if h > 23 or mi > 59 or s > 59:
            raise BadLine(name, lineno, "time", f"{m[1]}:{m[2]}:{m[3]} is not a time of day")
        yield _Raw(lineno, h * 3600 + mi * 60 + s, m[4], m[5])


def _dated(name: str, raws: Iterable[_Raw], tz: ZoneInfo) -> Iterator[tuple[_Raw, datetime]]:
    """Each line with its UTC instant. Lines before the file's first date are held until it
    comes, then dated back from it by counting the rollovers between them."""
    calendar = _Calendar(tz)
    pending: list[_Raw] = []
    for raw in raws:
        stated = _date_in(name, raw)
        if calendar.day is None:
            if stated is None:
                pending.append(raw)
                continue
            held = [*pending, raw]
            rollovers = sum(b.seconds < a.seconds for a, b in itertools.pairwise(held))
            calendar.day = stated - rollovers * _DAY
            for early in pending:
                yield early, calendar.advance(early.seconds)
            pending = []
        utc = calendar.advance(raw.seconds)
        if stated is not None and stated != calendar.day:
            calendar.set_day(stated)
            utc = calendar.prev_utc or utc
        yield raw, utc
    for raw in pending:
        if _USAGE.match(raw.text):
            raise BadLine(name, raw.lineno, "date", "no TIMESTAMP line or server start date in "
                          "the file to date it")


def _user_host(name: str, lineno: int, rest: str) -> tuple[str, str, int]:
    """`user@host` and the license count from what follows the feature name. FlexLM writes
    two spaces before an annotation (`(INACTIVE)`, `(3 licenses)`); a user name may hold one."""
    who = rest.strip().split("  ")[0].strip()
    user, at, host = who.rpartition("@")
    if not at or not user or not host:
        raise BadLine(name, lineno, "user@host", f"expected user@host, got {who!r}")
    m = _LICENSES.search(rest)
    return user, host, int(m[1]) if m else 1


class FlexlmImport:
    """An import of one license server's logs, fed in order (checkouts carry over from one
    file to the next, as a rotated log's do); `finish` returns the events and the counts."""

    def __init__(self, account: str, tz: ZoneInfo, pool_map: Mapping[str, str] | None = None
                 ) -> None:
        self.account = account
        self.tz = tz
        self.pool_map = pool_map
        self.counts = FlexlmCounts()
        self._events: list[Imported | None] = []
        self._open: dict[tuple[str, str, str], _Out] = {}
        self._last: datetime | None = None

    def feed(self, name: str, lines: Iterable[bytes]) -> None:
        """Read one log file's lines (bytes, as from a binary file)."""
        self.counts.files += 1
        for raw, utc in _dated(name, _raw_lines(name, lines, self.counts), self.tz):
            self._line(name, raw, utc)
            self._last = utc

    def finish(self) -> tuple[list[Imported], FlexlmCounts]:
        """The events in log order (checkouts still out stay open: no logout is invented)."""
        self.counts.open_at_end = len(self._open)
        return [e for e in self._events if e is not None], self.counts

    def _pool(self, feature: str) -> str | None:
        if self.pool_map is None:
            return feature
        return self.pool_map.get(feature)

    def _line(self, name: str, raw: _Raw, utc: datetime) -> None:
        if raw.daemon == "lmgrd":
            if _STARTED.fullmatch(raw.text):
                self._restart(None, name, raw.lineno)
            elif m := _VENDOR_STARTED.match(raw.text):
                self._restart(m[1], name, raw.lineno)
            return
        m = _USAGE.match(raw.text)
        if m is None:
            return
        kind, feature, rest = m[1], m[2], m[3]
        if kind in ("QUEUED", "UNSUPPORTED"):
            self.counts.queued += kind == "QUEUED"
            self.counts.unsupported += kind == "UNSUPPORTED"
            return
        if not feature:
            raise BadLine(name, raw.lineno, "feature", "empty feature name")
        user, host, licenses = _user_host(name, raw.lineno, rest)
        pool = self._pool(feature)
        if kind == "DENIED":
            self.counts.denied[pool or feature] += 1
            return
        if pool is None:
            if kind == "OUT":
                self.counts.unmapped[feature] += 1
            return
        key = (pool, user, f"{user}@{host}")
        origin = f"{name}:{raw.lineno}"
        if kind == "OUT":
            self.counts.checkouts += 1
            self._checkout(key, raw.daemon, licenses, utc, origin)
        else:
            self.counts.checkins += 1
            # At shutdown the daemon writes one IN per user@host for all it held there.
            everything = "(SHUTDOWN)" in rest
            self._checkin(key, raw.daemon, None if everything else licenses, utc, origin)

    def _event(self, kind: str, key: tuple[str, str, str], ts: datetime, origin: str) -> Imported:
        pool, user, session = key
        return Imported(id=event_id("flexlm", self.account, kind, pool, session, rfc3339(ts)),
                        type="login" if kind == "login" else "logout", account=self.account,
                        user=user, ts=ts, pool=pool, session=session, origin=origin)

    def _checkout(self, key: tuple[str, str, str], vendor: str, licenses: int, ts: datetime,
                  origin: str) -> None:
        held = self._open.get(key)
        if held is None:
            self._events.append(self._event("login", key, ts, origin))
            held = self._open[key] = _Out(Counter(), ts, len(self._events) - 1)
        held.by_vendor[vendor] += licenses

    def _checkin(self, key: tuple[str, str, str], vendor: str, licenses: int | None,
                 ts: datetime, origin: str) -> None:
        """`licenses` None: all of them (a shutdown's IN)."""
        held = self._open.get(key)
        if held is None or not held.by_vendor[vendor]:
            self.counts.checkins_unknown += 1
            return
        left = held.by_vendor[vendor] - (held.by_vendor[vendor] if licenses is None else licenses)
        held.by_vendor[vendor] = max(0, left)
        if not +held.by_vendor:
            self._close(key, ts, origin)

    def _close(self, key: tuple[str, str, str], ts: datetime, origin: str) -> None:
        held = self._open.pop(key)
        if ts <= held.login_at:
            # [t, t) is no use; a logout at the login's own second would be applied before it
            # (logouts first at one instant) and leave the session open for good.
            self._events[held.login_index] = None
            self.counts.same_second += 1
            return
        self._events.append(self._event("logout", key, ts, origin))

    def _restart(self, vendor: str | None, name: str, lineno: int) -> None:
        """A new lmgrd (vendor None) or vendor daemon holds none of the old one's checkouts:
        they end at the last time the log showed before this line."""
        closing = [k for k, held in self._open.items()
                   if vendor is None or held.by_vendor[vendor]]
        if vendor is None:
            self.counts.restarts += 1
        for key in closing:
            held = self._open[key]
            if vendor is not None:
                del held.by_vendor[vendor]
                if +held.by_vendor:
                    continue
            self.counts.closed_by_restart += 1
            assert self._last is not None  # something was checked out, so a line came before
            self._close(key, self._last, f"{name}:{lineno}")
