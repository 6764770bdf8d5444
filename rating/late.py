"""What was already billed for a finalized period's overage, from the lines that billed it.

A finalized period billed its overage once in its own report; events that arrived later were
billed as adjustment lines of the periods after it. `billed_overage` adds those up per pool, so
`rating.bill.adjustments` can bill only the difference the late events still make.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from rating.periods import Period

__all__ = ["BilledLine", "Overage", "billed_overage"]


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
