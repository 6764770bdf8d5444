"""Late events: what a finalized period's overage was billed, and the adjustment lines that
bill the difference once it is rated again with the events that arrived after it.

A finalized period billed its overage once in its own report; events that arrived later were
billed as adjustment lines of the periods after it. `billed_overage` adds those up per pool, so
`adjustments` bills only the difference the late events still make. A finalized report is never
rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from rating.bill import AccountBill, Line
from rating.contracts import Account
from rating.money import format_money, round_money
from rating.periods import Period

__all__ = ["BilledLine", "Overage", "adjustments", "billed_overage"]


@dataclass(frozen=True, slots=True)
class Overage:
    """Overage seats and their amount."""

    seats: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class BilledLine:
    """A bill line of a finalized period, as read back from its report."""

    kind: str
    target: str
    quantity: int
    amount: Decimal
    #: The start of the finalized period an adjustment corrects (None on other lines).
    for_period_start: datetime | None = None


def billed_overage(period: Period, own: Mapping[str, Overage],
                   later: Iterable[BilledLine]) -> dict[str, Overage]:
    """Per pool, the overage billed for `period`: its own report's (`own`) plus every adjustment
    line for `period` among `later` (the lines of the finalized periods after it)."""
    billed = dict(own)
    for line in later:
        if line.kind != "adjustment" or line.for_period_start != period.start:
            continue
        was = billed.get(line.target, Overage(0, Decimal(0)))
        billed[line.target] = Overage(was.seats + line.quantity, was.amount + line.amount)
    return billed


def adjustments(account: Account, finalized: Period, billed: Mapping[str, Overage],
                recomputed: AccountBill, *, late_events: int, label: str) -> tuple[Line, ...]:
    """Adjustment lines for a finalized period: what its recomputation owes beyond what was billed.

    `billed` is each pool's overage already billed for `finalized` (`billed_overage`);
    `recomputed` is the period rated again with every event now known. Only overage depends on
    events, so only overage is adjusted; a negative line is a credit.
    """
    lines = []
    exp = account.exponent
    for use in recomputed.pools:
        was = billed.get(use.pool.id, Overage(0, Decimal(0)))
        delta = use.overage_amount - was.amount
        if not delta and use.overage_seats == was.seats:
            continue
        lines.append(Line(
            kind="adjustment", target=use.pool.id, quantity=use.overage_seats - was.seats,
            amount=round_money(delta, exp), unit_price=use.pool.overage_price,
            at=finalized.end, for_period=finalized,
            description=(f"late events for finalized period {label} ({late_events} received after "
                         f"finalization): overage {was.seats} -> {use.overage_seats} seats, billed "
                         f"{format_money(was.amount, exp)}, now "
                         f"{format_money(use.overage_amount, exp)}"),
        ))
    return tuple(lines)
