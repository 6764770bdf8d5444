"""Daily peaks (`rating.daily`): local days across DST, and a property against a
minute-by-minute oracle over random step functions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.contracts import Pool
from rating.daily import DayPeak, daily_peaks
from rating.periods import Period, local_midnight
from rating.pool import rate_pool
from rating.timeline import Timeline
from rating.usage import UsageEvent, to_us

NY = ZoneInfo("America/New_York")
# 31 Oct .. 2 Nov 2026 in New York; 1 November is 25 hours long (DST ends).
PERIOD = Period(local_midnight(date(2026, 10, 31), NY), local_midnight(date(2026, 11, 3), NY))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_daily_peaks_of_a_rated_pool_across_the_dst_change() -> None:
    """Per local day: the peak, its first instant, and how long it was held that day."""
    events = [
        ("login", "ann", "2026-10-31T09:00:00-04:00"), ("login", "bob", "2026-10-31T10:00:00-04:00"),
        ("logout", "bob", "2026-10-31T10:30:00-04:00"), ("login", "bob", "2026-10-31T15:00:00-04:00"),
        ("logout", "bob", "2026-10-31T15:10:00-04:00"), ("logout", "ann", "2026-10-31T17:00:00-04:00"),
        # Over midnight into the 25-hour day: the peak of 1 on 1 Nov starts at its midnight.
        ("login", "cy", "2026-10-31T23:00:00-04:00"), ("logout", "cy", "2026-11-01T01:30:00-05:00"),
    ]
    usage = [UsageEvent(f"e{i}", k, "acme", who, utc(ts), "agents", None)  # type: ignore[arg-type]
             for i, (k, who, ts) in enumerate(events)]
    pool = Pool("agents", "elite", "concurrent", 5, Decimal("1"), Decimal("1"),
                timedelta(minutes=30), "continuous")
    got = daily_peaks(rate_pool(pool, usage, PERIOD).concurrency, NY)
    assert (
        DayPeak(date(2026, 10, 31), 2, utc("2026-10-31T10:00:00-04:00"), 40 * 60),
        # 00:00 EDT .. 01:30 EST is 2.5 hours.
        DayPeak(date(2026, 11, 1), 1, utc("2026-11-01T00:00:00-04:00"), 9000),
        DayPeak(date(2026, 11, 2), 0, None, 0),
    ) == got


def test_a_period_starting_mid_day_clips_its_first_and_last_day() -> None:
    """Days are clipped to the period: a period from noon shows that day from noon."""
    start = utc("2026-11-02T12:00:00-05:00")
    period = Period(start, start + timedelta(days=1))
    line = Timeline(np.array([to_us(start)], np.int64), np.array([3], np.int64), period)
    assert (DayPeak(date(2026, 11, 2), 3, start, 12 * 3600),
            DayPeak(date(2026, 11, 3), 3, utc("2026-11-03T00:00:00-05:00"), 12 * 3600)) == (
        daily_peaks(line, NY))


@st.composite
def step_functions(draw: st.DrawFn) -> Timeline:
    minutes = int(PERIOD.duration.total_seconds()) // 60
    # Steps on whole minutes, dense around local midnights to hit the day bounds.
    cuts = draw(st.lists(st.one_of(st.integers(1, minutes - 1),
                                   st.sampled_from([1439, 1440, 1441, 2939, 2940, 2941, 2999])),
                         max_size=12, unique=True))
    times = [0, *sorted(cuts)]
    values = [draw(st.integers(0, 3)) for _ in times]
    keep = [0] + [i for i in range(1, len(times)) if values[i] != values[i - 1]]
    base = to_us(PERIOD.start)
    return Timeline(np.array([base + times[i] * 60_000_000 for i in keep], np.int64),
                    np.array([values[i] for i in keep], np.int64), PERIOD)


@settings(max_examples=200, deadline=None)
@given(step_functions())
def test_daily_peaks_match_a_minute_by_minute_count(line: Timeline) -> None:
    """Peak, first instant of it and time at it per local day equal a minute-by-minute walk."""
    days: dict[date, list[tuple[datetime, int]]] = {}
    minute = PERIOD.start
    while minute < PERIOD.end:
        days.setdefault(minute.astimezone(NY).date(), []).append((minute, line.value_at(minute)))
        minute += timedelta(minutes=1)
    expected = []
    for day, values in days.items():
        peak = max(v for _, v in values)
        expected.append(DayPeak(day, peak, next(m for m, v in values if v == peak) if peak else None,
                                60 * sum(1 for _, v in values if v == peak) if peak else 0))
    assert tuple(expected) == daily_peaks(line, NY)
