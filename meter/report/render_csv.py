"""CSV for finance: one row per bill line (`charges`), per pool (`pools`), per user of a pool
(`users`) and per local day of a pool (`daily`).

All are rendered from the report's JSON objects, so a finalized period renders identically; the
amounts are the JSON strings as they are (summing a column gives each account's `total`). Every
row names its account's period by its local first and last day.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meter.report.document import AccountDoc, Report

__all__ = [
    "CHARGE_COLUMNS",
    "CSV_FILES",
    "DAILY_COLUMNS",
    "POOL_COLUMNS",
    "USER_COLUMNS",
    "render_charges",
    "render_daily",
    "render_pools",
    "render_users",
]

CHARGE_COLUMNS = (
    "month", "account", "currency", "period_start", "period_end", "kind", "target", "quantity",
    "unit_price", "amount", "at", "for_period_start", "description", "period_first_day",
    "period_last_day", "invoice",
)
POOL_COLUMNS = (
    "month", "account", "currency", "pool", "model", "tier", "licensed", "users", "peak",
    "peak_at", "billable_peak", "overage_seats", "overage_price", "overage_amount", "episodes",
    "episodes_billed", "recommended", "recommended_saving", "period_first_day", "period_last_day",
)
USER_COLUMNS = (
    "month", "account", "period_first_day", "period_last_day", "pool", "user", "sessions",
    "seconds", "first_login", "last_seen", "inferred_closes", "billed_window",
)
DAILY_COLUMNS = (
    "month", "account", "timezone", "pool", "date", "peak", "peak_at", "seconds_at_peak",
)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    # "\n" line ends: the files are read by people and diffed by machines on every platform.
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _days(doc: AccountDoc) -> tuple[str | None, str | None]:
    local = doc.get("local_period")
    return (local["first_day"], local["last_day"]) if local else (None, None)


def _invoice(doc: AccountDoc) -> str | None:
    invoice = doc.get("invoice")
    return invoice["number"] if invoice else None


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
                *_days(doc), _invoice(doc),
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
                size and size["recommended"], size and size["saving"], *_days(doc),
            ))
    return _table(POOL_COLUMNS, rows)


def render_users(report: Report) -> str:
    """One row per user of every pool: who was counted, for how long, and in a billed window."""
    rows = []
    for part in report.accounts:
        doc = part.doc
        for pool in doc["pools"]:
            for u in pool.get("usage_by_user", []):
                rows.append((
                    report.month, doc["account"], *_days(doc), pool["pool"], u["user"],
                    u["sessions"], u["seconds"], u["first_login"], u["last_seen"],
                    u["inferred_closes"], "true" if u["billed_window"] else "false",
                ))
    return _table(USER_COLUMNS, rows)


def render_daily(report: Report) -> str:
    """One row per local day of every pool: the day's peak, when, and how long it was held."""
    rows = []
    for part in report.accounts:
        doc = part.doc
        for pool in doc["pools"]:
            for d in pool.get("daily", []):
                rows.append((report.month, doc["account"], doc["timezone"], pool["pool"],
                             d["date"], d["peak"], d["peak_at"], d["seconds_at_peak"]))
    return _table(DAILY_COLUMNS, rows)


#: The CSV files `--format csv` writes beside each other, as `<name>-<period>.csv`.
CSV_FILES: dict[str, Callable[[Report], str]] = {
    "charges": render_charges,
    "pools": render_pools,
    "users": render_users,
    "daily": render_daily,
}
