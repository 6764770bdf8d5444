"""Group commit of HTTP requests (`meter.http.commit.GroupCommit`) over the daemon's real
`Ingestor` and a SQLite file: requests in flight together share one transaction, and each is
told exactly which of its own events were new, also when two of them carry the same id."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from meter.config import load_settings
from meter.events import Event, parse
from meter.http.commit import GroupCommit
from meter.metrics import Metrics
from meter.serve import Ingestor
from meter.store import open_store
from meter.tracker import Tracker
from rating.contracts import parse_contracts
from rating.usage import to_us
from tests.contracts_toml import account, contracts, pool

CONTRACTS = parse_contracts(contracts(account("acme", pools=[
    pool("agents", tier="premium", model="concurrent", quantity=10, price="1.00",
         overage_price="1.00")])), source="test")
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _event(eid: str) -> Event:
    payload = (f'{{"id":"{eid}","type":"login","account":"acme","user":"u-{eid}",'
               f'"ts":"2026-11-02T08:00:00Z"}}').encode()
    outcome = parse(payload, contracts=CONTRACTS, received_at=NOW)
    assert isinstance(outcome, Event)
    return outcome


async def test_requests_in_flight_share_one_commit_and_each_gets_its_own_answer(
        tmp_path: Path) -> None:
    """Ten requests posted at once, request k carrying ids e{k} and e{k+1}: one transaction;
    request 0 stored both of its events, every other one its second (its first was request
    k-1's); 11 events stored."""
    settings = load_settings({"broker": "mqtt://x"}, {})
    async with await open_store(tmp_path / "m.db") as store:
        ingestor = Ingestor(settings, contracts=CONTRACTS, store=store,
                            tracker=Tracker(CONTRACTS, to_us(NOW)),
                            metrics=Metrics(CONTRACTS, CollectorRegistry()), stop=asyncio.Event())
        group = GroupCommit(ingestor, batch_max=1000)
        requests = [[_event(f"e{k}"), _event(f"e{k + 1}")] for k in range(10)]
        answers = await asyncio.gather(*(group.commit(r, (), to_us(NOW)) for r in requests))
        stored = sorted(e.id for e in await store.events())
    assert (1, 10) == (group.commits, group.requests)
    assert [["e0", "e1"]] + [[f"e{k + 1}"] for k in range(1, 10)] == [
        [e.id for e in (answer or [])] for answer in answers]
    assert sorted(f"e{k}" for k in range(11)) == stored


async def test_a_group_is_at_most_batch_max_events(tmp_path: Path) -> None:
    """With batch_max 4, six requests of 2 events posted at once go in three transactions of
    two requests each, and every request is answered with both of its events."""
    settings = load_settings({"broker": "mqtt://x"}, {})
    async with await open_store(tmp_path / "m.db") as store:
        ingestor = Ingestor(settings, contracts=CONTRACTS, store=store,
                            tracker=Tracker(CONTRACTS, to_us(NOW)),
                            metrics=Metrics(CONTRACTS, CollectorRegistry()), stop=asyncio.Event())
        group = GroupCommit(ingestor, batch_max=4)
        requests = [[_event(f"a{k}"), _event(f"b{k}")] for k in range(6)]
        answers = await asyncio.gather(*(group.commit(r, (), to_us(NOW)) for r in requests))
    assert (3, 6) == (group.commits, group.requests)
    assert [2] * 6 == [len(a or []) for a in answers]
