"""A cluster under SIGKILL: 3 ingest slots and 1 standby on one Mosquitto and one PostgreSQL
(both started by the tests), 50,000 events from three publishers, one member killed at a time:
nothing the broker accepted is lost, nothing is counted twice (by SQL, and by the bill against
a store that got each event once), and the standby drains the killed slot's session."""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.faults.harness import (
    Daemon,
    Publisher,
    event,
    in_background,
    set_check,
    stored_ids,
    table_count,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 50_000
PUBLISHERS = 3
KILLS = 6
SLOTS = 3


def member(broker: Broker, workdir: Path, prefix: str, url: str) -> Daemon:
    return Daemon(broker, workdir, prefix, url=url,
                  settings={"METER_SLOTS": str(SLOTS), "METER_PARTITIONS": "4",
                            "METER_FINALIZE_AFTER": "0s"})


def slot_of(d: Daemon) -> float | None:
    return d.value("meter_cluster_slot")


def start(d: Daemon) -> None:
    """Start a member and wait until it answers scrapes as a slot holder or a standby."""
    d.start(wait=False)

    def joined() -> bool:
        if not d.alive:
            raise AssertionError(f"member exited:\n{d.log_text()[-3000:]}")
        return slot_of(d) is not None
    wait_for(joined, 30, "the member to join")


def holder(members: list[Daemon], slot: int) -> Daemon | None:
    for d in members:
        if d.alive and slot_of(d) == slot:
            return d
    return None


def taken(members: list[Daemon], slot: int) -> bool:
    return holder(members, slot) is not None


def report(db: str, contracts: Path, month: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "meter", "report", "--db", db, "--contracts",
                          str(contracts), "--period", month], capture_output=True, text=True,
                         check=True)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def test_sigkills_of_members_lose_nothing_and_count_nothing_twice(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """6 SIGKILLs, one member at a time, while 50,000 events flow from three publishers:
    lost 0, each id stored once, the bill equal to the bill of the same events stored once, and
    after the first kill the standby took the dead member's slot and stored what its session
    held."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    members = [member(broker, tmp_path / f"m{i}", topic_prefix, pg_url) for i in range(4)]
    for d in members:
        start(d)
    wait_for(lambda: sorted(slot_of(d) or 0 for d in members) == [-1, 0, 1, 2], 30,
             "three slot holders and one standby")
    [standby] = [d for d in members if slot_of(d) == -1]
    docs = [event(i, account, prefix=f"p{n}-") for n, account in
            enumerate(("acme", "globex", "acme")) for i in range(EVENTS // PUBLISHERS + 1)]
    docs = docs[:EVENTS]
    share = len(docs) // PUBLISHERS + 1
    publishers = [Publisher(broker, topic_prefix) for _ in range(PUBLISHERS)]
    done = [threading.Event() for _ in publishers]

    def publish(n: int) -> None:
        publishers[n].publish_many(docs[n * share:(n + 1) * share], rate=800)
        done[n].set()

    threads = [in_background(functools.partial(publish, n), f"publisher-{n}")
               for n in range(PUBLISHERS)]
    rng = random.Random(20)
    taken_by_standby = None
    try:
        for kill in range(KILLS):
            time.sleep(rng.uniform(1.5, 3.0))
            slot = kill % SLOTS
            victim = holder(members, slot)
            assert victim is not None, f"nobody holds slot {slot}"
            victim.kill()
            wait_for(functools.partial(taken, members, slot), 30,
                     f"slot {slot} taken again after kill {kill + 1}")
            if kill == 0:
                taken_by_standby = holder(members, slot)
                # It stores what the dead member's session held and what comes after.
                wait_for(lambda: standby.total("meter_events_received_total") > 0, 30,
                         "the standby to store events from the slot it took")
            start(victim)  # the restarted member is the standby now
        for thread in threads:
            thread.join(180)
        assert all(d.is_set() for d in done)
        for p in publishers:
            p.wait_all_acked()
        acked = set().union(*(p.acked() for p in publishers))
        sent = [k for p in publishers for k in p.sent]
        wait_for(lambda: table_count(pg_url, "events") >= len(acked), 120,
                 "the cluster to store every acked event", every=0.5)
        time.sleep(2)  # redeliveries still in flight would show as duplicates below
        stored = stored_ids(pg_url)
        verdict = set_check(sent, acked, stored)
        assert (0, 0, 0) == (len(verdict.lost), len(verdict.unexpected),
                             len(verdict.double_counted)), verdict.summary()
        assert len(docs) == len(acked)
        assert taken_by_standby is standby
        assert "ingest slot 0 taken: client id meter-under-test-0" in standby.log_text()
    finally:
        for p in publishers:
            p.close()
        for d in members:
            d.stop()
    # The bill: the cluster's store against a store that got each event exactly once.
    lines = tmp_path / "once.jsonl"
    lines.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    once = tmp_path / "once.db"
    subprocess.run([sys.executable, "-m", "meter", "ingest", "--db", str(once), "--contracts",
                    str(members[0].contracts), str(lines)], check=True, capture_output=True)
    month = docs[0]["ts"][:7]
    expected, got = (report(db, members[0].contracts, month) for db in (str(once), pg_url))
    # Each account's last seq is where its store's arrival order put it: not part of the bill.
    for doc in (expected, got):
        for account in doc["accounts"]:  # type: ignore[attr-defined]
            account["inputs"].pop("through_seq")
    assert expected == got
