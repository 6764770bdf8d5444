"""The pool rule over arrays (`rating.columns.resolve_pools`, `held_pools`) is `Account.pool_for`
and `Rosters.assigned_pool` row by row: on every table case, and on random streams (hypothesis)
against the per-row rule as the oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.bill import _resolve
from rating.columns import StoredColumns, held_pools, resolve_pools
from rating.named import build_rosters
from rating.seatchanges import apply_orders
from rating.usage import KINDS, UsageEvent, from_us, to_us
from tests.rating.test_pool_rule import ACCOUNTS, POOL_FOR

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MIN_US = 60_000_000


def pools_of(account: str, kinds: list[str], held: list[str | None]) -> list[str | None]:
    """`resolve_pools` of (kind, held) pairs, decoded to pool ids."""
    acct = ACCOUNTS[account]
    k = np.array([KINDS[x] for x in kinds], np.int8)
    h = np.array([-1 if x is None else acct.named_pools.index(x) for x in held], np.int32)
    codes, names = resolve_pools(acct, k, h)
    return [None if c < 0 else names[c] for c in codes.tolist()]


@pytest.mark.parametrize(("account", "kind", "held", "expected"), POOL_FOR,
                         ids=[f"{a}-{k}-held={h}" for a, k, h, _ in POOL_FOR])
def test_resolve_pools_gives_each_table_case(account: str, kind: str, held: str | None,
                                             expected: str | None) -> None:
    """Every case of the per-row table, through the array form."""
    assert [expected] == pools_of(account, [kind], [held])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(ACCOUNTS)), st.data())
def test_resolve_pools_equals_pool_for_on_random_streams(account: str, data: st.DataObject
                                                         ) -> None:
    """A random stream of (kind, held seat) gets, row for row, what `pool_for` says."""
    acct = ACCOUNTS[account]
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(sorted(KINDS)),
                                         st.sampled_from([None, *acct.named_pools])),
                               max_size=60))
    kinds, held = [k for k, _ in pairs], [h for _, h in pairs]
    assert [acct.pool_for(k, h) for k, h in pairs] == pools_of(account, kinds, held)


USERS = ["u0", "u1", "u2", "u3"]

seat_event = st.tuples(st.sampled_from(["assign", "unassign"]), st.sampled_from(USERS),
                       st.integers(0, 120), st.booleans())
use_row = st.tuples(st.sampled_from(["login", "logout", "heartbeat"]),
                    st.sampled_from([*USERS, "u9"]), st.integers(0, 120))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["n", "c+n", "n1+n2", "c+n1+n2", "c1+c2+n"]),
       st.lists(seat_event, max_size=12), st.lists(use_row, max_size=40))
def test_held_pools_equals_assigned_pool_row_by_row(
        account: str, seats: list[tuple[str, str, int, bool]],
        rows: list[tuple[str, str, int]]) -> None:
    """Random assigns and unassigns (some naming no pool), then random session rows: the seat
    each row's user holds at its time, by arrays, is `Rosters.assigned_pool` per row, and the
    resolved pool is `pool_for` of that seat."""
    acct = ACCOUNTS[account]
    named = acct.named_pools
    events = [UsageEvent(id=f"s{i}", type=kind, account=acct.id, user=user,  # type: ignore[arg-type]
                         ts=T0 + timedelta(minutes=minute),
                         pool=named[i % len(named)] if with_pool else None)
              for i, (kind, user, minute, with_pool) in enumerate(seats)]
    rosters = build_rosters(acct, events)
    stored = StoredColumns.from_rows(
        [(f"e{i}", kind, user, None, None, to_us(T0) + minute * MIN_US)
         for i, (kind, user, minute) in enumerate(rows)])
    held = held_pools(acct, rosters, stored.user, stored.users, stored.ts)
    expected = [rosters.assigned_pool(user, from_us(to_us(T0) + minute * MIN_US))
                for _, user, minute in rows]
    assert expected == [None if h < 0 else named[h] for h in held.tolist()]
    codes, names = resolve_pools(acct, stored.kind, held)
    assert [acct.pool_for(kind, h) for (kind, _, _), h in zip(rows, expected, strict=True)] == [
        None if c < 0 else names[c] for c in codes.tolist()]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(ACCOUNTS)),
       st.lists(seat_event, max_size=10),
       st.lists(st.tuples(st.sampled_from(["login", "logout", "heartbeat"]),
                          st.sampled_from([*USERS, "u9"]), st.integers(0, 120),
                          st.sampled_from([None, "c", "n", "n1", "c2", "other"])), max_size=40))
def test_bill_resolution_equals_the_per_row_rule(
        account: str, seats: list[tuple[str, str, int, bool]],
        uses: list[tuple[str, str, int, str | None]]) -> None:
    """What the bill rates from stored rows (seat rows, and session rows naming a pool or not,
    in (ts, id) order): each session row's pool is the one it names, else `pool_for` of the
    seat its user holds then; rows left without one are counted; named-pool use is kept."""
    acct = ACCOUNTS[account]
    named = acct.named_pools
    rows = sorted(
        [(f"s{i}", kind, user, (named[i % len(named)] if named and with_pool else None), None,
          to_us(T0) + minute * MIN_US) for i, (kind, user, minute, with_pool) in enumerate(seats)]
        + [(f"e{i}", kind, user, pool, None, to_us(T0) + minute * MIN_US)
           for i, (kind, user, minute, pool) in enumerate(uses)],
        key=lambda r: (r[5], r[0]))
    steps = {p.id: apply_orders(acct).licensed_steps(p.id) for p in acct.pools}
    seat_events = [UsageEvent(id=r[0], type=r[1], account=acct.id, user=r[2],  # type: ignore[arg-type]
                              ts=from_us(r[5]), pool=r[3]) for r in rows
                   if r[1] in ("assign", "unassign")] if named else []
    rosters = build_rosters(acct, seat_events, steps)
    expected: list[tuple[str, str]] = []
    unresolved = 0
    for r in rows:
        if r[1] in ("assign", "unassign"):
            continue
        pool = r[3] if r[3] is not None else acct.pool_for(
            r[1], rosters.assigned_pool(r[2], from_us(r[5])) if named else None)
        if pool is None:
            unresolved += 1
        else:
            expected.append((r[0], pool))
    index, codes, vocab, events, left = _resolve(acct, StoredColumns.from_rows(rows), steps)
    got = [(rows[i][0], vocab[c]) for i, c in zip(index.tolist(), codes.tolist(), strict=True)]
    assert (expected, unresolved) == (got, left)
    use = [(e.id, e.pool) for e in events if e.type not in ("assign", "unassign")]
    assert [(i, p) for i, p in expected if p in named] == use
    assert len(vocab) == len(set(vocab))
