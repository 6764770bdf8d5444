"""When `meter serve` may finalize an ended period: the rule as a pure function of the times the
daemon observes (it reads no clock and does no I/O), and the fixed reasons a period waits for.

A period `[start, end)` is due when all of these hold at `now`:
  lateness      `now >= end + finalize_after`;
  disconnected  the daemon is connected to the broker (it cannot know what the broker holds
                otherwise);
  draining      no message was received for `quiet`, counted from the later of the current
                connection's start and the last message received (a resumed session delivers its
                queue first, so an idle connection has drained it);
  late_events   no event with a time inside the period arrived in the last `finalize_after`.
The first rule that fails is the reason the period waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

__all__ = ["EXPLAINED", "REASONS", "Link", "wait_reason"]

#: Why a period waits, in the order the rule checks them (also the metric's `reason` label).
REASONS: Final = ("lateness", "disconnected", "draining", "late_events")
#: Each reason in words, for the log line.
EXPLAINED: Final = {
    "lateness": "its end plus finalize_after has not passed",
    "disconnected": "not connected to the broker, which may hold events for it",
    "draining": "the broker connection has not been idle for finalize_quiet yet",
    "late_events": "an event for it arrived less than finalize_after ago",
}


@dataclass(frozen=True, slots=True)
class Link:
    """What the daemon knows about its broker connection at one instant (aware UTC times)."""

    #: When the current connection was subscribed; None while not connected.
    connected_since: datetime | None
    #: When the last message was received, on any connection; None if none yet.
    last_received: datetime | None


def wait_reason(end: datetime, now: datetime, *, finalize_after: timedelta, quiet: timedelta,
                link: Link | None, last_arrival: datetime | None) -> str | None:
    """None when the period ending at `end` may be finalized at `now`, else the reason it waits.

    `link` None means there is no broker to drain (the store is all there is); `last_arrival`
    is when an event inside the period last arrived (None: none seen arriving).
    """
    if now < end + finalize_after:
        return "lateness"
    if link is not None:
        if link.connected_since is None:
            return "disconnected"
        idle_since = link.connected_since
        if link.last_received is not None and link.last_received > idle_since:
            idle_since = link.last_received
        if now < idle_since + quiet:
            return "draining"
    if last_arrival is not None and now < last_arrival + finalize_after:
        return "late_events"
    return None
