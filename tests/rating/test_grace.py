"""Grace and overage (DESIGN section 2, seed 003): continuous and cumulative rules at their
boundaries, billable peak, overage seats and amount, and the excess episodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from rating.contracts import Pool
from rating.periods import Period
from rating.pool import PoolRating, rate_pool
from rating.usage import UsageEvent

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = Period(T0, T0 + timedelta(days=1))
M = 60  # seconds in a minute


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rate(spans: list[tuple[float, float]], licensed: int = 0, grace_min: float = 30,
         mode: str = "continuous", steps: tuple[tuple[datetime, int], ...] = ()) -> PoolRating:
    """Each span (start, end) in seconds is one user's session."""
    pool = Pool("agents", "elite", "concurrent", licensed, Decimal("149.00"), Decimal("12.50"),
                timedelta(minutes=grace_min), mode)  # type: ignore[arg-type]
    events: list[UsageEvent] = []
    for i, (s, e) in enumerate(spans):
        events.append(UsageEvent(f"i{i}", "login", "acme", f"u{i}", at(s), "agents", "s"))
        events.append(UsageEvent(f"o{i}", "logout", "acme", f"u{i}", at(e), "agents", "s"))
    return rate_pool(pool, events, DAY, steps, timedelta(hours=12))


@pytest.mark.parametrize(
    ("spans", "mode", "seats"),
    [
        pytest.param([(0, 30 * M)], "continuous", 0, id="exactly 30:00 is free"),
        pytest.param([(0, 30 * M + 1)], "continuous", 1, id="30:01 is billed"),
        pytest.param([(0, 30 * M + 1e-6)], "continuous", 1, id="30:00.000001 is billed"),
        pytest.param([(0, 20 * M), (3600, 3600 + 20 * M)], "continuous", 0,
                     id="two 20-minute excursions are free (continuous)"),
        pytest.param([(0, 20 * M), (3600, 3600 + 20 * M)], "cumulative", 1,
                     id="two 20-minute excursions are billed (cumulative)"),
        pytest.param([(0, 15 * M), (3600, 3600 + 15 * M)], "cumulative", 1,
                     id="cumulative exactly 30:00 in total is billed"),
        pytest.param([(0, 15 * M), (3600, 3600 + 15 * M - 1)], "cumulative", 0,
                     id="cumulative 29:59 in total is free"),
        pytest.param([(0, 30 * M)], "cumulative", 1, id="cumulative 30:00 in one go is billed"),
        pytest.param([(0, 20 * M), (20 * M, 40 * M)], "continuous", 1,
                     id="a handover keeps one unbroken stretch"),
        pytest.param([(0, 40 * M), (10 * M, 30 * M)], "continuous", 1,
                     id="a 20-minute second level over a 40-minute first bills one"),
        pytest.param([(0, 40 * M), (0, 40 * M), (10 * M, 15 * M)], "continuous", 2,
                     id="a short spike inside a long sustained excess bills the sustained level"),
        pytest.param([(0, 40 * M), (0, 40 * M), (10 * M, 15 * M)], "cumulative", 2,
                     id="the same spike under the cumulative rule"),
    ],
)
def test_overage_seats(spans: list[tuple[float, float]], mode: str, seats: int) -> None:
    """Overage seats are the highest level of x(t) the pool's grace rule bills."""
    rating = rate(spans, mode=mode)
    assert seats == rating.overage_seats
    assert Decimal("12.50") * seats == rating.overage_amount


def test_spike_inside_sustained_excess() -> None:
    """Peak, billable peak and overage of a 5-minute spike to 15 in two hours at 12 (E = 10)."""
    spans = [(0, 7200)] * 12 + [(1800, 2100)] * 3
    rating = rate(spans, licensed=10)
    assert (15, at(1800)) == (rating.peak, rating.peak_at)
    assert 12 == rating.billable_peak
    assert 2 == rating.overage_seats
    assert Decimal("25.00") == rating.overage_amount
    (episode,) = rating.episodes
    assert (at(0), at(7200), timedelta(hours=2)) == (episode.start, episode.end, episode.duration)
    assert (5, 2, False) == (episode.peak_excess, episode.sustained_level, episode.within_grace)


def test_episodes_list_each_stretch_with_its_grace() -> None:
    """Each maximal stretch of excess is listed; the short ones are within grace."""
    spans = [(0, 10 * M), (3600, 3600 + 45 * M), (3600, 3600 + 31 * M), (7200, 7200 + 30 * M)]
    rating = rate(spans)
    assert [
        (at(0), at(600), 1, 0, True),
        (at(3600), at(3600 + 45 * M), 2, 2, False),
        (at(7200), at(7200 + 30 * M), 1, 0, True),
    ] == [(e.start, e.end, e.peak_excess, e.sustained_level, e.within_grace)
          for e in rating.episodes]
    assert 2 == rating.overage_seats


def test_cumulative_episodes_share_the_billed_level() -> None:
    """Under the cumulative rule every episode reaching a billed level is billed."""
    rating = rate([(0, 20 * M), (3600, 3600 + 20 * M)], mode="cumulative")
    assert [(1, False), (1, False)] == [(e.sustained_level, e.within_grace)
                                        for e in rating.episodes]
    free = rate([(0, 10 * M), (3600, 3600 + 10 * M)], mode="cumulative")
    assert [(0, True), (0, True)] == [(e.sustained_level, e.within_grace) for e in free.episodes]


@pytest.mark.parametrize(
    ("spans", "mode", "expected"),
    [
        pytest.param([(0, 3600)] * 8 + [(600, 1800)], "continuous", 8, id="20 minutes at 9"),
        pytest.param([(0, 3600)] * 8 + [(600, 2460)], "continuous", 9, id="31 minutes at 9"),
        pytest.param([(0, 3600)] * 8 + [(0, 900), (2700, 3600)], "continuous", 8,
                     id="two 15-minute stretches at 9"),
        pytest.param([(0, 3600)] * 8 + [(0, 900), (2700, 3600)], "cumulative", 9,
                     id="two 15-minute stretches at 9, cumulative"),
        pytest.param([], "continuous", 0, id="nobody"),
        # Two 20-minute stretches at 5 with a 1-minute dip between, over an hour at 2: the dip
        # to 2 breaks the stretch (2 is the level held longest), a dip to 4 keeps 4 for 41 min.
        pytest.param([(0, 7200)] * 2 + [(3600, 3600 + 20 * M)] * 3
                     + [(3600 + 21 * M, 3600 + 41 * M)] * 3, "continuous", 2,
                     id="a dip to the floor between two 20-minute stretches at 5"),
        pytest.param([(0, 7200)] * 2 + [(3600, 3600 + 41 * M)] * 2 + [(3600, 3600 + 20 * M),
                                                                      (3600 + 21 * M, 3600 + 41 * M)],
                     "continuous", 4, id="a dip to 4 between two 20-minute stretches at 5"),
    ],
)
def test_billable_peak_applies_the_rule_to_c(spans: list[tuple[float, float]], mode: str,
                                            expected: int) -> None:
    """billable_peak is the highest level of c(t) itself that the grace rule lets count."""
    rating = rate(spans, licensed=100, mode=mode)
    assert expected == rating.billable_peak
    assert 0 == rating.overage_seats


def test_excess_measured_against_a_changing_licensed_quantity() -> None:
    """x(t) follows E(t): a purchase mid-excess cuts the stretch short of the grace."""
    spans = [(0, 3600), (0, 3600)]
    assert 1 == rate(spans, licensed=1).overage_seats
    assert 0 == rate(spans, licensed=1, steps=((at(25 * M), 2),)).overage_seats
    assert 1 == rate(spans, licensed=1, steps=((at(31 * M), 2),)).overage_seats


@pytest.mark.parametrize(
    ("spans", "seats"),
    [
        pytest.param([(86400 - 31 * M, 86400 + 3600)], 1, id="31 minutes before the end"),
        pytest.param([(86400 - 30 * M, 86400 + 3600)], 0, id="exactly 30:00 before the end"),
        pytest.param([(86400 - 29 * M, 86400 + 3600)], 0,
                     id="29 minutes in this period, the rest in the next"),
    ],
)
def test_stretches_are_cut_at_the_period_end(spans: list[tuple[float, float]],
                                             seats: int) -> None:
    """Only the part of a stretch inside the period counts towards its grace."""
    assert seats == rate(spans).overage_seats


@pytest.mark.parametrize("mode", ["continuous", "cumulative"])
def test_zero_grace_bills_any_excess(mode: str) -> None:
    """With no grace every level reached for any time is billed, and only those."""
    rating = rate([(0, 1), (0, 1e-6)], grace_min=0, mode=mode)
    assert 2 == rating.overage_seats
    assert 0 == rate([], grace_min=0, mode=mode).overage_seats
