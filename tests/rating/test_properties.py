"""Property tests: the vectorised rating against a slow, plainly written second-by-second oracle
on random small scenarios, for both grace modes; batch rating against one pool at a time."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rating.contracts import Pool
from rating.periods import Period
from rating.pool import PoolJob, PoolRating, rate_pool, rate_pools
from rating.sessions import _slow_sessions, build_sessions, session_arrays
from rating.usage import EventColumns, UsageEvent, to_us

P0 = datetime(2026, 3, 1, tzinfo=UTC)
LENGTH = 3600  # seconds in the rated period
ORDER = {"heartbeat": 0, "logout": 1, "login": 2}


@dataclass
class Scenario:
    events: list[tuple[str, str, int, str | None]]  # (type, user, second, session)
    timeout: int
    grace: int
    mode: str
    base: int
    steps: list[tuple[int, int]]  # (second, quantity)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    # Times on a coarse grid (mostly minutes or 5 minutes) make gaps equal to the timeout and
    # stretches equal to the grace common, which is where the boundary bugs live.
    unit = draw(st.sampled_from([60, 60, 300, 1]))
    span = LENGTH // unit
    timeout = unit * draw(st.integers(1, max(1, 5400 // unit)))
    events = draw(st.lists(st.tuples(
        st.sampled_from(["login", "login", "logout", "heartbeat"]),
        st.sampled_from(["u0", "u1", "u2", "u3"]),
        st.integers(-timeout // unit, span + timeout // unit - 1).map(lambda k: k * unit),
        st.sampled_from([None, "a", "b", "c"]),
    ), max_size=24))
    return Scenario(
        events=events, timeout=timeout, grace=unit * draw(st.integers(0, 2400 // unit)),
        mode=draw(st.sampled_from(["continuous", "cumulative"])),
        base=draw(st.integers(0, 3)),
        steps=draw(st.lists(st.tuples(st.integers(-600 // unit, span - 1).map(lambda k: k * unit),
                                      st.integers(0, 4)), max_size=3)),
    )


def at(second: int) -> datetime:
    return P0 + timedelta(seconds=second)


def usage(s: Scenario) -> list[UsageEvent]:
    return [UsageEvent(f"e{i:03}", t, "acme", u, at(sec), "agents", sid)  # type: ignore[arg-type]
            for i, (t, u, sec, sid) in enumerate(s.events)]


def pool_of(s: Scenario) -> Pool:
    return Pool("agents", "elite", "concurrent", s.base, Decimal("10"), Decimal("7.25"),
                timedelta(seconds=s.grace), s.mode)  # type: ignore[arg-type]


def rate(s: Scenario) -> PoolRating:
    return rate_pool(pool_of(s), usage(s), Period(at(0), at(LENGTH)),
                     [(at(t), q) for t, q in s.steps], timedelta(seconds=s.timeout))


# --- the oracle: plain Python, one second at a time -----------------------------------------

def oracle_sessions(s: Scenario) -> tuple[list[tuple[str, int, float, bool]], list[int]]:
    """(user, start, end, inferred) of every session, and the times of ignored logouts.

    A session closes (at its last event) only when silent for *longer* than the timeout: an
    event exactly `timeout` after the last keeps it, and so does the horizon at exactly that."""
    until = LENGTH + s.timeout
    rows = sorted(((sec, ORDER[t], f"e{i:03}", t, u, sid)
                   for i, (t, u, sec, sid) in enumerate(s.events) if sec < until))
    open_: dict[str, dict[str | None, list[int]]] = {}
    done: list[tuple[str, int, float, bool]] = []
    ignored: list[int] = []
    for sec, _, _, typ, user, sid in rows:
        mine = open_.setdefault(user, {})
        for key in list(mine):
            start, last = mine[key]
            if sec - last > s.timeout:
                done.append((user, start, last, True))
                del mine[key]
        if typ == "logout":
            if sid is None:
                if not mine:
                    ignored.append(sec)
                for start, _ in mine.values():
                    done.append((user, start, sec, False))
                mine.clear()
            elif sid in mine:
                done.append((user, mine.pop(sid)[0], sec, False))
            else:
                ignored.append(sec)
        elif typ == "heartbeat" and sid is None and mine:
            for key in mine:
                mine[key][1] = sec
        elif sid in mine:
            mine[sid][1] = sec
        else:
            mine[sid] = [sec, sec]
    for user, mine in open_.items():
        for start, last in mine.values():
            if until - last > s.timeout:
                done.append((user, start, last, True))
            else:
                done.append((user, start, float("inf"), False))
    return done, ignored


def level(f: list[int], grace: int, mode: str) -> int:
    """Highest k such that f >= k for a run longer than grace (or in total at least grace)."""
    best = 0
    for k in range(1, max(f, default=0) + 1):
        if mode == "cumulative":
            if sum(1 for v in f if v >= k) >= max(grace, 1):
                best = k
        else:
            run = 0
            for v in f:
                run = run + 1 if v >= k else 0
                if run > grace:
                    best = k
    return best


@dataclass
class Expected:
    peak: int
    peak_at: int | None
    billable_peak: int
    overage: int
    episodes: list[tuple[int, int, int, int]]
    users: set[str]
    inferred: int
    ignored: int
    c: list[int]


def oracle(s: Scenario) -> Expected:
    sessions, ignored = oracle_sessions(s)
    c = []
    for sec in range(LENGTH):
        c.append(len({u for u, start, end, _ in sessions if start <= sec < end}))
    licensed = []
    for sec in range(LENGTH):
        q = s.base
        for t, qty in sorted(s.steps, key=lambda step: step[0]):
            if t <= sec:
                q = qty
        licensed.append(q)
    x = [max(0, a - b) for a, b in zip(c, licensed, strict=True)]
    peak = max(c)
    overage = level(x, s.grace, s.mode)
    episodes = []
    sec = 0
    while sec < LENGTH:
        if x[sec] > 0:
            end = sec
            while end < LENGTH and x[end] > 0:
                end += 1
            run = x[sec:end]
            sustained = (level(run, s.grace, "continuous") if s.mode == "continuous"
                         else min(max(run), overage))
            episodes.append((sec, end, max(run), sustained))
            sec = end
        else:
            sec += 1
    touching = [(u, start, end, inf) for u, start, end, inf in sessions
                if start < LENGTH and (end > 0 or start >= 0)]
    return Expected(
        peak=peak, peak_at=c.index(peak) if peak else None,
        billable_peak=level(c, s.grace, s.mode), overage=overage, episodes=episodes,
        users={u for u, *_ in touching}, inferred=sum(1 for *_, inf in touching if inf),
        ignored=sum(1 for t in ignored if 0 <= t < LENGTH), c=c,
    )


def per_second(rating: PoolRating) -> list[int]:
    return [rating.concurrency.value_at(at(sec)) for sec in range(LENGTH)]


# --- properties -------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_rating_matches_the_oracle(s: Scenario) -> None:
    """Peak, billable peak, overage, episodes and counts equal the second-by-second oracle."""
    expected = oracle(s)
    got = rate(s)
    assert expected.c == per_second(got)
    assert expected.peak == got.peak
    assert (None if expected.peak_at is None else at(expected.peak_at)) == got.peak_at
    assert expected.billable_peak == got.billable_peak
    assert expected.overage == got.overage_seats
    assert Decimal("7.25") * expected.overage == got.overage_amount
    assert [(at(a), at(b), p, k) for a, b, p, k in expected.episodes] == [
        (e.start, e.end, e.peak_excess, e.sustained_level) for e in got.episodes]
    assert [k == 0 for *_, k in expected.episodes] == [e.within_grace for e in got.episodes]
    assert expected.users == set(got.user_ids)
    assert (expected.inferred, expected.ignored) == (got.inferred_sessions, got.ignored_logouts)


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_arrival_order_never_changes_the_rating(s: Scenario, rnd: random.Random) -> None:
    """Shuffling the events gives an equal rating."""
    shuffled = Scenario(**s.__dict__)
    events = usage(s)
    rnd.shuffle(events)
    pool = pool_of(s)
    got = rate_pool(pool, events, Period(at(0), at(LENGTH)), [(at(t), q) for t, q in s.steps],
                    timedelta(seconds=s.timeout))
    assert rate(shuffled) == got


STILL_OPEN = 1 << 62


@settings(max_examples=150, deadline=None)
@given(scenarios())
# Two sessions of one user from the same instant, one timed out and one still open (found in CI).
@example(Scenario(events=[("login", "u0", 0, None), ("login", "u0", 0, "a"),
                          ("login", "u0", 3660, None)],
                  timeout=3720, grace=0, mode="continuous", base=0, steps=[]))
def test_vectorised_sessions_equal_the_event_machine(s: Scenario) -> None:
    """session_arrays builds the same sessions as build_sessions, on every member."""
    events = usage(s)
    until = at(LENGTH + s.timeout)
    log = build_sessions(events, timedelta(seconds=s.timeout), until)
    # A session still open has no end; it sorts after every closed one of the same start.
    machine = sorted((x.user, to_us(x.start), STILL_OPEN if x.end is None else to_us(x.end),
                      x.inferred) for x in log.sessions)
    cols = EventColumns.from_events(events)
    n = len(cols.pools)
    sa = session_arrays(cols, np.full(n, s.timeout * 1_000_000, np.int64),
                        np.full(n, to_us(until), np.int64))
    arrays = sorted((cols.users[int(cols.member_user[m])][1], a, STILL_OPEN if o else b, bool(i))
                    for m, a, b, i, o in zip(sa.member.tolist(), sa.start.tolist(),
                                             sa.end.tolist(), sa.inferred.tolist(),
                                             sa.open.tolist(), strict=True))
    assert machine == arrays
    assert len(log.ignored_logouts) == len(sa.ignored_ts)


@settings(max_examples=100, deadline=None)
@given(st.lists(scenarios(), min_size=1, max_size=4), st.lists(st.integers(-40, 40), min_size=4,
                                                             max_size=4))
def test_a_batch_rates_each_pool_as_alone(scenarios_: list[Scenario], shifts: list[int]) -> None:
    """Rating several accounts' pools in one batch equals rating each alone (periods differ)."""
    jobs: list[PoolJob] = []
    events: list[UsageEvent] = []
    alone: list[PoolRating] = []
    for j, s in enumerate(scenarios_):
        shift = timedelta(minutes=shifts[j])
        acc = f"acc{j}"
        mine = [UsageEvent(e.id, e.type, acc, e.user, e.ts + shift, e.pool, e.session)
                for e in usage(s)]
        period = Period(at(0) + shift, at(LENGTH) + shift)
        steps = [(at(t) + shift, q) for t, q in s.steps]
        jobs.append(PoolJob(acc, pool_of(s), period, steps, timedelta(seconds=s.timeout)))
        events += mine
        alone.append(rate_pool(pool_of(s), mine, period, steps, timedelta(seconds=s.timeout),
                               account=acc))
    batch = rate_pools(EventColumns.from_events(events), jobs)
    assert [(r.account, r.overage_seats, r.billable_peak, r.peak, r.peak_at, r.episodes,
             r.concurrency, r.excess, r.users) for r in alone] == [
        (r.account, r.overage_seats, r.billable_peak, r.peak, r.peak_at, r.episodes,
         r.concurrency, r.excess, r.users) for r in batch]


#: Silences of exactly the timeout, between events and at the horizon (LENGTH + timeout).
@settings(max_examples=300, deadline=None)
@given(scenarios())
@example(Scenario(events=[("login", "u0", 0, "a"), ("heartbeat", "u0", 600, "a"),
                          ("heartbeat", "u0", 1201, "a"), ("logout", "u0", 1300, "a")],
                  timeout=600, grace=0, mode="continuous", base=0, steps=[]))
@example(Scenario(events=[("login", "u0", 0, None), ("login", "u0", 0, "a"),
                          ("heartbeat", "u0", 600, None), ("login", "u1", LENGTH, "b"),
                          ("login", "u2", LENGTH - 1, None)],
                  timeout=600, grace=0, mode="continuous", base=0, steps=[]))
def test_both_session_paths_equal_the_oracle(s: Scenario) -> None:
    """The vectorised sessions (`session_arrays`: key by key, with the event machine for mixed
    members) and the event machine run on every member alike build the oracle's sessions
    under the rule "closed when silent for longer than the timeout"."""
    expected, ignored = oracle_sessions(s)
    want = sorted((u, a * 1_000_000, STILL_OPEN if b == float("inf") else int(b) * 1_000_000, inf)
                  for u, a, b, inf in expected)
    events = usage(s)
    cols = EventColumns.from_events(events)
    n = len(cols.pools)
    timeout = np.full(n, s.timeout * 1_000_000, np.int64)
    until = np.full(n, to_us(at(LENGTH + s.timeout)), np.int64)
    base = to_us(P0)
    keep = np.flatnonzero((cols.kind <= 2) & (cols.ts < to_us(at(LENGTH + s.timeout))))
    sa = session_arrays(cols, timeout, until)
    paths = [(sa.member, sa.start, sa.end, sa.inferred, sa.open, sa.ignored_member, sa.ignored_ts)]
    if keep.size:
        paths.append(_slow_sessions(cols, keep, timeout, until))
    for parts in paths:
        member, start, end, inferred, still_open = (np.asarray(p) for p in parts[:5])
        got = sorted((cols.users[int(cols.member_user[m])][1], a - base,
                      STILL_OPEN if o else b - base, bool(i))
                     for m, a, b, i, o in zip(member.tolist(), start.tolist(), end.tolist(),
                                              inferred.tolist(), still_open.tolist(),
                                              strict=True))
        assert want == got
        assert sorted(ignored) == sorted(((np.asarray(parts[-1]) - base) // 1_000_000).tolist())
