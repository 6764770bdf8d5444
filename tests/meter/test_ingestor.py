"""The daemon's `Ingestor` over a real SQLite file: what one commit does to the live tracker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from meter.config import load_settings
from meter.events import Event, parse
from meter.metrics import Metrics
from meter.serve import Ingestor, save_checkpoint
from meter.store import open_store
from meter.tracker import Tracker
from rating.contracts import parse_contracts
from rating.usage import to_us
from tests.contracts_toml import account, contracts, pool

CONTRACTS = parse_contracts(contracts(*(
    account(name, pools=[pool("agents", tier="premium", model="concurrent", quantity=10,
                              price="1.00", overage_price="1.00")])
    for name in ("a", "b"))), source="test")


def _login(account_id: str, user: str, ts: datetime, now: datetime) -> Event:
    payload = (f'{{"id":"{account_id}-{user}","type":"login","account":"{account_id}",'
               f'"user":"{user}","ts":"{ts.isoformat()}"}}').encode()
    outcome = parse(payload, contracts=CONTRACTS, received_at=now)
    assert isinstance(outcome, Event)
    return outcome


async def test_a_commit_applies_its_own_accounts_events_the_reorder_window_has_passed(
        tmp_path: Path) -> None:
    """Events a minute old (the reorder window is 2 s) are applied (and counted: two new, one
    duplicate) on the loop's next turn after the commit that stores them, for the batch's
    accounts only: account b's buffered event waits for the next refresh, which applies it.
    (Left to the once-a-second refresh, a second's events were applied in one go: a stall of
    the loop every second at 5,000 events/s.)"""
    now = datetime.now(UTC).replace(microsecond=0)
    minute_ago = now - timedelta(minutes=1)
    settings = load_settings({"broker": "mqtt://x"}, {})
    tracker = Tracker(CONTRACTS, to_us(now - timedelta(hours=1)))
    async with await open_store(tmp_path / "m.db") as store:
        metrics = Metrics(CONTRACTS, CollectorRegistry())
        ingestor = Ingestor(settings, contracts=CONTRACTS, store=store, tracker=tracker,
                            metrics=metrics, stop=asyncio.Event())
        ingestor._snapshot_at = time.monotonic() + 3600  # no refresh inside the commit
        tracker.apply(_login("b", "u1", minute_ago, now))
        fresh = await ingestor.commit([_login("a", "u1", minute_ago, now),
                                       _login("a", "u2", minute_ago, now),
                                       _login("a", "u2", minute_ago, now)], (), to_us(now))
        await asyncio.sleep(0)  # the loop's next turn applies a commit no other one follows
        after_commit = ({v.account: v.active_users for v in tracker.views()}, tracker.pending)
        counted = (metrics.received["a"], metrics.duplicates["a"])
        ingestor.refresh(force=True)
        after_refresh = ({v.account: v.active_users for v in tracker.views()}, tracker.pending)
    assert 2 == len(fresh or [])
    assert ({"a": 2, "b": 0}, 1, (2, 1)) == (*after_commit, counted)
    assert ({"a": 2, "b": 1}, 0) == after_refresh


async def test_the_next_commit_applies_the_one_before_it_and_readers_see_both_applied(
        tmp_path: Path) -> None:
    """Two commits back to back (no turn of the loop between them): when the second returns the
    first one's events are applied and its own are not yet; `settled` (how re-rating and
    checkpoints take the ingest lock) applies them, so under it the tracker holds exactly what
    the store holds."""
    now = datetime.now(UTC).replace(microsecond=0)
    minute_ago = now - timedelta(minutes=1)
    settings = load_settings({"broker": "mqtt://x"}, {})
    tracker = Tracker(CONTRACTS, to_us(now - timedelta(hours=1)))
    async with await open_store(tmp_path / "m.db") as store:
        ingestor = Ingestor(settings, contracts=CONTRACTS, store=store, tracker=tracker,
                            metrics=Metrics(CONTRACTS, CollectorRegistry()), stop=asyncio.Event())
        ingestor._snapshot_at = time.monotonic() + 3600  # no refresh inside the commits
        await ingestor.commit([_login("a", "u1", minute_ago, now)], (), to_us(now))
        await ingestor.commit([_login("b", "u1", minute_ago, now),
                               _login("b", "u2", minute_ago, now)], (), to_us(now))
        between = {v.account: v.active_users for v in tracker.views()}
        async with ingestor.settled():
            settled = ({v.account: v.active_users for v in tracker.views()},
                       await store.last_seq())
    assert {"a": 1, "b": 0} == between
    assert ({"a": 1, "b": 2}, 3) == settled


async def test_a_commit_cancelled_while_the_store_has_it_saves_no_checkpoint(
        tmp_path: Path) -> None:
    """A commit cancelled once its batch is in the store's hands: the cancellation waits for the
    transaction (the row is stored, and the ingest lock is free only after it), and from then on
    no checkpoint is saved, since the tracker may lack that batch; a restart replays from the
    store instead."""
    now = datetime.now(UTC).replace(microsecond=0)
    settings = load_settings({"broker": "mqtt://x"}, {})
    async with await open_store(tmp_path / "m.db") as store:
        ingestor = Ingestor(settings, contracts=CONTRACTS, store=store,
                            tracker=Tracker(CONTRACTS, to_us(now - timedelta(hours=1))),
                            metrics=Metrics(CONTRACTS, CollectorRegistry()), stop=asyncio.Event())
        commit = asyncio.create_task(ingestor.commit(
            [_login("a", "u1", now - timedelta(minutes=1), now)], (), to_us(now)))
        for _ in range(3):  # to the store's `await asyncio.sleep(0)`: the call is queued
            await asyncio.sleep(0)
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
        stored = [e.id for e in await store.events()]
        saved = await save_checkpoint(store, ingestor)
        kept = await store.load_checkpoint()
    assert (["a-u1"], True, None, None) == (stored, ingestor.unsure, saved, kept)
