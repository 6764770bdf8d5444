"""CSV for finance: one row per bill line (`charges`), and one row per pool (`pools`).

Both are rendered from the report's JSON objects, so a finalized period renders identically; the
amounts are the JSON strings as they are (summing a column gives each account's `total`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from meter.report.document import Report

__all__ = ["CHARGE_COLUMNS", "POOL_COLUMNS", "render_charges", "render_pools"]

CHARGE_COLUMNS = (
    "month", "account", "currency", "period_start", "period_end", "kind", "target", "quantity",
    "unit_price", "amount", "at", "for_period_start", "description",
)
POOL_COLUMNS = (
    "month", "account", "currency", "pool", "model", "tier", "licensed", "users", "peak",
    "peak_at", "billable_peak", "overage_seats", "overage_price", "overage_amount", "episodes",
    "episodes_billed", "recommended", "recommended_saving",
)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    # "\n" line ends: the files are read by people and diffed by machines on every platform.
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def render_charges(report: Report) -> str:
    """One row per charge, credit and adjustment of every account, in report order."""
    rows = []
    for part in report.accounts:
        doc = part.doc
        for line in doc["charges"]:
            rows.append((
                report.month, doc["account"], doc["currency"], doc["period"]["start"],
                doc["period"]["end"], line["kind"], line["target"], line["quantity"],
                line["unit_price"], line["amount"], line["at"],
                line["for_period"]["start"] if "for_period" in line else None, line["description"],
            ))
    return _table(CHARGE_COLUMNS, rows)


def render_pools(report: Report) -> str:
    """One row per pool of every account: use, overage and the right-sizing recommendation."""
    rows = []
    for part in report.accounts:
        doc = part.doc
        sizing = {s["pool"]: s for s in doc["right_sizing"]}
        for pool in doc["pools"]:
            size = sizing.get(pool["pool"])
            rows.append((
                report.month, doc["account"], doc["currency"], pool["pool"], pool["model"],
                pool["tier"], pool["licensed"], pool["users"], pool["peak"],
                pool["peak_at"], pool["billable_peak"], pool["overage_seats"],
                pool["overage_price"], pool["overage_amount"], len(pool["episodes"]),
                sum(1 for e in pool["episodes"] if not e["within_grace"]),
                size and size["recommended"], size and size["saving"],
            ))
    return _table(POOL_COLUMNS, rows)
