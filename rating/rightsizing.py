"""Right-sizing: the constant licence count that would have cost least for a period's concurrency
under the pool's grace rule, what it would have saved, and the rule in words.

It reads a pool's use through the `SizedUse` protocol (the bill's `PoolUse` is one), so it
depends on no bill type and the bill depends on it, one way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from rating.contracts import Account, Pool
from rating.grace import format_hms
from rating.money import format_money, format_price, round_money
from rating.periods import Period
from rating.seatchanges import QuantitySteps, format_seats, licensed_at

__all__ = ["RightSizing", "SizedUse", "monthly_price", "right_size", "right_size_pools"]


@dataclass(frozen=True, slots=True)
class RightSizing:
    """What a constant licence count would have cost for this period's use.

    With E(t) constant at L, level k of the excess is billable exactly when level L + k of c(t)
    is, so the overage is max(0, billable_peak - L) under either grace mode, and the cost is
    L x price + max(0, billable_peak - L) x overage price (the monthly share of an annual price).
    """

    pool: str
    licensed: int
    billable_peak: int
    recommended: int
    current_cost: Decimal
    recommended_cost: Decimal
    saving: Decimal
    rule: str


class SizedUse(Protocol):
    """What right-sizing reads of one pool's period: the bill's `PoolUse`."""

    @property
    def pool(self) -> Pool: ...
    @property
    def licensed(self) -> int: ...
    @property
    def billable_peak(self) -> int | None: ...
    @property
    def overage_amount(self) -> Decimal: ...
    @property
    def licensed_steps(self) -> QuantitySteps: ...


def monthly_price(account: Account, pool: Pool) -> Decimal:
    """The pool's price per seat per monthly period (an annual price spread over 12 months)."""
    return pool.price if account.billing == "monthly" else pool.price / 12


def right_size(account: Account, use: SizedUse, paid: Decimal) -> RightSizing:
    """The constant licence count that would have cost least for `use`, and the saving.

    `paid` is what the period's licences actually cost (seats in force at the start at the
    monthly price, plus the period's seat-add charges); the current cost adds the overage billed.
    Ties go to the larger count (fewer overage seats for the same money). A recommendation that
    would cost more than what happened (seats bought late in the period are prorated) keeps the
    current count.
    """
    pool = use.pool
    exp = account.exponent
    price = monthly_price(account, pool)
    over = pool.overage_price or Decimal(0)
    peak = use.billable_peak or 0

    def cost(licences: int) -> Decimal:
        return round_money(licences * price + max(0, peak - licences) * over, exp)

    # cost(L) is linear below the billable peak and rising above it: the optimum is 0 or the peak.
    recommended = peak if price <= over else 0
    current = round_money(paid + use.overage_amount, exp)
    best = cost(recommended)
    how = (f"{format_seats(recommended)} x {format_price(price, exp)} + "
           f"{format_seats(max(0, peak - recommended))} overage x {format_price(over, exp)}")
    grace = f"billable peak {peak} under the {pool.grace_mode} grace of {format_hms(pool.grace)}"
    if best >= current:
        rule = (f"keep {use.licensed}: the period cost least as it was; {how} would cost "
                f"{format_money(best, exp)}; {grace}")
        recommended, best = use.licensed, current
    else:
        rule = f"{how} = {format_money(best, exp)}; {grace}"
    return RightSizing(
        pool=pool.id, licensed=use.licensed, billable_peak=peak, recommended=recommended,
        current_cost=current, recommended_cost=best, saving=current - best, rule=rule,
    )


def right_size_pools(account: Account, uses: Iterable[SizedUse], period: Period,
                     seat_adds: Mapping[str, Decimal]) -> tuple[RightSizing, ...]:
    """`right_size` of each concurrent pool (named pools are billed by quantity, not use).

    What a pool's licences cost in `period` is the seats in force at its start at the monthly
    price plus `seat_adds[pool]`, the period's seat-add charges for it.
    """
    return tuple(
        right_size(account, use, licensed_at(use.licensed_steps, period.start)
                   * monthly_price(account, use.pool) + seat_adds.get(use.pool.id, Decimal(0)))
        for use in uses if use.pool.model == "concurrent"
    )
