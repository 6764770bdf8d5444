"""Named seats: who holds a named pool's licenses over time, and how the seats were used in a period.

`assign`/`unassign` events build each named pool's roster against the quantity in force (an assign
past it is refused and recorded); logins and heartbeats are then sorted into licensed use by
assigned users and unlicensed use by everyone else (DESIGN section 2, "Named pools").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from rating.contracts import Account
from rating.periods import Period, local_midnight
from rating.seatchanges import QuantitySteps, licensed_at
from rating.usage import SAME_INSTANT_RANK, EventLike

__all__ = [
    "Assignment",
    "EventLike",
    "NamedUsage",
    "RefusedAssign",
    "Roster",
    "Rosters",
    "build_rosters",
    "rate_named",
]

#: Same-instant order: a seat handed over at one instant is freed before it is taken, and taken
#: before the new holder's login is judged.
_RANK = SAME_INSTANT_RANK
_USE = ("login", "heartbeat")


@dataclass(frozen=True, slots=True)
class Assignment:
    """User `user` held a seat of `pool` over `[start, end)`; `end` is None while still held."""

    pool: str
    user: str
    start: datetime
    end: datetime | None = None

    def holds(self, instant: datetime) -> bool:
        """True when the seat is held at `instant`."""
        return self.start <= instant and (self.end is None or instant < self.end)


@dataclass(frozen=True, slots=True)
class RefusedAssign:
    """An assign refused because every licensed seat of the pool was taken at its time."""

    pool: str
    user: str
    at: datetime
    event_id: str
    licensed: int
    assigned: int
    reason: str


@dataclass(frozen=True, slots=True)
class Roster:
    """The assignments of one named pool over time, and the assigns it refused."""

    pool: str
    assignments: tuple[Assignment, ...]
    refused: tuple[RefusedAssign, ...]

    def holds(self, user: str, instant: datetime) -> bool:
        """True when `user` holds a seat of this pool at `instant`."""
        return any(a.user == user and a.holds(instant) for a in self.assignments)

    def size_at(self, instant: datetime) -> int:
        """How many seats are assigned at `instant`."""
        return sum(1 for a in self.assignments if a.holds(instant))

    def max_size(self, period: Period) -> int:
        """The most seats assigned at any instant of `period`."""
        # The count only rises where an assignment starts, so those instants (and the start of
        # the period) are the only candidates.
        instants = [period.start, *(a.start for a in self.assignments if a.start in period)]
        return max(self.size_at(t) for t in instants)


@dataclass(frozen=True, slots=True)
class Rosters:
    """The rosters of all named pools of one account."""

    account: str
    rosters: tuple[Roster, ...]
    #: assign/unassign events that named no pool where the account has several named pools.
    unresolved: tuple[str, ...] = ()

    def get(self, pool_id: str) -> Roster | None:
        """The roster of named pool `pool_id`, or None."""
        return next((r for r in self.rosters if r.pool == pool_id), None)

    def assigned_pool(self, user: str, instant: datetime) -> str | None:
        """The named pool `user` holds a seat of at `instant`, or None (first pool in contract
        order if, unusually, they hold seats in several)."""
        return next((r.pool for r in self.rosters if r.holds(user, instant)), None)


@dataclass(frozen=True, slots=True)
class NamedUsage:
    """How one named pool's seats were held and used in a period.

    `licensed` is the highest quantity in force in the period (what the customer pays for);
    `assigned` the most seats assigned at once; `active_users` the distinct assigned users who
    used a seat; `unlicensed_users` the distinct users who signed in without holding one;
    `idle_seats` = licensed - active users (seats the customer could save).
    """

    pool: str
    licensed: int
    assigned: int
    active_users: int
    unlicensed_users: int
    refused_assigns: int
    idle_seats: int
    unlicensed: tuple[str, ...] = ()
    refused: tuple[RefusedAssign, ...] = ()


def _steps_for(account: Account, pool_id: str, steps: Mapping[str, QuantitySteps] | None) -> QuantitySteps:
    if steps is not None and pool_id in steps:
        return steps[pool_id]
    pool = account.pool(pool_id)
    assert pool is not None
    return ((local_midnight(account.anchor, account.tz), pool.quantity),)


def _order(events: Iterable[EventLike], account: Account) -> list[EventLike]:
    mine = [e for e in events if e.account == account.id and e.type in _RANK]
    return sorted(mine, key=lambda e: (e.ts, _RANK[e.type], e.id))


def build_rosters(account: Account, events: Iterable[EventLike],
                  steps: Mapping[str, QuantitySteps] | None = None) -> Rosters:
    """Replay the account's assign/unassign events (all of them, not only one period's).

    `steps` gives each named pool's quantity in force over time (`SeatLedger.licensed_steps`);
    a pool without steps has its contract quantity from the anchor. An event without a pool goes
    where `Account.pool_for` says (the only named pool; an unassign: the pool the user holds).
    """
    named = account.named_pools
    held: dict[str, dict[str, datetime]] = {p: {} for p in named}
    done: dict[str, list[Assignment]] = {p: [] for p in named}
    refused: dict[str, list[RefusedAssign]] = {p: [] for p in named}
    pool_steps = {p: _steps_for(account, p, steps) for p in named}
    unresolved: list[str] = []
    for event in _order(events, account):
        if event.type not in ("assign", "unassign"):
            continue
        pool = event.pool
        if pool is None:
            holding = next((p for p in named if event.user in held[p]), None)
            pool = account.pool_for(event.type, holding)
            if pool is None:
                unresolved.append(event.id)
                continue
        if pool not in held:
            continue  # a concurrent or unknown pool: seats there are not assigned
        roster = held[pool]
        if event.type == "unassign":
            start = roster.pop(event.user, None)
            if start is not None:
                done[pool].append(Assignment(pool, event.user, start, event.ts))
            continue
        if event.user in roster:
            continue  # assigning a seat the user already holds changes nothing
        licensed = licensed_at(pool_steps[pool], event.ts)
        if len(roster) >= licensed:
            refused[pool].append(RefusedAssign(
                pool=pool, user=event.user, at=event.ts, event_id=event.id, licensed=licensed,
                assigned=len(roster),
                reason=f"all {licensed} licensed seats of {pool!r} are assigned",
            ))
            continue
        roster[event.user] = event.ts
    rosters = []
    for pool in named:
        still = [Assignment(pool, user, start) for user, start in held[pool].items()]
        assignments = sorted(done[pool] + still, key=lambda a: (a.start, a.user))
        rosters.append(Roster(pool, tuple(assignments), tuple(refused[pool])))
    return Rosters(account.id, tuple(rosters), tuple(unresolved))


def rate_named(account: Account, events: Iterable[EventLike], period: Period,
               steps: Mapping[str, QuantitySteps] | None = None) -> tuple[NamedUsage, ...]:
    """Seat holding and use of each named pool of `account` in `period`, in contract order.

    `events` may (and for a right roster must) include events before the period. A login or
    heartbeat counts for a named pool when it names the pool, or names none and
    `Account.pool_for` puts it there (its user holds a seat of the pool, or the account's only
    pool is that named pool: unlicensed use).
    """
    events = list(events)
    rosters = build_rosters(account, events, steps)
    named = account.named_pools
    active: dict[str, set[str]] = {p: set() for p in named}
    unlicensed: dict[str, set[str]] = {p: set() for p in named}
    for event in _order(events, account):
        if event.type not in _USE or event.ts not in period:
            continue
        pool = event.pool
        if pool is None:
            pool = account.pool_for(event.type, rosters.assigned_pool(event.user, event.ts))
        if pool not in active:
            continue
        roster = rosters.get(pool)
        assert roster is not None
        if roster.holds(event.user, event.ts):
            active[pool].add(event.user)
        else:
            unlicensed[pool].add(event.user)
    results = []
    for pool in named:
        roster = rosters.get(pool)
        assert roster is not None
        pool_steps = _steps_for(account, pool, steps)
        inside = [q for t, q in pool_steps if period.start < t < period.end]
        licensed = max([licensed_at(pool_steps, period.start), *inside])
        refused = tuple(r for r in roster.refused if r.at in period)
        results.append(NamedUsage(
            pool=pool,
            licensed=licensed,
            assigned=roster.max_size(period),
            active_users=len(active[pool]),
            unlicensed_users=len(unlicensed[pool]),
            refused_assigns=len(refused),
            idle_seats=max(0, licensed - len(active[pool])),
            unlicensed=tuple(sorted(unlicensed[pool])),
            refused=refused,
        ))
    return tuple(results)
