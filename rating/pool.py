"""Rating of concurrent pools: peak, billable peak, overage seats and amount, excess episodes.

`rate_pools` rates many pools (of many accounts) from one `EventColumns` batch at once;
`rate_pool` is the one-pool form. E(t), the licensed quantity, is an input built elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray

from rating.contracts import GraceMode, Pool
from rating.errors import RatingError
from rating.grace import billable_levels, episode_arrays, window_minimum
from rating.people import UserUsage, usage_by_user
from rating.periods import Period
from rating.sessions import session_arrays
from rating.timeline import (
    SPAN_BITS,
    Steps,
    Timeline,
    concurrency_steps,
    excess_steps,
    licensed_steps,
)
from rating.usage import EventColumns, EventLike, UsageEvent, from_us, span_us, to_us

__all__ = ["Episode", "PoolJob", "PoolRating", "rate_pool", "rate_pools"]

I64 = NDArray[np.int64]
_OFFSET_MASK = (1 << SPAN_BITS) - 1


@dataclass(frozen=True, slots=True)
class Episode:
    """A maximal stretch `[start, end)` with x(t) > 0, clipped to the period.

    `sustained_level` is the level the grace rule bills for it (continuous: held for one stretch
    longer than the grace inside the episode; cumulative: min(peak_excess, overage seats)).
    `within_grace` is true when it bills nothing.
    """

    start: datetime
    end: datetime
    duration: timedelta
    peak_excess: int
    sustained_level: int
    within_grace: bool


@dataclass(frozen=True, slots=True)
class PoolJob:
    """One pool to rate: its period, E(t) as (time, quantity) steps, and the session timeout.

    Before the first step of `licensed` (or with none) `pool.quantity` is in force. `until` is
    the horizon of the events given (default `period.end + session_timeout`); a session still
    open there counts as open to it.
    """

    account: str
    pool: Pool
    period: Period
    licensed: Sequence[tuple[datetime, int]] = ()
    session_timeout: timedelta = timedelta(hours=12)
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class PoolRating:
    """The rating of one pool for one period.

    `peak` is max c(t) and `peak_at` its first instant (None when nobody was counted);
    `billable_peak` is the highest level of c(t) the grace rule lets count; `overage_seats` the
    highest billable level of x(t) = max(0, c(t) - E(t)); `overage_amount` is seats x the pool's
    overage price, unrounded (zero for a pool without one). `concurrency`, `licensed` and
    `excess` are c(t), E(t) and x(t) on the period (iterating one yields (time, value) steps).
    `sessions` and `inferred_sessions` count sessions touching the period, `ignored_logouts` the
    logouts in it that closed nothing; `users` is how many distinct users had a session in it
    (the add-on coverage rule needs it) and `user_ids` are those users. `people` is each of
    them with their sessions and time in the period (`rating.people`).
    """

    account: str
    pool: Pool
    period: Period
    peak: int
    peak_at: datetime | None
    billable_peak: int
    overage_seats: int
    overage_amount: Decimal
    episodes: tuple[Episode, ...]
    grace: timedelta
    grace_mode: GraceMode
    concurrency: Timeline
    licensed: Timeline
    excess: Timeline
    sessions: int
    inferred_sessions: int
    ignored_logouts: int
    users: int
    user_ids: frozenset[str]
    people: tuple[UserUsage, ...] = ()


def rate_pools(cols: EventColumns, jobs: Sequence[PoolJob]) -> tuple[PoolRating, ...]:
    """Rate every job's pool from one batch of events, vectorised over all of them.

    `cols` should hold, per job, the events of `[period.start - session_timeout, until)`
    (see `rating.sessions.build_sessions`); events of pools no job names are skipped.
    """
    n_codes = len(cols.pools)
    n = len(jobs)
    slot_of_code = np.full(n_codes, -1, np.int64)
    timeout_us = np.ones(n_codes, np.int64)
    until_us = np.full(n_codes, np.iinfo(np.int64).min, np.int64)
    start = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    for j, job in enumerate(jobs):
        start[j], end[j] = to_us(job.period.start), to_us(job.period.end)
        timeout = span_us(job.session_timeout)
        if timeout <= 0:
            raise RatingError(f"pool {job.pool.id!r}: session_timeout must be positive")
        code = cols.pool_code(job.account, job.pool.id)
        if code < 0:
            continue
        if slot_of_code[code] >= 0:
            raise RatingError(f"pool {job.pool.id!r} of {job.account!r} is rated twice")
        slot_of_code[code] = j
        timeout_us[code] = timeout
        horizon = job.until if job.until is not None else job.period.end + job.session_timeout
        until_us[code] = to_us(horizon)
    member_slot = slot_of_code[cols.member_pool]

    sessions = session_arrays(cols, timeout_us, until_us)
    c = concurrency_steps(sessions, member_slot, start, end)
    e = licensed_steps([job.licensed for job in jobs], [job.pool.quantity for job in jobs],
                       start, end)
    x = excess_steps(c, e)

    grace_us = np.array([span_us(job.pool.grace) for job in jobs], np.int64)
    continuous = np.array([job.pool.grace_mode == "continuous" for job in jobs], np.bool_)
    window = window_minimum(x, grace_us, continuous) if continuous.any() else None
    overage = billable_levels(x, grace_us, continuous, window)
    billable_peak = billable_levels(c, grace_us, continuous)
    episodes = episode_arrays(x, grace_us, continuous, overage, window)
    peak, peak_g = _peaks(c)

    # Sessions and users of each slot's period; a session of no duration that starts inside
    # it still shows its user used the pool.
    s_slot = member_slot[sessions.member]
    ok = s_slot >= 0
    s_slot_ok = np.where(ok, s_slot, 0)
    in_period = ok & (sessions.start < end[s_slot_ok]) & (
        (sessions.end > start[s_slot_ok]) | (sessions.start >= start[s_slot_ok]))
    n_sessions = np.bincount(s_slot[in_period], minlength=n)
    n_inferred = np.bincount(s_slot[in_period & sessions.inferred], minlength=n)
    i_slot = member_slot[sessions.ignored_member]
    i_ok = i_slot >= 0
    i_slot_ok = np.where(i_ok, i_slot, 0)
    in_ign = i_ok & (sessions.ignored_ts >= start[i_slot_ok]) & (
        sessions.ignored_ts < end[i_slot_ok])
    n_ignored = np.bincount(i_slot[in_ign], minlength=n)
    seen = np.zeros(member_slot.shape[0], np.bool_)
    seen[sessions.member[in_period]] = True
    seen_members = np.flatnonzero(seen)
    users = _users_per_slot(cols, seen_members, member_slot, n)

    ep_bounds = np.searchsorted(episodes.slot, np.arange(n + 1))
    by_slot = np.flatnonzero(in_period)
    by_slot = by_slot[np.argsort(s_slot[by_slot], kind="stable")]
    slot_bounds = np.searchsorted(s_slot[by_slot], np.arange(n + 1))
    user_names = [u for _, u in cols.users]
    out: list[PoolRating] = []
    for j, job in enumerate(jobs):
        pool = job.pool
        eps = tuple(
            _episode(int(start[j]), int(episodes.start_g[k]), int(episodes.end_g[k]),
                     int(episodes.peak[k]), int(episodes.sustained[k]))
            for k in range(int(ep_bounds[j]), int(ep_bounds[j + 1]))
        )
        price = pool.overage_price if pool.overage_price is not None else Decimal(0)
        seats = int(overage[j])
        mine = by_slot[int(slot_bounds[j]):int(slot_bounds[j + 1])]
        billed = ([(to_us(e.start), to_us(e.end)) for e in eps if not e.within_grace]
                  if pool.model == "concurrent" else [])
        people = usage_by_user(user_names, cols.member_user[sessions.member[mine]],
                               sessions.start[mine], sessions.end[mine], sessions.inferred[mine],
                               period=(int(start[j]), int(end[j])), billed=billed)
        out.append(PoolRating(
            account=job.account,
            pool=pool,
            period=job.period,
            peak=int(peak[j]),
            peak_at=None if peak[j] == 0 else from_us(int(start[j])
                                                      + (int(peak_g[j]) & _OFFSET_MASK)),
            billable_peak=int(billable_peak[j]),
            overage_seats=seats,
            overage_amount=price * seats,
            episodes=eps,
            grace=pool.grace,
            grace_mode=pool.grace_mode,
            concurrency=c.timeline(j, job.period),
            licensed=e.timeline(j, job.period),
            excess=x.timeline(j, job.period),
            sessions=int(n_sessions[j]),
            inferred_sessions=int(n_inferred[j]),
            ignored_logouts=int(n_ignored[j]),
            users=len(users[j]),
            user_ids=users[j],
            people=people,
        ))
    return tuple(out)


def _episode(start: int, start_g: int, end_g: int, peak: int, sustained: int) -> Episode:
    s = from_us(start + (start_g & _OFFSET_MASK))
    e = from_us(start + (end_g - (start_g & ~_OFFSET_MASK)))
    return Episode(s, e, e - s, peak, sustained, sustained == 0)


def _peaks(c: Steps) -> tuple[I64, I64]:
    """Per slot, max c(t) and the global time it is first reached."""
    slot = c.slot_of()
    peak = np.zeros(c.slots, np.int64)
    has = c.offsets[:-1] < c.offsets[1:]
    if has.any():
        peak[has] = np.maximum.reduceat(c.value, c.offsets[:-1][has])
    hits = np.flatnonzero(c.value == peak[slot])
    first = np.searchsorted(hits, c.offsets[:-1])
    at = np.zeros(c.slots, np.int64)
    found = first < hits.shape[0]
    at[found] = c.g[hits[first[found]]]
    return peak, at


def _users_per_slot(cols: EventColumns, members: NDArray[np.intp], member_slot: I64,
                    n: int) -> list[frozenset[str]]:
    slots = member_slot[members]
    order = np.argsort(slots, kind="stable")
    members, slots = members[order].astype(np.int64), slots[order]
    bounds = np.searchsorted(slots, np.arange(n + 1))
    names = cols.users
    user_of = cols.member_user
    return [frozenset(names[u][1] for u in user_of[members[bounds[j]:bounds[j + 1]]].tolist())
            for j in range(n)]


def rate_pool(
    pool: Pool,
    events: Sequence[EventLike] | EventColumns,
    period: Period,
    licensed: Sequence[tuple[datetime, int]] = (),
    session_timeout: timedelta = timedelta(hours=12),
    *,
    account: str | None = None,
    until: datetime | None = None,
) -> PoolRating:
    """Rate one pool for one period (see `rate_pools`).

    Pass the pool's events of `[period.start - session_timeout, period.end + session_timeout)`;
    events without a pool are taken as this pool's, events of another pool are an error.
    `licensed` is E(t) as (time, quantity) steps; before its first step `pool.quantity` holds.
    """
    if isinstance(events, EventColumns):
        cols = events
        if account is None:
            accounts = {a for a, p in cols.pools if p == pool.id}
            if len(accounts) > 1:
                raise RatingError(f"pool {pool.id!r} is in several accounts: pass `account`")
            account = accounts.pop() if accounts else ""
    else:
        accounts = {e.account for e in events}
        if account is None and len(accounts) > 1:
            raise RatingError(f"events of several accounts for pool {pool.id!r}: pass `account`")
        if account is None:
            account = accounts.pop() if accounts else ""
        wrong = next((e for e in events if e.pool not in (None, pool.id)
                      or e.account != account), None)
        if wrong is not None:
            raise RatingError(f"event {wrong.id!r} is of account {wrong.account!r}, pool "
                              f"{wrong.pool!r}, not of pool {pool.id!r} of {account!r}")
        cols = EventColumns.from_events(
            UsageEvent(e.id, e.type, e.account, e.user, e.ts,  # type: ignore[arg-type]
                       pool.id, e.session) for e in events)
    job = PoolJob(account, pool, period, licensed, session_timeout, until)
    return rate_pools(cols, [job])[0]
