"""The daemon's SIGKILL fault test on PostgreSQL: repeated SIGKILL of `meter serve --db
postgresql://...` while 50,000 events flow loses nothing the broker accepted and counts nothing
twice. The same kills as tests/faults/test_daemon_kill.py; the store is read through its
interface, so this proves the PostgreSQL store's commit-then-ack and its dedupe constraint.
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


def stored_count(url: str) -> int:
    return table_count(url, "events")


@pytest.mark.broker
@pytest.mark.slow
def test_repeated_sigkill_on_postgres_loses_nothing_and_counts_nothing_twice(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str,
        record_property: pytest.RecordProperty) -> None:
    """>= 10 SIGKILLs during 50,000 events on PostgreSQL: lost = 0, unexpected = 0, every id
    stored once, and each restart took the database (its lock died with the killed daemon)."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix, url=pg_url)
    daemon.start()
    publisher = Publisher(broker, topic_prefix)
    rng = random.Random(7)
    done = threading.Event()

    def publish() -> None:
        publisher.publish_many(iter_events(EVENTS), rate=2500)
        done.set()

    thread = in_background(publish, "publisher")
    probe = Probe(daemon, ("meter_events_duplicate_total", "meter_events_received_total"))
    kills = 0
    stored_at_kill = []
    try:
        while kills < KILLS:
            if kills % 4 == 3:
                time.sleep(rng.uniform(0.0, 0.6))  # during startup: mid-rebuild or mid-connect
            else:
                deadline = time.monotonic() + rng.uniform(0.1, 0.9)
                while time.monotonic() < deadline:
                    probe.scrape()
                    time.sleep(0.05)
            daemon.kill()
            kills += 1
            stored_at_kill.append(stored_count(pg_url))
            daemon.start(wait=kills % 4 != 3)
        daemon.wait_connected()
        thread.join(120)
        assert done.is_set()
        publisher.wait_all_acked()
        acked = publisher.acked()
        wait_for(lambda: stored_count(pg_url) >= len(acked), 120,
                 "the last daemon to store the backlog", every=0.5)
    finally:
        daemon.stop()
        publisher.close()

    verdict = set_check(publisher.sent, acked, stored_ids(pg_url))
    record_property("kills", kills)
    record_property("verdict", verdict.summary())
    print(f"\n{kills} kills survived on PostgreSQL; {verdict.summary()}; stored at each kill: "
          f"{stored_at_kill}")
    assert KILLS == kills
    assert EVENTS == verdict.sent
    assert EVENTS == verdict.acked
    assert frozenset() == verdict.lost
    assert frozenset() == verdict.unexpected
    assert frozenset() == verdict.double_counted
    assert EVENTS == verdict.stored
    assert "in use by another meter serve" not in daemon.log_text()
    assert sum(1 for n in stored_at_kill if 0 < n < EVENTS) >= 10
