"""Billing periods and terms: anchor day at local midnight, half-open, DST-aware, clamped anchors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rating.contracts import Account
from rating.periods import Period, add_months, local_midnight, monthly_period, period_of_month, term


def account(tz: str = "UTC", anchor: date = date(2026, 1, 1), billing: str = "monthly") -> Account:
    return Account(id="acme", timezone=tz, currency="USD", billing=billing,  # type: ignore[arg-type]
                   anchor=anchor, policy="prorate", tz=ZoneInfo(tz))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2026, 1, 31), 2, date(2026, 3, 31)),
        (date(2026, 1, 30), 3, date(2026, 4, 30)),
        (date(2026, 1, 29), 13, date(2027, 2, 28)),
        (date(2026, 3, 31), -1, date(2026, 2, 28)),
        (date(2026, 12, 15), 1, date(2027, 1, 15)),
    ],
)
def test_add_months_clamps_to_last_day(anchor: date, months: int, expected: date) -> None:
    """An anchor on the 29th-31st falls on the last day of shorter months, and only there."""
    assert expected == add_months(anchor, months)


def test_anchor_31st_in_february() -> None:
    """With an anchor of the 31st the February period is Jan 31 -> Feb 28 -> Mar 31."""
    acc = account(anchor=date(2026, 1, 31))
    feb = period_of_month(acc, 2026, 2)
    assert Period(utc(2026, 2, 28), utc(2026, 3, 31)) == feb
    assert Period(utc(2026, 1, 31), utc(2026, 2, 28)) == period_of_month(acc, 2026, 1)
    assert timedelta(days=31) == feb.duration


@pytest.mark.parametrize(
    ("month", "start", "end", "hours"),
    [
        # 2026-03-08 is the spring-forward day in New York: the month is an hour short.
        (3, utc(2026, 3, 1, 5), utc(2026, 4, 1, 4), 31 * 24 - 1),
        # 2026-11-01 is the fall-back day: November is an hour long.
        (11, utc(2026, 11, 1, 4), utc(2026, 12, 1, 5), 30 * 24 + 1),
        (6, utc(2026, 6, 1, 4), utc(2026, 7, 1, 4), 30 * 24),
    ],
)
def test_dst_months_in_new_york(month: int, start: datetime, end: datetime, hours: int) -> None:
    """Periods start at local midnight; a DST month is 23 or 25 hours off whole days."""
    acc = account("America/New_York")
    period = period_of_month(acc, 2026, month)
    assert Period(start, end) == period
    assert timedelta(hours=hours) == period.duration


def test_dst_day_is_23_hours() -> None:
    """Local midnight to local midnight across spring-forward is 23 hours, not 24."""
    tz = ZoneInfo("America/New_York")
    assert timedelta(hours=23) == local_midnight(date(2026, 3, 9), tz) - local_midnight(
        date(2026, 3, 8), tz)
    assert timedelta(hours=25) == local_midnight(date(2026, 11, 2), tz) - local_midnight(
        date(2026, 11, 1), tz)


@pytest.mark.parametrize(
    ("instant", "expected_start"),
    [
        (utc(2026, 3, 15, 12), utc(2026, 3, 15, 4)),
        (utc(2026, 3, 15, 4), utc(2026, 3, 15, 4)),        # the start belongs to the period
        (utc(2026, 3, 15, 3, 59, 59), utc(2026, 2, 15, 5)),  # one second before: previous one
        (utc(2026, 4, 15, 3, 59, 59), utc(2026, 3, 15, 4)),  # the end is not in the period
    ],
)
def test_monthly_period_is_half_open(instant: datetime, expected_start: datetime) -> None:
    """monthly_period returns the [start, end) period that holds the instant."""
    acc = account("America/New_York", anchor=date(2026, 1, 15))
    period = monthly_period(acc, instant)
    assert expected_start == period.start
    assert instant in period
    assert period.end not in period


def test_annual_term_and_monthly_overage_periods() -> None:
    """An annual contract has a one-year term, while overage periods stay monthly."""
    acc = account("Europe/Berlin", anchor=date(2026, 2, 1), billing="annual")
    instant = utc(2026, 11, 20)
    assert Period(utc(2026, 1, 31, 23), utc(2027, 1, 31, 23)) == term(acc, instant)
    assert Period(utc(2026, 10, 31, 23), utc(2026, 11, 30, 23)) == monthly_period(acc, instant)
    assert Period(utc(2026, 10, 31, 23), utc(2026, 11, 30, 23)) == term(
        acc, instant, billing="monthly")


def test_period_rejects_naive_and_empty() -> None:
    """A period needs aware bounds and start < end."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Period(datetime(2026, 1, 1), utc(2026, 2, 1))
    with pytest.raises(ValueError, match="empty period"):
        Period(utc(2026, 2, 1), utc(2026, 2, 1))


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # Midnight does not exist on these days: clocks jump from 23:59:59 to 01:00.
        ("America/Havana", date(2026, 3, 8), datetime(2026, 3, 8, 5, tzinfo=UTC)),
        ("America/Santiago", date(2026, 9, 6), datetime(2026, 9, 6, 4, tzinfo=UTC)),
        ("Asia/Beirut", date(2026, 3, 29), datetime(2026, 3, 28, 22, tzinfo=UTC)),
        # An ordinary midnight on a fall-back day (the repeat is at 01:00, not midnight).
        ("America/New_York", date(2026, 11, 1), datetime(2026, 11, 1, 4, tzinfo=UTC)),
    ],
)
def test_midnight_in_a_dst_gap_starts_the_day_at_the_transition(
    zone: str, day: date, expected: datetime
) -> None:
    """Where local midnight does not exist, the day starts at the first instant that does,
    which is on that local date (01:00), never an hour early on the day before."""
    start = local_midnight(day, ZoneInfo(zone))
    assert expected == start
    assert day == start.astimezone(ZoneInfo(zone)).date()
