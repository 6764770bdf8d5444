"""Cluster members as processes on one Mosquitto and one PostgreSQL, both started by the tests:
joining, slots and standbys, and the shape every member must agree on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.faults.harness import Daemon, Publisher, iter_events, stored_ids, wait_for

pytestmark = [pytest.mark.broker]


def member(broker: Broker, workdir: Path, prefix: str, url: str, slots: int = 2,
           **settings: str) -> Daemon:
    """One `meter serve --slots N` process (not started)."""
    return Daemon(broker, workdir, prefix, url=url,
                  settings={"METER_SLOTS": str(slots), "METER_PARTITIONS": "4", **settings})


def wait_slot(d: Daemon, slot: int, timeout: float = 30.0) -> None:
    wait_for(lambda: d.value("meter_cluster_slot") == slot, timeout, f"slot {slot} held")


def test_two_members_share_the_events_and_store_each_once(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """Two members on two slots of one shared subscription: each stores part of 2,000 events,
    together all of them, each once."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    a = member(broker, tmp_path / "a", topic_prefix, pg_url)
    b = member(broker, tmp_path / "b", topic_prefix, pg_url)
    a.start()
    b.start()
    try:
        wait_slot(a, 0)
        wait_slot(b, 1)
        publisher = Publisher(broker, topic_prefix)
        publisher.publish_many(iter_events(2000))
        publisher.wait_all_acked()
        wait_for(lambda: sum(stored_ids(pg_url).values()) >= 2000, 60, "2,000 stored")
        stored = stored_ids(pg_url)
        assert {("acme", f"e{i}") for i in range(2000)} == set(stored)
        assert {1} == set(stored.values())
        got_a, got_b = (d.total("meter_events_received_total") for d in (a, b))
        assert 2000 == got_a + got_b
        assert got_a > 0
        assert got_b > 0
        publisher.close()
    finally:
        a.stop()
        b.stop()
