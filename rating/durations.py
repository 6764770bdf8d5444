"""The one duration grammar of the project: contracts, command-line flags and settings files.

A duration is a string of whole-number parts, largest unit first: "30m", "12h", "1h30m", "45s",
"2d". Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

__all__ = ["parse_duration"]

_DURATION: Final = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """Parse "30m", "12h", "1h30m", "45s" or "2d" into a timedelta; raise ValueError otherwise."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"expected a duration like '30m' or '12h', got {text!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
