"""The live tracker: per account and pool, the users signed in now, the period's high-water mark,
the licensed quantity in force, the excess and its grace clock. Pure: no I/O and no clock; callers
pass event times and `now`, all in microseconds since the epoch (UTC).

It is a view for dashboards, kept incrementally and exact for events in order. Where it cannot be
exact incrementally (an event that arrives late, a session that times out: the bill closes it at
its last event, the live view learns of it `session_timeout` later) it marks the account dirty;
`replay` and `install` then rebuild the account from the stored log exactly as the bill rates it
(`meter serve` does this in the background). Rules:

* Sessions follow DESIGN section 2 (as `rating.sessions` does): a user counts once per pool while
  any of their sessions is open; a repeated login changes nothing but refreshes the session; a
  logout without a session id closes all of the user's sessions; a logout that closes nothing is
  counted (`unknown_logouts`) and ignored; a heartbeat refreshes the session it names (without an
  id: all open ones) and opens one where none is open; a session with no event for longer than
  the account's `session_timeout` closes (an event exactly `session_timeout` after the last keeps
  it). The report closes it at its last event (inferred); the live view only learns that the
  session was dead once the timeout has passed (1 us after it: the first instant the silence is
  longer), so it drops the user then, and the period peak may include that stretch.
* Events are buffered and applied in event-time order up to a watermark per account, which the
  caller advances (the daemon: the later of now and the account's newest event, minus a short
  reorder window), so one account's clock, even one running ahead, never moves another's. Each
  pool has its own clock, moved by its events and by its account's watermark. An event older
  than its pool's clock (late) changes the state at the clock, never in the past; a late login or
  heartbeat that is already more than `session_timeout` old opens nothing; a late logout closes
  only sessions whose last event is not newer than it. Counts are never negative.
* Events at the same instant count as one change: c(t), the peak and the grace stretches are
  taken over stretches of positive length, so a logout and a login at the same time are a
  handover, neither double use nor a break in an excess.
* Licensed quantity in force, E(t): exactly what the bill uses, `rating.seatchanges.apply_orders`
  (additions from their time, removals from the end of the term, refused orders change nothing).
* Excess x = max(0, c - E). Grace (concurrent pools): with `continuous` grace, level k is billable
  once x >= k has held for one unbroken stretch longer than G; with `cumulative`, once the time
  with x >= k in the period reaches G. `grace_remaining` is the time until the *current* excess
  level becomes billable: G - (how long level x has held unbroken, or in total this period), at
  least 0; it is G when there is no excess (the clock is full) and 0 once that level is billable.
  Stretches are clipped at the period start: each period measures its own overage.
* The period rolls over at the account's local midnight on its anchor day (`monthly_period`);
  peak, billable overage, grace stretches and the users seen restart from the state at the
  boundary.
* Add-on shortfall (Elite concurrent pools, wfm and qm): `rating.coverage.cover` over the
  distinct users seen this period and the quantities in force now.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from rating.contracts import Account, Contracts, Pool
from rating.coverage import LIMITED_BY_CONCURRENT_ELITE, cover
from rating.periods import monthly_period
from rating.seatchanges import SeatLedger, apply_orders
from rating.usage import SAME_INSTANT_RANK, from_us, span_us, to_us

__all__ = [
    "KIND_ORDER",
    "SHORTFALL_ADDONS",
    "AddonView",
    "PoolView",
    "Replay",
    "TrackedEvent",
    "Tracker",
    "licensed_schedule",
    "quantity_at",
]

#: Add-ons that Elite concurrent licences do not cover by themselves (seed 003).
SHORTFALL_ADDONS: Final = LIMITED_BY_CONCURRENT_ELITE
#: Same-instant order: the one the rating uses (`rating.usage.SAME_INSTANT_RANK`).
KIND_ORDER: Final = SAME_INSTANT_RANK
#: Events that decide whose seat is whose (a replay applies earlier ones at its start).
SEAT_EVENTS: Final = frozenset({"assign", "unassign"})


class TrackedEvent(Protocol):
    """What the tracker reads from an event (`meter.events.Event` and `meter.store.StoredEvent`)."""

    @property
    def account(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def session(self) -> str | None: ...
    @property
    def ts_us(self) -> int: ...


def licensed_schedule(ledger: SeatLedger, target: str) -> tuple[tuple[int, int], ...]:
    """(effective time in us, total in force) steps of a pool or add-on, from the seat ledger;
    empty for an add-on the account never bought."""
    try:
        steps = ledger.licensed_steps(target)
    except KeyError:
        return ()
    return tuple((to_us(at), quantity) for at, quantity in steps)


def quantity_at(changes: tuple[tuple[int, int], ...] | list[tuple[int, int]], at_us: int) -> int:
    """The quantity in force at `at_us` given `licensed_schedule` steps (0 before the first)."""
    i = bisect_right(changes, (at_us, 1 << 62))
    return changes[i - 1][1] if i else 0


@dataclass(frozen=True, slots=True)
class PoolView:
    """The live state of one pool at `at` (us). Grace fields are None for named pools."""

    account: str
    pool: str
    model: str
    at_us: int
    active_users: int
    licensed: int
    excess: int
    period_start_us: int
    period_end_us: int
    peak_users: int
    peak_at_us: int
    grace_remaining_s: float | None
    billable_overage: int | None
    users_seen: int
    unknown_logouts: int
    last_event_us: int | None
    assigned: int = 0  # named pools: seats assigned now
    refused_assigns: int = 0  # named pools: assigns refused this run for lack of a seat


@dataclass(frozen=True, slots=True)
class AddonView:
    """Live add-on coverage of an account with Elite concurrent pools."""

    account: str
    addon: str
    required: int
    purchased: int
    shortfall: int


#: One int object per slot number, shared by every pool's user table (a dict holds its values by
#: reference, so pools reusing the same small slot numbers share them instead of each keeping a
#: 28-byte int per user). Only ever grown, under the lock: replays run in other threads.
_SLOT_INTS: list[int] = []
_SLOT_LOCK = threading.Lock()
_NIL: Final = -1  # "no slot" in the slot arrays
_NEVER: Final = 1 << 62  # a time after every event (us)


def _slot_int(i: int) -> int:
    if i < len(_SLOT_INTS):
        return _SLOT_INTS[i]
    with _SLOT_LOCK:
        _SLOT_INTS.extend(range(len(_SLOT_INTS), i + 1))
    return _SLOT_INTS[i]


def _key(session: str | None) -> bytes:
    """A session id as kept (bytes are 16 bytes smaller than str; `surrogatepass` keeps every
    str, even a lone surrogate from JSON, distinct and reversible). No id is the key b""."""
    return b"" if session is None else session.encode("utf-8", "surrogatepass")


class _PoolState:
    """Mutable state of one pool; only `Tracker` (and `meter.checkpoint`) touch it.

    Open sessions live in flat slot arrays, not a dict per user, so one costs a few dozen bytes
    beside its ids: users are interned per pool (`uid`: user -> user slot, kept while the user
    has a session open or was seen this period); each session slot holds its key, last event
    time, owner and the next session of the same owner; and all open sessions sit in one list
    ordered by last event time (`older`/`newer`), the pool's only expiry structure: its oldest
    session is the next to time out, at last + `expiry`. Events come in time order, so a
    refreshed session moves to the newest end in O(1); a late one walks back to its place.
    """

    def __init__(self, account: Account, pool: Pool, now_us: int,
                 schedule: tuple[tuple[int, int], ...]) -> None:
        self.account = account
        self.pool = pool
        self.timeout = span_us(account.session_timeout)
        #: A session is closed once its silence is longer than the timeout: at its last event
        #: plus this (the timeout and one microsecond, the resolution of event times).
        self.expiry = self.timeout + 1
        self.grace = span_us(pool.grace)
        self.schedule = schedule
        self.clock = now_us
        # Users: slot -> name (None: free), first open session (-1: none; a free slot: the next
        # free user slot), seen this period (0/1).
        self.uid: dict[str, int] = {}
        self.names: list[str | None] = []
        self.first = array("i")
        self.seen_flags = bytearray()
        self.free_user = _NIL
        self.count = 0  # users with at least one session open: c at the clock
        self.users_seen = 0
        # Sessions: slot -> key, last event us, owner (user slot), the owner's next session (a
        # free slot: the next free session slot), neighbours in the expiry order.
        self.key: list[bytes] = []
        self.last = array("q")
        self.owner = array("i")
        self.sibling = array("i")
        self.older = array("i")
        self.newer = array("i")
        self.oldest = self.newest = _NIL
        self.free_session = _NIL
        self.assigned: set[str] = set()
        # The licence count in force over [_licence_from, _licence_until): the schedule is read
        # again only when the clock leaves that span, not at every event.
        self._licence_from = self._licence_until = 0
        self._span_licensed = 0
        self.licensed = self._licensed_at(now_us)
        self._settled_at: int | None = None  # the clock `_settle` last ran at
        self._concurrent = pool.model == "concurrent"
        self._continuous = pool.grace_mode == "continuous"
        self.since: list[int] = []  # since[k-1]: start of the current stretch with x >= k
        self.cumulative: list[int] = []  # cumulative[k-1]: time with x >= k this period
        self.unknown_logouts = 0
        self.refused_assigns = 0
        self.last_event_us: int | None = None
        #: Set when the live state may differ from the bill: a late event was applied at the
        #: clock, or a session timed out (the bill closes it at its last event, not at the
        #: timeout). `Tracker.reseed` replays the account from the store and clears it.
        self.dirty = False
        #: (user, session key, last event) of each session closed by its timeout, in order; kept
        #: only while `records_timeouts` (a replay's first pass), so a live pool holds none.
        self.timed_out: list[tuple[str, bytes, int]] = []
        self.records_timeouts = False
        #: Sessions known to time out after the event at that time (a replay's second pass):
        #: they close at it, as the bill closes them, instead of `session_timeout` later.
        self.closes_at_last: frozenset[tuple[str, bytes, int]] = frozenset()
        self._start_period(now_us)

    def _start_period(self, at_us: int) -> None:
        period = monthly_period(self.account, from_us(at_us))
        self.period_start, self.period_end = to_us(period.start), to_us(period.end)
        self.peak = self.count
        self.peak_at = at_us
        # The high-water mark shown so far this period: a late login shown at the clock and taken
        # back by a late logout at the same instant must not make the gauge fall.
        self.shown_peak, self.shown_peak_at = self.peak, self.peak_at
        self.billable = 0
        self.cumulative = [0] * len(self.since)
        self.since = [max(s, self.period_start) for s in self.since]
        # The users seen restart as the users signed in at the boundary; the others are let go.
        first, flags = self.first, self.seen_flags
        for u, name in enumerate(self.names):
            if name is not None:
                flags[u] = first[u] >= 0
                if not flags[u]:
                    self._release_user(u)
        self.users_seen = self.count

    @property
    def excess(self) -> int:
        return max(0, self.count - self.licensed)

    def sessions(self) -> list[tuple[str, bytes, int]]:
        """(user, key, last event us) of every open session, oldest last event first."""
        out = []
        names, owner, key, last, newer = self.names, self.owner, self.key, self.last, self.newer
        s = self.oldest
        while s >= 0:
            out.append((names[owner[s]] or "", key[s], last[s]))
            s = newer[s]
        return out

    def seen_users(self) -> list[str]:
        return sorted(name for u, name in enumerate(self.names)
                      if name is not None and self.seen_flags[u])

    # --- users and sessions ---------------------------------------------------------------------

    def _user(self, user: str) -> int:
        """The user's slot, interned now if the user has none."""
        u = self.uid.get(user)
        if u is not None:
            return u
        u = self.free_user
        if u >= 0:
            self.free_user = self.first[u]
            self.first[u] = _NIL
            self.names[u] = user
        else:
            u = len(self.names)
            self.names.append(user)
            self.first.append(_NIL)
            self.seen_flags.append(0)
        self.uid[user] = _slot_int(u)
        return u

    def _release_user(self, u: int) -> None:
        """Let a user go who has no session open and was not seen this period."""
        del self.uid[self.names[u]]  # type: ignore[arg-type]  # a used slot has a name
        self.names[u] = None
        self.first[u] = self.free_user
        self.free_user = u

    def _see(self, u: int, ts: int) -> None:
        if ts >= self.period_start and not self.seen_flags[u]:
            self.seen_flags[u] = 1
            self.users_seen += 1

    def _find(self, u: int, key: bytes) -> int:
        s = self.first[u]
        while s >= 0 and self.key[s] != key:
            s = self.sibling[s]
        return s

    def _add_session(self, u: int, key: bytes, ts: int) -> None:
        s = self.free_session
        if s >= 0:
            self.free_session = self.sibling[s]
            self.key[s], self.last[s], self.owner[s] = key, ts, u
        else:
            s = len(self.key)
            self.key.append(key)
            self.last.append(ts)
            self.owner.append(u)
            self.sibling.append(_NIL)
            self.older.append(_NIL)
            self.newer.append(_NIL)
        if self.first[u] < 0:
            self.count += 1
        self.sibling[s] = self.first[u]
        self.first[u] = s
        self._file(s)

    def _file(self, s: int) -> None:
        """Put session `s` in the expiry order after every session not newer than it (events
        in order: at the newest end at once)."""
        t, last, older, newer = self.last[s], self.last, self.older, self.newer
        after = self.newest
        while after >= 0 and last[after] > t:
            after = older[after]
        nxt = newer[after] if after >= 0 else self.oldest
        older[s], newer[s] = after, nxt
        if after >= 0:
            newer[after] = s
        else:
            self.oldest = s
        if nxt >= 0:
            older[nxt] = s
        else:
            self.newest = s

    def _unfile(self, s: int) -> None:
        o, n = self.older[s], self.newer[s]
        if o >= 0:
            self.newer[o] = n
        else:
            self.oldest = n
        if n >= 0:
            self.older[n] = o
        else:
            self.newest = o

    def _refresh(self, s: int, ts: int) -> None:
        if ts > self.last[s]:
            self.last[s] = ts
            if s != self.newest:
                self._unfile(s)
                self._file(s)

    def _close(self, s: int) -> None:
        """Close session `s`; its user counts no more if it was their last."""
        u, sibling = self.owner[s], self.sibling
        if self.first[u] == s:
            self.first[u] = sibling[s]
        else:
            p = self.first[u]
            while sibling[p] != s:
                p = sibling[p]
            sibling[p] = sibling[s]
        self._unfile(s)
        self.key[s] = b""
        sibling[s] = self.free_session
        self.free_session = s
        if self.first[u] < 0:
            self.count -= 1
            if not self.seen_flags[u]:
                self._release_user(u)

    def _open(self, user: str, key: bytes, ts: int) -> None:
        u = self._user(user)
        s = self._find(u, key)
        if s < 0:
            self._add_session(u, key, ts)
        else:
            self._refresh(s, ts)
        self._see(u, ts)

    def restore_sessions(self, sessions: Iterable[tuple[str, bytes, int]],
                         seen: Iterable[str]) -> None:
        """Open `sessions` (oldest last event first, as `sessions()` lists them) and mark `seen`
        (a checkpoint's); the pool must have no user yet."""
        for user in seen:
            u = self._user(user)
            self.seen_flags[u] = 1
            self.users_seen += 1
        for user, key, last in sessions:
            self._add_session(self._user(user), key, last)

    # --- time ----------------------------------------------------------------------------------

    def _licensed_at(self, at_us: int) -> int:
        """The licence count in force at `at_us`, the span it holds over cached."""
        if not self._licence_from <= at_us < self._licence_until:
            schedule = self.schedule
            i = bisect_right(schedule, (at_us, _NEVER))
            self._licence_from = schedule[i - 1][0] if i else -_NEVER
            self._licence_until = schedule[i][0] if i < len(schedule) else _NEVER
            self._span_licensed = schedule[i - 1][1] if i else 0
        return self._span_licensed

    def _next_boundary(self) -> int:
        """The next time after the clock where the state changes without an event. Called on a
        settled clock, so the cached licence span is the clock's own."""
        boundary = self.period_end
        if self.oldest >= 0:
            boundary = min(boundary, self.last[self.oldest] + self.expiry)
        return min(boundary, self._licence_until)

    def _segment(self, until: int) -> None:
        """Account for [clock, until) with the state constant, then move the clock."""
        span = until - self.clock
        if span <= 0:
            return
        # Levels change only when time moves on, so a dip and a rise at the same instant (a
        # handover) never restarts a grace stretch.
        x = self.excess
        if x != len(self.since) or x > len(self.cumulative):
            self._levels(x)
        if self.count > self.peak:
            self.peak, self.peak_at = self.count, self.clock
        if x and self._concurrent:
            if self._continuous:
                # since[] rises with the level (a level is held only while every lower one is),
                # so the levels held longer than the grace are its first n entries.
                n = bisect_left(self.since, until - self.grace)
                self.billable = max(self.billable, n)
            else:
                for k in range(1, x + 1):
                    self.cumulative[k - 1] += span
                    if self.cumulative[k - 1] >= self.grace:
                        self.billable = max(self.billable, k)
        self.clock = until

    def _settle(self) -> None:
        """Apply what happens at the clock without an event: rollover, timeouts, licence changes.
        Once done at a clock it has nothing more to do there (an event never opens a session
        already timed out), so it runs again only when the clock moves."""
        if self._settled_at == self.clock:
            return
        while self.clock >= self.period_end:
            self._start_period(self.period_end)
        due = self.clock - self.expiry  # sessions whose last event is not newer have timed out
        while self.oldest >= 0 and self.last[self.oldest] <= due:
            s = self.oldest
            if self.records_timeouts:
                self.timed_out.append((self.names[self.owner[s]] or "", self.key[s],
                                       self.last[s]))
            self._close(s)
            self.dirty = True
        self.licensed = self._licensed_at(self.clock)
        self._settled_at = self.clock

    def _levels(self, x: int) -> None:
        """Make `since` hold the `x` levels now above the licence (`cumulative` at least as many)."""
        if x > len(self.cumulative):
            self.cumulative.extend([0] * (x - len(self.cumulative)))
        if x > len(self.since):
            self.since.extend([self.clock] * (x - len(self.since)))
        elif x < len(self.since):
            del self.since[x:]
            # Cumulative time is kept per level for the whole period, even while the level is
            # not held; only the stretch starts are dropped.

    def advance(self, to_us: int) -> None:
        self._settle()
        while self.clock < to_us:
            boundary = self._next_boundary()
            self._segment(to_us if boundary <= self.clock or boundary > to_us else boundary)
            self._settle()

    # --- events ---------------------------------------------------------------------------------

    def apply(self, kind: str, user: str, session: str | None, ts: int) -> None:
        if ts > self.clock:
            self.advance(ts)
        else:
            self._settle()
            self.dirty = self.dirty or ts < self.clock  # applied at the clock, not at its time
        self.last_event_us = ts if self.last_event_us is None else max(self.last_event_us, ts)
        if kind in ("login", "heartbeat"):
            if self.clock - ts > self.timeout:
                return  # late enough that its session has timed out already
            u = self.uid.get(user) if kind == "heartbeat" and session is None else None
            if u is not None and self.first[u] >= 0:
                s = self.first[u]
                while s >= 0:  # refreshing keeps the owner's chain as it is
                    self._refresh(s, ts)
                    s = self.sibling[s]
                self._see(u, ts)
            else:
                self._open(user, _key(session), ts)
            if self.closes_at_last:
                self._close_known(user, ts)
        elif kind == "logout":
            u = self.uid.get(user)
            closing = []
            if u is not None:
                if session is None:
                    s = self.first[u]
                    while s >= 0:
                        if self.last[s] <= ts:
                            closing.append(s)
                        s = self.sibling[s]
                else:
                    s = self._find(u, _key(session))
                    if s >= 0 and self.last[s] <= ts:
                        closing.append(s)
            if not closing:
                self.unknown_logouts += 1
            for s in closing:
                self._close(s)
        elif kind == "assign":
            if user not in self.assigned:
                if len(self.assigned) >= self.licensed:
                    self.refused_assigns += 1
                else:
                    self.assigned.add(user)
        elif kind == "unassign":
            self.assigned.discard(user)

    def _close_known(self, user: str, ts: int) -> None:
        """Close the user's sessions refreshed at `ts` that the replay knows to time out there."""
        u = self.uid.get(user)
        if u is None:
            return
        closing = []
        s = self.first[u]
        while s >= 0:
            if self.last[s] == ts and (user, self.key[s], ts) in self.closes_at_last:
                closing.append(s)
            s = self.sibling[s]
        for s in closing:
            self._close(s)

    # --- reading --------------------------------------------------------------------------------

    def grace_remaining(self) -> float | None:
        if self.pool.model != "concurrent":
            return None
        x = self.excess
        if x == 0:
            return self.grace / 1e6
        if x <= self.billable:
            return 0.0
        if self.pool.grace_mode == "continuous":
            # A level reached at the clock has held for no time yet.
            held = self.clock - self.since[x - 1] if x <= len(self.since) else 0
            return max(0, self.grace - held) / 1e6
        spent = self.cumulative[x - 1] if x <= len(self.cumulative) else 0
        return max(0, self.grace - spent) / 1e6

    def view(self) -> PoolView:
        concurrent = self.pool.model == "concurrent"
        if max(self.peak, self.count) > self.shown_peak:
            self.shown_peak = max(self.peak, self.count)
            self.shown_peak_at = self.peak_at if self.peak >= self.count else self.clock
        return PoolView(
            account=self.account.id,
            pool=self.pool.id,
            model=self.pool.model,
            at_us=self.clock,
            active_users=self.count,
            licensed=self.licensed,
            excess=self.excess,
            period_start_us=self.period_start,
            period_end_us=self.period_end,
            peak_users=self.shown_peak,
            peak_at_us=self.shown_peak_at,
            grace_remaining_s=self.grace_remaining(),
            billable_overage=self.billable if concurrent else None,
            users_seen=self.users_seen,
            unknown_logouts=self.unknown_logouts,
            last_event_us=self.last_event_us,
            assigned=len(self.assigned),
            refused_assigns=self.refused_assigns,
        )


class _AccountClock:
    """One account's watermark, newest event time and buffer of events waiting for the watermark
    (accounts share no state, so each is applied in order on its own)."""

    __slots__ = ("latest", "pending", "states", "watermark")

    def __init__(self, start_us: int) -> None:
        self.watermark = start_us
        self.latest = start_us  # newest event time seen (start_us before any)
        self.pending: list[tuple[int, int, int, TrackedEvent]] = []
        self.states: tuple[_PoolState, ...] = ()


@dataclass(frozen=True, slots=True)
class _At:
    """An event moved to another time (seat events before a replay's window apply at its start)."""

    event: TrackedEvent
    ts_us: int

    @property
    def account(self) -> str:
        return self.event.account

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def user(self) -> str:
        return self.event.user

    @property
    def pool(self) -> str | None:
        return self.event.pool

    @property
    def session(self) -> str | None:
        return self.event.session


@dataclass(frozen=True, slots=True)
class Replay:
    """One account's state replayed from the store (`Tracker.replay`), ready to `install`."""

    account: str
    tracker: Tracker


def _replayed(account: Account, start_us: int, watermark_us: int, *,
              seats: Iterable[TrackedEvent], events: Iterable[TrackedEvent],
              closes: dict[str, frozenset[tuple[str, bytes, int]]]) -> Tracker:
    """A tracker of `account` alone, fed in order from `start_us` up to `watermark_us`."""
    tracker = Tracker(Contracts(accounts=(account,)), start_us)
    for (_, pool_id), state in tracker._pools.items():
        state.closes_at_last = closes.get(pool_id, frozenset())
        state.records_timeouts = not closes
    tracker.apply_all(seats)
    tracker.apply_all(events)
    tracker.advance(watermark_us)
    for state in tracker._pools.values():
        state.closes_at_last = frozenset()  # every close it names lies before the watermark
        state.records_timeouts = False
    return tracker


class Tracker:
    """Live state of every configured pool. Feed it events in any order; read `views()`.

    Each account has its own watermark. Events newer than it wait in the account's buffer and are
    applied in event-time order (heartbeats, logouts, logins at the same instant) when the
    watermark passes them, so a caller that advances each account to "now minus a reorder window"
    (`advance_each`) gets events that arrive up to that window out of order applied exactly.
    Events older than their account's watermark apply at once (late; see the module docstring).
    `views()` shows each pool at its account's watermark.

    `start_us` is where every pool's clock begins (to rebuild after a restart, start at the
    earliest current period start minus the session timeout, apply the stored events, advance).
    """

    def __init__(self, contracts: Contracts, start_us: int) -> None:
        self.contracts = contracts
        self._clocks: dict[str, _AccountClock] = {}
        self._seq = itertools.count()
        self._pools: dict[tuple[str, str], _PoolState] = {}
        # account -> (account, add-on id -> steps) for accounts with Elite concurrent pools
        self._addons: dict[str, tuple[Account, dict[str, tuple[tuple[int, int], ...]]]] = {}
        # account -> (account, its named pools' states): where a user's seat is looked up
        self._named: dict[str, tuple[Account, tuple[_PoolState, ...]]] = {}
        self.unresolved = 0  # events whose pool could not be told
        for account in contracts.accounts:
            ledger = apply_orders(account)
            for pool in account.pools:
                self._pools[account.id, pool.id] = _PoolState(
                    account, pool, start_us, licensed_schedule(ledger, pool.id))
            clock = self._clocks[account.id] = _AccountClock(start_us)
            clock.states = tuple(self._pools[account.id, p.id] for p in account.pools)
            self._named[account.id] = (account, tuple(
                self._pools[account.id, p] for p in account.named_pools))
            if any(p.tier == "elite" and p.model == "concurrent" for p in account.pools):
                self._addons[account.id] = (account, {
                    addon_id: licensed_schedule(ledger, addon_id) for addon_id in SHORTFALL_ADDONS
                })

    @property
    def pending(self) -> int:
        """Events waiting for their account's watermark."""
        return sum(len(c.pending) for c in self._clocks.values())

    @property
    def latest_us(self) -> int:
        """The newest event time seen in any account (the start before any event)."""
        return max((c.latest for c in self._clocks.values()), default=0)

    def latest_of(self, account: str) -> int:
        """The newest event time seen in `account` (the start before any event)."""
        return self._clocks[account].latest

    def watermark_of(self, account: str) -> int:
        """How far `account` has been applied: its pools' state is shown at this time."""
        return self._clocks[account].watermark

    def _resolve(self, event: TrackedEvent) -> _PoolState | None:
        """The pool state an event applies to: its pool, else `Account.pool_for` with the seat
        its user holds now (the tracker applies events in time order, so now is its time)."""
        if event.pool is not None:
            return self._pools.get((event.account, event.pool))
        named = self._named.get(event.account)
        if named is None:
            return None  # an account the contracts do not have
        account, states = named
        held = next((s.pool.id for s in states if event.user in s.assigned), None)
        pool = account.pool_for(event.type, held)
        return None if pool is None else self._pools[account.id, pool]

    def _apply_now(self, event: TrackedEvent) -> None:
        state = self._resolve(event)
        if state is None:
            self.unresolved += 1
            return
        state.apply(event.type, event.user, event.session, event.ts_us)

    def apply(self, event: TrackedEvent) -> None:
        """Take one accepted, newly stored event (duplicates must not be applied twice)."""
        ts = event.ts_us
        clock = self._clocks.get(event.account)
        if clock is None:
            self.unresolved += 1  # an account the contracts do not have
            return
        clock.latest = max(clock.latest, ts)
        if ts < clock.watermark:
            self._apply_now(event)
        else:
            heapq.heappush(clock.pending, (ts, KIND_ORDER.get(event.type, 3), next(self._seq),
                                           event))

    def apply_all(self, events: Iterable[TrackedEvent]) -> int:
        """`apply` each event; returns how many."""
        n = 0
        for n, event in enumerate(events, 1):  # noqa: B007 - n is the count
            self.apply(event)
        return n

    def _advance(self, clock: _AccountClock, to_us: int) -> None:
        clock.watermark = max(clock.watermark, to_us)
        watermark, pending = clock.watermark, clock.pending
        while pending and pending[0][0] <= watermark:
            self._apply_now(heapq.heappop(pending)[3])
        for state in clock.states:
            state.advance(watermark)

    def advance(self, to_us: int) -> None:
        """Move every account's watermark to `to_us` (never backwards): apply the events up to it
        in order, then timeouts, licence changes, rollovers and grace up to it in every pool."""
        for clock in self._clocks.values():
            self._advance(clock, to_us)

    def advance_each(self, now_us: int | None, window_us: int,
                     accounts: Iterable[str] | None = None) -> None:
        """Move each account's watermark (never backwards) to its own "now" minus `window_us`,
        where an account's now is the later of `now_us` and its newest event, or with `now_us`
        None its newest event alone. An account's events never move another's watermark.
        `accounts` limits it to those (ones it does not know are skipped); None: every account."""
        clocks = (self._clocks.values() if accounts is None
                  else filter(None, map(self._clocks.get, accounts)))
        for clock in clocks:
            latest = clock.latest if now_us is None or clock.latest > now_us else now_us
            self._advance(clock, latest - window_us)

    def flush(self) -> None:
        """Advance each account to its newest event: every buffered event is applied."""
        self.advance_each(None, 0)

    # --- exact again: replaying an account from the store ----------------------------------------

    def dirty_accounts(self) -> list[str]:
        """Accounts whose live state may differ from the bill: a late event was applied at its
        pool's clock, or a session timed out (`reseed` makes them exact again)."""
        return [a for a, clock in self._clocks.items() if any(s.dirty for s in clock.states)]

    def replay_start(self, account_id: str) -> int:
        """Where a replay of the account starts: its current period's start (the period at its
        watermark) minus its session timeout, so sessions open at the start are seen."""
        account = self._account(account_id)
        period = monthly_period(account, from_us(self._clocks[account_id].watermark))
        return to_us(period.start - account.session_timeout)

    def replay(self, account_id: str, events: Iterable[TrackedEvent],
               seats_before: Iterable[TrackedEvent] = ()) -> Replay:
        """The account's state replayed in event-time order from the store, as the bill sees it.

        `events` are every stored event of the account from `replay_start` on (any order);
        `seats_before` its assign/unassign events before that start (they decide whose seat is
        whose). A first pass finds the sessions that time out before the watermark; the second
        closes each at its last event, as the rating does, instead of `session_timeout` later.
        Pure and self-contained (it reads only the account's watermark here), so it may run in
        another thread; `install` puts the result in place.
        """
        account = self._account(account_id)
        watermark = self._clocks[account_id].watermark
        start = self.replay_start(account_id)
        ordered = sorted(events, key=lambda e: e.ts_us)
        seats = [_At(e, start) for e in seats_before]
        first = _replayed(account, start, watermark, seats=seats, events=ordered, closes={})
        closes = {pool: frozenset(state.timed_out)
                  for (_, pool), state in first._pools.items() if state.timed_out}
        second = first if not closes else _replayed(account, start, watermark, seats=seats,
                                                     events=ordered, closes=closes)
        return Replay(account_id, second)

    def install(self, replay: Replay, since: Iterable[TrackedEvent] = ()) -> None:
        """Put a `replay` in place of the account's live state, then move it on to the account's
        watermark (which may have moved while the replay ran). `since` are the account's events
        stored after the replay read its own (applied here first); the caller holds new events
        back until this returns."""
        account_id = replay.account
        start = self.replay_start(account_id)
        for event in since:
            if event.ts_us >= start:
                replay.tracker.apply(event)
            elif event.type in SEAT_EVENTS:
                replay.tracker.apply(_At(event, start))
        mine, theirs = self._clocks[account_id], replay.tracker._clocks[account_id]
        for key, state in replay.tracker._pools.items():
            self._pools[key] = state
        theirs.latest = max(theirs.latest, mine.latest)
        watermark = max(mine.watermark, theirs.watermark)
        self._clocks[account_id] = theirs
        named = self._named[account_id][0]
        self._named[account_id] = (named, tuple(self._pools[account_id, p]
                                                for p in named.named_pools))
        self._advance(theirs, watermark)

    def _account(self, account_id: str) -> Account:
        account = self.contracts.get(account_id)
        if account is None:
            raise KeyError(f"no account {account_id!r} in the contracts")
        return account

    def views(self) -> tuple[PoolView, ...]:
        """Every pool's state at its account's watermark, in contracts order."""
        return tuple(state.view() for state in self._pools.values())

    def addon_views(self) -> tuple[AddonView, ...]:
        """Add-on coverage of accounts with Elite concurrent pools, at their watermarks."""
        out = []
        for account_id, (account, schedules) in self._addons.items():
            states = [self._pools[account_id, p.id] for p in account.pools]
            watermark = self._clocks[account_id].watermark
            purchased = {a: quantity_at(steps, watermark) for a, steps in schedules.items()}
            coverage = {c.addon: c for c in cover(
                account,
                {st.pool.id: st.users_seen for st in states},
                licensed={st.pool.id: st.licensed for st in states},
                purchased=purchased,
            )}
            for addon_id in SHORTFALL_ADDONS:
                c = coverage.get(addon_id)
                out.append(AddonView(account_id, addon_id, c.required if c else 0,
                                     purchased[addon_id], c.shortfall if c else 0))
        return tuple(out)
