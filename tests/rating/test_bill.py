"""Account bills: pools, named seats, seat changes, overage lines, adjustments and right-sizing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.bill import AccountBill, PoolUse, rate_account
from rating.contracts import Account, parse_contracts
from rating.late import Overage, adjustments
from rating.periods import Period, period_of_month
from rating.pool import rate_pool
from rating.usage import UsageEvent
from tests.contracts_toml import account as toml_account
from tests.contracts_toml import addon as toml_addon
from tests.contracts_toml import order
from tests.contracts_toml import pool as toml_pool

NOV = Period(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
_ids = itertools.count()


def account(*, policy: str = "prorate", grace_mode: str = "continuous", price: str = "100.00",
            overage: str = "150.00", quantity: int = 2, orders: str = "",
            extra_pool: str = "") -> Account:
    """acme (UTC, monthly from 1 November): concurrent `agents`, named `leads`, add-on wfm."""
    text = toml_account(
        "acme", anchor="2026-11-01", policy=policy,
        pools=[toml_pool("agents", tier="elite", model="concurrent", quantity=quantity,
                         price=price, overage_price=overage, grace="30m",
                         grace_mode=grace_mode),
               toml_pool("leads", tier="elite", model="named", quantity=1, price="50.00"),
               extra_pool],
        addons=[toml_addon("wfm", quantity=0, price="25.00")],
        orders=[orders])
    return parse_contracts(text, "test.toml").accounts[0]


def at(day: int, hhmm: str, sec: int = 0) -> datetime:
    """A UTC instant in November 2026."""
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2026, 11, day, h, m, sec, tzinfo=UTC)


def ev(kind: str, user: str, when: datetime, pool: str | None = "agents",
       session: str | None = None) -> UsageEvent:
    """One acme event with a fresh id."""
    return UsageEvent(id=f"e{next(_ids)}", type=kind, account="acme", user=user,  # type: ignore[arg-type]
                      ts=when, pool=pool, session=session)


def stay(user: str, start: datetime, end: datetime, pool: str | None = "agents") -> list[UsageEvent]:
    """A login at `start` and a logout at `end`."""
    return [ev("login", user, start, pool, "s"), ev("logout", user, end, pool, "s")]


def crowd(n: int, start: datetime, end: datetime) -> list[UsageEvent]:
    """`n` users u0..u(n-1) signed in over [start, end)."""
    return [e for i in range(n) for e in stay(f"u{i}", start, end)]


#: What `account()` bills every month however it is used: 2 agents x 100.00 and 1 lead x 50.00
#: (the add-on has 0 seats: no line), at the period's start (seed 001: licences are charged
#: "even if they're inactive and unassigned").
SUBSCRIPTION = [("recurring", "agents", 2, Decimal("200.00")),
                ("recurring", "leads", 1, Decimal("50.00"))]


def bill_lines(bill: AccountBill) -> list[tuple[str, str, int | None, Decimal]]:
    """The bill's lines as (kind, target, quantity, amount)."""
    return [(c.kind, c.target, c.quantity, c.amount) for c in bill.charges]


def agents(bill: AccountBill) -> PoolUse:
    """The bill's `agents` pool."""
    return next(p for p in bill.pools if p.pool.id == "agents")


def test_sustained_excess_is_an_overage_line_in_the_total() -> None:
    """Three users for an hour on two licences: one overage seat at the overage price."""
    bill = rate_account(account(), crowd(3, at(10, "10:00"), at(10, "11:00")), NOV)
    use = agents(bill)
    assert (3, 3, 1, Decimal("150.00")) == (use.peak, use.billable_peak, use.overage_seats,
                                            use.overage_amount)
    assert at(10, "10:00") == use.peak_at
    assert [*SUBSCRIPTION, ("overage", "agents", 1, Decimal("150.00"))] == bill_lines(bill)
    assert Decimal("400.00") == bill.total  # 250.00 subscription + 150.00 overage
    assert 1 == len(use.episodes)
    assert not use.episodes[0].within_grace


@pytest.mark.parametrize(("minutes", "seconds", "seats"), [
    (30, 0, 0),   # exactly the grace: free
    (30, 1, 1),   # one second longer: billed
    (29, 59, 0),
])
def test_continuous_grace_boundary_decides_the_overage_line(minutes: int, seconds: int,
                                                            seats: int) -> None:
    """An excess of exactly 30:00 is free; 30:01 is billed (DESIGN section 2)."""
    end = at(10, "10:00") + timedelta(minutes=minutes, seconds=seconds)
    bill = rate_account(account(), crowd(3, at(10, "10:00"), end), NOV)
    assert seats == agents(bill).overage_seats
    assert Decimal(250 + 150 * seats).quantize(Decimal("0.01")) == bill.total
    assert [bool(seats == 0)] == [e.within_grace for e in agents(bill).episodes]


def test_seat_add_of_the_period_is_charged_prorated() -> None:
    """2 -> 3 seats at the middle of the month: one seat at half the monthly price."""
    acct = account(orders=order("2026-11-16T00:00:00Z", pool="agents", quantity=3))
    bill = rate_account(acct, [], NOV)
    assert [*SUBSCRIPTION, ("seat_add", "agents", 1, Decimal("50.00"))] == bill_lines(bill)
    assert Decimal("300.00") == bill.total
    assert 3 == agents(bill).licensed
    assert ((NOV.start, 2), (at(16, "00:00"), 3)) == agents(bill).licensed_steps


def test_purchase_mid_period_raises_e_before_the_excess() -> None:
    """Seats bought before a crowd arrives cover it: no overage, only the seat charge."""
    acct = account(orders=order("2026-11-16T00:00:00Z", pool="agents", quantity=3))
    bill = rate_account(acct, crowd(3, at(20, "10:00"), at(20, "12:00")), NOV)
    assert 0 == agents(bill).overage_seats
    assert ["recurring", "recurring", "seat_add"] == [c.kind for c in bill.charges]


def test_refused_orders_of_the_period_are_listed_with_their_reason() -> None:
    """Under packs, 2 -> 4 seats is not a whole pack: refused, never charged."""
    acct = account(policy="packs",
                   orders=order("2026-11-05T00:00:00Z", pool="agents", quantity=4))
    bill = rate_account(acct, [], NOV)
    assert [("order", "agents", 4)] == [(r.kind, r.target, r.quantity) for r in bill.refused]
    assert "whole packs of 5" in bill.refused[0].reason
    assert SUBSCRIPTION == bill_lines(bill)  # the subscription alone: nothing of the order
    assert Decimal("250.00") == bill.total


def test_refused_assign_is_listed_beside_refused_orders() -> None:
    """A second assign on a one-seat named pool is refused and reported."""
    events = [ev("assign", "lead1", at(2, "09:00"), "leads"),
              ev("assign", "lead2", at(3, "09:00"), "leads")]
    bill = rate_account(account(), events, NOV)
    assert [("assign", "leads")] == [(r.kind, r.target) for r in bill.refused]
    assert "lead2" in bill.refused[0].reason
    assert 1 == bill.named[0].refused_assigns


def test_events_without_pool_go_to_the_users_named_seat_else_the_concurrent_pool() -> None:
    """A lead with a seat uses `leads`; anyone else uses the single concurrent pool."""
    acct = account()
    events = [ev("assign", "lead1", at(2, "09:00"), "leads"),
              ev("login", "lead1", at(3, "09:00"), None, "a"),
              ev("login", "agent1", at(3, "09:00"), None, "b"),
              ev("login", "lead1", at(1, "08:00"), None, "c")]  # before the seat was assigned
    bill = rate_account(acct, events, NOV)
    assert (1, 0) == (bill.named[0].active_users, bill.named[0].unlicensed_users)
    assert 2 == agents(bill).users  # agent1, and lead1 before the seat
    assert 0 == bill.unresolved_events


def test_events_without_pool_and_no_single_concurrent_pool_are_counted_unresolved() -> None:
    """With two concurrent pools and no seat, a pool-less login cannot be placed."""
    extra = toml_pool("support", tier="essentials", model="concurrent", quantity=1,
                      price="10.00", overage_price="10.00")
    acct = account(extra_pool=extra)
    bill = rate_account(acct, [ev("login", "x", at(3, "09:00"), None)], NOV)
    assert 1 == bill.unresolved_events
    assert [0, 0] == [u.users for u in bill.pools if u.pool.model == "concurrent"]


def test_session_straddling_the_period_start_counts_from_the_start() -> None:
    """A login on 31 October still open on 1 November counts in November (input window)."""
    events = crowd(3, datetime(2026, 10, 31, 23, 0, tzinfo=UTC), at(1, "01:00"))
    use = agents(rate_account(account(), events, NOV))
    assert (3, NOV.start, 1) == (use.peak, use.peak_at, use.overage_seats)


def test_elite_concurrent_users_beyond_licences_need_wfm() -> None:
    """5 distinct users on 2 Elite concurrent licences: 3 wfm required, none bought."""
    events = [e for i in range(5) for e in stay(f"u{i}", at(4 + i, "10:00"), at(4 + i, "11:00"))]
    bill = rate_account(account(), events, NOV)
    wfm = next(a for a in bill.addons if a.addon == "wfm")
    assert (3, 0, 3) == (wfm.required, wfm.purchased, wfm.shortfall)


@pytest.mark.parametrize(("billed", "now", "expected"), [
    ((1, Decimal("150.00")), 2, [(1, Decimal("150.00"))]),   # late events add a seat
    ((1, Decimal("150.00")), 1, []),                          # nothing changed
    ((2, Decimal("300.00")), 1, [(-1, Decimal("-150.00"))]),  # late logouts: a credit
    ((0, Decimal("0.00")), 0, []),
])
def test_adjustments_bill_the_difference_with_what_was_billed(
        billed: tuple[int, Decimal], now: int, expected: list[tuple[int, Decimal]]) -> None:
    """An adjustment is the recomputed overage minus what the finalized report billed."""
    again = rate_account(account(), crowd(2 + now, at(10, "10:00"), at(10, "12:00")), NOV)
    assert now == agents(again).overage_seats
    lines = adjustments(account(), NOV, {"agents": Overage(*billed)}, again, late_events=4,
                        label="2026-11")
    assert expected == [(ln.quantity, ln.amount) for ln in lines]
    assert all(ln.kind == "adjustment" and ln.for_period == NOV for ln in lines)


def test_adjustment_lines_are_billed_in_the_total() -> None:
    """Adjustments handed to the next period's bill add to its total."""
    again = rate_account(account(), crowd(4, at(10, "10:00"), at(10, "12:00")), NOV)
    lines = adjustments(account(), NOV, {"agents": Overage(1, Decimal("150.00"))}, again,
                        late_events=1, label="2026-11")
    dec = Period(NOV.end, datetime(2027, 1, 1, tzinfo=UTC))
    bill = rate_account(account(), [], dec, adjustment_lines=lines)
    assert Decimal("400.00") == bill.total  # December's 250.00 subscription + 150.00
    assert ["recurring", "recurring", "adjustment"] == [c.kind for c in bill.charges]
    assert "late events for finalized period 2026-11" in bill.charges[2].description


def test_sample_period_of_month_is_what_report_rates() -> None:
    """--period 2026-11 for an account anchored on the 1st is November, local midnight."""
    assert NOV == period_of_month(account(), 2026, 11)


event_rows = st.lists(
    st.tuples(st.sampled_from(["login", "logout", "heartbeat"]), st.integers(0, 5),
              st.sampled_from([None, "a", "b"]), st.sampled_from(["agents", "leads"]),
              st.integers(0, 600)),
    max_size=40)


@settings(max_examples=60, deadline=None)
@given(rows=event_rows)
def test_account_columns_rate_like_each_pool_alone(
        rows: list[tuple[str, int, str | None, str, int]]) -> None:
    """The report's one-batch coding of an account's events rates every pool exactly as
    `rate_pool` does from the same pool's events on their own (the oracle)."""
    acct = account()
    base = at(10, "08:00")
    events = [UsageEvent(id=f"r{i}", type=kind, account="acme", user=f"u{user}",  # type: ignore[arg-type]
                         ts=base + timedelta(minutes=minute), pool=pool, session=session)
              for i, (kind, user, session, pool, minute) in enumerate(rows)]
    bill = rate_account(acct, events, NOV)
    for use in bill.pools:
        alone = rate_pool(use.pool, [e for e in events if e.pool == use.pool.id], NOV,
                          ((NOV.start, use.pool.quantity),), acct.session_timeout, account="acme")
        assert (alone.peak, alone.peak_at, alone.users) == (use.peak, use.peak_at, use.users)
        assert alone.concurrency == use.concurrency
        if use.pool.model == "concurrent":
            assert (alone.overage_seats, alone.billable_peak) == (use.overage_seats,
                                                                  use.billable_peak)
            assert [(e.start, e.end, e.peak_excess, e.sustained_level) for e in alone.episodes] == [
                (e.start, e.end, e.peak_excess, e.sustained_level) for e in use.episodes]


# --- the bill is the invoice: recurring charges and switches (issue 16) ------------------------

def one_pool(billing: str, price: str, orders: str = "") -> Account:
    """acme (UTC, from 1 January 2026): 10 concurrent `agents` seats at `price` per term."""
    text = toml_account(
        "acme", anchor="2026-01-01", billing=billing,
        pools=[toml_pool("agents", tier="premium", model="concurrent", quantity=10, price=price,
                         overage_price="200.00", grace="30m")],
        orders=[orders])
    return parse_contracts(text, "test.toml").accounts[0]


def month(m: int, year: int = 2026) -> Period:
    end = datetime(year + m // 12, m % 12 + 1, 1, tzinfo=UTC)
    return Period(datetime(year, m, 1, tzinfo=UTC), end)


TO_ANNUAL = order("2026-11-16T00:00:00Z", billing="annual", prices={"agents": "1500.00"})
TO_MONTHLY = order("2026-07-02T00:00:00Z", billing="monthly", prices={"agents": "150.00"})
OVER = [e for i in range(11) for e in stay(f"u{i}", datetime(2026, 3, 10, 10, tzinfo=UTC),
                                           datetime(2026, 3, 10, 11, tzinfo=UTC))]

INVOICES = [
    # (case, billing, price, orders, period, events, lines (kind, quantity, amount), total)
    ("a monthly account with nobody over bills its subscription",
     "monthly", "150.00", "", month(11), [], [("recurring", 10, "1500.00")], "1500.00"),
    ("an annual account bills its year in its first period",
     "annual", "1800.00", "", month(1), [], [("recurring", 10, "18000.00")], "18000.00"),
    ("and nothing in a later period with nobody over",
     "annual", "1800.00", "", month(3), [], [], "0.00"),
    ("and only the overage in a later period with one seat over for an hour",
     "annual", "1800.00", "", month(3), OVER, [("overage", 1, "200.00")], "200.00"),
    ("monthly -> annual: the month, the unused half credited, the year at its stated price",
     "monthly", "150.00", TO_ANNUAL, month(11), [],
     [("recurring", 10, "1500.00"), ("switch_credit", 10, "-750.00"),
      ("recurring", 10, "15000.00")], "15750.00"),
    ("after it, nothing until a seat added is prorated over the year at 1500.00",
     "monthly", "150.00", TO_ANNUAL + order("2026-12-16T00:00:00Z", pool="agents", quantity=11),
     month(12), [], [("seat_add", 1, "1376.71")], "1376.71"),  # 1500 x 335 / 365
    ("annual -> monthly: the unused half year credited beyond the new month: negative",
     "annual", "1800.00", TO_MONTHLY, month(7), [],
     [("switch_credit", 10, "-9024.66"), ("recurring", 10, "1500.00")], "-7524.66"),
    ("after it, every month at 150.00 from the 2nd, a seat add prorated over that month",
     "annual", "1800.00", TO_MONTHLY + order("2026-08-12T00:00:00Z", pool="agents", quantity=12),
     month(8), [], [("recurring", 10, "1500.00"), ("seat_add", 2, "203.23")], "1703.23"),
    ("a switch that ends a term with a removal scheduled bills the new term without it",
     "monthly", "150.00", order("2026-11-10T00:00:00Z", pool="agents", quantity=8) + TO_ANNUAL,
     month(11), [],
     [("recurring", 10, "1500.00"), ("switch_credit", 10, "-750.00"),
      ("recurring", 8, "12000.00")], "12750.00"),
]


@pytest.mark.parametrize(("billing", "price", "orders", "period", "events", "expected", "total"),
                         [c[1:] for c in INVOICES], ids=[c[0] for c in INVOICES])
def test_the_bill_is_the_invoice(*, billing: str, price: str, orders: str, period: Period,
                                 events: list[UsageEvent],
                                 expected: list[tuple[str, int, str]],
                                 total: str) -> None:
    """Every period's bill holds the terms it starts, its seat changes and switch lines and its
    overage, and its total is their sum (seeds 000, 001; DESIGN "Recurring charges")."""
    bill = rate_account(one_pool(billing, price, orders), events, period)
    assert [(k, q, Decimal(a)) for k, q, a in expected] == [
        (c.kind, c.quantity, c.amount) for c in bill.charges]
    assert Decimal(total) == bill.total
    assert sum((c.amount for c in bill.charges), Decimal(0)) == bill.total


def test_a_negative_total_says_it_is_a_credit_to_the_account_balance() -> None:
    """Only the annual -> monthly credit makes a total negative, and its line says where the
    credit goes; the new month's line says what it is for."""
    bill = rate_account(one_pool("annual", "1800.00", TO_MONTHLY), [], month(7))
    credit, charge = bill.charges
    assert ("unused part of the year, credit to the account balance for the monthly plan: "
            "10 seats x 1800.00 x 183d 0h 0m 0s / 365d") == credit.description
    assert ("switch to monthly billing: 10 seats x 150.00 for the monthly term 2026-07-02 "
            "through 2026-08-01") == charge.description
    assert (datetime(2026, 7, 2, tzinfo=UTC),) * 2 == (credit.at, charge.at)
    assert (Decimal("1800.00"), Decimal("150.00")) == (credit.unit_price, charge.unit_price)


def test_overage_after_a_switch_keeps_the_pools_overage_price() -> None:
    """Overage is per seat per monthly period whatever the billing frequency, so a switch to
    annual leaves `overage_price` as it is (the switch's prices are the terms' prices)."""
    events = [e for i in range(11) for e in stay(f"u{i}", datetime(2026, 12, 10, 10, tzinfo=UTC),
                                                 datetime(2026, 12, 10, 11, tzinfo=UTC))]
    bill = rate_account(one_pool("monthly", "150.00", TO_ANNUAL), events, month(12))
    assert [("overage", 1, Decimal("200.00"), Decimal("200.00"))] == [
        (c.kind, c.quantity, c.unit_price, c.amount) for c in bill.charges]
