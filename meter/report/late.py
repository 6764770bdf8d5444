"""Late events: adjustment lines for the finalized periods before the one being reported.

A finalized report is never rewritten. Events that arrived for it afterwards are rated again
with everything known, and the difference from what was billed (its report plus adjustments
already billed since, `rating.late.billed_overage`) becomes `adjustment` lines of this period.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

from meter.report.document import AccountDoc
from meter.report.inputs import load_inputs, window
from meter.store import FinalizedReport, Store
from rating.bill import Line, rate_columns
from rating.contracts import Account
from rating.late import BilledLine, Overage, adjustments, billed_overage
from rating.periods import Period, monthly_period
from rating.seatchanges import SeatLedger, apply_orders
from rating.usage import to_us

__all__ = ["LOOKBACK", "late_adjustments", "period_label", "previous_period"]

#: How many finalized periods back a report looks for late events (a year of monthly periods).
LOOKBACK = 12


def previous_period(account: Account, period: Period) -> Period:
    """The account's monthly period just before `period`."""
    return monthly_period(account, period.start - timedelta(microseconds=1))


def period_label(account: Account, period: Period) -> str:
    """`YYYY-MM` of the month `period` starts in, in the account's timezone."""
    return period.start.astimezone(account.tz).strftime("%Y-%m")


def _own_overage(doc: AccountDoc) -> dict[str, Overage]:
    return {p["pool"]: Overage(int(p["overage_seats"]), Decimal(p["overage_amount"]))
            for p in doc["pools"]}


def _lines(doc: AccountDoc) -> list[BilledLine]:
    return [BilledLine(kind=c["kind"], target=c["target"], quantity=int(c["quantity"] or 0),
                       amount=Decimal(c["amount"]),
                       for_period_start=(datetime.fromisoformat(c["for_period"]["start"])
                                         if "for_period" in c else None))
            for c in doc["charges"]]


async def _frozen_before(store: Store, account: Account,
                         period: Period) -> list[tuple[Period, FinalizedReport]]:
    """The finalized periods just before `period`, newest first, up to the first that is not
    finalized (an unfinalized period's bill was never sent, so it has nothing to adjust)."""
    frozen: list[tuple[Period, FinalizedReport]] = []
    p = previous_period(account, period)
    for _ in range(LOOKBACK):
        row = await store.finalized(account.id, to_us(p.start))
        if row is None:
            break
        frozen.append((p, row))
        p = previous_period(account, p)
    return frozen


async def late_adjustments(store: Store, account: Account, contract: str, period: Period,
                           cutoff: int) -> list[Line]:
    """Adjustment lines, billed in `period`, for the finalized periods just before it that
    received events after their finalization (arrivals up to `cutoff`)."""
    frozen = await _frozen_before(store, account, period)
    docs: list[AccountDoc] = [json.loads(row.report) for _, row in frozen]
    lines: list[Line] = []
    ledger: SeatLedger | None = None
    for index, (q, row) in enumerate(frozen):
        lo, hi = window(account, q)
        late = await store.count_arrived(account.id, lo, hi, after_seq=row.cutoff_seq,
                                         through_seq=cutoff)
        if not late:
            continue
        since = [line for doc in docs[:index] for line in _lines(doc)]
        billed = billed_overage(q, _own_overage(docs[index]), since)
        inputs = await load_inputs(store, account, contract, q, cutoff)
        ledger = ledger or apply_orders(account)
        again = rate_columns(account, inputs.columns, q, ledger=ledger)
        lines += adjustments(account, q, billed, again, late_events=late,
                             label=period_label(account, q))
    return lines
