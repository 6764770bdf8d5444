"""Who was counted (`rating.people` through `rate_pool`): table cases, and a property against the
second-by-second oracle of `tests/rating/test_properties.py`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings

from rating.contracts import Pool
from rating.people import UserUsage, usage_by_user
from rating.periods import Period
from rating.pool import rate_pool
from rating.usage import UsageEvent
from tests.rating.test_properties import LENGTH, Scenario, at, oracle, oracle_sessions, rate, scenarios

T0 = datetime(2026, 11, 2, tzinfo=UTC)
PERIOD = Period(T0, T0 + timedelta(hours=10))
H = timedelta(hours=1)


def t(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def pool(quantity: int = 1) -> Pool:
    return Pool("agents", "elite", "concurrent", quantity, Decimal("10"), Decimal("10"),
                timedelta(minutes=30), "continuous")


def people(events: list[tuple[str, str, int, str | None]], quantity: int = 1,
           timeout: timedelta = 2 * H) -> list[UserUsage]:
    usage = [UsageEvent(f"e{i:02}", kind, "acme", user, t(minute), "agents", sid)  # type: ignore[arg-type]
             for i, (kind, user, minute, sid) in enumerate(events)]
    return list(rate_pool(pool(quantity), usage, PERIOD, session_timeout=timeout).people)


def u(user: str, sessions: int, seconds: int, first: int, last: int, *, inferred: int = 0,
      billed: bool = False) -> UserUsage:
    return UserUsage(user, sessions, seconds, t(first), t(last), inferred, billed)


@pytest.mark.parametrize(("events", "expected"), [
    # One session, logged out: 90 minutes.
    ([("login", "ann", 60, "a"), ("logout", "ann", 150, "a")], [u("ann", 1, 5400, 60, 150)]),
    # Two devices overlapping count once: 60..180 is 2 hours, two sessions.
    ([("login", "ann", 60, "a"), ("login", "ann", 90, "b"), ("logout", "ann", 120, "a"),
      ("logout", "ann", 180, "b")], [u("ann", 2, 7200, 60, 180)]),
    # A session from before the period is clipped to its start.
    ([("login", "bob", -30, None), ("logout", "bob", 30, None)], [u("bob", 1, 1800, 0, 30)]),
    # No event for longer than the timeout: closed at its last heartbeat, inferred.
    ([("login", "cy", 0, None), ("heartbeat", "cy", 100, None)], [u("cy", 1, 6000, 0, 100, inferred=1)]),
    # A heartbeat inside the timeout keeps the session open.
    ([("login", "cy", 0, None), ("heartbeat", "cy", 110, None), ("logout", "cy", 130, None)],
     [u("cy", 1, 7800, 0, 130)]),
    # Open past the period's end: clipped to it (last seen = the end, 10 hours).
    ([("login", "dee", 540, None), ("heartbeat", "dee", 650, None)], [u("dee", 1, 3600, 540, 600)]),
    # Sorted by user; a session ending before the period does not count.
    ([("login", "zed", 10, None), ("logout", "zed", 20, None), ("login", "al", -200, None),
      ("logout", "al", -100, None), ("login", "al", 5, None), ("logout", "al", 6, None)],
     [u("al", 1, 60, 5, 6), u("zed", 1, 600, 10, 20)]),
])
def test_usage_by_user_table(events: list[tuple[str, str, int, str | None]],
                             expected: list[UserUsage]) -> None:
    """Sessions, seconds, first login and last seen per user, clipped to the period."""
    assert expected == people(events)


def test_billed_window_marks_who_was_in_a_billed_episode() -> None:
    """With 1 licence, ann + bob for 60 min is billed (longer than the 30 min grace); cy's
    overlap with ann lasts 20 min, within grace: cy is not in a billed window, ann is."""
    got = people([("login", "ann", 0, None), ("logout", "ann", 300, None),
                  ("login", "bob", 60, None), ("logout", "bob", 120, None),
                  ("login", "cy", 200, None), ("logout", "cy", 220, None)], timeout=6 * H)
    assert [("ann", True), ("bob", True), ("cy", False)] == [(p.user, p.billed_window) for p in got]


def test_usage_by_user_on_arrays_skips_what_does_not_touch_the_period() -> None:
    """The array form: a session ending at the start is out, an empty one inside is in."""
    got = usage_by_user(["a", "b", "c"], np.array([0, 2, 2]), np.array([0, 10, 15], np.int64),
                        np.array([10, 20, 15], np.int64), np.array([False, True, False]),
                        period=(10, 30_000_010), billed=[(12_000_000, 20_000_000)])
    us = datetime(1970, 1, 1, tzinfo=UTC)
    assert (UserUsage("c", 2, 0, us + timedelta(microseconds=10),
                      us + timedelta(microseconds=20), 1, False),) == got


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_usage_by_user_matches_the_oracle(s: Scenario) -> None:
    """Per user: seconds signed in, sessions, inferred closes, first and last instant and the
    billed window equal a second-by-second count over the oracle's sessions; the seconds of all
    users add up to the integral of c(t)."""
    expected_rating = oracle(s)
    sessions, _ = oracle_sessions(s)
    touching = [x for x in sessions if x[1] < LENGTH and (x[2] > 0 or x[1] >= 0)]
    billed = {sec for a, b, _, k in expected_rating.episodes if k > 0 for sec in range(a, b)}
    expected = []
    for user in sorted({x[0] for x in touching}):
        mine = [x for x in touching if x[0] == user]
        inside = {sec for _, a, b, _ in mine for sec in range(max(a, 0), int(min(b, LENGTH)))}
        expected.append(UserUsage(
            user, len(mine), len(inside), at(max(min(a for _, a, _, _ in mine), 0)),
            at(int(min(max(b for _, _, b, _ in mine), LENGTH))),
            sum(1 for *_, inf in mine if inf), bool(inside & billed)))
    got = rate(s)
    assert expected == list(got.people)
    assert sum(expected_rating.c) == sum(p.seconds for p in got.people)
