"""The metrics collector: every series exists (as 0) from the start, values come from counters
and the tracker snapshot at scrape time, and labels come only from configured values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meter.events import REASONS
from meter.finalization import REASONS as WAIT_REASONS
from meter.metrics import Metrics, Snapshot
from meter.tracker import Tracker
from rating.contracts import Contracts, parse_contracts
from tests import contracts_toml as toml

CONTRACTS = toml.contracts(toml.account("acme", pools=[
    toml.pool("agents", tier="elite", model="concurrent", quantity=1, price="149.00",
              overage_price="149.00", grace="10m"),
    toml.pool("sups", tier="premium", model="named", quantity=3, price="99.00"),
], addons=[toml.addon("qm", quantity=1, price="10.00")]))

T0 = datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000


@dataclass(frozen=True)
class Ev:
    type: str
    user: str
    ts_us: int
    session: str | None = "s"
    pool: str | None = "agents"
    account: str = "acme"


@pytest.fixture
def contracts() -> Contracts:
    return parse_contracts(CONTRACTS)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_every_series_is_exported_as_zero_from_the_start(contracts: Contracts,
                                                         registry: CollectorRegistry) -> None:
    """Before any event, each configured account, pool, add-on and reason has its series at 0."""
    Metrics(contracts, registry)
    get = registry.get_sample_value
    for pool in ("agents", "sups"):
        labels = {"account": "acme", "pool": pool}
        for name in ("meter_active_users", "meter_licensed_seats", "meter_period_peak_users",
                     "meter_excess_users"):
            assert 0 == get(name, labels), name
    assert 0 == get("meter_grace_remaining_seconds", {"account": "acme", "pool": "agents"})
    assert get("meter_grace_remaining_seconds", {"account": "acme", "pool": "sups"}) is None
    assert 0 == get("meter_period_billable_overage_seats", {"account": "acme", "pool": "agents"})
    for name in ("meter_events_received_total", "meter_events_duplicate_total",
                 "meter_last_event_timestamp_seconds"):
        assert 0 == get(name, {"account": "acme"}), name
    for account in ("acme", ""):
        for reason in REASONS:
            assert 0 == get("meter_events_rejected_total", {"account": account, "reason": reason})
    for addon in ("wfm", "qm"):
        assert 0 == get("meter_addon_shortfall", {"account": "acme", "addon": addon})
    assert (0, 0, 1, 0) == (get("meter_mqtt_connected"), get("meter_reconnects_total"),
                            get("meter_store_healthy"), get("meter_store_errors_total"))
    assert 0 == get("meter_ingest_latency_seconds_count")


def test_values_come_from_counters_and_the_tracker_snapshot(contracts: Contracts,
                                                            registry: CollectorRegistry) -> None:
    """Counters and the snapshot are read at scrape time; an unconfigured account's reject is
    labelled with the empty account."""
    metrics = Metrics(contracts, registry)
    tracker = Tracker(contracts, T0_US)
    minute = 60_000_000
    for i, user in enumerate(("a", "b", "c")):
        tracker.apply(Ev("login", user, T0_US + i * minute))
    tracker.advance(T0_US + 6 * minute)
    metrics.snapshot = Snapshot.of(tracker)
    metrics.received["acme"] += 3
    metrics.duplicates["acme"] += 1
    metrics.count_rejected("acme", "future")
    metrics.count_rejected("nobody", "unknown_account")
    metrics.saw_event("acme", T0_US + 2 * minute)
    metrics.connected = True
    metrics.reconnects = 2
    metrics.ingest_latency.observe(0.004)
    get = registry.get_sample_value
    agents = {"account": "acme", "pool": "agents"}
    assert (3, 1, 3, 2) == (get("meter_active_users", agents), get("meter_licensed_seats", agents),
                            get("meter_period_peak_users", agents),
                            get("meter_excess_users", agents))
    # Level 2 began at minute 2 and has held 4 of its 10 minutes of grace.
    assert 360.0 == get("meter_grace_remaining_seconds", agents)
    assert 0 == get("meter_period_billable_overage_seats", agents)
    assert T0.timestamp() + 120 == get("meter_period_peak_timestamp_seconds", agents)
    assert datetime(2026, 11, 1, tzinfo=UTC).timestamp() == get(
        "meter_period_start_timestamp_seconds", agents)
    # 3 users seen on 1 Elite concurrent licence need 2 wfm and 2 qm; 1 qm is bought.
    assert 2 == get("meter_addon_shortfall", {"account": "acme", "addon": "wfm"})
    assert 1 == get("meter_addon_shortfall", {"account": "acme", "addon": "qm"})
    assert (3, 1) == (get("meter_events_received_total", {"account": "acme"}),
                      get("meter_events_duplicate_total", {"account": "acme"}))
    assert 1 == get("meter_events_rejected_total", {"account": "acme", "reason": "future"})
    assert 1 == get("meter_events_rejected_total", {"account": "", "reason": "unknown_account"})
    assert T0.timestamp() + 120 == get("meter_last_event_timestamp_seconds", {"account": "acme"})
    assert (1, 2) == (get("meter_mqtt_connected"), get("meter_reconnects_total"))
    assert 1 == get("meter_ingest_latency_seconds_bucket", {"le": "0.005"})
    tracker.advance(T0_US + 12 * minute + 1)  # level 2 has now held 10 min + 1 us
    metrics.snapshot = Snapshot.of(tracker)
    assert (2, 0.0) == (get("meter_period_billable_overage_seats", agents),
                        get("meter_grace_remaining_seconds", agents))


def test_store_size_counts_the_database_and_its_wal(contracts: Contracts,
                                                    registry: CollectorRegistry,
                                                    tmp_path: Path) -> None:
    """meter_store_size_bytes is the database plus its -wal and -shm files."""
    db = tmp_path / "m.db"
    db.write_bytes(b"x" * 4096)
    (tmp_path / "m.db-wal").write_bytes(b"y" * 100)
    Metrics(contracts, registry, db_path=db)
    assert 4196 == registry.get_sample_value("meter_store_size_bytes")


def test_labels_only_from_configured_values(contracts: Contracts,
                                            registry: CollectorRegistry) -> None:
    """Every label value in a scrape is a configured account, pool or add-on, or a reason."""
    metrics = Metrics(contracts, registry)
    metrics.count_rejected("attacker-chosen-account", "schema")
    allowed = {
        "account": {"acme", ""}, "pool": {"agents", "sups"}, "addon": {"wfm", "qm"},
        "reason": {*REASONS, *WAIT_REASONS},
    }
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label in ("le", "version", "python"):
                    continue
                assert value in allowed[label], (sample.name, label, value)
    assert "attacker" not in text
