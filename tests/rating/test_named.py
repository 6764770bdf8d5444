"""Named seats: rosters from assign/unassign, refused assigns, licensed and unlicensed use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.contracts import Account, parse_contracts
from rating.named import build_rosters, rate_named
from rating.periods import Period
from rating.seatchanges import apply_orders
from tests.contracts_toml import account as toml_account
from tests.contracts_toml import order
from tests.contracts_toml import pool as toml_pool

NOV = Period(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class Event:
    """An event value with the fields DESIGN section 3 gives every event."""

    id: str
    type: str
    account: str
    user: str
    ts: datetime
    pool: str | None = None
    session: str | None = None


def account(*, named: tuple[tuple[str, int], ...] = (("desk", 3),), concurrent: bool = False,
            orders: str = "") -> Account:
    """An account with named pools (id, quantity) and maybe a concurrent pool `floor`."""
    pools = [toml_pool(pool_id, tier="premium", model="named", quantity=quantity, price="99.00")
             for pool_id, quantity in named]
    if concurrent:
        pools.append(toml_pool("floor", tier="elite", model="concurrent", quantity=5,
                               price="149.00", overage_price="149.00"))
    text = toml_account("acme", pools=pools)
    return parse_contracts(text + orders, "test.toml").accounts[0]


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


class Stream:
    """Builds a numbered event stream."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, type_: str, user: str, ts: datetime, pool: str | None = "desk",
            account: str = "acme") -> Stream:
        # Zero-padded so that id order (the same-instant tie-break) is the order of adding.
        self.events.append(Event(f"e{len(self.events):03d}", type_, account, user, ts, pool))
        return self


def test_assign_past_the_licensed_quantity_is_refused() -> None:
    """Seed 003: with every license assigned, another user must wait for an unassign."""
    s = Stream()
    for i, user in enumerate(["ann", "bob", "cat", "dan"]):
        s.add("assign", user, at(2, i))
    s.add("unassign", "bob", at(3)).add("assign", "dan", at(3, 1))
    [usage] = rate_named(account(), s.events, NOV)
    assert (3, 3, 1) == (usage.licensed, usage.assigned, usage.refused_assigns)
    refusal = usage.refused[0]
    assert ("dan", at(2, 3), "e003", 3, 3) == (refusal.user, refusal.at, refusal.event_id,
                                             refusal.licensed, refusal.assigned)
    assert "all 3 licensed seats of 'desk' are assigned" == refusal.reason
    roster = build_rosters(account(), s.events).get("desk")
    assert roster is not None
    assert roster.holds("dan", at(3, 1))
    assert not roster.holds("bob", at(3, 1))


def test_handover_at_the_same_instant_is_not_refused() -> None:
    """An unassign and an assign at one instant free the seat before it is taken."""
    s = Stream().add("assign", "ann", at(2)).add("assign", "dan", at(5)).add("unassign", "ann", at(5))
    [usage] = rate_named(account(named=(("desk", 1),)), s.events, NOV)
    assert (0, 1) == (usage.refused_assigns, usage.assigned)


@pytest.mark.parametrize(
    ("events", "active", "unlicensed", "idle"),
    [
        ([("assign", "ann", 2), ("login", "ann", 3)], 1, (), 2),
        ([("login", "ann", 3)], 0, ("ann",), 3),  # never assigned: unlicensed use
        ([("assign", "ann", 2), ("unassign", "ann", 3), ("login", "ann", 4)], 0, ("ann",), 3),
        ([("login", "ann", 3), ("assign", "ann", 4), ("heartbeat", "ann", 5)], 1, ("ann",), 2),
        ([("assign", "ann", 2), ("assign", "bob", 2), ("assign", "cat", 2),
          ("login", "ann", 3), ("login", "bob", 3), ("login", "cat", 3)], 3, (), 0),
        ([("assign", "ann", 2), ("login", "ann", 3), ("login", "ann", 4)], 1, (), 2),
    ],
)
def test_licensed_and_unlicensed_use(events: list[tuple[str, str, int]], active: int,
                                     unlicensed: tuple[str, ...], idle: int) -> None:
    """A login by an assigned user is active use; by anyone else it is unlicensed use."""
    s = Stream()
    for type_, user, day in events:
        s.add(type_, user, at(day))
    [usage] = rate_named(account(), s.events, NOV)
    assert (active, len(unlicensed), unlicensed, idle) == (
        usage.active_users, usage.unlicensed_users, usage.unlicensed, usage.idle_seats)


def test_roster_from_before_the_period_carries_in() -> None:
    """Assignments made in an earlier month hold in this one; only this month's refusals count."""
    s = (Stream().add("assign", "ann", datetime(2026, 10, 5, tzinfo=UTC))
         .add("assign", "bob", datetime(2026, 10, 6, tzinfo=UTC))
         .add("assign", "cat", datetime(2026, 10, 7, tzinfo=UTC))
         .add("assign", "dan", datetime(2026, 10, 8, tzinfo=UTC))
         .add("login", "ann", at(2)))
    [usage] = rate_named(account(), s.events, NOV)
    assert (3, 1, 0, 0) == (usage.assigned, usage.active_users, usage.unlicensed_users,
                            usage.refused_assigns)


def test_assigned_is_the_most_held_at_once() -> None:
    """`assigned` is the maximum over the period, not the count at its end."""
    s = (Stream().add("assign", "ann", at(2)).add("assign", "bob", at(3))
         .add("unassign", "ann", at(4)).add("unassign", "bob", at(5)))
    [usage] = rate_named(account(), s.events, NOV)
    assert 2 == usage.assigned


def test_seats_bought_mid_period_take_assigns_from_purchase() -> None:
    """With licensed steps from the seat ledger, an assign is judged by the quantity at its time."""
    acc = account(named=(("desk", 1),),
                  orders=order("2026-11-10T00:00:00Z", pool="desk", quantity=2))
    steps = {"desk": apply_orders(acc).licensed_steps("desk")}
    s = (Stream().add("assign", "ann", at(2)).add("assign", "bob", at(9, 23, 59))
         .add("assign", "bob", at(10)))
    [usage] = rate_named(acc, s.events, NOV, steps)
    assert (2, 2, 1) == (usage.licensed, usage.assigned, usage.refused_assigns)
    assert at(9, 23, 59) == usage.refused[0].at


def test_events_without_a_pool_go_to_the_users_named_pool() -> None:
    """Where the user is assigned, an event may leave out the pool (DESIGN section 3)."""
    acc = account(named=(("desk", 3), ("lab", 3)), concurrent=True)
    s = (Stream().add("assign", "ann", at(2), pool="lab").add("login", "ann", at(3), pool=None)
         .add("unassign", "ann", at(4), pool=None).add("login", "ann", at(5), pool=None)
         .add("assign", "bob", at(2), pool=None))
    rosters = build_rosters(acc, s.events)
    assert "lab" == rosters.assigned_pool("ann", at(3))
    assert rosters.assigned_pool("ann", at(4)) is None
    assert ("e004",) == rosters.unresolved  # two named pools: an assign must name one
    desk, lab = rate_named(acc, s.events, NOV)
    assert (0, 0) == (desk.active_users, desk.unlicensed_users)
    # After the unassign, a pool-less login is the concurrent pool's business, not lab's.
    assert (1, 0) == (lab.active_users, lab.unlicensed_users)


def test_pool_less_login_in_a_named_only_account_is_unlicensed_use() -> None:
    """With one named pool and no concurrent one, a pool-less login of a stranger is unlicensed."""
    s = Stream().add("login", "eve", at(3), pool=None)
    [usage] = rate_named(account(), s.events, NOV)
    assert ("eve",) == usage.unlicensed


def test_other_accounts_and_pools_are_ignored() -> None:
    """Events of another account, or of a concurrent pool, change nothing here."""
    s = (Stream().add("assign", "ann", at(2), account="other").add("login", "bob", at(3), pool="floor")
         .add("assign", "cat", at(2), pool="floor"))
    [usage] = rate_named(account(concurrent=True), s.events, NOV)
    assert (0, 0, 0) == (usage.assigned, usage.active_users, usage.unlicensed_users)


def test_repeated_assign_and_stray_unassign_change_nothing() -> None:
    """Assigning a held seat again, or unassigning a user without one, is a no-op."""
    s = (Stream().add("assign", "ann", at(2)).add("assign", "ann", at(3))
         .add("unassign", "zed", at(3)))
    roster = build_rosters(account(named=(("desk", 1),)), s.events).get("desk")
    assert roster is not None
    assert (1, 0) == (len(roster.assignments), len(roster.refused))


USERS = ["u0", "u1", "u2", "u3", "u4", "u5"]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.lists(
    st.tuples(st.sampled_from(["assign", "unassign"]), st.sampled_from(USERS),
              st.integers(0, 60)), max_size=30))
def test_roster_matches_a_step_by_step_oracle(licensed: int,
                                              raw: list[tuple[str, str, int]]) -> None:
    """The roster never holds more seats than licensed, and at every minute equals a replay
    that applies each event on its own, unassigns before assigns at the same minute."""
    s = Stream()
    for type_, user, minute in raw:
        s.add(type_, user, at(2) + timedelta(minutes=minute))
    roster = build_rosters(account(named=(("desk", licensed),)), s.events).get("desk")
    assert roster is not None
    held: set[str] = set()
    refused = 0
    for minute in range(62):
        now = at(2) + timedelta(minutes=minute)
        batch = [(t, u) for t, u, m in raw if m == minute]
        for t, u in sorted(batch, key=lambda b: b[0] == "assign"):  # unassigns first
            if t == "unassign":
                held.discard(u)
            elif u not in held:
                if len(held) < licensed:
                    held.add(u)
                else:
                    refused += 1
        assert held == {u for u in USERS if roster.holds(u, now)}
        assert roster.size_at(now) <= licensed
    assert refused == len(roster.refused)
