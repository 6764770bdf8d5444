"""The live view equals the bill: `meter serve` as a process against a real Mosquitto, events
that arrive hours late or as a backlog after a restart, and the gauges compared with what
`meter report` computes from the same store at that moment."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Broker
from tests.meter.test_serve import Daemon, count, daemon_factory, event, mosquitto_pub, wait_for

pytestmark = pytest.mark.broker
__all__ = ["daemon_factory"]  # the fixture, shared with test_serve

POOL = frozenset({("account", "acme"), ("pool", "agents")})
GAUGES = ("meter_active_users", "meter_excess_users", "meter_period_peak_users",
          "meter_period_peak_timestamp_seconds", "meter_period_billable_overage_seats")


def bill(d: Daemon, month: str) -> dict[str, float]:
    """The acme pool's figures in `meter report` of `month`, as the gauges name them."""
    out = subprocess.run([sys.executable, "-m", "meter", "report", "--db", str(d.db),
                          "--contracts", str(d.workdir / "contracts.toml"), "--period", month,
                          "--account", "acme"], capture_output=True, text=True, check=True)
    pool = json.loads(out.stdout)["accounts"][0]["pools"][0]
    peak_at = datetime.fromisoformat(pool["peak_at"]).timestamp() if pool["peak_at"] else 0.0
    return {"meter_active_users": 0, "meter_excess_users": 0,
            "meter_period_peak_users": pool["peak"],
            "meter_period_peak_timestamp_seconds": peak_at,
            "meter_period_billable_overage_seats": pool["overage_seats"]}


def gauges(d: Daemon) -> dict[str, float]:
    m = d.scrape()
    return {name: m.get((name, POOL), -1.0) for name in GAUGES}


def crowd(start: datetime, users: list[str], minutes: int, tag: str) -> list[str]:
    """Each user logged in at `start` and out `minutes` later (closed sessions: a bill of a
    period still running and the live view agree on them whatever the horizon)."""
    end = start + timedelta(minutes=minutes)
    return [line for i, user in enumerate(users) for line in (
        event(0, user=user, session=f"{tag}{i}", ts=start, eid=f"{tag}-in-{user}"),
        event(0, "logout", user=user, session=f"{tag}{i}", ts=end, eid=f"{tag}-out-{user}"))]


def test_late_events_and_a_backlog_leave_the_gauges_equal_to_the_bill(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str) -> None:
    """Sessions published 10 minutes to 9 hours late, in random order, to a running daemon:
    once it is idle its peak, peak time, excess and billable overage are the bill's (2 licences,
    4 users for 2 hours: billable 2). Then a backlog queued while it was stopped: the same after
    the restart. Applied at the pool's clock, as before, the late logins and logouts would land
    on one instant and the live peak would stay 0."""
    now = datetime.now(UTC).replace(microsecond=0)
    month_start = now.replace(day=1, hour=0, minute=0, second=0)
    base = max(now - timedelta(hours=9), month_start + timedelta(minutes=1))
    if now - base < timedelta(hours=4):
        pytest.skip("the current month is less than 4 hours old: no room for late events")
    month = f"{now:%Y-%m}"
    d = daemon_factory(mosquitto)
    d.start()
    late = (crowd(base, ["ann", "bob", "cat", "dan"], 120, "a")
            + crowd(base + timedelta(hours=3), ["eve"], 5, "b"))
    random.Random(7).shuffle(late)
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", late)
    wait_for(lambda: count(d.db) == 10, "10 stored events")
    expected = bill(d, month)
    assert (4, base.timestamp(), 2) == (expected["meter_period_peak_users"],
                                        expected["meter_period_peak_timestamp_seconds"],
                                        expected["meter_period_billable_overage_seats"])
    wait_for(lambda: gauges(d) == expected, f"the gauges to equal the bill {expected}")

    # A backlog: queued on the broker while the daemon is stopped, then replayed on restart.
    assert 0 == d.signal(signal.SIGTERM)
    backlog = crowd(base + timedelta(minutes=30), ["fay", "gus", "hal"], 40, "c")
    random.Random(8).shuffle(backlog)
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", backlog)
    d.start()
    wait_for(lambda: count(d.db) == 16, "16 stored events")
    expected = bill(d, month)
    assert (7, 5) == (expected["meter_period_peak_users"],
                      expected["meter_period_billable_overage_seats"])
    wait_for(lambda: gauges(d) == expected, f"the gauges to equal the bill {expected}")
