"""Sessions from events (DESIGN section 2 "Concurrency"), by the event-by-event machine and the
vectorised one, which must agree on every rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.contracts import Pool
from rating.periods import Period
from rating.pool import rate_pool
from rating.sessions import (
    Session,
    argsort_pairs,
    build_sessions,
    session_arrays,
    sort_pairs,
    split_sessions,
)
from rating.usage import EventColumns, UsageEvent, to_us

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = 2000  # minutes after T0: the horizon of every case


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ev(typ: str, user: str, minutes: float, session: str | None = None,
       eid: str | None = None) -> UsageEvent:
    eid = eid or f"{typ}-{user}-{minutes}-{session}"
    return UsageEvent(eid, typ, "acme", user, at(minutes), "agents", session)  # type: ignore[arg-type]


Row = tuple[str, float, float | None, bool]


def by_machine(events: list[UsageEvent], timeout_min: float) -> tuple[list[Row], int]:
    log = build_sessions(events, timedelta(minutes=timeout_min), at(UNTIL))
    rows = [(s.user, (s.start - T0) / timedelta(minutes=1),
             None if s.end is None else (s.end - T0) / timedelta(minutes=1), s.inferred)
            for s in log.sessions]
    return sorted(rows, key=repr), len(log.ignored_logouts)


def by_arrays(events: list[UsageEvent], timeout_min: float) -> tuple[list[Row], int]:
    cols = EventColumns.from_events(events)
    n = len(cols.pools)
    sa = session_arrays(cols, np.full(n, int(timeout_min * 60_000_000), np.int64),
                        np.full(n, to_us(at(UNTIL)), np.int64))
    base = to_us(T0)
    rows = [(cols.users[int(cols.member_user[m])][1], (s - base) / 60e6,
             None if o else (e - base) / 60e6, bool(i))
            for m, s, e, i, o in zip(sa.member.tolist(), sa.start.tolist(), sa.end.tolist(),
                                     sa.inferred.tolist(), sa.open.tolist(), strict=True)]
    return sorted(rows, key=repr), len(sa.ignored_ts)


CASES: list[tuple[str, list[UsageEvent], float, list[Row], int]] = [
    ("a repeated login of an open session changes nothing",
     [ev("login", "a", 0, "s1"), ev("login", "a", 10, "s1"), ev("logout", "a", 60, "s1")],
     720, [("a", 0, 60, False)], 0),
    ("a logout without session id closes all the user's sessions",
     [ev("login", "a", 0, "s1"), ev("login", "a", 5, "s2"), ev("logout", "a", 30)],
     720, [("a", 0, 30, False), ("a", 5, 30, False)], 0),
    ("a logout without session id leaves other users alone",
     [ev("login", "a", 0, "s1"), ev("login", "b", 5, "s2"), ev("logout", "a", 30),
      ev("logout", "b", 40, "s2")],
     720, [("a", 0, 30, False), ("b", 5, 40, False)], 0),
    ("a logout of an unknown session is counted and ignored",
     [ev("login", "a", 0, "s1"), ev("logout", "a", 10, "s9"), ev("logout", "a", 20, "s1")],
     720, [("a", 0, 20, False)], 1),
    ("a second logout of the same session is ignored",
     [ev("login", "a", 0, "s1"), ev("logout", "a", 20, "s1"), ev("logout", "a", 25, "s1")],
     720, [("a", 0, 20, False)], 1),
    ("a logout without id when nothing is open is ignored",
     [ev("logout", "a", 20)], 720, [], 1),
    ("a heartbeat opens a session whose login was lost",
     [ev("heartbeat", "a", 10, "s1"), ev("logout", "a", 40, "s1")],
     720, [("a", 10, 40, False)], 0),
    ("a heartbeat without id refreshes all open sessions",
     [ev("login", "a", 0, "s1"), ev("login", "a", 0, "s2"), ev("heartbeat", "a", 50),
      ev("heartbeat", "a", 100), ev("logout", "a", 130)],
     60, [("a", 0, 130, False), ("a", 0, 130, False)], 0),
    ("a heartbeat without id opens a session where none is open",
     [ev("heartbeat", "a", 10), ev("logout", "a", 30)], 60, [("a", 10, 30, False)], 0),
    ("a heartbeat without id does not reopen a closed named session",
     [ev("login", "a", 0, "s1"), ev("logout", "a", 10, "s1"), ev("heartbeat", "a", 20),
      ev("logout", "a", 30)],
     60, [("a", 0, 10, False), ("a", 20, 30, False)], 0),
    ("same timestamp: the logout applies before the login (a handover)",
     [ev("login", "a", 30, "s2"), ev("logout", "a", 30, "s1"), ev("login", "a", 0, "s1"),
      ev("logout", "a", 60, "s2")],
     720, [("a", 0, 30, False), ("a", 30, 60, False)], 0),
    ("same timestamp and session: logout then login reopens",
     [ev("login", "a", 30, "s1"), ev("logout", "a", 30, "s1"), ev("login", "a", 0, "s1"),
      ev("logout", "a", 60, "s1")],
     720, [("a", 0, 30, False), ("a", 30, 60, False)], 0),
    ("same timestamp: a heartbeat does not outlive a logout",
     [ev("login", "a", 0, "s1"), ev("logout", "a", 30, "s1"), ev("heartbeat", "a", 30, "s1"),
      ev("login", "a", 90, "s1"), ev("logout", "a", 100, "s1")],
     720, [("a", 0, 30, False), ("a", 90, 100, False)], 0),
    ("no event for the timeout: closed at the last event and inferred",
     [ev("login", "a", 0, "s1"), ev("heartbeat", "a", 30, "s1"), ev("heartbeat", "a", 100, "s1")],
     60, [("a", 0, 30, True), ("a", 100, 100, True)], 0),
    ("a gap of exactly the timeout keeps the session (only a longer silence closes it)",
     [ev("login", "a", 0, "s1"), ev("heartbeat", "a", 60, "s1"), ev("logout", "a", 70, "s1")],
     60, [("a", 0, 70, False)], 0),
    ("a gap just over the timeout expires the session",
     [ev("login", "a", 0, "s1"), ev("heartbeat", "a", 60.001, "s1"), ev("logout", "a", 70, "s1")],
     60, [("a", 0, 0, True), ("a", 60.001, 70, False)], 0),
    ("a heartbeat without id exactly the timeout later keeps every open session",
     [ev("login", "a", 0, "s1"), ev("login", "a", 0, "s2"), ev("heartbeat", "a", 60),
      ev("logout", "a", 120)],
     60, [("a", 0, 120, False), ("a", 0, 120, False)], 0),
    ("a gap just under the timeout keeps it",
     [ev("login", "a", 0, "s1"), ev("heartbeat", "a", 59.99, "s1"),
      ev("logout", "a", 70, "s1")],
     60, [("a", 0, 70, False)], 0),
    ("a logout after the timeout closes nothing; the session ends inferred",
     [ev("login", "a", 0, "s1"), ev("logout", "a", 100, "s1")], 60, [("a", 0, 0, True)], 1),
    ("a logout without id after the timeout closes nothing",
     [ev("login", "a", 0, "s1"), ev("login", "a", 90, "s2"), ev("logout", "a", 100)],
     60, [("a", 0, 0, True), ("a", 90, 100, False)], 0),
    ("a session still open at the horizon stays open",
     [ev("login", "a", 1990, "s1")], 720, [("a", 1990, None, False)], 0),
    ("one timed out before the horizon is closed inferred",
     [ev("login", "a", 1000, "s1")], 720, [("a", 1000, 1000, True)], 0),
    ("one silent exactly the timeout at the horizon stays open",
     [ev("login", "a", UNTIL - 720, "s1")], 720, [("a", UNTIL - 720, None, False)], 0),
    ("one silent a moment longer than the timeout at the horizon is closed inferred",
     [ev("login", "a", UNTIL - 720.001, "s1")], 720,
     [("a", UNTIL - 720.001, UNTIL - 720.001, True)], 0),
    ("logins without session ids form one session per user",
     [ev("login", "a", 0), ev("login", "a", 5), ev("logout", "a", 20)],
     720, [("a", 0, 20, False)], 0),
]


@pytest.mark.parametrize(("events", "timeout", "expected", "ignored"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_session_rules(events: list[UsageEvent], timeout: float, expected: list[Row],
                       ignored: int) -> None:
    """Each rule gives the same sessions and ignored-logout count on both machines."""
    expected = sorted(expected, key=repr)
    assert (expected, ignored) == by_machine(events, timeout)
    assert (expected, ignored) == by_arrays(events, timeout)


@pytest.mark.parametrize("seed", range(5))
def test_arrival_order_never_matters(seed: int) -> None:
    """Shuffling the events changes no session and no count."""
    events = [c for case in CASES for c in case[1]]
    events = [UsageEvent(f"{i}", e.type, e.account, e.user, e.ts, e.pool, e.session)
              for i, e in enumerate(events)]
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    assert by_machine(events, 60) == by_machine(shuffled, 60)
    assert by_arrays(events, 60) == by_arrays(shuffled, 60)


def test_events_outside_sessions_are_skipped() -> None:
    """Assign/unassign and events without a pool make no session; events at the horizon neither."""
    events = [
        UsageEvent("1", "assign", "acme", "a", at(0), "agents"),
        UsageEvent("2", "login", "acme", "b", at(0), None),
        UsageEvent("3", "login", "acme", "c", at(UNTIL), "agents"),
    ]
    assert ([], 0) == by_machine(events, 60)
    assert ([], 0) == by_arrays(events, 60)


def test_split_at_period_boundaries() -> None:
    """A session crossing a period boundary is split at it; only the last part is inferred."""
    s = Session("acme", "agents", "a", "s1", at(0), at(100), inferred=True)
    open_ = Session("acme", "agents", "a", "s2", at(10), None)
    parts = split_sessions([s, open_], [at(50), at(200), at(0)])
    assert [
        Session("acme", "agents", "a", "s1", at(0), at(50), False),
        Session("acme", "agents", "a", "s1", at(50), at(100), True),
        Session("acme", "agents", "a", "s2", at(10), at(50), False),
        Session("acme", "agents", "a", "s2", at(50), at(200), False),
        Session("acme", "agents", "a", "s2", at(200), None, False),
    ] == parts


def test_from_rows_codes_members_and_sessions() -> None:
    """The store's columns become codes; the same session text of two users gets two codes."""
    cols = EventColumns.from_rows(
        account=["acme", "acme", "acme", "beta"], id=["1", "2", "3", "4"],
        type=["login", "logout", "login", "heartbeat"], user=["a", "a", "b", "a"],
        pool=["agents", "agents", "agents", None], session=["s1", "s1", "s1", None],
        ts_us=[10, 20, 30, 40],
    )
    assert [2, 1, 2, 0] == cols.kind.tolist()
    assert (("acme", "agents"),) == cols.pools
    assert (("acme", "a"), ("acme", "b"), ("beta", "a")) == cols.users
    assert [0, 0, 1, -1] == cols.member.tolist()
    assert [0, 0, 1, -1] == cols.session.tolist()
    assert [0, 0] == cols.member_pool.tolist()
    assert [0, 1] == cols.member_user.tolist()
    assert ("s1", "s1") == cols.sessions


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_sort_pairs_orders_like_lexsort_whatever_the_width(data: st.DataObject) -> None:
    """sort_pairs and argsort_pairs order rows by (group, sub) as np.lexsort does, on every
    path: one packed int64, uint64 split by the high bits of group, and the fallback."""
    sub_bits = data.draw(st.sampled_from([1, 8, 40, 44, 58, 62]), label="sub_bits")
    group_bits = data.draw(st.integers(1, 23), label="group_bits")
    n = data.draw(st.integers(0, 300), label="rows")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    group = rng.integers(0, 1 << group_bits, n, dtype=np.int64)
    sub = rng.integers(0, 1 << sub_bits, n, dtype=np.int64)
    if n:  # repeats and both extremes, where packing bugs show
        group[: n // 3] = group[0]
        sub[-1], group[-1] = (1 << sub_bits) - 1, (1 << group_bits) - 1
    order = np.lexsort((sub, group))
    got_group, got_sub = sort_pairs(group, sub, sub_bits)
    assert (group[order].tolist(), sub[order].tolist()) == (got_group.tolist(), got_sub.tolist())
    by = argsort_pairs(group, sub, sub_bits)
    assert (group[order].tolist(), sub[order].tolist()) == (group[by].tolist(), sub[by].tolist())


def test_agents_heartbeating_every_timeout_stay_signed_in() -> None:
    """Issue 16: 13 agents heartbeating every 10 minutes with a 10-minute timeout are one
    session each from their first heartbeat to their logout, on both machines, and the pool
    counts all 13 the whole time."""
    events = [ev("heartbeat" if minute else "login", f"agent{i}", minute, "s")
              for i in range(13) for minute in range(0, 490, 10)]
    events += [ev("logout", f"agent{i}", 490, "s") for i in range(13)]
    expected = sorted(((f"agent{i}", 0.0, 490.0, False) for i in range(13)), key=repr)
    assert (expected, 0) == by_machine(events, 10)
    assert (expected, 0) == by_arrays(events, 10)
    rating = rate_pool(Pool("agents", "elite", "concurrent", 13, Decimal("10"), Decimal("10")),
                       events, Period(at(0), at(600)), session_timeout=timedelta(minutes=10))
    assert ((at(0), 13), (at(490), 0)) == rating.concurrency.points()
    assert 0 == rating.inferred_sessions
