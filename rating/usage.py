"""Usage events as the rating core sees them: one `UsageEvent` per event, or `EventColumns`.

`EventColumns` is the columnar form the vectorised path rates: numpy arrays of event time
(int64 microseconds since the epoch, UTC), kind codes and integer codes for pool, user, pool
member and session, with the tables that decode them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "HEARTBEAT",
    "KINDS",
    "LOGIN",
    "LOGOUT",
    "SAME_INSTANT_RANK",
    "EventColumns",
    "EventLike",
    "UsageEvent",
    "from_us",
    "iso",
    "span_us",
    "to_us",
]

EventType = Literal["login", "logout", "heartbeat", "assign", "unassign"]

# Kind codes double as the order of events that share a timestamp. Logouts come before logins
# (an instant handover is not double use). A heartbeat comes first: it says the session was alive
# up to that instant, so a logout at the same instant still ends it, instead of the heartbeat
# reopening a session the logout had just closed.
HEARTBEAT: Final = 0
LOGOUT: Final = 1
LOGIN: Final = 2
ASSIGN: Final = 3
UNASSIGN: Final = 4
KINDS: Final[dict[str, int]] = {
    "heartbeat": HEARTBEAT, "logout": LOGOUT, "login": LOGIN, "assign": ASSIGN, "unassign": UNASSIGN,
}
#: The one same-instant order every component sorts by. Seat changes first, unassign before
#: assign, so a seat handed over at an instant fits the quantity and covers a login at that
#: instant; then heartbeats, logouts, logins (DESIGN: logouts before logins, so an instant
#: handover is not double use; a heartbeat at a logout's instant does not reopen the session).
#: It agrees with the codes of `KINDS` on the three session kinds.
SAME_INSTANT_RANK: Final[dict[str, int]] = {
    "unassign": 0, "assign": 1, "heartbeat": 2, "logout": 3, "login": 4,
}

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(instant: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime, exactly (no float)."""
    if instant.tzinfo is None:
        raise ValueError(f"naive datetime {instant!r}: rating needs aware UTC times")
    return span_us(instant - _EPOCH)


def span_us(delta: timedelta) -> int:
    """Microseconds of a duration, exactly (no float): the unit of every time in the rating."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """The aware UTC datetime `us` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=int(us))


def iso(instant: datetime) -> str:
    """RFC 3339 text of an aware time in UTC, with `Z` (how every bill and report writes times)."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One stored event. `ts` is aware UTC; `pool` and `session` may be absent."""

    id: str
    type: EventType
    account: str
    user: str
    ts: datetime
    pool: str | None = None
    session: str | None = None


class EventLike(Protocol):
    """Anything with the fields of a `UsageEvent` (`meter.events.Event` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def session(self) -> str | None: ...


I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
I8 = NDArray[np.int8]


@dataclass(frozen=True, slots=True, eq=False)
class EventColumns:
    """Events as parallel arrays, one row per event, in any order.

    - `ts`: int64 microseconds since the epoch, UTC. `kind`: int8 codes of `KINDS`.
    - `pool`: int32 index into `pools` ((account, pool id) pairs); -1 where the event has no pool.
    - `user`: int32 index into `users` ((account, user) pairs).
    - `member`: int32 index of the (pool, user) pair, decoded by `member_pool` and `member_user`;
      -1 where the event has no pool.
    - `session`: int32 index into `sessions`, coded per member (the same session text of two
      members gets two codes); -1 where the event has no session id.
    - `ids`: the event ids, when known; they only break ties of events equal in everything else.
    - `session_member`: the member of each session code (derived from the rows when None).
    """

    ts: I64
    kind: I8
    pool: I32
    user: I32
    member: I32
    session: I32
    pools: tuple[tuple[str, str], ...]
    users: tuple[tuple[str, str], ...]
    member_pool: I32
    member_user: I32
    sessions: Sequence[str]
    ids: Sequence[str] | None = None
    session_member: I32 | None = None

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def from_rows(
        cls,
        *,
        account: Sequence[str],
        id: Sequence[str],
        type: Sequence[str],
        user: Sequence[str],
        pool: Sequence[str | None],
        session: Sequence[str | None],
        ts_us: Sequence[int] | NDArray[np.int64],
    ) -> EventColumns:
        """Build from the store's columns (one sequence per column, equal lengths, by keyword).

        Codes are given in order of first appearance, so the same rows give the same codes.
        """
        n = len(ts_us)
        if not (len(account) == len(id) == len(type) == len(user) == len(pool)
                == len(session) == n):
            raise ValueError("all columns must have the same length")
        pool_codes: dict[tuple[str, str], int] = {}
        user_codes: dict[tuple[str, str], int] = {}
        member_codes: dict[tuple[int, int], int] = {}
        session_codes: dict[tuple[int, str], int] = {}
        kinds = np.empty(n, np.int8)
        pools = np.empty(n, np.int32)
        users = np.empty(n, np.int32)
        members = np.empty(n, np.int32)
        sessions = np.empty(n, np.int32)
        for i in range(n):
            acc = account[i]
            try:
                kinds[i] = KINDS[type[i]]
            except KeyError:
                raise ValueError(f"row {i}: unknown event type {type[i]!r}") from None
            u = user_codes.setdefault((acc, user[i]), len(user_codes))
            users[i] = u
            pid = pool[i]
            if pid is None:
                pools[i] = members[i] = sessions[i] = -1
                continue
            p = pool_codes.setdefault((acc, pid), len(pool_codes))
            m = member_codes.setdefault((p, u), len(member_codes))
            pools[i] = p
            members[i] = m
            sid = session[i]
            sessions[i] = -1 if sid is None else session_codes.setdefault((m, sid),
                                                                          len(session_codes))
        member_table = np.array(list(member_codes), dtype=np.int32).reshape(-1, 2)
        return cls(
            ts=np.asarray(ts_us, dtype=np.int64),
            kind=kinds, pool=pools, user=users, member=members, session=sessions,
            pools=tuple(pool_codes), users=tuple(user_codes),
            member_pool=member_table[:, 0].copy(), member_user=member_table[:, 1].copy(),
            sessions=tuple(s for _, s in session_codes),
            ids=tuple(id),
            session_member=np.fromiter((m for m, _ in session_codes), np.int32,
                                       len(session_codes)),
        )

    @classmethod
    def from_events(cls, events: Iterable[EventLike]) -> EventColumns:
        """Build from event objects (`UsageEvent`, or anything with the same fields)."""
        items = list(events)
        return cls.from_rows(
            account=[e.account for e in items], id=[e.id for e in items],
            type=[e.type for e in items], user=[e.user for e in items],
            pool=[e.pool for e in items], session=[e.session for e in items],
            ts_us=np.fromiter((to_us(e.ts) for e in items), np.int64, len(items)),
        )

    def pool_code(self, account: str, pool: str) -> int:
        """The code of (account, pool), or -1 when no event names it."""
        try:
            return self.pools.index((account, pool))
        except ValueError:
            return -1
