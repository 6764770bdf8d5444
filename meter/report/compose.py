"""From the rating's `AccountBill` to the report document (`meter.report.document`).

Money becomes strings in the currency's minor unit, times RFC 3339 UTC text; nothing is
computed here that the bill does not already hold.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from meter.report.document import AccountDoc, ChargeDoc, Charts, PoolDoc
from meter.report.inputs import Inputs
from rating.bill import AccountBill, Line, PoolUse
from rating.grace import grace_text
from rating.money import format_money, format_price
from rating.seatchanges import QuantitySteps
from rating.usage import iso, to_us

__all__ = ["bill_charts", "bill_doc", "canonical"]


def canonical(doc: Any) -> str:
    """A document as canonical JSON text (sorted keys, no spaces): what finalization stores."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _steps(steps: QuantitySteps) -> list[list[int]]:
    return [[to_us(t), int(v)] for t, v in steps]


def _charge(line: Line, exp: int) -> ChargeDoc:
    out: ChargeDoc = {
        "kind": line.kind,
        "target": line.target,
        "quantity": line.quantity,
        "amount": format_money(line.amount, exp),
        "unit_price": None if line.unit_price is None else format_price(line.unit_price, exp),
        "at": None if line.at is None else iso(line.at),
        "description": line.description,
    }
    if line.for_period is not None:
        out["for_period"] = {"start": iso(line.for_period.start), "end": iso(line.for_period.end)}
    return out


def _pool(use: PoolUse, exp: int) -> PoolDoc:
    pool = use.pool
    return {
        "pool": pool.id,
        "model": pool.model,
        "tier": pool.tier,
        "licensed": use.licensed,
        "users": use.users,
        "peak": use.peak,
        "peak_at": None if use.peak_at is None else iso(use.peak_at),
        "billable_peak": use.billable_peak,
        "overage_seats": use.overage_seats,
        "overage_price": None if pool.overage_price is None else format_price(pool.overage_price, exp),
        "overage_amount": format_money(use.overage_amount, exp),
        "grace": ({"seconds": int(pool.grace.total_seconds()), "mode": pool.grace_mode,
                   "rule": grace_text(pool)} if pool.model == "concurrent" else None),
        "episodes": [
            {
                "start": iso(e.start),
                "end": iso(e.end),
                "duration_seconds": e.duration // timedelta(seconds=1),
                "peak_excess": e.peak_excess,
                "sustained_level": e.sustained_level,
                "within_grace": e.within_grace,
            }
            for e in use.episodes
        ],
    }


def bill_doc(bill: AccountBill, inputs: Inputs, *, as_of: datetime | None = None) -> AccountDoc:
    """An account's bill as the report's document (not finalized); `as_of` for a period still
    running, rated as of then."""
    account = bill.account
    exp = account.exponent
    doc: AccountDoc = {
        "account": account.id,
        "currency": account.currency,
        "timezone": account.timezone,
        "period": {"start": iso(bill.period.start), "end": iso(bill.period.end)},
        "input_hash": inputs.digest,
        "inputs": {"events": inputs.count, "through_seq": inputs.through_seq},
        "finalized": False,
        "pools": [_pool(use, exp) for use in bill.pools],
        "named": [
            {
                "pool": n.pool,
                "licensed": n.licensed,
                "assigned": n.assigned,
                "active_users": n.active_users,
                "unlicensed_users": n.unlicensed_users,
                "unlicensed": list(n.unlicensed),
                "refused_assigns": n.refused_assigns,
                "idle_seats": n.idle_seats,
            }
            for n in bill.named
        ],
        "addons": [
            {"addon": a.addon, "required": a.required, "purchased": a.purchased,
             "shortfall": a.shortfall}
            for a in bill.addons
        ],
        "charges": [_charge(c, exp) for c in bill.charges],
        "refused": [
            {"kind": r.kind, "target": r.target, "at": iso(r.at), "quantity": r.quantity,
             "reason": r.reason}
            for r in bill.refused
        ],
        "right_sizing": [
            {
                "pool": s.pool,
                "licensed": s.licensed,
                "billable_peak": s.billable_peak,
                "recommended": s.recommended,
                "current_cost": format_money(s.current_cost, exp),
                "recommended_cost": format_money(s.recommended_cost, exp),
                "saving": format_money(s.saving, exp),
                "rule": s.rule,
            }
            for s in bill.right_sizing
        ],
        "unresolved_events": bill.unresolved_events,
        "total": format_money(bill.total, exp),
    }
    if as_of is not None:
        doc["as_of"] = iso(as_of)
    return doc


def bill_charts(bill: AccountBill) -> Charts:
    """The step functions the HTML charts draw: per pool c(t) and E(t) as [t_us, value] pairs."""
    charts: Charts = {}
    for use in bill.pools:
        c = use.concurrency
        curve = ([] if c is None else
                 [list(p) for p in zip(c.times.tolist(), c.values.tolist(), strict=True)])
        charts[use.pool.id] = {"c": curve, "e": _steps(use.licensed_steps)}
    return charts
