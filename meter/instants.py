"""Points in time given on the command line (`--as-of`, `--at`): RFC 3339 with an offset, in UTC.

Its own module so that commands import it without importing `meter.cli`, which imports them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from meter.errors import UsageError

__all__ = ["parse_instant"]


def parse_instant(text: str | None, flag: str) -> datetime:
    """The RFC 3339 time (with an offset) given to `flag`, in UTC; now when it is absent.

    A time that does not parse or has no offset is a `UsageError` naming `flag`.
    """
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag}: expected an RFC 3339 time with offset, got {text!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(f"{flag}: {text!r} has no UTC offset (add Z or +HH:MM)")
    return value.astimezone(UTC)
