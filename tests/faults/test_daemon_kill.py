"""Repeated SIGKILL of the daemon while 50,000 events flow: nothing the broker accepted is lost
and nothing is counted twice.

Kills land at random moments, so over a dozen of them some hit before a commit, some between a
commit and its acknowledgements, some mid-batch; the broker redelivers whatever was not
acknowledged and the store absorbs the copies. It runs on both protocols the meter speaks: MQTT 5
and 3.1.1 (clean_session off).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.faults.harness import (
    Daemon,
    Probe,
    Publisher,
    in_background,
    iter_events,
    set_check,
    stored_ids,
    table_count,
    wait_for,
)

EVENTS = 50_000
KILLS = 12


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
def test_repeated_sigkill_loses_nothing_and_counts_nothing_twice(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str,
        record_property: pytest.RecordProperty, mqtt_version: str) -> None:
    """>= 10 SIGKILLs during 50,000 events: lost = 0, unexpected = 0, every id stored once."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix,
                    settings={"METER_MQTT_VERSION": mqtt_version})
    daemon.start()
    publisher = Publisher(broker, topic_prefix)
    rng = random.Random(7)
    done = threading.Event()

    def publish() -> None:
        # About 20 s of traffic, longer than twelve kill-restart rounds take even on a fast
        # machine, so the kills below land while events are still arriving.
        publisher.publish_many(iter_events(EVENTS), rate=2500)
        done.set()

    thread = in_background(publish, "publisher")
    probe = Probe(daemon, ("meter_events_duplicate_total", "meter_events_received_total"))
    duplicates_seen = 0
    kills = 0
    stored_at_kill = []
    try:
        while kills < KILLS:
            if kills % 4 == 3:
                # Every fourth kill lands during startup: mid-rebuild or mid-connect.
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                # A random moment after the daemon is up and consuming (or draining a backlog).
                deadline = time.monotonic() + rng.uniform(0.1, 0.9)
                while time.monotonic() < deadline:
                    probe.scrape()
                    time.sleep(0.05)
            daemon.kill()
            kills += 1
            duplicates_seen += int(probe.last.get("meter_events_duplicate_total", 0))
            probe.last.clear()
            stored_at_kill.append(table_count(daemon.db, "events"))
            daemon.start(wait=kills % 4 != 3)
        daemon.wait_connected()
        thread.join(120)
        assert done.is_set()
        publisher.wait_all_acked()
        acked = publisher.acked()
        wait_for(lambda: table_count(daemon.db, "events") >= len(acked), 120,
                 "the last daemon to store the backlog", every=0.2)
        probe.scrape()
        duplicates_seen += int(probe.last.get("meter_events_duplicate_total", 0))
    finally:
        daemon.stop()
        publisher.close()

    verdict = set_check(publisher.sent, acked, stored_ids(daemon.db))
    record_property("kills", kills)
    record_property("verdict", verdict.summary())
    record_property("duplicates_absorbed", duplicates_seen)
    print(f"\n{kills} kills survived; {verdict.summary()}; duplicates absorbed >= {duplicates_seen}; "
          f"stored at each kill: {stored_at_kill}")
    assert KILLS == kills
    assert EVENTS == verdict.sent
    assert EVENTS == verdict.acked
    assert frozenset() == verdict.lost
    assert frozenset() == verdict.unexpected
    assert frozenset() == verdict.double_counted
    assert EVENTS == verdict.stored
    # The kills really happened during the stream: the store was part-filled at 10 or more.
    assert sum(1 for n in stored_at_kill if 0 < n < EVENTS) >= 10
