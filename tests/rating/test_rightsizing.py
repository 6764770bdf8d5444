"""Right-sizing: the constant licence count that would have cost least for a period's use."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.bill import PoolUse, rate_account
from rating.contracts import Account, Pool
from rating.pool import rate_pool
from rating.rightsizing import monthly_price, right_size, right_size_pools
from tests.rating.test_bill import NOV, account, agents, at, stay


def use_of(acct: Account, billable_peak: int, licensed: int, overage: Decimal) -> PoolUse:
    """A PoolUse with just what right-sizing reads."""
    pool = acct.pools[0]
    return PoolUse(pool=pool, licensed=licensed, peak=billable_peak, peak_at=None,
                   billable_peak=billable_peak, overage_seats=max(0, billable_peak - licensed),
                   overage_amount=overage, episodes=(), users=0, concurrency=None,
                   licensed_steps=((NOV.start, licensed),))


@pytest.mark.parametrize(("prices", "peak", "licensed", "expected"), [
    (("100.00", "150.00"), 8, 12, (8, "800.00", "400.00")),   # idle licences: buy the peak
    (("100.00", "150.00"), 8, 6, (8, "800.00", "100.00")),    # overage dearer than licences
    (("100.00", "100.00"), 8, 8, (8, "800.00", "0.00")),      # already right
    (("100.00", "80.00"), 8, 8, (0, "640.00", "160.00")),     # overage cheaper: pay overage
])
def test_right_size_picks_the_cheapest_constant_count(
        prices: tuple[str, str], peak: int, licensed: int, expected: tuple[int, str, str]) -> None:
    """cost(L) = L x price + max(0, billable peak - L) x overage price, minimised."""
    price, over = prices
    recommended, cost, saving = expected
    acct = account(price=price, overage=over, quantity=licensed)
    paid = Decimal(price) * licensed
    overage = Decimal(over) * max(0, peak - licensed)
    sizing = right_size(acct, use_of(acct, peak, licensed, overage), paid)
    assert (recommended, Decimal(cost), Decimal(saving)) == (
        sizing.recommended, sizing.recommended_cost, sizing.saving)


def test_right_size_keeps_the_count_when_the_period_was_cheaper() -> None:
    """Seats bought late in the period cost less than any constant count: keep them."""
    acct = account()
    sizing = right_size(acct, use_of(acct, 3, 3, Decimal(0)), Decimal("250.00"))
    assert (3, Decimal("250.00"), Decimal("0.00")) == (sizing.recommended, sizing.recommended_cost,
                                                       sizing.saving)
    assert sizing.rule.startswith("keep 3")


spans = st.lists(st.tuples(st.integers(0, 240), st.integers(1, 120)), min_size=1, max_size=7)


@settings(max_examples=40, deadline=None)
@given(spans=spans, mode=st.sampled_from(["continuous", "cumulative"]),
       prices=st.sampled_from([("100", "150"), ("100", "100"), ("100", "60")]))
def test_right_size_matches_brute_force_over_every_licence_count(
        spans: list[tuple[int, int]], mode: str, prices: tuple[str, str]) -> None:
    """The recommendation costs what the cheapest L costs when each L is rated for real."""
    acct = account(grace_mode=mode, price=prices[0], overage=prices[1])
    base = at(10, "08:00")
    events = [e for i, (start, length) in enumerate(spans)
              for e in stay(f"u{i}", base + timedelta(minutes=start),
                            base + timedelta(minutes=start + length))]
    pool = acct.pools[0]
    costs = []
    for licences in range(len(spans) + 2):
        fixed = Pool(pool.id, pool.tier, pool.model, licences, pool.price, pool.overage_price,
                     pool.grace, pool.grace_mode)
        rating = rate_pool(fixed, events, NOV, ((NOV.start, licences),), account="acme")
        costs.append(licences * pool.price + rating.overage_seats * (pool.overage_price or 0))
    bill = rate_account(acct, events, NOV)
    sizing = right_size(acct, agents(bill), Decimal("1e9"))  # paid a fortune: always resize
    assert min(costs) == sizing.recommended_cost
    assert costs[sizing.recommended] == sizing.recommended_cost


def test_right_size_pools_sizes_concurrent_pools_on_what_their_licences_cost() -> None:
    """Only the concurrent pool is sized; it paid 2 seats x 100.00 at the start plus its seat-add
    charges of 50.00, and with nobody signed in 0 licences would have cost nothing."""
    acct = account()
    bill = rate_account(acct, [], NOV)
    sizing = right_size_pools(acct, bill.pools, NOV, {"agents": Decimal("50.00"),
                                                      "leads": Decimal("999.00")})
    assert [("agents", 2, 0, Decimal("250.00"), Decimal("0.00"), Decimal("250.00"))] == [
        (s.pool, s.licensed, s.recommended, s.current_cost, s.recommended_cost, s.saving)
        for s in sizing]
    assert bill.right_sizing == right_size_pools(acct, bill.pools, NOV, {})


@pytest.mark.parametrize(("billing", "expected"), [
    ("monthly", Decimal("100.00")),
    ("annual", Decimal("100.00") / 12),
])
def test_monthly_price_spreads_an_annual_price_over_twelve_months(
        billing: str, expected: Decimal) -> None:
    """Right-sizing compares monthly costs: an annual price counts one twelfth a month."""
    acct = dataclasses.replace(account(), billing=billing)
    assert expected == monthly_price(acct, acct.pools[0])
