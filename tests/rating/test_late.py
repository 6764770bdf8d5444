"""`billed_overage`: what a finalized period's overage was billed, its own report plus the
adjustments for it billed since."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from rating.late import BilledLine, Overage, billed_overage
from rating.periods import Period

NOV = Period(datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 12, 1, 5, tzinfo=UTC))
OCT_START = datetime(2026, 10, 1, 4, tzinfo=UTC)


def adj(target: str, quantity: int, amount: str, start: datetime | None = NOV.start,
        kind: str = "adjustment") -> BilledLine:
    return BilledLine(kind=kind, target=target, quantity=quantity, amount=Decimal(amount),
                      for_period_start=start)


@pytest.mark.parametrize(("later", "expected"), [
    ([], {"agents": Overage(2, Decimal("298.00"))}),
    ([adj("agents", 1, "149.00")], {"agents": Overage(3, Decimal("447.00"))}),
    # A credit (negative adjustment) lowers what was billed.
    ([adj("agents", 1, "149.00"), adj("agents", -2, "-298.00")],
     {"agents": Overage(1, Decimal("149.00"))}),
    # Adjustments of another period, and lines that are not adjustments, are not this period's.
    ([adj("agents", 5, "745.00", start=OCT_START), adj("agents", 1, "149.00", kind="overage"),
      adj("agents", 1, "149.00", start=None)], {"agents": Overage(2, Decimal("298.00"))}),
    # A pool first billed by an adjustment (no overage in its own report).
    ([adj("backup", 1, "99.00")],
     {"agents": Overage(2, Decimal("298.00")), "backup": Overage(1, Decimal("99.00"))}),
])
def test_billed_overage_adds_the_adjustments_for_the_period(
        later: list[BilledLine], expected: dict[str, Overage]) -> None:
    """Own overage plus every adjustment line whose `for_period_start` is the period's start."""
    assert expected == billed_overage(NOV, {"agents": Overage(2, Decimal("298.00"))}, later)


def test_the_same_instant_in_another_offset_is_the_same_period() -> None:
    """A `for_period` start read back as local text (an offset, not Z) still matches."""
    local = datetime.fromisoformat("2026-11-01T00:00:00-04:00")
    assert {"agents": Overage(1, Decimal("1.00"))} == billed_overage(
        NOV, {}, [adj("agents", 1, "1.00", start=local)])
