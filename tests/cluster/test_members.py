"""Cluster members as processes on one Mosquitto and one PostgreSQL, both started by the tests:
joining, slots and standbys, and the shape every member must agree on."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meter.store import open_store
from meter.store.leases import Leases
from tests.conftest import Broker, free_port
from tests.faults.harness import Daemon, Publisher, iter_events, stored_ids, wait_for
from tests.pgserver import query

pytestmark = [pytest.mark.broker]


def member(broker: Broker, workdir: Path, prefix: str, url: str,
           settings: dict[str, str] | None = None, *, slots: int = 2) -> Daemon:
    """One `meter serve --slots N --partitions 4` process (not started)."""
    return Daemon(broker, workdir, prefix, url=url,
                  settings={"METER_SLOTS": str(slots), "METER_PARTITIONS": "4",
                            **(settings or {})})


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


def test_members_finalize_each_ended_period_once_through_the_job_table(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """Two members with finalization on: last month's periods of both accounts are queued and
    finalized once, each by one member, once every slot is connected and quiet."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    fast = {"METER_FINALIZE_AFTER": "1s", "METER_FINALIZE_QUIET": "1s"}
    a = member(broker, tmp_path / "a", topic_prefix, pg_url, fast)
    b = member(broker, tmp_path / "b", topic_prefix, pg_url, fast)
    last_month = (datetime.now(UTC).replace(day=1) - timedelta(days=3)).replace(
        hour=9, minute=0, second=0, microsecond=0)
    docs = [{**doc, "ts": (last_month + timedelta(minutes=i)).isoformat()}
            for account in ("acme", "globex")
            for i, doc in enumerate(iter_events(40, account))]
    a.start()
    b.start()
    try:
        publisher = Publisher(broker, topic_prefix)
        for doc in docs:
            publisher.publish(doc)
        publisher.wait_all_acked()
        wait_for(lambda: sum(stored_ids(pg_url).values()) >= 80, 60, "80 stored")
        # Started again: the first check after a start sees the stored month at once (a running
        # member looks again within a minute).
        for d in (a, b):
            d.stop()
            d.start()
        wait_for(lambda: [(2,)] == query(pg_url, "SELECT count(*) FROM finalize_job "
                                                 "WHERE state = 'done'"), 90,
                 "both accounts' last period finalized")
        publisher.close()
    finally:
        a.stop()
        b.stop()
    month = last_month.strftime("%Y-%m")
    assert [("acme", month, 1), ("globex", month, 1)] == query(
        pg_url, "SELECT j.account, j.label, count(f.account) FROM finalize_job AS j "
                "JOIN finalized AS f ON f.account = j.account "
                "AND f.period_start_us = j.period_start_us GROUP BY j.account, j.label "
                "ORDER BY j.account")
    workers = {w for (w,) in query(pg_url, "SELECT worker FROM finalize_job")}
    assert workers <= {f"meter serve pid {d.proc.pid} on host {socket.gethostname()}"
                       for d in (a, b) if d.proc is not None}
    assert [(80,)] == query(pg_url, "SELECT count(*) FROM events")


def test_fewer_slots_retire_the_extra_sessions_with_what_they_held(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """A cluster of 3 slots whose third member died keeps getting a third of the events queued
    in that slot's session. Started again with --slots 2, the first member drains that session
    and takes it out of the shared group (killed while it drains, it does so at its next
    start): nothing it held is lost, and new events all reach the two slots left."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    quick = {"METER_FINALIZE_QUIET": "1s"}
    a, b, c = (member(broker, tmp_path / n, topic_prefix, pg_url, quick, slots=3) for n in "abc")
    for d in (a, b, c):
        d.start()
    publisher = Publisher(broker, topic_prefix)
    two = [member(broker, tmp_path / f"{n}2", topic_prefix, pg_url, quick) for n in "ab"]
    try:
        wait_for(lambda: sorted(d.total("meter_cluster_slot") for d in (a, b, c))
                 == [0, 1, 2], 30, "three slots held")
        [third] = [d for d in (a, b, c) if d.value("meter_cluster_slot") == 2]
        third.kill()
        publisher.publish_many(iter_events(3000, prefix="before-"))
        publisher.wait_all_acked()
        first_two = [d for d in (a, b, c) if d is not third]
        for d in first_two:
            d.stop()
        # Mosquitto deals a shared subscription's messages round-robin, the dead slot's too.
        assert 2000 == sum(stored_ids(pg_url).values())
        # Killed while it drains slot 2: the cluster row keeps slot 2 to retire, so the next
        # start retires it.
        two[0].start(wait=False)
        wait_for(lambda: "retiring ingest slot 2" in two[0].log_text(), 30, "the drain to begin")
        two[0].kill()
        assert [(2, 3)] == query(pg_url, "SELECT slots, retiring FROM cluster")
        for d in two:
            d.start()
        wait_for(lambda: "ingest slot 2 retired" in two[0].log_text(), 60, "slot 2 retired")
        assert [(2, 0)] == query(pg_url, "SELECT slots, retiring FROM cluster")
        publisher.publish_many(iter_events(3000, prefix="after-"))
        publisher.wait_all_acked()
        wait_for(lambda: sum(stored_ids(pg_url).values()) >= 6000, 60, "6,000 stored")
        stored = stored_ids(pg_url)
        assert {("acme", f"{p}{i}") for p in ("before-", "after-") for i in range(3000)} == (
            set(stored))
        assert {1} == set(stored.values())
        assert [0.0, 1.0] == sorted(d.total("meter_cluster_slot") for d in two)
    finally:
        publisher.close()
        for d in (a, b, c, *two):
            d.stop()


def test_the_usage_api_answers_for_the_accounts_a_member_tracks(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """Both accounts hash to one of the 4 partitions: the member holding it answers their usage,
    the other says 503 `tracked_elsewhere` instead of showing zeros."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    ports = [free_port(), free_port()]
    members = [member(broker, tmp_path / n, topic_prefix, pg_url,
                      {"METER_HTTP_ADDR": f"127.0.0.1:{port}"})
               for n, port in zip("ab", ports, strict=True)]
    for d in members:
        d.start()
    try:
        wait_for(lambda: sorted(d.total("meter_cluster_tracked_accounts") for d in members)
                 == [0.0, 2.0], 30, "one member tracking both accounts")
        answers = []
        for port in ports:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/v1/accounts/acme/usage", timeout=10) as r:
                    answers.append((r.status, json.loads(r.read())["account"]))
            except urllib.error.HTTPError as exc:
                answers.append((exc.code, json.loads(exc.read())["error"]))
        tracking = [d.total("meter_cluster_tracked_accounts") == 2.0 for d in members]
        assert sorted(answers) == [(200, "acme"), (503, "tracked_elsewhere")]
        assert answers[tracking.index(True)] == (200, "acme")
    finally:
        for d in members:
            d.stop()


def test_a_member_whose_lease_connection_is_lost_stops_with_one_line(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """The server ends the member's lease connection (a failover, an operator's
    pg_terminate_backend): every lease went with it, so the member exits 1 saying so, and its
    restart joins again and takes a slot."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    d = member(broker, tmp_path / "a", topic_prefix, pg_url)
    d.start()
    try:
        wait_for(lambda: d.value("meter_cluster_slot") == 0, 30, "slot 0 held")
        assert d.proc is not None
        # The member's only connection named after it: its lease connection.
        [(terminated,)] = query(pg_url, "SELECT count(pg_terminate_backend(pid)) FROM "
                                        "pg_stat_activity WHERE application_name LIKE "
                                        "'meter serve pid %'")
        assert 1 == terminated
        assert 1 == d.proc.wait(30)
        last = d.log_text().strip().splitlines()[-1]
        assert "the lease connection" in last
        assert "Traceback" not in d.log_text()
        d.start()
        wait_for(lambda: d.value("meter_cluster_slot") == 0, 30, "slot 0 held again")
    finally:
        d.stop()



async def test_members_joining_together_on_a_new_database_all_join(pg_url: str) -> None:
    """Eight members' leases opened at once on a new (migrated) database: one records the
    cluster's shape, the others read it; none fails on the shape row's key."""
    async with await open_store(pg_url):
        pass
    joined = await asyncio.gather(*(Leases.open(pg_url, slots=2, partitions=4)
                                    for _ in range(8)), return_exceptions=True)
    try:
        assert [] == [j for j in joined if not isinstance(j, Leases)]
        assert [(2, 4, 0)] == query(pg_url, "SELECT slots, partitions, retiring FROM cluster")
        assert 8 == await joined[0].members()  # type: ignore[union-attr]
    finally:
        for j in joined:
            if isinstance(j, Leases):
                await j.close()
