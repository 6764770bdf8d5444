"""Sessions from usage events, by the rules of DESIGN section 2 "Concurrency".

`build_sessions` is the readable, event-by-event form; `session_arrays` is the vectorised form
the rating uses (numpy, one sort), falling back to the same state machine for the few members
whose events mix keyed sessions with logouts or heartbeats that name none.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import numpy as np
from numpy.typing import NDArray

from rating.usage import (
    HEARTBEAT,
    KINDS,
    LOGIN,
    LOGOUT,
    EventColumns,
    EventLike,
    from_us,
    span_us,
    to_us,
)

__all__ = [
    "Session",
    "SessionArrays",
    "SessionLog",
    "argsort_pairs",
    "build_sessions",
    "session_arrays",
    "sort_pairs",
    "split_sessions",
]

I64 = NDArray[np.int64]
#: Key of a session within a member: its session id (text or code), None/-1 where it has none.
Key = str | int | None


@dataclass(frozen=True, slots=True)
class Session:
    """A session `[start, end)` of one user in one pool.

    `end` is None when the session is still open at the horizon (`until`). `inferred` marks a
    session closed by the timeout at its last event, not by a logout.
    """

    account: str
    pool: str
    user: str
    session: str | None
    start: datetime
    end: datetime | None
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class SessionLog:
    """The sessions built from events, and the ids of logouts that closed nothing."""

    sessions: tuple[Session, ...]
    ignored_logouts: tuple[str, ...]


def _run_member(
    items: Iterable[tuple[int, int, Key, int]], timeout: int, until: int,
) -> tuple[list[tuple[Key, int, int, bool, bool]], list[int]]:
    """The state machine for one (pool, user): events in order (ts, kind, key, tag).

    Returns sessions as (key, start, end, inferred, still_open) and the tags of ignored logouts.
    A session whose last event is more than `timeout` before the next event (or before `until`)
    was silent for longer than `timeout`: it is closed at that last event and inferred. An event
    exactly `timeout` after the last keeps it open.
    """
    open_: dict[Key, tuple[int, int]] = {}  # key -> (start, last event)
    out: list[tuple[Key, int, int, bool, bool]] = []
    ignored: list[int] = []
    for ts, kind, key, tag in items:
        for k in [k for k, (_, last) in open_.items() if ts - last > timeout]:
            start, last = open_.pop(k)
            out.append((k, start, last, True, False))
        if kind == LOGOUT:
            if key is None or key == -1:
                if not open_:
                    ignored.append(tag)
                out.extend((k, start, ts, False, False) for k, (start, _) in open_.items())
                open_.clear()
            elif key in open_:
                out.append((key, open_.pop(key)[0], ts, False, False))
            else:
                ignored.append(tag)
        elif kind == HEARTBEAT and (key is None or key == -1) and open_:
            for k, (start, _) in open_.items():
                open_[k] = (start, ts)
        elif kind in (HEARTBEAT, LOGIN):
            # A repeated login of an open session keeps its start; it still shows the session
            # is alive, so it refreshes the timeout like a heartbeat.
            start = open_[key][0] if key in open_ else ts
            open_[key] = (start, ts)
    for k, (start, last) in open_.items():
        if until - last > timeout:
            out.append((k, start, last, True, False))
        else:
            out.append((k, start, until, False, True))
    return out, ignored


def build_sessions(events: Iterable[EventLike], session_timeout: timedelta,
                   until: datetime) -> SessionLog:
    """Sessions per (account, pool, user, session id) from events in any arrival order.

    Rules (DESIGN section 2): a repeated login of an open session changes nothing; a logout
    without a session id closes all of the user's sessions in the pool; a logout that closes
    nothing is counted and ignored; a heartbeat refreshes the session it names (without an id:
    all of the user's open sessions) and opens one where none is open; events with the same
    time apply heartbeats, then logouts, then logins; a session with no event for longer than
    `session_timeout` is closed at its last event and flagged inferred (an event exactly
    `session_timeout` after the last keeps it). Events are ordered by (time, that kind order,
    id), so arrival order never matters.

    To rate a period, pass the events of `[period.start - session_timeout,
    period.end + session_timeout)` and `until = period.end + session_timeout`: a session open at
    the period start then has an event in the window, and whether one open near the end timed
    out is decided. Events at or after `until` are ignored; a session still open there (its last
    event `session_timeout` or less before it) has `end=None`. Assign and unassign events, and
    events without a pool, are not sessions.
    """
    timeout, horizon = span_us(session_timeout), to_us(until)
    members: dict[tuple[str, str, str], list[tuple[int, int, str, str | None]]] = {}
    for e in events:
        kind = KINDS[e.type]
        ts = to_us(e.ts)
        if kind > LOGIN or e.pool is None or ts >= horizon:
            continue
        members.setdefault((e.account, e.pool, e.user), []).append((ts, kind, e.id, e.session))
    sessions: list[Session] = []
    ignored_ids: list[str] = []
    for (account, pool, user), rows in sorted(members.items()):
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        ids = [r[2] for r in rows]
        found, ignored = _run_member(((ts, kind, sid, i) for i, (ts, kind, _, sid)
                                      in enumerate(rows)), timeout, horizon)
        ignored_ids.extend(ids[i] for i in ignored)
        sessions.extend(
            Session(account, pool, user, key if isinstance(key, str) else None, from_us(start),
                    None if still_open else from_us(end), inferred)
            for key, start, end, inferred, still_open in found
        )
    sessions.sort(key=lambda s: (s.account, s.pool, s.user, s.start, s.session or ""))
    return SessionLog(tuple(sessions), tuple(sorted(ignored_ids)))


def split_sessions(sessions: Iterable[Session], boundaries: Sequence[datetime]) -> list[Session]:
    """Split each session at every boundary strictly inside it (period starts and ends).

    The parts keep the session's identity; only the last part keeps `inferred` and an open end.
    """
    cuts = sorted(boundaries)
    out: list[Session] = []
    for s in sessions:
        start = s.start
        for cut in cuts:
            if start < cut and (s.end is None or cut < s.end):
                out.append(Session(s.account, s.pool, s.user, s.session, start, cut, False))
                start = cut
        out.append(Session(s.account, s.pool, s.user, s.session, start, s.end, s.inferred))
    return out


# --- vectorised --------------------------------------------------------------------------------

_SORT_BITS: Final = 63


def argsort_pairs(group: I64, sub: I64, sub_bits: int) -> NDArray[np.intp]:
    """An order of rows by (group, sub); both non-negative, `sub < 2**sub_bits`.

    One argsort of a packed int64 key where it fits; otherwise rows are bucketed by the high
    bits of `group` (a stable radix sort of a small integer) and each bucket is sorted packed.
    Rows equal in both keys come in any order: callers only use such ties where order is moot.
    """
    if group.size == 0:
        return np.empty(0, np.intp)
    group_bits = _SORT_BITS - sub_bits
    if group_bits <= 0:
        return np.lexsort((sub, group))
    top = int(group.max())
    if top < (1 << group_bits):
        return np.argsort((group << sub_bits) | sub)
    high = (group >> group_bits).astype(np.int64)
    if int(high.max()) >= 1 << 15:
        return np.lexsort((sub, group))
    order = np.argsort(high.astype(np.int16), kind="stable")
    bounds = np.searchsorted(high[order], np.arange(int(high.max()) + 2))
    mask = np.int64((1 << group_bits) - 1)
    for lo, hi in itertools.pairwise(bounds.tolist()):
        idx = order[lo:hi]
        order[lo:hi] = idx[np.argsort(((group[idx] & mask) << sub_bits) | sub[idx])]
    return order


def sort_pairs(group: I64, sub: I64, sub_bits: int) -> tuple[I64, I64]:
    """The rows (group, sub) sorted by group then sub, as two arrays of values.

    Sorting packed int64 values (no argsort, no gathers afterwards) is several times faster
    than an argsort. Where group and sub do not fit one int64 together, rows are split by the
    high bits of group (a few passes) and each part is sorted packed.
    """
    n = group.shape[0]
    group_bits = _SORT_BITS - sub_bits
    if n == 0 or group_bits <= 0:
        order = np.lexsort((sub, group))
        return group[order], sub[order]
    sub_mask = np.int64((1 << sub_bits) - 1)
    top = int(group.max())
    if top < (1 << group_bits):
        packed = (group << sub_bits) | sub
        packed.sort()
        return packed >> sub_bits, packed & sub_mask
    high = group >> group_bits
    buckets = int(high.max()) + 1
    if buckets > 64:
        order = argsort_pairs(group, sub, sub_bits)
        return group[order], sub[order]
    packed = ((group & np.int64((1 << group_bits) - 1)) << sub_bits) | sub
    out_group = np.empty(n, np.int64)
    out_sub = np.empty(n, np.int64)
    pos = 0
    for b in range(buckets):
        part = packed[high == b]
        part.sort()
        k = part.shape[0]
        out_group[pos:pos + k] = (part >> sub_bits) | np.int64(b << group_bits)
        out_sub[pos:pos + k] = part & sub_mask
        pos += k
    return out_group, out_sub


@dataclass(frozen=True, slots=True, eq=False)
class SessionArrays:
    """Sessions as arrays: `member` code, `[start, end)` in microseconds, flags.

    `open` marks sessions still open at the horizon (their `end` is the horizon). Ignored
    logouts are given by their member and time.
    """

    member: NDArray[np.int32]
    start: I64
    end: I64
    inferred: NDArray[np.bool_]
    open: NDArray[np.bool_]
    ignored_member: NDArray[np.int32]
    ignored_ts: I64


def session_arrays(cols: EventColumns, timeout_us: I64, until_us: I64) -> SessionArrays:
    """`build_sessions` for columns: `timeout_us` and `until_us` are per pool code.

    For a member whose events all name a session, or all name none, each session key is its own
    small machine: after a login or heartbeat the key is open with that last time, after a logout
    it is closed, so every transition is read from an event and the one before it (vectorised).
    A member that mixes named sessions with logouts or heartbeats naming none runs the
    event-by-event machine, because those events act on all of its sessions at once.
    """
    pool_of = cols.pool
    keep = (pool_of >= 0) & (cols.kind <= LOGIN)
    if until_us.shape[0]:
        # pool -1 reads the last entry: harmless, those rows are not kept anyway.
        keep &= cols.ts < until_us[pool_of]
    if not keep.any():
        return SessionArrays(*_fast_sessions(cols, ~keep, timeout_us, until_us))
    n_members = int(cols.member_pool.shape[0])
    member, sess, kind = cols.member, cols.session, cols.kind
    blanket = np.bincount(member[keep & (sess < 0) & (kind != LOGIN)], minlength=n_members) > 0
    # Only members with a blanket event can be mixed: look for named events of those alone.
    named = np.bincount(member[blanket[member] & keep & (sess >= 0)], minlength=n_members) > 0
    mixed = named & blanket
    slow = keep & mixed[member]
    has_slow = bool(slow.any())
    fast = keep & ~slow if has_slow else keep
    parts = [_fast_sessions(cols, None if fast.all() else ~fast, timeout_us, until_us)]
    if has_slow:
        parts.append(_slow_sessions(cols, np.flatnonzero(slow), timeout_us, until_us))
    if len(parts) == 1:
        return SessionArrays(*parts[0])
    return SessionArrays(*(np.concatenate([p[i] for p in parts]) for i in range(7)))


_Parts = tuple[NDArray[np.int32], I64, I64, NDArray[np.bool_], NDArray[np.bool_],
               NDArray[np.int32], I64]


def _session_member(cols: EventColumns) -> NDArray[np.int32]:
    """The member of every session code."""
    if cols.session_member is not None:
        return cols.session_member
    out = np.full(len(cols.sessions), -1, np.int32)
    named = cols.session >= 0
    out[cols.session[named]] = cols.member[named]
    return out


def _fast_sessions(cols: EventColumns, drop: NDArray[np.bool_] | None, timeout_us: I64,
                   until_us: I64) -> _Parts:
    """Sessions of the events not in `drop`, key by key (see `session_arrays`)."""
    member, sess, ts, kind = cols.member, cols.session, cols.ts, cols.kind
    n = ts.size - (int(np.count_nonzero(drop)) if drop is not None else 0)
    if n == 0:
        e64 = np.empty(0, np.int64)
        e32 = np.empty(0, np.int32)
        eb = np.empty(0, np.bool_)
        return e32, e64, e64, eb, eb, e32, e64
    # A key per session: its code, or (past the codes) its member's for events naming none.
    n_sessions = len(cols.sessions)
    key = sess.astype(np.int64)
    blank = key < 0
    key[blank] = n_sessions + member[blank]
    if drop is not None:
        # Dropped events take a key after every real one: they sort last and are cut off, which
        # is cheaper than gathering the kept ones out of every column first.
        key[drop] = n_sessions + cols.member_pool.shape[0]
    t0 = int(ts.min())
    sub = (ts - t0) << 2
    sub |= kind  # session kinds fit 2 bits; a dropped seat event's kind spills into its own time
    key, sub = sort_pairs(key, sub, max(1, int(sub.max()).bit_length()))
    key, sub = key[:n], sub[:n]
    ts = sub >> 2  # relative to t0 until the results are read out
    is_alive_event = (sub & 3) != LOGOUT
    del sub
    key_member = np.concatenate([_session_member(cols),
                                 np.arange(cols.member_pool.shape[0], dtype=np.int32)])
    n = ts.size
    same_prev = np.zeros(n, np.bool_)
    np.equal(key[1:], key[:-1], out=same_prev[1:])
    gap_prev = np.zeros(n, np.int64)
    np.subtract(ts[1:], ts[:-1], out=gap_prev[1:])
    # Most batches share one timeout; then no per-event lookup is needed.
    rated_timeouts = np.unique(timeout_us[until_us > np.iinfo(np.int64).min])
    if rated_timeouts.size == 1:
        timeout: I64 | np.int64 = rated_timeouts[0]
        fresh = gap_prev <= timeout
    else:
        timeout = timeout_us[cols.member_pool[key_member[key]]]
        fresh = gap_prev <= timeout
    alive = np.zeros(n, np.bool_)  # an open, unexpired session exists just before this event
    alive[1:] = same_prev[1:] & is_alive_event[:-1] & fresh[1:]
    del fresh, gap_prev
    starts = np.flatnonzero(is_alive_event & ~alive)
    # The last alive event of a session: the next event of the key does not continue it.
    cont_next = np.zeros(n, np.bool_)
    np.logical_and(alive[1:], is_alive_event[1:], out=cont_next[:-1])
    lasts = np.flatnonzero(is_alive_event & ~cont_next)
    del cont_next
    nxt = lasts + 1
    has_next = np.zeros(lasts.size, np.bool_)
    inb = nxt < n
    has_next[inb] = same_prev[nxt[inb]]
    nxt_c = np.minimum(nxt, n - 1)
    closed_by_logout = has_next & alive[nxt_c]  # then the next event is that logout
    last_ts = ts[lasts] + t0
    last_pool = cols.member_pool[key_member[key[lasts]]]
    until = until_us[last_pool]
    expired_at_end = ~has_next & (until - last_ts > timeout_us[last_pool])
    still_open = ~has_next & ~expired_at_end
    end = np.where(closed_by_logout, ts[nxt_c] + t0, np.where(still_open, until, last_ts))
    inferred = ~closed_by_logout & ~still_open
    ignored = np.flatnonzero(~is_alive_event & ~alive)
    return (key_member[key[starts]], ts[starts] + t0, end, inferred, still_open,
            key_member[key[ignored]], ts[ignored] + t0)


def _slow_sessions(cols: EventColumns, idx: NDArray[np.intp], timeout_us: I64,
                   until_us: I64) -> _Parts:
    # Ties of (member, time, kind) follow the event id (DESIGN), or the session code without ids.
    tie = (np.array([cols.ids[i] for i in idx.tolist()]) if cols.ids is not None
           else cols.session[idx])
    idx = idx[np.lexsort((tie, cols.kind[idx], cols.ts[idx], cols.member[idx]))]
    member = cols.member[idx]
    ts, kind, sess = cols.ts[idx].tolist(), cols.kind[idx].tolist(), cols.session[idx].tolist()
    bounds = np.flatnonzero(np.diff(member)) + 1
    out_m: list[int] = []
    out_s: list[int] = []
    out_e: list[int] = []
    out_inf: list[bool] = []
    out_open: list[bool] = []
    ign_m: list[int] = []
    ign_t: list[int] = []
    for lo, hi in itertools.pairwise([0, *bounds.tolist(), member.shape[0]]):
        m = int(member[lo])
        pool = int(cols.member_pool[m])
        found, ignored = _run_member(
            zip(ts[lo:hi], kind[lo:hi], sess[lo:hi], range(lo, hi), strict=True),
            int(timeout_us[pool]), int(until_us[pool]))
        for _, start, end, inferred, still_open in found:
            out_m.append(m)
            out_s.append(start)
            out_e.append(end)
            out_inf.append(inferred)
            out_open.append(still_open)
        for j in ignored:
            ign_m.append(m)
            ign_t.append(ts[j])
    return (np.array(out_m, np.int32), np.array(out_s, np.int64), np.array(out_e, np.int64),
            np.array(out_inf, np.bool_), np.array(out_open, np.bool_),
            np.array(ign_m, np.int32), np.array(ign_t, np.int64))
