"""Tracker checkpoints: a restored tracker is the tracker it was saved from, in what it shows and
in what it does with the events that follow; a checkpoint of another version or other contracts
is refused."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter import checkpoint
from meter.tracker import Tracker
from rating.contracts import Contracts, parse_contracts
from tests.contracts_toml import account, addon, contracts, order, pool

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
    assert (a.pending, a.unresolved, a.latest_us) == (b.pending, b.unresolved, b.latest_us)


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


def test_the_checkpoint_is_small() -> None:
    """A thousand open sessions take tens of kilobytes, not a month of events."""
    t = Tracker(CONTRACTS, T0_US)
    feed(t, [Ev("acme", "login", f"user{i}", "agents", None, T0_US + i) for i in range(1000)])
    assert len(checkpoint.dump(t, 1)) < 64_000
