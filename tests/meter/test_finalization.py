"""The finalization rule (`meter.finalization.wait_reason`) and the gauge that shows why a period
waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from meter.finalization import REASONS, Link, wait_reason
from meter.metrics import Metrics
from rating.contracts import parse_contracts
from tests import contracts_toml as toml

END = datetime(2026, 12, 1, tzinfo=UTC)
H = timedelta(hours=1)
S = timedelta(seconds=1)
DUE = END + H  # the first instant lateness allows
IDLE = Link(connected_since=END, last_received=END)  # connected and idle for an hour


@pytest.mark.parametrize(("now", "link", "last_arrival", "expected"), [
    (DUE - S, IDLE, None, "lateness"),
    (DUE - S, Link(None, None), None, "lateness"),  # lateness is checked first
    (DUE, None, None, None),  # no broker to drain: the store is all there is
    (DUE, IDLE, None, None),
    (DUE, Link(None, END), None, "disconnected"),
    (DUE, Link(DUE - 9 * S, None), None, "draining"),  # connected 9 s ago, nothing received
    (DUE, Link(DUE - 10 * S, None), None, None),  # idle for exactly the quiet interval
    (DUE, Link(END, DUE - 5 * S), None, "draining"),  # a message 5 s ago
    (DUE, Link(END, DUE - 10 * S), None, None),
    # A message long ago on an earlier connection does not make a new connection idle.
    (DUE, Link(DUE - 5 * S, END), None, "draining"),
    (DUE, IDLE, END + 30 * timedelta(minutes=1), "late_events"),  # arrived 30 min ago
    (DUE, IDLE, DUE - H + S, "late_events"),
    (DUE, IDLE, DUE - H, None),  # arrived exactly finalize_after ago
    (DUE, None, DUE - S, "late_events"),
    (DUE, Link(None, None), DUE - S, "disconnected"),
])
def test_wait_reason(now: datetime, link: Link | None, last_arrival: datetime | None,
                     expected: str | None) -> None:
    """Due once finalize_after has passed since the end, the connection has been idle for the
    quiet interval since it began, and no in-period event arrived for finalize_after; otherwise
    the first rule that fails is the reason."""
    assert expected == wait_reason(END, now, finalize_after=H, quiet=10 * S, link=link,
                                   last_arrival=last_arrival)


CONTRACTS = toml.contracts(
    toml.account("acme", pools=[toml.pool("agents", tier="premium", model="concurrent", quantity=2,
                                          price="100.00", overage_price="150.00")]),
    toml.account("tokyo", timezone="Asia/Tokyo", currency="JPY", pools=[
        toml.pool("agents", tier="premium", model="concurrent", quantity=2, price="100",
                  overage_price="150")]),
)


def test_waiting_gauge_is_zero_for_every_account_and_reason_then_one_for_the_reason() -> None:
    """meter_finalization_waiting{account, reason}: every configured series exists as 0; a
    waiting period sets its one reason to 1."""
    registry = CollectorRegistry()
    metrics = Metrics(parse_contracts(CONTRACTS), registry)
    get = registry.get_sample_value
    for account in ("acme", "tokyo"):
        for reason in REASONS:
            assert 0 == get("meter_finalization_waiting", {"account": account, "reason": reason})
    metrics.finalization_waiting = {"acme": "draining"}
    values = {(a, r): get("meter_finalization_waiting", {"account": a, "reason": r})
              for a in ("acme", "tokyo") for r in REASONS}
    assert {("acme", "draining")} == {k for k, v in values.items() if v == 1}
    assert 7 == sum(1 for v in values.values() if v == 0)
