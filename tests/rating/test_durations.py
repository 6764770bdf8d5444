"""The one duration grammar (rating/durations.py), as README "Durations" states it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rating.durations import parse_duration


@pytest.mark.parametrize(("text", "expected"), [
    ("5ms", timedelta(milliseconds=5)),
    ("0.5s", timedelta(milliseconds=500)),
    ("1.000001s", timedelta(seconds=1, microseconds=1)),
    ("30s", timedelta(seconds=30)),
    ("30m", timedelta(minutes=30)),
    ("12h", timedelta(hours=12)),
    ("2d", timedelta(days=2)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
    ("0s", timedelta(0)),
    (" 5m ", timedelta(minutes=5)),
])
def test_durations(text: str, expected: timedelta) -> None:
    """Parts d, h, m, s, ms, largest first; whole numbers except seconds; exact."""
    assert expected == parse_duration(text)


@pytest.mark.parametrize(("value", "message"), [
    ("5", '5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    (5, '5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ("0", '0 is not a duration: write a unit, e.g. "0s" or "0m"'),
    (0.5, '0.5 is not a duration: write a unit, e.g. "0.5s"'),
    (-5, "-5 is not a duration: durations are never negative"),
    ("1.5h", "expected a duration like '5ms', '30s', '30m' or '1h30m', got '1.5h'"),
    ("1m1h", "expected a duration like '5ms', '30s', '30m' or '1h30m', got '1m1h'"),
    ("5 m", "expected a duration like '5ms', '30s', '30m' or '1h30m', got '5 m'"),
    ("5M", "expected a duration like '5ms', '30s', '30m' or '1h30m', got '5M'"),
    ("0.0000001s", "expected a duration like '5ms', '30s', '30m' or '1h30m', got '0.0000001s'"),
    (True, "expected a duration like '5ms', '30s', '30m' or '1h30m', got True"),
    ("9999999999d", "'9999999999d' is longer than any duration can be"),
])
def test_bad_durations_say_what_to_write(value: object, message: str) -> None:
    """A bare number is told to take a unit; anything else gets the grammar's examples."""
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(value)
    assert message == str(info.value)
