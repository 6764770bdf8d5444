"""A plain sweep over imported events: the oracle the importer tests compare the bill against.

Written from DESIGN section 2 alone, as slowly and plainly as possible: sessions per (pool, user,
session) from login or heartbeat to logout (a logout without a session closes all of the user's
in the pool); a session quiet for longer than `timeout` ends at its last event; one user counts
once; at one instant logouts go before logins. Returns per pool the peak and when it was first
reached.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def intervals(events: Iterable[Mapping[str, Any]], timeout: timedelta, end: datetime
              ) -> dict[str, list[tuple[str, datetime, datetime]]]:
    """Per pool, (user, start, stop) of every session; open ones run to `end` unless their
    last event is more than `timeout` before it."""
    ordered = sorted(events, key=lambda e: (_ts(e["ts"]), e["type"] != "logout"))
    open_: dict[tuple[str, str, str | None], tuple[datetime, datetime]] = {}  # start, last
    out: dict[str, list[tuple[str, datetime, datetime]]] = defaultdict(list)

    def close(key: tuple[str, str, str | None], at: datetime) -> None:
        start, _ = open_.pop(key)
        out[key[0]].append((key[1], start, at))

    for e in ordered:
        ts, pool, user, session = _ts(e["ts"]), e.get("pool") or "", e["user"], e.get("session")
        for key, (_, last) in list(open_.items()):
            if ts - last > timeout:
                close(key, last)
        if e["type"] == "logout":
            keys = [k for k in open_ if k[:2] == (pool, user)] if session is None else \
                [k for k in open_ if k == (pool, user, session)]
            for key in keys:
                close(key, ts)
            continue
        key = (pool, user, session)
        start = open_[key][0] if key in open_ else ts
        open_[key] = (start, ts)
    for key, (_, last) in list(open_.items()):
        close(key, last if end - last > timeout else end)
    return out


def peaks(events: Iterable[Mapping[str, Any]], timeout: timedelta, end: datetime
          ) -> dict[str, tuple[int, datetime | None]]:
    """Per pool, the most distinct users with a session open at once and the first instant
    of it, checked at every instant where something starts."""
    result: dict[str, tuple[int, datetime | None]] = {}
    for pool, spans in intervals(events, timeout, end).items():
        best, at = 0, None
        for t in sorted({start for _, start, stop in spans if start < stop}):
            users = {user for user, start, stop in spans if start <= t < stop}
            if len(users) > best:
                best, at = len(users), t
        result[pool] = (best, at)
    return result
