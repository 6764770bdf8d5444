"""From the rating's `AccountBill` to the report document (`meter.report.document`).

Money becomes strings in the currency's minor unit, times RFC 3339 UTC text; nothing is
computed here that the bill does not already hold.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from meter.report.document import (
    AccountDoc,
    ChargeDoc,
    Charts,
    CustomerDoc,
    DayDoc,
    LocalPeriodDoc,
    PoolDoc,
    UserDoc,
)
from meter.report.inputs import Inputs
from rating.bill import AccountBill, Line, PoolUse
from rating.contracts import Account
from rating.daily import daily_peaks
from rating.grace import grace_text
from rating.money import format_money, format_price
from rating.seatchanges import QuantitySteps
from rating.usage import iso, to_us

__all__ = ["bill_charts", "bill_doc", "canonical", "customer_doc", "invoice_number", "local_period"]


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


def _users(use: PoolUse) -> list[UserDoc]:
    return [{"user": p.user, "sessions": p.sessions, "seconds": p.seconds,
             "first_login": iso(p.first_login), "last_seen": iso(p.last_seen),
             "inferred_closes": p.inferred_closes, "billed_window": p.billed_window}
            for p in use.people]


def _daily(use: PoolUse, tz: ZoneInfo) -> list[DayDoc]:
    if use.concurrency is None:
        return []
    return [{"date": d.day.isoformat(), "peak": d.peak,
             "peak_at": None if d.peak_at is None else iso(d.peak_at),
             "seconds_at_peak": d.seconds_at_peak}
            for d in daily_peaks(use.concurrency, tz)]


def local_period(account: Account, start: datetime, end: datetime) -> LocalPeriodDoc:
    """The period `[start, end)` by its local dates in the account's timezone: the label
    (`YYYY-MM` of the month it starts in, what `--period` names), its first and last day."""
    first = start.astimezone(account.tz)
    last = (end - timedelta(microseconds=1)).astimezone(account.tz)
    return {"label": f"{first:%Y-%m}", "first_day": first.date().isoformat(),
            "last_day": last.date().isoformat(), "utc_offset_start": f"{first:%z}",
            "utc_offset_end": f"{last:%z}"}


def invoice_number(account_id: str, label: str) -> str:
    """The invoice number of an account's period: `ACME-2026-11` (the period's label), the same
    on every run."""
    return f"{account_id.upper()}-{label}"


def customer_doc(account: Account) -> CustomerDoc:
    """The invoice's customer: the account id, its name and bill-to address."""
    bill_to = account.bill_to
    return {
        "id": account.id,
        "name": account.name or account.id,
        "bill_to": None if bill_to is None else {
            "name": bill_to.name, "address": list(bill_to.address), "email": bill_to.email,
            "tax_id": bill_to.tax_id},
    }


def _pool(use: PoolUse, exp: int, tz: ZoneInfo) -> PoolDoc:
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
        "usage_by_user": _users(use),
        "daily": _daily(use, tz),
    }


def bill_doc(bill: AccountBill, inputs: Inputs, *, as_of: datetime | None = None) -> AccountDoc:
    """An account's bill as the report's document (not finalized); `as_of` for a period still
    running, rated as of then.

    The invoice's `issued_at` is that `as_of`, or (on finalization) the time it was finalized;
    a draft without either has none, so re-running it gives the same bytes."""
    account = bill.account
    exp = account.exponent
    local = local_period(account, bill.period.start, bill.period.end)
    doc: AccountDoc = {
        "account": account.id,
        "currency": account.currency,
        "timezone": account.timezone,
        "period": {"start": iso(bill.period.start), "end": iso(bill.period.end)},
        "input_hash": inputs.digest,
        "inputs": {"events": inputs.count, "through_seq": inputs.through_seq,
                   "hash_version": inputs.hash_version},
        "finalized": False,
        "local_period": local,
        "invoice": {"number": invoice_number(account.id, local["label"]),
                    "issued_at": None if as_of is None else iso(as_of),
                    "customer": customer_doc(account)},
        "pools": [_pool(use, exp, account.tz) for use in bill.pools],
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
