"""The event model: every rejection reason, unknown fields kept, and pool resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from meter.events import REASONS, Event, Limits, Rejection, parse
from rating.contracts import Contracts, parse_contracts
from tests.contracts_toml import account, contracts, pool

CONTRACTS = parse_contracts(contracts(
    # Two concurrent pools: events must name one.
    account("acme", timezone="America/New_York", pools=[
        pool("agents", tier="elite", model="concurrent", quantity=10, price="149.00",
             overage_price="149.00"),
        pool("support", tier="essentials", model="concurrent", quantity=5, price="69.00",
             overage_price="69.00")]),
    # One pool: it is the pool of every event.
    account("solo", currency="EUR", policy="packs", pools=[
        pool("desk", tier="premium", model="concurrent", quantity=3, price="10.00",
             overage_price="10.00")]),
    # One concurrent and one named pool.
    account("mixed", timezone="Europe/Berlin", currency="EUR", billing="annual",
            policy="packs", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=3, price="10.00",
             overage_price="10.00"),
        pool("leads", tier="elite", model="named", quantity=2, price="20.00")]),
    # Two named pools: a seat event must say which.
    account("twonamed", pools=[
        pool("a", tier="elite", model="named", quantity=2, price="20.00"),
        pool("b", tier="premium", model="named", quantity=2, price="20.00")]),
), source="test")

NOW = datetime(2026, 11, 12, 15, 0, tzinfo=UTC)


def payload(**fields: Any) -> bytes:
    """A valid acme login, with `fields` replacing (or, set to ..., removing) its fields."""
    body: dict[str, Any] = {"id": "e1", "type": "login", "account": "acme", "user": "u1",
                            "ts": "2026-11-12T10:00:00-05:00", "pool": "agents", "session": "s1"}
    for key, value in fields.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return msgspec.json.encode(body)


def check(raw: bytes, *, topic_account: str | None = None, limits: Limits | None = None,
          contracts: Contracts = CONTRACTS) -> Event | Rejection:
    return parse(raw, contracts=contracts, received_at=NOW, topic_account=topic_account,
                 limits=limits or Limits())


def test_a_valid_event_is_parsed_to_utc_with_its_raw_payload() -> None:
    """A valid login becomes an Event: ts in UTC, every field copied, the payload kept as is."""
    raw = payload()
    event = check(raw)
    assert Event(id="e1", type="login", account="acme", user="u1",
                 ts=datetime(2026, 11, 12, 15, 0, tzinfo=UTC), pool="agents", session="s1",
                 raw=raw) == event
    assert isinstance(event, Event)
    assert 1_794_495_600_000_000 == event.ts_us


DEEP = b'{"id":"e1","type":"login","account":"acme","user":"u1","ts":"2026-11-12T10:00:00-05:00",' \
       b'"x":' + b"[" * 3000 + b"]" * 3000 + b"}"

REJECTIONS = [
    # (case, payload, topic account, reason, words the detail must contain)
    ("plain text", b"hello", None, "not_json", "malformed"),
    ("cut off mid-write", payload()[:40], None, "not_json", "truncated"),
    ("invalid UTF-8 in a string", payload(user="uXX").replace(b"XX", b"\xff"), None,
     "not_json", "UTF-8"),
    ("nested past the recursion limit", DEEP, None, "not_json", "nested"),
    ("a JSON array, not an object", b"[1, 2]", None, "schema", "object"),
    ("missing user", payload(user=...), None, "schema", "`user`"),
    ("missing ts", payload(ts=...), None, "schema", "`ts`"),
    ("user is a number", payload(user=42), None, "schema", "$.user"),
    ("type not an event type", payload(type="break"), None, "schema", "$.type"),
    ("empty id", payload(id=""), None, "schema", "`id`"),
    ("NUL in user", payload(user="a\u0000b"), None, "schema", "`user` contains a NUL"),
    ("NUL in session", payload(session="s\u0000"), None, "schema", "`session` contains a NUL"),
    ("session of 201 characters", payload(session="s" * 201), None, "schema", "`session`"),
    ("over 8 KiB", payload(note="x" * 8200), None, "oversized", "8192-byte limit"),
    ("naive timestamp", payload(ts="2026-11-12T10:00:00"), None, "bad_timestamp", "no UTC offset"),
    ("not a timestamp", payload(ts="yesterday"), None, "bad_timestamp", "not RFC 3339"),
    ("before datetime.min in UTC", payload(ts="0001-01-01T00:00:00+05:00"), None,
     "bad_timestamp", "out of range"),
    ("5 min 1 s ahead of receive time", payload(ts="2026-11-12T15:05:01Z"), None, "future",
     "ahead of receive time"),
    ("payload account differs from the topic", payload(), "globex", "tenant_mismatch",
     "'acme' differs from topic account 'globex'"),
    ("account not in the contracts", payload(account="hooli"), None, "unknown_account", "'hooli'"),
    ("pool not in the account", payload(pool="sales"), None, "unknown_pool", "'sales'"),
    ("assign naming a concurrent pool", payload(type="assign", account="mixed", pool="agents"), None,
     "unknown_pool", "not a named pool"),
    ("assign without pool, no named pool", payload(type="assign", pool=...), None, "unknown_pool",
     "0 named pools"),
    ("assign without pool, two named pools", payload(type="assign", account="twonamed", pool=...),
     None, "unknown_pool", "2 named pools"),
]


@pytest.mark.parametrize(("case", "raw", "topic", "reason", "words"), REJECTIONS,
                         ids=[r[0] for r in REJECTIONS])
def test_rejections_have_a_reason_and_a_detail(case: str, raw: bytes, topic: str | None,
                                               reason: str, words: str) -> None:
    """Each kind of bad message is rejected with its reason, and the detail says what was wrong."""
    outcome = check(raw, topic_account=topic)
    assert isinstance(outcome, Rejection), case
    assert reason == outcome.reason
    assert words in outcome.detail


def test_the_rejection_table_covers_every_reason() -> None:
    """Every reason of REASONS is produced by at least one case above."""
    assert set(REASONS) == {r[3] for r in REJECTIONS}


@pytest.mark.parametrize(("raw", "account"), [
    (payload(ts="yesterday"), "acme"),
    (payload(pool="sales"), "acme"),
    (payload(), "globex"),            # tenant_mismatch: the topic's account owns the rejection
    (payload(account="hooli"), None),  # an account we do not know is nobody's
    (b"hello", None),
])
def test_rejections_name_the_account_they_belong_to(raw: bytes, account: str | None) -> None:
    """A rejection carries the account it can be counted against, or None."""
    outcome = check(raw, topic_account="globex" if account == "globex" else None)
    assert isinstance(outcome, Rejection)
    assert account == outcome.account


def test_size_limit_is_inclusive_and_configurable() -> None:
    """A payload of exactly the limit is accepted; one byte more is oversized."""
    raw = payload(note="")
    pad = 8192 - len(raw)
    exact = payload(note="x" * pad)
    assert 8192 == len(exact)
    assert isinstance(check(exact), Event)
    over = payload(note="x" * (pad + 1))
    assert "oversized" == getattr(check(over), "reason", None)
    assert isinstance(check(over, limits=Limits(max_bytes=9000)), Event)


@pytest.mark.parametrize(("ts", "skew", "accepted"), [
    ("2026-11-12T15:05:00Z", timedelta(minutes=5), True),    # exactly the allowed skew
    ("2026-11-12T15:05:01Z", timedelta(minutes=5), False),
    ("2026-11-12T16:00:00+01:00", timedelta(minutes=5), True),  # the same instant as NOW
    ("2026-11-12T15:30:00Z", timedelta(hours=1), True),      # a larger --max-future
    ("2020-01-01T00:00:00Z", timedelta(0), True),            # the past is never future
])
def test_future_is_measured_from_receive_time(ts: str, skew: timedelta, accepted: bool) -> None:
    """An event more than the allowed skew ahead of the receive time is `future`; at it, it is not."""
    outcome = check(payload(ts=ts), limits=Limits(future_skew=skew))
    assert accepted == isinstance(outcome, Event)


def test_unknown_fields_are_kept_in_the_raw_payload() -> None:
    """Extra fields are not an error; the raw payload keeps them byte for byte."""
    raw = payload(device="softphone", queue={"id": 7, "name": "billing"}, score=0.5)
    event = check(raw)
    assert isinstance(event, Event)
    assert raw == event.raw
    assert {"id": 7, "name": "billing"} == msgspec.json.decode(event.raw)["queue"]


def test_a_matching_topic_account_is_accepted() -> None:
    """The topic's account equal to the payload's is fine."""
    assert isinstance(check(payload(), topic_account="acme"), Event)


@pytest.mark.parametrize(("fields", "pool"), [
    ({"account": "acme"}, "agents"),                                  # named explicitly
    ({"account": "acme", "pool": ...}, None),                         # two pools: left to rating
    ({"account": "solo", "pool": ...}, "desk"),                       # the account's only pool
    ({"account": "solo", "pool": ..., "type": "heartbeat"}, "desk"),
    ({"account": "mixed", "pool": ...}, None),                        # assigned user decides later
    ({"account": "mixed", "pool": ..., "type": "assign"}, "leads"),   # the only named pool
    ({"account": "mixed", "pool": ..., "type": "unassign"}, "leads"),
    ({"account": "twonamed", "pool": "b", "type": "assign"}, "b"),
    ({"account": "mixed", "pool": "leads"}, "leads"),                 # a login to a named pool
])
def test_pool_resolution(fields: dict[str, Any], pool: str | None) -> None:
    """A pool left out is filled in where the account makes it certain, else left as None."""
    event = check(payload(**fields))
    assert isinstance(event, Event)
    assert pool == event.pool


def test_optional_session_may_be_left_out() -> None:
    """`session` is optional: a heartbeat without one parses with session None."""
    event = check(payload(type="heartbeat", session=...))
    assert isinstance(event, Event)
    assert event.session is None


@pytest.mark.parametrize(("ts", "expected"), [
    ("2026-11-12T10:00:00-05:00", datetime(2026, 11, 12, 15, 0, tzinfo=UTC)),
    ("2026-11-12 15:00:00Z", datetime(2026, 11, 12, 15, 0, tzinfo=UTC)),  # RFC 3339 allows a space
    ("2026-11-12t15:00:00z", datetime(2026, 11, 12, 15, 0, tzinfo=UTC)),  # and lower case t, z
    ("2026-11-12T15:00:00.123456789+00:00",
     datetime(2026, 11, 12, 15, 0, 0, 123456, tzinfo=UTC)),  # nanoseconds cut to microseconds
    ("20261112T150000Z", None),  # ISO 8601 basic format is not RFC 3339
    ("2026-11-12", None),  # a date is not a time
    ("2026-11-12T15:00Z", None),  # seconds are required
    ("2026-11-12T15:00:00+0000", None),  # the offset needs its colon
])
def test_timestamps_are_rfc3339_only(ts: str, expected: datetime | None) -> None:
    """Only RFC 3339 date-times with an offset are accepted; anything else is bad_timestamp."""
    got = check(payload(ts=ts))
    if expected is None:
        assert isinstance(got, Rejection)
        assert ("bad_timestamp", f"field `ts` is not RFC 3339: {ts!r}") == (got.reason, got.detail)
    else:
        assert isinstance(got, Event)
        assert expected == got.ts
