"""The live tracker, the bill and the named-seat code place events without a pool alike: all three
ask `Account.pool_for`, each with the seat the user holds at the event's time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from meter.tracker import Tracker
from rating.bill import AccountBill, rate_account
from rating.contracts import parse_contracts
from rating.named import rate_named
from rating.periods import Period
from rating.usage import to_us
from tests.contracts_toml import account, contracts, pool

CONTRACTS = parse_contracts(contracts(
    # One concurrent pool and one named pool of one seat.
    account("mixed", anchor="2026-11-01", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=5, price="10.00",
             overage_price="10.00"),
        pool("desk", tier="premium", model="named", quantity=1, price="10.00")]),
    # The only pool is named: use without a seat is unlicensed use.
    account("solo", anchor="2026-11-01", pools=[
        pool("desk", tier="premium", model="named", quantity=1, price="10.00")]),
    # Two concurrent pools: a login must say which.
    account("twin", anchor="2026-11-01", pools=[
        pool("c1", tier="premium", model="concurrent", quantity=5, price="10.00",
             overage_price="10.00"),
        pool("c2", tier="premium", model="concurrent", quantity=5, price="10.00",
             overage_price="10.00")]),
))
NOV = Period(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
DAY = datetime(2026, 11, 12, tzinfo=UTC)
_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class Ev:
    """An event without a pool, as the tracker (ts_us) and the rating (ts) read it."""

    account: str
    type: str
    user: str
    ts: datetime
    session: str | None = None
    pool: str | None = None
    id: str = field(default_factory=lambda: f"e{next(_ids)}")

    @property
    def ts_us(self) -> int:
        return to_us(self.ts)


def h(hour: int) -> datetime:
    return DAY + timedelta(hours=hour)


STREAMS = {
    "mixed": [
        Ev("mixed", "assign", "a", h(9)),                 # the only named pool: desk
        Ev("mixed", "login", "a", h(10), "s"),            # a holds a desk seat: desk
        Ev("mixed", "login", "b", h(10), "s"),            # no seat: agents
        Ev("mixed", "logout", "a", h(11), "s"),
        Ev("mixed", "logout", "b", h(11), "s"),
        Ev("mixed", "assign", "c", h(12)),                # desk is full: refused
        Ev("mixed", "login", "c", h(13), "s"),            # so c uses agents
        Ev("mixed", "logout", "c", h(13) + timedelta(minutes=5), "s"),
        Ev("mixed", "unassign", "a", h(14)),              # the seat a holds: desk
        Ev("mixed", "login", "a", h(15), "t"),            # a holds no seat now: agents
        Ev("mixed", "logout", "a", h(16), "t"),
    ],
    "solo": [
        Ev("solo", "assign", "a", h(9)),
        Ev("solo", "login", "a", h(10), "s"),
        Ev("solo", "login", "x", h(10), "s"),             # unlicensed use of desk
        Ev("solo", "logout", "a", h(11), "s"),
        Ev("solo", "logout", "x", h(11), "s"),
    ],
    "twin": [
        Ev("twin", "login", "a", h(10), "s"),             # unresolved, counted
        Ev("twin", "logout", "a", h(11), "s"),            # unresolved, counted
    ],
}
#: account -> (users per pool, (named pool, active, unlicensed, refused) per named pool,
#: events left without a pool)
EXPECTED = {
    "mixed": ({"agents": 3, "desk": 1}, [("desk", 1, 0, 1)], 0),
    "solo": ({"desk": 2}, [("desk", 1, 1, 0)], 0),
    "twin": ({"c1": 0, "c2": 0}, [], 2),
}


def live(account: str) -> tuple[dict[str, int], dict[str, int], int]:
    """Users seen per pool, refused assigns per named pool and unresolved events, live."""
    tracker = Tracker(CONTRACTS, to_us(NOV.start))
    tracker.apply_all(STREAMS[account])
    tracker.advance(to_us(h(20)))
    views = [v for v in tracker.views() if v.account == account]
    return ({v.pool: v.users_seen for v in views},
            {v.pool: v.refused_assigns for v in views if v.model == "named"},
            tracker.unresolved)


def billed(account: str) -> AccountBill:
    acct = CONTRACTS.get(account)
    assert acct is not None
    return rate_account(acct, STREAMS[account], NOV)  # type: ignore[arg-type]


@pytest.mark.parametrize("account", sorted(STREAMS))
def test_tracker_bill_and_named_seats_agree_on_events_without_pool(account: str) -> None:
    """The same pool-less stream gives the same users per pool, the same named-seat use and
    refusals, and the same count of unresolved session events, live and billed."""
    users, named, unresolved = EXPECTED[account]
    bill = billed(account)
    acct = CONTRACTS.get(account)
    assert acct is not None
    seats = rate_named(acct, STREAMS[account], NOV)
    assert users == {u.pool.id: u.users for u in bill.pools}
    assert named == [(n.pool, n.active_users, n.unlicensed_users, n.refused_assigns)
                     for n in bill.named]
    assert named == [(n.pool, n.active_users, n.unlicensed_users, n.refused_assigns)
                     for n in seats]
    assert unresolved == bill.unresolved_events
    live_users, live_refused, live_unresolved = live(account)
    assert (users, {n[0]: n[3] for n in named}, unresolved) == (
        live_users, live_refused, live_unresolved)
