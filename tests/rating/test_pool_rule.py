"""The one rule for events without a pool: `Account.pool_for` and what ingest can tell,
`Account.fixed_pool` (DESIGN section 3: `pool` may be left out where the account has one pool
of that kind or the user is assigned)."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import date
from decimal import Decimal

import pytest

from rating.contracts import Account, Pool


def make(*pools: str) -> Account:
    """An account whose pools are named by id; an id starting with "n" is a named pool."""
    return Account(
        id="acme", timezone="UTC", currency="USD", billing="monthly", anchor=date(2026, 11, 1),
        policy="prorate",
        pools=tuple(
            Pool(p, "elite", "named", 5, Decimal("10.00")) if p.startswith("n")
            else Pool(p, "elite", "concurrent", 5, Decimal("10.00"), Decimal("10.00"))
            for p in pools),
    )


ACCOUNTS = {
    "none": make(),
    "c": make("c"),
    "n": make("n"),
    "c+n": make("c", "n"),
    "c1+c2": make("c1", "c2"),
    "n1+n2": make("n1", "n2"),
    "c1+c2+n": make("c1", "c2", "n"),
    "c+n1+n2": make("c", "n1", "n2"),
}

POOL_FOR = [
    # seat events: the only named pool; an unassign: the pool whose seat the user holds
    ("n", "assign", None, "n"),
    ("c+n", "assign", None, "n"),
    ("c+n", "assign", "n", "n"),
    ("c", "assign", None, None),
    ("none", "assign", None, None),
    ("n1+n2", "assign", None, None),
    ("n1+n2", "assign", "n1", None),       # an assign needs the pool named: no seat says which
    ("n", "unassign", None, "n"),
    ("c+n", "unassign", "n", "n"),
    ("n1+n2", "unassign", "n2", "n2"),
    ("n1+n2", "unassign", None, None),
    ("c", "unassign", None, None),
    # session events: the held seat, else the single concurrent pool, else the only named pool
    ("c+n", "login", "n", "n"),
    ("c+n", "logout", None, "c"),
    ("c+n", "heartbeat", None, "c"),
    ("c", "login", None, "c"),
    ("n", "login", None, "n"),             # unlicensed use of the only pool there is
    ("n", "heartbeat", "n", "n"),
    ("c1+c2", "login", None, None),
    ("c1+c2", "logout", None, None),
    ("c1+c2+n", "login", None, None),
    ("c1+c2+n", "heartbeat", "n", "n"),
    ("n1+n2", "login", None, None),
    ("n1+n2", "login", "n2", "n2"),
    ("c+n1+n2", "login", None, "c"),
    ("c+n1+n2", "logout", "n2", "n2"),
    ("none", "login", None, None),
]


@pytest.mark.parametrize(("account", "kind", "held", "expected"), POOL_FOR,
                         ids=[f"{a}-{k}-held={h}" for a, k, h, _ in POOL_FOR])
def test_pool_for(account: str, kind: str, held: str | None, expected: str | None) -> None:
    """Every branch of the rule, with the exact pool (or None: unresolved, counted)."""
    assert expected == ACCOUNTS[account].pool_for(kind, held)


FIXED = [
    # (account, pool of a session event, pool of an assign, pool of an unassign)
    ("none", None, None, None),
    ("c", "c", None, None),
    ("n", "n", "n", "n"),
    ("c+n", None, "n", "n"),              # a seat may make the login a named pool's
    ("c1+c2", None, None, None),
    ("n1+n2", None, None, None),
    ("c1+c2+n", None, "n", "n"),
    ("c+n1+n2", None, None, None),
]


@pytest.mark.parametrize(("account", "session", "assign", "unassign"), FIXED,
                         ids=[f[0] for f in FIXED])
def test_fixed_pool_is_what_holds_whatever_seat_the_user_has(
        account: str, session: str | None, assign: str | None, unassign: str | None) -> None:
    """What ingest can fill in before any seat is known: the answer of `pool_for` where it is
    the same for every seat the user could hold."""
    acct = ACCOUNTS[account]
    assert [session, session, session, assign, unassign] == [
        acct.fixed_pool(k) for k in ("login", "logout", "heartbeat", "assign", "unassign")]


def test_unknown_kind_has_no_fixed_pool() -> None:
    """A type that is not an event type gets no pool from the account."""
    assert None is ACCOUNTS["c"].fixed_pool("break")


def test_named_pools_are_in_contract_order() -> None:
    """`named_pools` are the ids of the named pools, in contract order."""
    assert ("n2", "n1") == make("n2", "c", "n1").named_pools


def test_derived_fields_follow_replace_and_pickle() -> None:
    """A replaced account derives its pool lists again; a pickled one (the report rates accounts
    in worker processes) keeps them; neither is part of equality."""
    acct = ACCOUNTS["c+n"]
    moved = dataclasses.replace(acct, pools=acct.pools[:1])
    assert ((), "c", None) == (moved.named_pools, moved.pool_for("login", None),
                               moved.fixed_pool("assign"))
    copy = pickle.loads(pickle.dumps(acct))  # noqa: S301 - our own bytes
    assert (acct, ("n",), "n") == (copy, copy.named_pools, copy.fixed_pool("assign"))
