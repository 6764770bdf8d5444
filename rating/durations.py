"""The one duration grammar of the project: the contracts file, command-line flags, `METER_*`
variables and the settings file all go through `parse_duration`. Pure: no clock, no I/O.

A duration is one or more parts, each a number directly followed by its unit, largest unit first
and each unit at most once: `d` (days), `h` (hours), `m` (minutes), `s` (seconds), `ms`
(milliseconds). Numbers are whole, except seconds, which may have up to six decimals (microseconds).
No sign, no spaces between parts, units in lower case; whitespace around the whole is ignored.
Examples: "5ms", "0.5s", "30s", "30m", "12h", "2d", "1h30m", "1m30s", "0s" (zero).

A bare number ("5", or `5` in TOML) is refused with a hint: five what? The unit says it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

__all__ = ["parse_duration"]

_DURATION: Final = re.compile(
    r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)(?:\.(\d{1,6}))?s)?(?:(\d+)ms)?")
_BARE_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?")


def parse_duration(value: object) -> timedelta:
    """Parse a duration string of the grammar above into an exact timedelta.

    Raises ValueError saying what to write instead: for a bare number (string, int or float)
    `5 is not a duration: write a unit, e.g. "5s" or "5m"`, otherwise
    `expected a duration like '5ms', '30s', '30m' or '1h30m', got 'five'`.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(_bare_number(str(value)))
    text = value.strip() if isinstance(value, str) else None
    match = _DURATION.fullmatch(text) if text is not None else None
    if match is None or not any(match.groups()):
        if text is not None and _BARE_NUMBER.fullmatch(text):
            raise ValueError(_bare_number(text))
        raise ValueError(f"expected a duration like '5ms', '30s', '30m' or '1h30m', got {value!r}")
    days, hours, minutes, seconds, fraction, millis = match.groups()
    try:
        return timedelta(days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0),
                         seconds=int(seconds or 0),
                         microseconds=int((fraction or "").ljust(6, "0")) + 1000 * int(millis or 0))
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any duration can be") from None


def _bare_number(text: str) -> str:
    if text.startswith("-"):
        return f"{text} is not a duration: durations are never negative"
    # A fraction only fits seconds ("0.5m" is not in the grammar), so only suggest what parses.
    examples = f'"{text}s"' if "." in text else f'"{text}s" or "{text}m"'
    return f"{text} is not a duration: write a unit, e.g. {examples}"
