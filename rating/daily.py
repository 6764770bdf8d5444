"""Daily peaks of concurrency: per local day of the period, the highest c(t), when it was first
reached and how long it was held (what Genesys Cloud's Concurrent Usage report shows).

Read from the same c(t) `Timeline` the bill rates; days are local calendar days of the account's
timezone (23 or 25 hours on DST days), clipped to the period, half-open `[midnight, midnight)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from rating.periods import local_midnight
from rating.timeline import Timeline
from rating.usage import from_us, to_us

__all__ = ["DayPeak", "daily_peaks"]

_US = 1_000_000


@dataclass(frozen=True, slots=True)
class DayPeak:
    """One local day: `peak` = max c(t) on it, `peak_at` its first instant (None when nobody was
    counted that day) and `seconds_at_peak` the total time c(t) equals the peak that day (whole
    seconds, rounded down; 0 when the peak is 0)."""

    day: date
    peak: int
    peak_at: datetime | None
    seconds_at_peak: int


def daily_peaks(concurrency: Timeline, tz: ZoneInfo) -> tuple[DayPeak, ...]:
    """The peak of each local day (in `tz`) that the timeline's period touches, in order."""
    period = concurrency.period
    times, values = concurrency.times, concurrency.values
    p_start, p_end = to_us(period.start), to_us(period.end)
    first = period.start.astimezone(tz).date()
    last = (period.end - timedelta(microseconds=1)).astimezone(tz).date()
    out: list[DayPeak] = []
    day = first
    while day <= last:
        lo = max(to_us(local_midnight(day, tz)), p_start)
        hi = min(to_us(local_midnight(day + timedelta(days=1), tz)), p_end)
        # Steps in force on [lo, hi): the one holding at lo, then those starting before hi.
        i0 = int(np.searchsorted(times, lo, side="right")) - 1
        i1 = int(np.searchsorted(times, hi, side="left"))
        seg_start = np.maximum(times[i0:i1], lo)
        seg_end = np.minimum(np.append(times[i0 + 1:i1], hi), hi)
        vals = values[i0:i1]
        peak = int(vals.max())
        if peak == 0:
            out.append(DayPeak(day, 0, None, 0))
        else:
            at = vals == peak
            held = int((seg_end[at] - seg_start[at]).sum())
            out.append(DayPeak(day, peak, from_us(int(seg_start[at][0])), held // _US))
        day += timedelta(days=1)
    return tuple(out)
