"""Seat changes: prorated additions, removals at term end, packs of 5, billing switches, quotes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.contracts import Account, Order, parse_contracts
from rating.periods import Period
from rating.seatchanges import (
    SeatLedger,
    apply_orders,
    describe_total,
    format_span,
    licensed_at,
    quote,
)
from tests.contracts_toml import account as toml_account
from tests.contracts_toml import addon as toml_addon
from tests.contracts_toml import order as toml_order
from tests.contracts_toml import pool as toml_pool


def account(*, billing: str = "monthly", anchor: str = "2026-11-01", policy: str = "prorate",
            quantity: int = 10, price: str = "149.00", tz: str = "UTC", currency: str = "USD",
            orders: str = "") -> Account:
    """One account with one concurrent pool `agents` and a `wfm` add-on, from real TOML."""
    text = toml_account(
        "acme", timezone=tz, currency=currency, billing=billing, anchor=anchor, policy=policy,
        pools=[toml_pool("agents", tier="elite", model="concurrent", quantity=quantity,
                         price=price, overage_price=price)],
        addons=[toml_addon("wfm", quantity=0, price="25.00")],
        orders=[orders])
    return parse_contracts(text, "test.toml").accounts[0]


def order(at: str, quantity: int | None = None, pool: str | None = "agents", *,
          billing: str | None = None, addon: str | None = None,
          prices: tuple[str, str] = ("1788.00", "25.00")) -> str:
    """A [[account.order]] table as TOML text: a new total of `pool` (or of `addon`), or a
    switch to `billing` at the new term's `prices` of agents and wfm."""
    if billing is not None:
        return toml_order(at, billing=billing, prices={"agents": prices[0], "wfm": prices[1]})
    if addon is not None:
        return toml_order(at, addon=addon, quantity=quantity)
    return toml_order(at, pool=pool, quantity=quantity)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- prorate (seeds 000, 001) -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("anchor", "at", "amount", "description"),
    [
        # Seed 000: "if you have 10 licenses and want to add 2 more, the number ... should be 12".
        ("2026-11-01", "2026-11-17T00:00:00Z", "139.07", "2 seats x 149.00 x 14d 0h 0m 0s / 30d"),
        ("2026-11-01", "2026-11-16T00:00:00Z", "149.00", "2 seats x 149.00 x 15d 0h 0m 0s / 30d"),
        # At the very start of a period the whole period is charged.
        ("2026-11-01", "2026-11-01T00:00:00Z", "298.00", "2 seats x 149.00 x 30d 0h 0m 0s / 30d"),
        # One second before the end: 298 / 2,592,000 rounds to nothing.
        ("2026-11-01", "2026-11-30T23:59:59Z", "0.00", "2 seats x 149.00 x 0d 0h 0m 1s / 30d"),
        # At the end instant the order is in the next (31-day) period: half-open.
        ("2026-11-01", "2026-12-01T00:00:00Z", "298.00", "2 seats x 149.00 x 31d 0h 0m 0s / 31d"),
        # To the second: 12h 30m 15s of 30 days.
        ("2026-11-01", "2026-11-30T11:29:45Z", "5.18", "2 seats x 149.00 x 0d 12h 30m 15s / 30d"),
        # Leap-year February has 29 days: 298 x 15 / 29 = 154.1379...
        ("2028-02-01", "2028-02-15T00:00:00Z", "154.14", "2 seats x 149.00 x 15d 0h 0m 0s / 29d"),
        # Common-year February has 28: 298 x 14 / 28.
        ("2027-02-01", "2027-02-15T00:00:00Z", "149.00", "2 seats x 149.00 x 14d 0h 0m 0s / 28d"),
    ],
)
def test_prorated_addition_of_two_seats(anchor: str, at: str, amount: str,
                                        description: str) -> None:
    """Raising 10 seats to a total of 12 charges 2 seats for the rest of the period, to the second."""
    acc = account(anchor=anchor, orders=order(at, 12))
    ledger = apply_orders(acc)
    assert 1 == len(ledger.charges)
    line = ledger.charges[0]
    assert ("seat_add", "agents", 2) == (line.kind, line.pool, line.quantity)
    assert Decimal(amount) == line.amount
    assert description == line.description
    assert () == ledger.refused
    start = utc(f"{anchor}T00:00:00Z")
    # An order at the anchor instant leaves no zero-length step behind.
    expected = ((start, 12),) if start == utc(at) else ((start, 10), (utc(at), 12))
    assert expected == ledger.licensed_steps("agents")


def test_annual_term_in_a_leap_year_is_366_days() -> None:
    """Annual billing prorates over the year holding the order: 184 of 366 days in 2028."""
    acc = account(billing="annual", anchor="2028-01-01", price="1788.00",
                  orders=order("2028-07-01T00:00:00Z", 11))
    line = apply_orders(acc).charges[0]
    assert Decimal("898.89") == line.amount  # 1788 x 184 / 366 = 898.885...
    assert "1 seat x 1788.00 x 184d 0h 0m 0s / 366d" == line.description


@pytest.mark.parametrize(
    ("price", "amount"),
    [
        ("0.01", "0.00"),  # a third of a cent rounds down
        ("0.02", "0.01"),  # two thirds of a cent round up
        ("30.10", "10.03"),  # 10.0333...
        ("0.03", "0.01"),  # exactly one cent
        ("0.015", "0.01"),  # half a cent: a tie rounds up
    ],
)
def test_rounding_of_a_third(price: str, amount: str) -> None:
    """One seat for 10 of 30 days costs a third of the price, rounded half-up once per line."""
    acc = account(quantity=1, price=price, orders=order("2026-11-21T00:00:00Z", 2))
    assert Decimal(amount) == apply_orders(acc).charges[0].amount


def test_dst_month_is_an_hour_short() -> None:
    """In New York, March 2026 is 30d 23h long; the fraction uses the real length."""
    acc = account(anchor="2026-03-01", tz="America/New_York",
                  orders=order("2026-03-16T00:00:00-04:00", 12))
    line = apply_orders(acc).charges[0]
    assert "2 seats x 149.00 x 16d 0h 0m 0s / 30d 23h" == line.description
    # 298 x 1,382,400 s / 2,674,800 s = 154.0122...
    assert Decimal("154.01") == line.amount


def test_removal_waits_for_the_end_of_the_term() -> None:
    """Removing seats costs nothing back; they stay usable until the term ends (seed 000)."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 8))
    ledger = apply_orders(acc)
    assert () == ledger.charges
    change = ledger.changes[0]
    assert (10, 10, 8, 2) == (change.before, change.after, change.renews, change.removing)
    assert utc("2026-12-01T00:00:00Z") == change.removal_at
    assert ((utc("2026-11-01T00:00:00Z"), 10), (utc("2026-12-01T00:00:00Z"), 8)) == \
        ledger.licensed_steps("agents")
    assert 10 == ledger.licensed_at("agents", utc("2026-11-30T23:59:59Z"))
    assert 8 == ledger.licensed_at("agents", utc("2026-12-01T00:00:00Z"))


def test_restoring_a_scheduled_removal_is_free() -> None:
    """Buying back seats scheduled for removal, up to the number scheduled, costs nothing (001)."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 8) + order("2026-11-20T00:00:00Z", 10))
    ledger = apply_orders(acc)
    assert () == ledger.charges
    assert 2 == ledger.changes[1].restored
    assert ((utc("2026-11-01T00:00:00Z"), 10),) == ledger.licensed_steps("agents")


def test_buying_past_a_scheduled_removal_charges_only_new_seats() -> None:
    """8 scheduled from 10, then 13: 2 restored free, 3 above the 10 paid for are charged."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 8) + order("2026-11-25T00:00:00Z", 13))
    ledger = apply_orders(acc)
    change = ledger.changes[1]
    assert (2, 3, 0) == (change.restored, change.added, change.removing)
    assert 1 == len(ledger.charges)
    assert Decimal("89.40") == ledger.charges[0].amount  # 3 x 149 x 6 / 30


def test_only_seats_above_the_highest_paid_in_the_term_are_charged() -> None:
    """12, down to 10, back up to 12 and then 14: only the 2 + 2 seats above a paid high cost."""
    acc = account(orders=order("2026-11-16T00:00:00Z", 12) + order("2026-11-18T00:00:00Z", 10)
                  + order("2026-11-20T00:00:00Z", 12) + order("2026-11-21T00:00:00Z", 14))
    ledger = apply_orders(acc)
    assert [2, 2] == [c.quantity for c in ledger.charges]
    assert [Decimal("149.00"), Decimal("99.33")] == [c.amount for c in ledger.charges]
    assert 14 == ledger.licensed_at("agents", utc("2027-01-01T00:00:00Z"))


def test_a_new_term_charges_again_above_what_it_started_with() -> None:
    """A removal lands at the term's end; buying back in the next term is a new purchase."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 8) + order("2026-12-02T00:00:00Z", 10))
    ledger = apply_orders(acc)
    assert 1 == len(ledger.charges)
    assert "2 seats x 149.00 x 30d 0h 0m 0s / 31d" == ledger.charges[0].description
    assert ((utc("2026-11-01T00:00:00Z"), 10), (utc("2026-12-01T00:00:00Z"), 8),
            (utc("2026-12-02T00:00:00Z"), 10)) == ledger.licensed_steps("agents")


def test_addon_orders_follow_the_same_policy() -> None:
    """An add-on order is a new total too, prorated at the add-on's price."""
    acc = account(orders=order("2026-11-16T00:00:00Z", 4, addon="wfm"))
    line = apply_orders(acc).charges[0]
    assert ("wfm", None, Decimal("50.00")) == (line.addon, line.pool, line.amount)


def test_order_before_the_contract_is_refused() -> None:
    """An order before the anchor's local midnight is refused and changes nothing."""
    acc = account(orders=order("2026-10-31T23:59:59Z", 12))
    ledger = apply_orders(acc)
    assert 1 == len(ledger.refused)
    assert "is before the contract starts" in ledger.refused[0].reason
    assert ((utc("2026-11-01T00:00:00Z"), 10),) == ledger.licensed_steps("agents")


def test_until_leaves_later_orders_out() -> None:
    """`until` takes only orders placed before it (half-open)."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 11) + order("2026-11-20T00:00:00Z", 12))
    ledger = apply_orders(acc, until=utc("2026-11-20T00:00:00Z"))
    assert [1] == [c.quantity for c in ledger.charges]


def test_charges_in_a_period() -> None:
    """charges_in takes the lines of orders placed within a half-open period."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 11) + order("2026-12-01T00:00:00Z", 12))
    ledger = apply_orders(acc)
    nov = Period(utc("2026-11-01T00:00:00Z"), utc("2026-12-01T00:00:00Z"))
    dec = Period(utc("2026-12-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"))
    assert [utc("2026-11-10T00:00:00Z")] == [c.at for c in ledger.charges_in(nov)]
    assert [utc("2026-12-01T00:00:00Z")] == [c.at for c in ledger.charges_in(dec)]
    assert 12 == ledger.licensed_max("agents", dec)
    assert 11 == ledger.licensed_max("agents", nov)


def test_unknown_target_has_no_steps() -> None:
    """Asking for the steps of a pool the account lacks is a KeyError naming it."""
    with pytest.raises(KeyError, match="nope"):
        apply_orders(account()).licensed_steps("nope")


# --- packs (seed 002) ---------------------------------------------------------------------------

def packs(orders: str) -> Account:
    return account(billing="annual", anchor="2026-01-01", policy="packs", price="5.00",
                   orders=orders)


@pytest.mark.parametrize(
    ("at", "total", "amount", "reason"),
    [
        # Seed 002: "$5.00/ea. ... regardless of whether you buy 5 more or 5000 more", not prorated.
        ("2026-06-01T00:00:00Z", 15, "25.00", None),
        ("2026-01-01T00:00:00Z", 20, "50.00", None),
        ("2026-12-01T23:59:59Z", 15, "25.00", None),  # last second before the window
        ("2026-06-01T00:00:00Z", 5010, "25000.00", None),
        ("2026-06-01T00:00:00Z", 12, None, "whole packs of 5; 10 -> 12 adds 2"),
        # "cannot be purchased if your subscription has less than 30 days remaining".
        ("2026-12-02T00:00:00Z", 15, None, "no purchases in the last 30 days of the term"),
        ("2026-12-31T23:59:59Z", 15, None, "renew first"),
        ("2026-06-01T00:00:00Z", 5, None, "cannot be removed during the term"),
    ],
)
def test_packs_of_five(at: str, total: int, amount: str | None, reason: str | None) -> None:
    """Packs: whole packs of 5 at the term's price, outside the 30-day renewal window."""
    ledger = apply_orders(packs(order(at, total)))
    if reason is None:
        assert () == ledger.refused
        assert [Decimal(amount or "")] == [c.amount for c in ledger.charges]
        assert total == ledger.licensed_at("agents", utc(at))
    else:
        assert 1 == len(ledger.refused)
        assert reason in ledger.refused[0].reason
        assert () == ledger.charges
        assert ((utc("2026-01-01T00:00:00Z"), 10),) == ledger.licensed_steps("agents")


def test_packs_description_says_not_prorated() -> None:
    """The line says how many packs and that the price is the term's, not prorated."""
    line = apply_orders(packs(order("2026-06-01T00:00:00Z", 20))).charges[0]
    assert "10 seats x 5.00 (2 x pack of 5, full term price, not prorated)" == line.description


def test_packs_removal_in_the_renewal_window_takes_effect_at_renewal() -> None:
    """In the renewal window seats may be removed (seed 002); the term keeps them to its end."""
    ledger = apply_orders(packs(order("2026-12-10T00:00:00Z", 5)))
    assert () == ledger.refused
    assert ((utc("2026-01-01T00:00:00Z"), 10), (utc("2027-01-01T00:00:00Z"), 5)) == \
        ledger.licensed_steps("agents")


def test_packs_seats_renew_with_the_subscription() -> None:
    """Pack seats bought in one term are in force in the next and can be bought again there."""
    ledger = apply_orders(packs(order("2026-06-01T00:00:00Z", 15)
                                + order("2027-02-01T00:00:00Z", 20)))
    assert [Decimal("25.00"), Decimal("25.00")] == [c.amount for c in ledger.charges]
    assert 15 == ledger.licensed_at("agents", utc("2027-01-15T00:00:00Z"))


def test_refused_order_is_never_half_applied() -> None:
    """A refused order between two good ones leaves the later one priced as if it never came."""
    ledger = apply_orders(packs(order("2026-03-01T00:00:00Z", 13) + order("2026-04-01T00:00:00Z", 15)))
    assert 1 == len(ledger.refused)
    assert [5] == [c.quantity for c in ledger.charges]


# --- billing switches (seed 000) ----------------------------------------------------------------

def test_monthly_to_annual_credits_the_rest_of_the_month() -> None:
    """Monthly -> annual credits the unused part of the month toward the annual price."""
    acc = account(orders=order("2026-11-16T00:00:00Z", billing="annual"))
    ledger = apply_orders(acc)
    assert 1 == len(ledger.charges)  # the add-on has 0 seats: nothing to credit
    line = ledger.charges[0]
    assert ("switch_credit", "agents", 10) == (line.kind, line.pool, line.quantity)
    assert Decimal("-745.00") == line.amount  # 10 x 149 x 15 / 30
    assert ("unused part of the month, credited toward the annual price: "
            "10 seats x 149.00 x 15d 0h 0m 0s / 30d") == line.description


def test_after_a_switch_to_annual_a_new_yearly_term_starts() -> None:
    """The new term is a year from the switch's day, priced at 12 monthly prices per seat."""
    acc = account(orders=order("2026-11-16T00:00:00Z", billing="annual")
                  + order("2027-05-16T00:00:00Z", 11))
    line = apply_orders(acc).charges[1]
    assert "1 seat x 1788.00 x 184d 0h 0m 0s / 365d" == line.description
    assert Decimal("901.35") == line.amount  # 1788 x 184 / 365 = 901.347...


def test_annual_to_monthly_credits_the_rest_of_the_year() -> None:
    """Annual -> monthly credits the unused part of the year to the account balance."""
    acc = account(billing="annual", anchor="2026-01-01", price="1788.00",
                  orders=order("2026-07-02T00:00:00Z", billing="monthly"))
    line = apply_orders(acc).charges[0]
    assert Decimal("-8964.49") == line.amount  # 17880 x 183 / 365 = 8964.493...
    assert ("unused part of the year, credit to the account balance for the monthly plan: "
            "10 seats x 1788.00 x 183d 0h 0m 0s / 365d") == line.description


def test_a_switch_ends_the_term_so_scheduled_removals_land() -> None:
    """A switch starts a new term: seats scheduled for removal leave at the switch."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 8)
                  + order("2026-11-16T00:00:00Z", billing="annual"))
    ledger = apply_orders(acc)
    assert Decimal("-745.00") == ledger.charges[0].amount  # the 10 paid seats are credited
    assert ((utc("2026-11-01T00:00:00Z"), 10), (utc("2026-11-16T00:00:00Z"), 8)) == \
        ledger.licensed_steps("agents")


@pytest.mark.parametrize(
    ("acc", "reason"),
    [
        (account(orders=order("2026-11-16T00:00:00Z", billing="monthly")), "already billed monthly"),
        (packs(order("2026-06-01T00:00:00Z", billing="monthly")),
         "billing frequency can change only in the renewal window"),
    ],
)
def test_switches_that_are_refused(acc: Account, reason: str) -> None:
    """A switch to the same frequency, or a mid-term switch under packs, is refused."""
    ledger = apply_orders(acc)
    assert () == ledger.charges
    assert reason in ledger.refused[0].reason


# --- recurring charges and switches with their prices (issue 16) ------------------------------

def month(year: int, m: int) -> Period:
    """The UTC calendar month `year-m` as a half-open period."""
    end = datetime(year + m // 12, m % 12 + 1, 1, tzinfo=UTC)
    return Period(datetime(year, m, 1, tzinfo=UTC), end)


def recurring(ledger: SeatLedger, period: Period) -> list[tuple[str, int, Decimal, datetime]]:
    """The recurring lines of `period` as (target, quantity, amount, at)."""
    return [(c.target, c.quantity, c.amount, c.at) for c in ledger.recurring_in(period)]


def kinds(ledger: SeatLedger, period: Period) -> list[tuple[str, str, int, Decimal]]:
    """Every ledger line of `period` as (kind, target, quantity, amount), in bill order."""
    return [(c.kind, c.target, c.quantity, c.amount) for c in ledger.lines_in(period)]


def test_a_monthly_account_bills_its_seats_every_period() -> None:
    """10 seats x 149.00 are charged at each monthly term's start, used or not (seed 001); the
    add-on with 0 seats makes no line, and terms long after the last order still bill."""
    ledger = apply_orders(account())
    line = ledger.recurring_in(month(2026, 11))[0]
    assert ("recurring", "agents", "pool", 10, Decimal("149.00"), Decimal("1490.00")) == (
        line.kind, line.target, line.target_kind, line.quantity, line.unit_price, line.amount)
    assert "10 seats x 149.00 for the monthly term 2026-11-01 through 2026-11-30" == \
        line.description
    for year, m in ((2026, 11), (2026, 12), (2027, 2), (2029, 7)):
        assert [("agents", 10, Decimal("1490.00"), month(year, m).start)] == \
            recurring(ledger, month(year, m))
    assert [] == recurring(ledger, month(2026, 10))  # before the contract


def test_addons_bill_like_seats_and_count_items_as_numbers() -> None:
    """Add-ons have recurring lines too: a per-seat add-on counts seats, an account-wide or
    counted one a plain number (1 virtual agent, 3 toll-free numbers)."""
    text = toml_account(
        "acme", anchor="2026-11-01",
        pools=[toml_pool("agents", tier="premium", model="named", quantity=2, price="99.00")],
        addons=[toml_addon("qm", quantity=2, price="20.00"),
                toml_addon("virtual_agent", quantity=1, price="500.00"),
                toml_addon("toll_free_numbers", quantity=3, price="4.00")])
    ledger = apply_orders(parse_contracts(text, "test.toml").accounts[0])
    assert [("agents", "pool", "2 seats x 99.00", Decimal("198.00")),
            ("qm", "addon", "2 seats x 20.00", Decimal("40.00")),
            ("virtual_agent", "addon", "1 x 500.00", Decimal("500.00")),
            ("toll_free_numbers", "addon", "3 x 4.00", Decimal("12.00"))] == [
        (c.target, c.target_kind, c.description.split(" for ")[0], c.amount)
        for c in ledger.recurring_in(month(2026, 11))]


def test_an_annual_account_bills_its_year_in_the_first_period_only() -> None:
    """An annual term's price x quantity is billed in the period holding its first day; the other
    eleven periods have no recurring line."""
    ledger = apply_orders(account(billing="annual", anchor="2026-01-01", price="1788.00"))
    jan = ledger.recurring_in(month(2026, 1))
    assert [("agents", 10, Decimal("17880.00"), utc("2026-01-01T00:00:00Z"))] == \
        recurring(ledger, month(2026, 1))
    assert "10 seats x 1788.00 for the annual term 2026-01-01 through 2026-12-31" == \
        jan[0].description
    assert all([] == recurring(ledger, month(2026, m)) for m in range(2, 13))
    assert [("agents", 10, Decimal("17880.00"), utc("2027-01-01T00:00:00Z"))] == \
        recurring(ledger, month(2027, 1))


def test_the_next_term_renews_with_the_quantity_ordered() -> None:
    """Seats added in November and a removal scheduled for its end: December bills the total
    ordered last (12 - 1 = 11), November the 10 it started with plus the prorated add."""
    acc = account(orders=order("2026-11-16T00:00:00Z", 12) + order("2026-11-20T00:00:00Z", 11))
    ledger = apply_orders(acc)
    assert [("recurring", "agents", 10, Decimal("1490.00")),
            ("seat_add", "agents", 2, Decimal("149.00"))] == kinds(ledger, month(2026, 11))
    assert [("agents", 11, Decimal("1639.00"), month(2026, 12).start)] == \
        recurring(ledger, month(2026, 12))


def test_a_seat_add_at_a_terms_first_instant_is_charged_after_its_subscription() -> None:
    """An order at a term's start: the term bills the seats it started with, then the added
    seats for the whole term, so the period bills 12 seats in all."""
    ledger = apply_orders(account(orders=order("2026-12-01T00:00:00Z", 12)))
    assert [("recurring", "agents", 10, Decimal("1490.00")),
            ("seat_add", "agents", 2, Decimal("298.00"))] == kinds(ledger, month(2026, 12))


def test_monthly_to_annual_bills_the_year_at_its_stated_price() -> None:
    """The switch credits the unused half month and charges the annual term at the price it
    states (not 12 monthly prices), both at the switch; a seat added later in the year is
    prorated over the new term at the new price; the year after bills in November 2027."""
    acc = account(orders=order("2026-11-16T00:00:00Z", billing="annual",
                               prices=("1500.00", "250.00"))
                  + order("2027-05-16T00:00:00Z", 11))
    ledger = apply_orders(acc)
    nov = ledger.lines_in(month(2026, 11))
    assert [("recurring", "agents", 10, Decimal("1490.00")),
            ("switch_credit", "agents", 10, Decimal("-745.00")),
            ("recurring", "agents", 10, Decimal("15000.00"))] == kinds(ledger, month(2026, 11))
    assert [utc("2026-11-01T00:00:00Z"), utc("2026-11-16T00:00:00Z"),
            utc("2026-11-16T00:00:00Z")] == [c.at for c in nov]
    assert ("switch to annual billing: 10 seats x 1500.00 for the annual term 2026-11-16 "
            "through 2027-11-15") == nov[2].description
    assert Decimal("15745.00") == sum(c.amount for c in nov)
    assert all([] == kinds(ledger, month(2027, m)) for m in (1, 4, 10))
    (add,) = ledger.lines_in(month(2027, 5))
    assert ("seat_add", 1, Decimal("1500.00"), Decimal("756.16")) == (
        add.kind, add.quantity, add.unit_price, add.amount)  # 1500 x 184 / 365 = 756.164...
    assert "1 seat x 1500.00 x 184d 0h 0m 0s / 365d" == add.description
    assert [("agents", 11, Decimal("16500.00"), utc("2027-11-16T00:00:00Z"))] == \
        recurring(ledger, month(2027, 11))


def test_annual_to_monthly_credits_more_than_the_first_month_costs() -> None:
    """Half a year of 10 x 1788.00 credited against a month at 149.00: the period is negative
    (a credit to the account balance, seed 000); seats added then are prorated over the new
    monthly term at the monthly price, and each later month bills the new total."""
    acc = account(billing="annual", anchor="2026-01-01", price="1788.00",
                  orders=order("2026-07-02T00:00:00Z", billing="monthly",
                               prices=("149.00", "25.00"))
                  + order("2026-08-12T00:00:00Z", 12))
    ledger = apply_orders(acc)
    jul = ledger.lines_in(month(2026, 7))
    assert [("switch_credit", "agents", 10, Decimal("-8964.49")),
            ("recurring", "agents", 10, Decimal("1490.00"))] == kinds(ledger, month(2026, 7))
    assert Decimal("-7474.49") == sum(c.amount for c in jul)
    assert "credit to the account balance" in jul[0].description
    assert ("switch to monthly billing: 10 seats x 149.00 for the monthly term 2026-07-02 "
            "through 2026-08-01") == jul[1].description
    aug = ledger.lines_in(month(2026, 8))
    assert [("recurring", "agents", 10, Decimal("1490.00")),
            ("seat_add", "agents", 2, Decimal("201.87"))] == kinds(ledger, month(2026, 8))
    assert "2 seats x 149.00 x 21d 0h 0m 0s / 31d" == aug[1].description  # 298 x 21 / 31
    assert [utc("2026-08-02T00:00:00Z")] == [c.at for c in ledger.recurring_in(month(2026, 8))]
    assert [("agents", 12, Decimal("1788.00"), utc("2026-09-02T00:00:00Z"))] == \
        recurring(ledger, month(2026, 9))
    # Monthly from the switch's day on: no annual renewal in January any more.
    assert [("agents", 12, Decimal("1788.00"), utc("2027-01-02T00:00:00Z"))] == \
        recurring(ledger, month(2027, 1))


def test_a_switch_ends_the_term_with_its_scheduled_removal() -> None:
    """10 seats with a removal to 8 scheduled, then a switch to annual: the 10 paid seats are
    credited, the new year is billed for the 8 that remain, and buying 2 back in the new term
    is a new purchase prorated at the annual price."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 8)
                  + order("2026-11-16T00:00:00Z", billing="annual", prices=("1500.00", "250.00"))
                  + order("2027-05-16T00:00:00Z", 10))
    ledger = apply_orders(acc)
    assert [("recurring", "agents", 10, Decimal("1490.00")),
            ("switch_credit", "agents", 10, Decimal("-745.00")),
            ("recurring", "agents", 8, Decimal("12000.00"))] == kinds(ledger, month(2026, 11))
    assert [("seat_add", "agents", 2, Decimal("1512.33"))] == kinds(ledger, month(2027, 5))
    assert ((utc("2026-11-01T00:00:00Z"), 10), (utc("2026-11-16T00:00:00Z"), 8),
            (utc("2027-05-16T00:00:00Z"), 10)) == ledger.licensed_steps("agents")


def test_packs_bill_the_term_at_its_start_and_packs_on_top() -> None:
    """Under packs the annual term is billed at its start; a pack bought mid-term is billed at
    the term's price in full, and the next term renews with it."""
    ledger = apply_orders(packs(order("2026-06-01T00:00:00Z", 15)))
    assert [("recurring", "agents", 10, Decimal("50.00"))] == kinds(ledger, month(2026, 1))
    assert [("seat_add", "agents", 5, Decimal("25.00"))] == kinds(ledger, month(2026, 6))
    assert [("agents", 15, Decimal("75.00"), utc("2027-01-01T00:00:00Z"))] == \
        recurring(ledger, month(2027, 1))


# --- quotes -------------------------------------------------------------------------------------

def test_quote_replays_earlier_orders_and_changes_nothing() -> None:
    """A quote prices the order after the account's earlier orders, leaving the account as it was."""
    acc = account(orders=order("2026-11-10T00:00:00Z", 12) + order("2026-11-25T00:00:00Z", 20))
    q = quote(acc, Order(at=utc("2026-11-16T00:00:00Z"), pool="agents", quantity=14))
    assert q.accepted
    assert Decimal("149.00") == q.total  # 2 above the 12 already bought, half a month
    assert "charge 149.00 USD" == describe_total(q)
    assert q.change is not None
    assert (12, 14) == (q.change.before, q.change.after)
    assert 2 == len(apply_orders(acc).changes)


def test_quote_of_a_refused_order_gives_the_reason() -> None:
    """A refused order quotes no lines and the policy's reason."""
    q = quote(packs(""), Order(at=utc("2026-06-01T00:00:00Z"), pool="agents", quantity=12))
    assert not q.accepted
    assert () == q.charges
    assert q.reason is not None
    assert "whole packs of 5" in q.reason


def test_quote_of_a_removal_and_of_a_switch() -> None:
    """A removal quotes no charge; a switch quotes its credit and the new term's charge."""
    acc = account()
    removal = quote(acc, Order(at=utc("2026-11-16T00:00:00Z"), pool="agents", quantity=9))
    assert "no charge (0.00 USD)" == describe_total(removal)
    prices = (("agents", Decimal("1500.00")), ("wfm", Decimal("250.00")))
    switch = quote(acc, Order(at=utc("2026-11-16T00:00:00Z"), billing="annual", prices=prices))
    assert [("switch_credit", Decimal("-745.00")), ("recurring", Decimal("15000.00"))] == [
        (c.kind, c.amount) for c in switch.charges]
    assert "charge 14255.00 USD" == describe_total(switch)


def test_a_switch_built_without_prices_is_refused() -> None:
    """An order made in code (not parsed) that states no price for a seat is refused whole."""
    q = quote(account(), Order(at=utc("2026-11-16T00:00:00Z"), billing="annual",
                               prices=(("agents", Decimal("1500.00")),)))
    assert (False, ()) == (q.accepted, q.charges)
    assert "the switch to annual billing states no price for 'wfm'" == q.reason


@pytest.mark.parametrize(
    ("span", "compact", "expected"),
    [
        (timedelta(days=14), False, "14d 0h 0m 0s"),
        (timedelta(days=30), True, "30d"),
        (timedelta(days=30, hours=23), True, "30d 23h"),
        (timedelta(seconds=1, microseconds=999), False, "0d 0h 0m 1s"),
    ],
)
def test_format_span(span: timedelta, compact: bool, expected: str) -> None:
    """Durations are written to the second; a period's length compactly."""
    assert expected == format_span(span, compact=compact)


# --- properties against an oracle ---------------------------------------------------------------

START = datetime(2026, 1, 1, tzinfo=UTC)
MONTHS = [datetime(2026, m, 1, tzinfo=UTC) for m in range(1, 13)] + [datetime(2027, 1, 1, tzinfo=UTC)]

orders_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=365 * 86400 - 1), st.integers(0, 40)),
    max_size=12,
)


def oracle(initial: int, orders: list[tuple[datetime, int]]) -> tuple[list[int], list[int]]:
    """Per monthly term of 2026: seats that must be charged, and seats in force at its first instant.

    Obviously correct by construction: a term starts with the last total ordered before it; the
    seats charged in it are those above that start, up to the highest total ordered in it.
    """
    charged, starts = [], []
    current = initial
    for begin, end in itertools.pairwise(MONTHS):
        inside = [q for t, q in orders if begin <= t < end]
        # In force at the term's first instant: orders placed at that instant count already.
        starts.append(max([current, *(q for t, q in orders if t == begin)]))
        charged.append(max([current, *inside]) - current)
        before_end = [q for t, q in orders if t < end]
        current = before_end[-1] if before_end else initial
    return charged, starts


@settings(max_examples=150, deadline=None)
@given(orders_strategy, st.integers(0, 40))
def test_prorate_matches_the_oracle(raw: list[tuple[int, int]], initial: int) -> None:
    """Charged seats per term and seats in force match a brute-force oracle; no line exceeds the
    full price of its seats, nor goes below zero."""
    placed = sorted((START + timedelta(seconds=s), q) for s, q in raw)
    text = "".join(order(t.isoformat(), q) for t, q in placed)
    acc = account(anchor="2026-01-01", quantity=initial, price="149.00", orders=text)
    ledger = apply_orders(acc)
    expected_charged, expected_starts = oracle(initial, placed)
    got, billed = [], []
    for begin, end in itertools.pairwise(MONTHS):
        lines = ledger.charges_in(Period(begin, end))
        got.append(sum(c.quantity for c in lines))
        for line in lines:
            assert Decimal(0) <= line.amount <= Decimal("149.00") * line.quantity
        billed.append([(c.quantity, c.amount, c.at) for c in ledger.recurring_in(Period(begin, end))
                       if c.target == "agents"])
    assert expected_charged == got
    # Each term bills the last total ordered before it (an order at its first instant is a
    # seat change of the term, charged after it).
    renewing = [([initial] + [q for t, q in placed if t < m])[-1] for m in MONTHS[:-1]]
    assert [[(q, Decimal("149.00") * q, m)] if q else []
            for q, m in zip(renewing, MONTHS[:-1], strict=True)] == billed
    steps = ledger.licensed_steps("agents")
    assert expected_starts == [licensed_at(steps, m) for m in MONTHS[:-1]]
    assert () == ledger.refused
    for t, q in placed:
        # Right after an order its total is usable (a removal keeps the higher count).
        assert licensed_at(steps, t) >= q


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=2 * 365 * 86400 - 1),
                          st.integers(0, 40)), max_size=10))
def test_packs_never_sells_part_of_a_pack_nor_in_the_window(raw: list[tuple[int, int]]) -> None:
    """Under packs every charge is whole packs at the full price, none falls in a renewal window,
    and the quantity in force never drops inside a term."""
    placed = sorted((START + timedelta(seconds=s), q) for s, q in raw)
    ledger = apply_orders(packs("".join(order(t.isoformat(), q) for t, q in placed)))
    windows = [Period(datetime(y, 12, 2, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC))
               for y in (2026, 2027)]
    for line in ledger.charges:
        assert 0 == line.quantity % 5
        assert Decimal("5.00") * line.quantity == line.amount
        assert not any(line.at in w for w in windows)
    assert len(placed) == len(ledger.changes) + len(ledger.refused)
    steps = ledger.licensed_steps("agents")
    for (_, before), (t, after) in itertools.pairwise(steps):
        if after < before:
            assert t in (datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
