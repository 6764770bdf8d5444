"""The report as a few lines per account for a terminal (what `meter demo` prints)."""

from __future__ import annotations

from meter.report.document import Report

__all__ = ["summary"]


def summary(report: Report) -> str:
    """Each account's bill in a few lines for the terminal."""
    out = []
    for part in report.accounts:
        doc = part.doc
        cur = doc["currency"]
        out.append(f"{doc['account']}  {doc['period']['start']} .. {doc['period']['end']}  "
                   f"total {doc['total']} {cur}")
        local, invoice = doc.get("local_period"), doc.get("invoice")
        if local and invoice:
            out.append(f"  period {local['first_day']} .. {local['last_day']} (local dates, "
                       f"{doc['timezone']})  invoice {invoice['number']}")
        for pool in doc["pools"]:
            if pool["model"] == "concurrent":
                billed = sum(1 for e in pool["episodes"] if not e["within_grace"])
                out.append(f"  pool {pool['pool']:<10} licensed {pool['licensed']:>3}  "
                           f"peak {pool['peak']:>3}  billable {pool['billable_peak']:>3}  "
                           f"overage {pool['overage_seats']} seats = {pool['overage_amount']} {cur}"
                           f"  ({len(pool['episodes'])} excess episodes, {billed} billed)")
        for named in doc["named"]:
            out.append(f"  named {named['pool']:<9} licensed {named['licensed']:>3}  "
                       f"assigned {named['assigned']}  active {named['active_users']}  "
                       f"unlicensed {named['unlicensed_users']}  refused assigns "
                       f"{named['refused_assigns']}")
        for addon in doc["addons"]:
            if addon["shortfall"]:
                out.append(f"  add-on {addon['addon']:<8} required {addon['required']}  purchased "
                           f"{addon['purchased']}  shortfall {addon['shortfall']}")
        for line in doc["charges"]:
            out.append(f"  {line['kind']:<13} {line['target']:<10} {line['amount']:>10} {cur}  "
                       f"{line['description']}")
        for refused in doc["refused"]:
            out.append(f"  refused       {refused['target']:<10} {refused['reason']}")
        for size in doc["right_sizing"]:
            if size["saving"] and size["recommended"] != size["licensed"]:
                out.append(f"  right-size    {size['pool']:<10} {size['licensed']} -> "
                           f"{size['recommended']} licences would have saved {size['saving']} {cur}")
    return "\n".join(out)
