"""Billing periods and terms: half-open `[start, end)` spans in aware UTC.

A period starts on the account's anchor day at local midnight in its timezone and ends on the same
day one month (or year) later; an anchor on the 29th-31st falls on the last day of shorter months.
DST days are 23 or 25 hours long; nothing here assumes a day is 24 hours.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from rating.contracts import Account

__all__ = ["Period", "add_months", "local_midnight", "monthly_period", "period_of_month", "term"]


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A half-open span `[start, end)` of aware UTC datetimes."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("period bounds must be timezone-aware")
        if not self.start < self.end:
            raise ValueError(f"empty period [{self.start}, {self.end})")

    def __contains__(self, instant: object) -> bool:
        return isinstance(instant, datetime) and self.start <= instant < self.end

    @property
    def duration(self) -> timedelta:
        """Length of the period (a DST month is an hour shorter or longer than its days)."""
        return self.end - self.start


def add_months(anchor: date, months: int) -> date:
    """The anchor's day `months` later (or earlier), clamped to the last day of shorter months."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(anchor.day, calendar.monthrange(year, month)[1]))


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant of local midnight starting `day` in `tz`."""
    naive = datetime(day.year, day.month, day.day)  # noqa: DTZ001 - made aware on the next line
    # fold=0 takes the first midnight where one repeats, and where midnight falls in a DST gap
    # it maps to the transition instant: the first instant of that local day that exists.
    local = naive.replace(tzinfo=tz, fold=0)
    return local.astimezone(UTC)


def _index_of(anchor: date, tz: ZoneInfo, instant: datetime, step: int) -> int:
    """The index k such that instant lies in [start(k), start(k+1)), periods of `step` months."""
    local = instant.astimezone(tz)
    months = (local.year - anchor.year) * 12 + (local.month - anchor.month)
    k = months // step
    # The guess is off by at most one period either way (the anchor day may not have come yet).
    while local_midnight(add_months(anchor, k * step), tz) > instant:
        k -= 1
    while local_midnight(add_months(anchor, (k + 1) * step), tz) <= instant:
        k += 1
    return k


def _span(anchor: date, tz: ZoneInfo, k: int, step: int) -> Period:
    return Period(
        local_midnight(add_months(anchor, k * step), tz),
        local_midnight(add_months(anchor, (k + 1) * step), tz),
    )


def monthly_period(account: Account, instant: datetime) -> Period:
    """The monthly overage period holding `instant` (monthly also for annual contracts)."""
    return _span(account.anchor, account.tz, _index_of(account.anchor, account.tz, instant, 1), 1)


def period_of_month(account: Account, year: int, month: int) -> Period:
    """The monthly period that starts in calendar month `year-month` (what `--period` names)."""
    months = (year - account.anchor.year) * 12 + (month - account.anchor.month)
    return _span(account.anchor, account.tz, months, 1)


def term(account: Account, instant: datetime, *, anchor: date | None = None,
         billing: str | None = None) -> Period:
    """The subscription term holding `instant`: a month or a year from `anchor`.

    `anchor` and `billing` default to the account's; a billing switch starts a new term, so the
    seat-change rules pass the switch's date and new frequency.
    """
    start = account.anchor if anchor is None else anchor
    step = 12 if (billing or account.billing) == "annual" else 1
    return _span(start, account.tz, _index_of(start, account.tz, instant, step), step)
