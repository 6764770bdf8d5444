"""Tracker checkpoints: a restored tracker is the tracker it was saved from, in what it shows and
in what it does with the events that follow; a checkpoint of another version or other contracts
is refused."""

from __future__ import annotations

import base64
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter import checkpoint
from meter.tracker import Tracker
from rating.contracts import Contracts, parse_contracts
from tests.conftest import Broker
from tests.contracts_toml import account, addon, contracts, order, pool
from tests.meter import test_serve as serve
from tests.meter.test_serve import Daemon, daemon_factory

__all__ = ["daemon_factory"]  # the fixture, shared with test_serve

TEXT = contracts(
    account("acme", timezone="America/New_York", session_timeout="2h", pools=[
        pool("agents", tier="elite", model="concurrent", quantity=2, price="149.00",
             overage_price="149.00", grace="10m"),
        pool("leads", tier="premium", model="concurrent", quantity=1, price="99.00",
             overage_price="99.00", grace="10m", grace_mode="cumulative"),
        pool("seats", tier="premium", model="named", quantity=2, price="49.00"),
    ], addons=[addon("wfm", quantity=1, price="25.00")],
        orders=[order("2026-11-03T16:00:00Z", pool="agents", quantity=3)]),
    account("globex", timezone="Europe/Berlin", anchor="2026-01-15", pools=[
        pool("desk", tier="essentials", model="concurrent", quantity=1, price="49.00",
             overage_price="49.00", grace="5m")]),
)
CONTRACTS = parse_contracts(TEXT)
T0 = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000
MIN = 60_000_000
POOLS = {"acme": ["agents", "leads", "seats", None], "globex": ["desk"]}


#: A real version-2 checkpoint (dict of sessions per user and a timer list), written by the meter
#: before version 3, with these CONTRACTS: ann on two devices, bob and x signed in, a logout buffered.
V2_BLOB = base64.b64decode(
    "hqd2ZXJzaW9uAqljb250cmFjdHPZQDcxZTY3MzY2YTVmN2Q0ODM5ZGQyODQ4YTljYzAwNWFhNzFhNTM1N2IyZWMzMDg1"
    "ZDk4ZWMzNWIwMDVjZTVjNjejc2VxB6p1bnJlc29sdmVkAKhhY2NvdW50c5KUpGFjbWXPAAZfX7+FmwDPAAZfYBjtygCR"
    "mc8ABl9gGO3KAAMEpGFjbWWgpmxvZ291dKNib2KmYWdlbnRzwJSmZ2xvYmV4zwAGX1+/hZsAzwAGX1+to/gAkKVwb29s"
    "c5TcABWkYWNtZaZhZ2VudHPPAAZfX7+FmwCCo2FuboKlcGhvbmXPAAZfX62j+ACkZGVza88ABl9fsTd/AKNib2KBoM8A"
    "Bl9fsTd/AJOTo2FubqVwaG9uZc8ABl9hWstAAZOjYW5upGRlc2vPAAZfYV5exwGTo2JvYqDPAAZfYV5exwGQApCQAADP"
    "AAZfX7E3fwDPAAZfLxAw0ADPAAZhi2YBtAACzwAGX1+xN38AAM8ABl9eAHywAACSo2FubqNib2LC3AAVpGFjbWWlbGVh"
    "ZHPPAAZfX7+FmwCAkJABkJAAAMDPAAZfLxAw0ADPAAZhi2YBtAAAzwAGX14AfLAAAM8ABl9eAHywAACQwtwAFaRhY21l"
    "pXNlYXRzzwAGX1+/hZsAgJCQApCQAADAzwAGXy8QMNAAzwAGYYtmAbQAAM8ABl9eAHywAADPAAZfXgB8sAAAkMLcABWm"
    "Z2xvYmV4pGRlc2vPAAZfX7+FmwCBoXiBoM8ABl9fraP4AJGToXigzwAGX2m8j6gBkAGQkAAAzwAGX1+to/gAzwAGXdQN"
    "bZgAzwAGYESBFdwAAc8ABl9fraP4AADPAAZfXgB8sAAAkaF4wg=="
)


@dataclass(frozen=True)
class Ev:
    account: str
    type: str
    user: str
    pool: str | None
    session: str | None
    ts_us: int


def stream(rng: random.Random, n: int, start_us: int) -> list[Ev]:
    """Logins, logouts, heartbeats and seat changes of a few users over a few hours, mostly in
    order, some late, some ahead, some to a pool the contracts do not have."""
    out = []
    at = start_us
    for _ in range(n):
        at += rng.randrange(0, 6 * MIN)
        acct = rng.choice(["acme", "acme", "globex"])
        pool_id = rng.choice(POOLS[acct])
        kind = rng.choice(["login", "login", "logout", "heartbeat"] +
                          (["assign", "unassign"] if pool_id in ("seats", None) else []))
        ts = at - rng.choice([0, 0, 0, 3 * MIN, 40 * MIN]) + rng.choice([0, 0, 2 * MIN])
        out.append(Ev(acct, kind, f"u{rng.randrange(6)}",
                      "nowhere" if rng.random() < 0.02 else pool_id,
                      rng.choice([None, "a", "b"]), ts))
    return out


def feed(tracker: Tracker, events: list[Ev], window_us: int = 2 * MIN) -> None:
    """As the daemon does: apply each batch, then advance each account to its own now."""
    for i in range(0, len(events), 7):
        batch = events[i:i + 7]
        tracker.apply_all(batch)
        tracker.advance_each(max(e.ts_us for e in batch), window_us)


def same(a: Tracker, b: Tracker) -> None:
    assert a.views() == b.views()
    assert a.addon_views() == b.addon_views()
    assert (a.pending, a.unresolved, a.latest_us, a.dirty_accounts()) == (
        b.pending, b.unresolved, b.latest_us, b.dirty_accounts())


def roundtrip(tracker: Tracker, seq: int = 42) -> Tracker:
    restored, got = checkpoint.load(CONTRACTS, checkpoint.dump(tracker, seq))
    assert seq == got
    return restored


def test_a_restored_tracker_shows_and_continues_the_same() -> None:
    """Open sessions on two devices, buffered events, an excess in grace (continuous and
    cumulative), seats, a late event and an unresolved one: after dump and load the views are
    equal, a second dump is byte for byte the first, and the same next events (with a timeout
    and a licence change among them) leave both trackers equal."""
    t = Tracker(CONTRACTS, T0_US - 2 * 3600 * 1_000_000)
    feed(t, [
        Ev("acme", "assign", "ann", "seats", None, T0_US),
        Ev("acme", "login", "ann", "agents", "phone", T0_US),
        Ev("acme", "login", "ann", "agents", "desk", T0_US + MIN),
        Ev("acme", "login", "bob", "agents", None, T0_US + MIN),
        Ev("acme", "login", "cat", "agents", None, T0_US + 2 * MIN),
        Ev("acme", "login", "dan", "leads", None, T0_US + 2 * MIN),
        Ev("acme", "login", "eve", "leads", None, T0_US + 3 * MIN),
        Ev("globex", "login", "x", "desk", None, T0_US),
        Ev("globex", "login", "y", "desk", None, T0_US + MIN),
        Ev("acme", "login", "zed", "nowhere", None, T0_US + 3 * MIN),
    ])
    t.advance(T0_US + 5 * MIN)
    t.apply(Ev("acme", "logout", "eve", "leads", None, T0_US + 30 * MIN))  # buffered
    t.apply(Ev("acme", "heartbeat", "bob", "agents", None, T0_US))  # late
    # Late events (bob's heartbeat; globex's logins, behind the "now" of acme's first batch)
    # leave both accounts awaiting a re-rate, which the checkpoint must keep.
    assert ["acme", "globex"] == t.dirty_accounts()
    view = {v.pool: v for v in t.views()}
    assert (1, 3, 1, 1) == (t.pending, view["agents"].active_users, view["agents"].excess,
                            view["leads"].excess)
    restored = roundtrip(t)
    same(t, restored)
    assert checkpoint.dump(t, 42) == checkpoint.dump(restored, 42)

    after = [
        Ev("acme", "login", "fay", "agents", None, T0_US + 20 * MIN),
        Ev("acme", "login", "gus", "leads", "s", T0_US + 20 * MIN),
        Ev("globex", "logout", "y", "desk", None, T0_US + 20 * MIN),
        Ev("acme", "unassign", "ann", "seats", None, T0_US + 25 * MIN),
        Ev("acme", "logout", "ann", "agents", None, T0_US + 40 * MIN),
    ]
    for tracker in (t, restored):
        feed(tracker, after)
        tracker.advance(T0_US + 5 * 3600 * 1_000_000)  # past the timeout and the licence change
    same(t, restored)
    assert 0 < {v.pool: v for v in t.views()}["agents"].billable_overage  # type: ignore[operator]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 120), cut=st.floats(0, 1))
def test_any_checkpoint_continues_exactly(seed: int, n: int, cut: float) -> None:
    """Random streams (late, ahead, unresolved, seat changes, a month end crossed): a tracker
    checkpointed anywhere and fed the rest equals the one that never stopped."""
    rng = random.Random(seed)
    start = int(datetime(2026, 11, 30, 20, tzinfo=UTC).timestamp()) * 1_000_000
    events = stream(rng, n, start)
    k = int(n * cut)
    t = Tracker(CONTRACTS, start - 3600 * 1_000_000)
    feed(t, events[:k])
    restored = roundtrip(t)
    same(t, restored)
    for tracker in (t, restored):
        feed(tracker, events[k:])
        tracker.flush()
    same(t, restored)


def test_other_contracts_or_version_are_refused() -> None:
    """A checkpoint made with other contracts (one quantity changed), of another version, or not
    a checkpoint at all is `Stale`, with a reason for the log."""
    t = Tracker(CONTRACTS, T0_US)
    blob = checkpoint.dump(t, 1)
    changed: Contracts = parse_contracts(TEXT.replace("quantity = 2", "quantity = 5", 1))
    with pytest.raises(checkpoint.Stale, match="other contracts"):
        checkpoint.load(changed, blob)
    doc = msgspec.msgpack.decode(blob)
    doc["version"] = checkpoint.VERSION + 1
    with pytest.raises(checkpoint.Stale, match="version"):
        checkpoint.load(CONTRACTS, msgspec.msgpack.encode(doc))
    with pytest.raises(checkpoint.Stale, match="unreadable"):
        checkpoint.load(CONTRACTS, b"\x93not a checkpoint")
    doc["version"] = checkpoint.VERSION
    doc["pools"] = "many"
    with pytest.raises(checkpoint.Stale, match="malformed"):
        checkpoint.load(CONTRACTS, msgspec.msgpack.encode(doc))


def test_a_checkpoint_of_the_previous_format_is_refused() -> None:
    """A version-2 checkpoint, written by the meter before this format, is refused as `Stale`
    naming both versions (the daemon then rebuilds from the log), never read as version 3."""
    assert 2 == msgspec.msgpack.decode(V2_BLOB)["version"]
    with pytest.raises(checkpoint.Stale, match=r"^checkpoint version 2, this meter writes 3$"):
        checkpoint.load(CONTRACTS, V2_BLOB)
    doc = msgspec.msgpack.decode(V2_BLOB)
    doc["version"] = checkpoint.VERSION  # its fields under this version's number: malformed
    with pytest.raises(checkpoint.Stale, match="malformed"):
        checkpoint.load(CONTRACTS, msgspec.msgpack.encode(doc))


def test_the_checkpoint_is_small() -> None:
    """A thousand open sessions take tens of kilobytes, not a month of events."""
    t = Tracker(CONTRACTS, T0_US)
    feed(t, [Ev("acme", "login", f"user{i}", "agents", None, T0_US + i) for i in range(1000)])
    assert len(checkpoint.dump(t, 1)) < 64_000


# --- the daemon: a restart restores the checkpoint and replays only what came after ----------

GAUGES = ("meter_active_users", "meter_licensed_seats", "meter_period_peak_users",
          "meter_period_peak_timestamp_seconds", "meter_excess_users",
          "meter_period_billable_overage_seats", "meter_period_start_timestamp_seconds")
SERVE_POOLS = (("acme", "agents"), ("globex", "desk"))


def gauges(d: Daemon) -> dict[tuple[str, str, str], float | None]:
    m = d.scrape()
    return {(name, a, p): m.get((name, frozenset({("account", a), ("pool", p)})))
            for name in GAUGES for a, p in SERVE_POOLS}


def publish_logins(broker: Broker, prefix: str, tag: str, users: range) -> int:
    """Logins of `users` to acme (2 seats, so an excess) and globex, and a logout of the first."""
    now = datetime.now(UTC)
    acme = [serve.event(i, user=f"u{i}", eid=f"{tag}{i}", ts=now) for i in users]
    acme.append(serve.event(0, "logout", user=f"u{users[0]}", eid=f"{tag}-out",
                            ts=now + timedelta(milliseconds=1)))
    globex = [serve.event(i, account="globex", user=f"g{i}", eid=f"{tag}g{i}", ts=now)
              for i in users]
    serve.mosquitto_pub(broker, f"{prefix}/acme/events", acme)
    serve.mosquitto_pub(broker, f"{prefix}/globex/events", globex)
    return len(acme) + len(globex)


def settled(d: Daemon, n: int, acme_users: int) -> dict[tuple[str, str, str], float | None]:
    """The gauges once `n` events are stored, the reorder window (2 s) has passed them (acme
    shows `acme_users`) and a tick later nothing has moved."""
    serve.wait_for(lambda: serve.count(d.db) == n, f"{n} stored events")
    serve.wait_for(lambda: d.value("meter_active_users", account="acme", pool="agents")
                   == acme_users, "the gauges past the reorder window")
    time.sleep(1.5)
    return gauges(d)


def checkpoint_seq(db: Path) -> int | None:
    rows = serve.stored(db, "SELECT seq FROM checkpoint")
    return int(str(rows[0][0])) if rows else None


@pytest.mark.broker
def test_sigterm_saves_a_checkpoint_and_the_restart_restores_it(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Events, SIGTERM, restart: the log says the checkpoint was restored with nothing to
    replay, and every gauge is what it was before."""
    monkeypatch.setenv("METER_CHECKPOINT_EVERY", "0s")  # only the one on SIGTERM
    d = daemon_factory(mosquitto)
    d.start()
    n = publish_logins(mosquitto, topic_prefix, "a", range(1, 6))
    before = settled(d, n, 4)
    assert (4, 2, 5) == (before["meter_active_users", "acme", "agents"],
                         before["meter_excess_users", "acme", "agents"],
                         before["meter_period_peak_users", "acme", "agents"])
    assert 0 == d.signal(signal.SIGTERM)
    assert n == checkpoint_seq(d.db)
    assert f"saved a checkpoint at seq {n}" in d.log()
    d.start()
    assert f"restored the checkpoint at seq {n} and replayed 0 events" in d.log()
    assert before == gauges(d)


@pytest.mark.broker
def test_after_sigkill_the_restart_replays_what_came_after_the_checkpoint(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A periodic checkpoint, more events, SIGKILL: the restart replays exactly the events
    after the checkpoint and shows what the daemon showed before it was killed, which is also
    what a full rebuild from the store shows (checkpoint deleted)."""
    monkeypatch.setenv("METER_CHECKPOINT_EVERY", "1s")
    d = daemon_factory(mosquitto)
    d.start()
    first = publish_logins(mosquitto, topic_prefix, "a", range(1, 6))
    settled(d, first, 4)
    serve.wait_for(lambda: checkpoint_seq(d.db) == first, "a periodic checkpoint")
    monkeypatch.setenv("METER_CHECKPOINT_EVERY", "1h")  # the next daemons keep it as it is
    d.signal(signal.SIGKILL)
    d.start()
    second = publish_logins(mosquitto, topic_prefix, "b", range(6, 9))
    live = settled(d, first + second, 6)
    assert -signal.SIGKILL == d.signal(signal.SIGKILL)
    assert first == checkpoint_seq(d.db)

    d.start()
    assert f"restored the checkpoint at seq {first} and replayed {second} events" in d.log()
    assert live == gauges(d)
    assert -signal.SIGKILL == d.signal(signal.SIGKILL)
    with sqlite3.connect(d.db) as conn:
        conn.execute("DELETE FROM checkpoint")
    d.start()
    assert f"rebuilt live state from {first + second} stored events" in d.log()
    assert live == gauges(d)


@pytest.mark.broker
def test_a_checkpoint_of_other_contracts_is_ignored(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After the contracts file changed (acme's quantity), the restart ignores the checkpoint,
    says so, and rebuilds from the store with the new quantity."""
    d = daemon_factory(mosquitto)
    d.start()
    n = publish_logins(mosquitto, topic_prefix, "a", range(1, 6))
    settled(d, n, 4)
    assert 0 == d.signal(signal.SIGTERM)
    monkeypatch.setattr(serve, "CONTRACTS", serve.CONTRACTS.replace("quantity = 2", "quantity = 3"))
    d.start()
    assert "checkpoint ignored, rebuilding from the stored events: checkpoint made with other " \
           "contracts" in d.log()
    assert f"rebuilt live state from {n} stored events" in d.log()
    assert 3 == d.value("meter_licensed_seats", account="acme", pool="agents")
    assert 4 == d.value("meter_active_users", account="acme", pool="agents")


def as_version_2(blob: bytes) -> bytes:
    """The checkpoint `blob` as the meter wrote it before version 3: sessions as a dict per user
    and a (user, key, due) timer per session."""
    doc = msgspec.msgpack.decode(blob)
    doc["version"] = 2
    for pool_doc in doc["pools"]:
        sessions: dict[str, dict[str, int]] = {}
        timers = []
        for user, key, last in pool_doc[3]:
            sessions.setdefault(user, {})[key.decode()] = last
            timers.append([user, key.decode(), last + 2 * 3600 * 1_000_000 + 1])
        pool_doc[3:4] = [sessions, timers]
    return msgspec.msgpack.encode(doc)


@pytest.mark.broker
def test_a_checkpoint_of_the_previous_format_is_ignored_and_rebuilt(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str) -> None:
    """A version-2 checkpoint in the store (the meter upgraded between stop and start): the
    restart says it ignored it and rebuilds every gauge from the stored events."""
    d = daemon_factory(mosquitto)
    d.start()
    n = publish_logins(mosquitto, topic_prefix, "a", range(1, 6))
    before = settled(d, n, 4)
    assert 0 == d.signal(signal.SIGTERM)
    with sqlite3.connect(d.db) as conn:
        (blob,) = conn.execute("SELECT blob FROM checkpoint").fetchone()
        conn.execute("UPDATE checkpoint SET blob = ?", (as_version_2(blob),))
    d.start()
    assert "checkpoint ignored, rebuilding from the stored events: checkpoint version 2, this " \
           "meter writes 3" in d.log()
    assert f"rebuilt live state from {n} stored events" in d.log()
    assert before == gauges(d)
