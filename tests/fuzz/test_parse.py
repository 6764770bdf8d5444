"""Fuzzing `meter.events.parse`: whatever bytes arrive, the answer is an Event or a Rejection.

A parser that raises on a payload stops a daemon that any tenant can write to, so every input
here (arbitrary bytes, deep or huge JSON, invalid UTF-8, NaN and huge numbers, wrong types in
every field, out-of-range timestamps) must come back as a value, and a well-formed one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meter.events import EVENT_TYPES, REASONS, Event, Limits, Rejection, parse
from rating.contracts import Contracts, parse_contracts
from tests.contracts_toml import account, contracts, pool

CONTRACTS_TOML = contracts(
    account("acme", timezone="America/New_York", pools=[
        pool("agents", tier="elite", model="concurrent", quantity=10, price="149.00",
             overage_price="149.00")]),
    account("globex", currency="EUR", anchor="2026-01-15", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=5, price="99.00",
             overage_price="99.00"),
        pool("seats", tier="elite", model="named", quantity=5, price="99.00")]),
)
CONTRACTS: Contracts = parse_contracts(CONTRACTS_TOML)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DEFAULT_LIMITS = Limits()
FIELDS = ("id", "type", "account", "user", "ts", "pool", "session")
VALID: dict[str, Any] = {
    "id": "e1", "type": "login", "account": "acme", "user": "u1",
    "ts": "2026-11-23T11:00:00+00:00", "pool": "agents", "session": "s1",
}

#: How many examples each property runs (nested-JSON properties run fewer: each costs more).
#: No deadline: a loaded CI machine must not turn a slow example into a failure.
EXAMPLES = 1000
NESTED_EXAMPLES = 400


def check(payload: bytes, *, topic_account: str | None = None,
          limits: Limits = DEFAULT_LIMITS) -> Event | Rejection:
    """Parse and assert the result is a well-formed Event or Rejection (never an exception)."""
    result = parse(payload, contracts=CONTRACTS, received_at=NOW, topic_account=topic_account,
                   limits=limits)
    if isinstance(result, Rejection):
        assert result.reason in REASONS
        assert isinstance(result.detail, str)
        assert result.detail
        return result
    assert isinstance(result, Event)
    assert result.type in EVENT_TYPES
    assert result.account in CONTRACTS
    assert timedelta(0) == result.ts.utcoffset()
    assert result.ts - NOW <= limits.future_skew
    assert payload == result.raw
    for name in ("id", "account", "user"):
        value = getattr(result, name)
        assert isinstance(value, str)
        assert 0 < len(value) <= 200
    if topic_account is not None:
        assert topic_account == result.account
    # A stored event must be encodable as SQLite text (no lone surrogates).
    for name in ("id", "account", "user", "pool", "session"):
        value = getattr(result, name)
        if value is not None:
            value.encode("utf-8")
    return result


def dumps(doc: object) -> bytes:
    # allow_nan: Python writes NaN/Infinity, which is not JSON; the parser must refuse it calmly.
    return json.dumps(doc, allow_nan=True).encode()


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe\x00")
@example(b"null")
@example(b"[" * 5000)
def test_arbitrary_bytes_give_an_event_or_a_rejection(payload: bytes) -> None:
    """Arbitrary bytes never raise: they parse to an Event or a Rejection with a known reason."""
    check(payload)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_any_json_value_in_any_field_is_handled(field: str, value: object) -> None:
    """Every field set to any JSON value (wrong types, NaN, huge ints) gives a value, never raises."""
    doc = {**VALID, field: value}
    result = check(dumps(doc))
    if isinstance(result, Event):
        # Only a value of the right type can be accepted, and it is kept as sent.
        assert value == getattr(result, field) or field in ("ts", "pool")


@settings(max_examples=NESTED_EXAMPLES, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=len(FIELDS)))
def test_random_objects_over_the_event_fields_are_handled(doc: dict[str, object]) -> None:
    """Objects with any subset of the fields, holding any values, are handled without raising."""
    check(dumps(doc))


@settings(max_examples=NESTED_EXAMPLES, deadline=None)
@given(st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), json_values, max_size=5))
def test_unknown_fields_are_kept_not_rejected(extra: dict[str, object]) -> None:
    """Unknown fields with any JSON value (NaN aside) never cause a rejection of a valid event."""
    payload = dumps({**VALID, **extra})
    result = check(payload)
    if b"NaN" in payload or b"Infinity" in payload:
        return  # the extra value made the document invalid JSON
    assert isinstance(result, Event)
    assert "e1" == result.id


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                 timezones=st.one_of(st.none(), st.just(UTC), st.builds(
                     timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                             max_value=timedelta(hours=23, minutes=59))))),
)
@example(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-23, minutes=-59))))
@example(datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=5))))
def test_any_timestamp_in_range_is_handled(ts: datetime) -> None:
    """Any ISO timestamp, including years 1 and 9999 with extreme offsets, gives a value."""
    result = check(dumps({**VALID, "ts": ts.isoformat()}))
    if ts.tzinfo is None:
        assert isinstance(result, Rejection)
        assert "bad_timestamp" == result.reason


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=40))
@example("2026-11-23T11:00:00Z")
@example("2026-02-30T00:00:00Z")
@example("2026-11-23T11:00:00+24:00")
@example("2026-11-23T11:00:00\x00+00:00")
def test_any_text_as_timestamp_is_handled(ts: str) -> None:
    """Any string in `ts` gives an Event or a Rejection (usually bad_timestamp), never raises."""
    check(dumps({**VALID, "ts": ts}))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(("id", "user", "session", "account", "pool")), st.binary(min_size=1, max_size=8))
@example("user", b"\xff")
@example("id", b"\xed\xa0\x80")   # a UTF-8-encoded lone surrogate
@example("user", b"\xc0\x80")     # overlong NUL
@example("session", b"\xf4\x90\x80\x80")  # above U+10FFFF
def test_invalid_utf8_inside_a_string_is_handled(field: str, junk: bytes) -> None:
    """Raw bytes (often invalid UTF-8) spliced into a string field never raise."""
    doc = dumps({**VALID, field: "<>"})
    payload = doc.replace(b'"<>"', b'"' + junk + b'"', 1)
    check(payload)


@pytest.mark.parametrize("escape", [
    r"\ud800", r"\udfff", r"\ud800x", r"\ud83d\ude00", r"\u0000", r"\uffff",
])
def test_unicode_escapes_are_handled(escape: str) -> None:
    """JSON escapes, including lone surrogates that UTF-8 cannot carry, never reach the store."""
    payload = b'{"id":"e1","type":"login","account":"acme","user":"u' + escape.encode() + \
        b'","ts":"2026-11-23T11:00:00Z"}'
    check(payload)


@pytest.mark.parametrize("number", [
    b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e999999", b"-1e999999", b"9" * 5000,
    b"0." + b"0" * 5000 + b"1", b"1e-999999", b"-0", b"0x10", b"01", b"1.", b".5",
])
@pytest.mark.parametrize("where", ["unknown", "user", "ts"])
def test_nan_and_huge_numbers_are_handled(number: bytes, where: str) -> None:
    """NaN, infinities and numbers too large or too precise for a float never raise."""
    field = {"unknown": "extra", "user": "user", "ts": "ts"}[where]
    doc = dumps({**VALID, field: "<>"})
    check(doc.replace(b'"<>"', number, 1), limits=Limits(max_bytes=1 << 20))


@pytest.mark.parametrize("depth", [1, 100, 1_000, 10_000, 200_000])
@pytest.mark.parametrize("where", ["top", "unknown", "user", "array"])
def test_deeply_nested_json_is_handled(depth: int, where: str) -> None:
    """Nesting deeper than Python's recursion limit is refused as a value, not a RecursionError."""
    nest = b"[" * depth + b"]" * depth
    if where == "top":
        payload = nest
    elif where == "array":
        payload = b"{" * depth + b"}" * depth
    else:
        field = "extra" if where == "unknown" else "user"
        payload = dumps({**VALID, field: "<>"}).replace(b'"<>"', nest, 1)
    result = check(payload, limits=Limits(max_bytes=1 << 20))
    if where == "unknown" and depth <= 100:
        assert isinstance(result, Event)
    elif where != "unknown":
        assert isinstance(result, Rejection)


@pytest.mark.parametrize("size", [8 * 1024, 8 * 1024 + 1, 1 << 20, 16 << 20])
def test_payload_size_limit(size: int) -> None:
    """A payload of exactly the limit is parsed; one byte more is `oversized`, whatever it holds."""
    base = dumps({**VALID, "extra": ""})
    payload = base.replace(b'"extra": ""', b'"extra": "' + b"x" * (size - len(base)) + b'"', 1)
    assert size == len(payload)
    result = check(payload)
    if size <= DEFAULT_LIMITS.max_bytes:
        assert isinstance(result, Event)
    else:
        assert isinstance(result, Rejection)
        assert "oversized" == result.reason


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(("acme", "globex", "initech", "")), st.sampled_from(("acme", "globex", "x")))
def test_payload_account_must_match_the_topic(payload_account: str, topic_account: str) -> None:
    """An event is accepted only when its account equals the topic's account (tenant isolation)."""
    result = check(dumps({**VALID, "account": payload_account, "pool": None}),
                   topic_account=topic_account)
    if payload_account == topic_account:
        assert isinstance(result, Event)
        assert topic_account == result.account
    else:
        assert isinstance(result, Rejection)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.fixed_dictionaries({
        "id": st.text(min_size=1, max_size=20),
        "type": st.sampled_from(EVENT_TYPES),
        "account": st.sampled_from(("acme", "globex")),
        "user": st.text(min_size=1, max_size=20),
        "ts": st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1),
                           timezones=st.just(UTC)).map(datetime.isoformat),
        "pool": st.sampled_from((None, "agents", "seats", "nope")),
        "session": st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    }),
)
def test_well_typed_events_round_trip(doc: dict[str, Any]) -> None:
    """A well-typed event is either accepted with its fields kept exactly, or rejected for a rule."""
    result = check(dumps(doc))
    if isinstance(result, Rejection):
        assert result.reason in ("future", "unknown_pool", "schema")
        return
    assert doc["id"] == result.id
    assert doc["user"] == result.user
    assert doc["session"] == result.session
    assert datetime.fromisoformat(doc["ts"]) == result.ts
