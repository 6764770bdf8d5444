"""The HTML report for people: one self-contained, printable page per account, and an index.

Tables come from pandas, charts from matplotlib as inline SVG (no network, no scripts). Everything
is drawn from the report's JSON object and chart series, so a finalized period renders the same
bytes every time (fixed SVG ids, no dates in the SVG metadata).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib as mpl

mpl.use("Agg")  # no display: the charts only ever become SVG text

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from meter.report.document import AccountDoc, Charts, PoolDoc, Report
from rating.bill import RATING_VERSION

__all__ = ["render_account", "render_index", "write_html"]

_COLORS = {"c": "#1f5fa8", "e": "#222222", "grace": "#f2b233", "billed": "#d0312d"}
#: Episode tables longer than this show their first rows and say how many were left out.
_MAX_ROWS = 200

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1040px; color: #1b1b1b; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.meta { color: #555; } .meta code { font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d4d4d4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } td.num, th.num { text-align: right; }
.total { font-size: 1.25em; font-weight: 600; }
.billed { color: #b3261e; font-weight: 600; } .grace { color: #8a5a00; }
.chart svg { width: 100%; height: auto; }
.note { color: #555; font-size: 0.92em; }
@media print { body { margin: 0; max-width: none; } .chart, table { page-break-inside: avoid; }
               a { color: inherit; text-decoration: none; } }
"""


def _esc(text: object) -> str:
    return html.escape("" if text is None else str(text))


def _local(iso: str | None, tz: ZoneInfo) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _span(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
           numeric: Sequence[str] = ()) -> str:
    if not rows:
        return '<p class="note">None.</p>'
    frame = pd.DataFrame(list(rows), columns=list(columns))
    out: str = frame.to_html(index=False, border=0, escape=True, na_rep="")
    for name in numeric:
        out = out.replace(f"<th>{_esc(name)}</th>", f'<th class="num">{_esc(name)}</th>')
    return out


# --- charts -------------------------------------------------------------------------------------


def _times(pairs: Sequence[Sequence[int]]) -> np.ndarray[Any, Any]:
    return np.array([p[0] for p in pairs], dtype="datetime64[us]")


def _values(pairs: Sequence[Sequence[int]]) -> np.ndarray[Any, Any]:
    return np.array([p[1] for p in pairs], dtype=np.int64)


def _date2num(value: Any) -> Any:
    return mdates.date2num(value)  # type: ignore[no-untyped-call]  # matplotlib.dates is untyped


def _np_time(iso: str) -> np.datetime64:
    return np.datetime64(datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None), "us")


def _num(t: np.datetime64) -> float:
    return float(_date2num(t.astype(datetime)))


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _chart(pool: Mapping[str, Any], series: Mapping[str, Any], start: datetime, end: datetime, *,
           tz: ZoneInfo, title: str) -> str:
    """c(t) against E(t) over [start, end): excess shaded by episode (grace amber, billed red)."""
    c = list(series.get("c", []))
    e = list(series.get("e", []))
    lo, hi = np.datetime64(start.replace(tzinfo=None), "us"), np.datetime64(end.replace(tzinfo=None), "us")
    # A step function's value at `lo` is its last step at or before it; then the steps inside.
    grid = np.unique(np.concatenate([[lo], _times(c) if c else [], _times(e) if e else [], [hi]]))
    grid = grid[(grid >= lo) & (grid <= hi)]

    def at(pairs: Sequence[Sequence[int]]) -> np.ndarray[Any, Any]:
        if not pairs:
            return np.zeros(grid.shape[0], np.int64)
        idx = np.searchsorted(_times(pairs), grid, side="right") - 1
        vals = _values(pairs)[np.clip(idx, 0, None)]
        return np.where(idx >= 0, vals, 0)

    cv, ev = at(c), at(e)
    fig = Figure(figsize=(10.5, 3.4), dpi=100)
    ax = fig.add_subplot()
    x = grid.astype("datetime64[us]").astype(datetime)
    x_num = _date2num(x)
    over = cv > ev
    billed = np.zeros(grid.shape[0], bool)
    spans: list[tuple[float, float, bool]] = []
    for episode in pool.get("episodes", []):
        s = _np_time(episode["start"])
        t = _np_time(episode["end"])
        if t <= lo or s >= hi:
            continue
        spans.append((_num(s), _num(t), bool(episode["within_grace"])))
        if not episode["within_grace"]:
            billed |= (grid >= s) & (grid < t)
            ax.axvspan(_num(s), _num(t), color=_COLORS["billed"], alpha=0.08, linewidth=0)
    # The excess as bars from E(t) up to c(t), one per step where c(t) > E(t): a fill with a
    # `where` mask would drop steps that have no neighbour inside the same episode.
    seg = np.flatnonzero(over[:-1])
    for mask, color, label in ((~billed[seg], _COLORS["grace"], "excess within grace (free)"),
                               (billed[seg], _COLORS["billed"], "excess past grace (billed)")):
        rows = seg[mask]
        ax.bar(x_num[rows], (cv - ev)[rows], width=x_num[rows + 1] - x_num[rows], bottom=ev[rows],
               align="edge", color=color, alpha=0.85, linewidth=0, label=label)
    # A rug of episodes under the curve, so minutes-long excursions show on a month-wide chart.
    least = 0.0008 * (x_num[-1] - x_num[0])  # at least a hair wide at the chart's scale
    rug_height = 0.035 * (max(int(cv.max(initial=0)), int(ev.max(initial=0)), 1) * 1.15 + 1)
    for free in (True, False):
        ranges = [(a, max(b - a, least)) for a, b, f in spans if f is free]
        if ranges:
            ax.broken_barh(ranges, (0, rug_height), linewidth=0,
                           color=_COLORS["grace"] if free else _COLORS["billed"])
    ax.step(x_num, cv, where="post", color=_COLORS["c"], linewidth=0.8, label="c(t) users counted")
    ax.step(x_num, ev, where="post", color=_COLORS["e"], linewidth=1.4, linestyle="--",
            label="E(t) licensed")
    peak_at = pool.get("peak_at")
    if peak_at:
        p = datetime.fromisoformat(peak_at).astimezone(UTC)
        if start <= p < end:
            ax.plot([_date2num(p.replace(tzinfo=None))], [pool["peak"]], marker="v",
                    color=_COLORS["billed"], markersize=8, linestyle="none",
                    label=f"peak {pool['peak']}")
            ax.annotate(f"peak {pool['peak']}", (_date2num(p.replace(tzinfo=None)), pool["peak"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    if pool.get("billable_peak") is not None:
        ax.axhline(pool["billable_peak"], color=_COLORS["billed"], linewidth=0.7, linestyle=":",
                   label=f"billable peak {pool['billable_peak']}")
    ax.set_xlim(_date2num(start.replace(tzinfo=None)), _date2num(end.replace(tzinfo=None)))
    top = max(int(cv.max(initial=0)), int(ev.max(initial=0)), 1)
    ax.set_ylim(0, top * 1.15 + 1)
    span = end - start
    if span <= timedelta(days=2):
        ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 2), tz=tz))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))  # type: ignore[no-untyped-call]
    else:
        ax.xaxis.set_major_locator(mdates.DayLocator(interval=2, tz=tz))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b", tz=tz))  # type: ignore[no-untyped-call]
    ax.set_ylabel("users")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, color="#e5e5e5", linewidth=0.5)
    handles, _ = ax.get_legend_handles_labels()
    # Patches of their own: an empty bar series (no excess of that kind) has no colour to show.
    handles = [h for h in handles if not isinstance(h, BarContainer)] + [
        Patch(color=_COLORS["grace"], label="excess within grace (free)"),
        Patch(color=_COLORS["billed"], label="excess past grace (billed)"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7,
              ncols=3, frameon=False)
    ax.tick_params(axis="x", labelsize=7)
    return _svg(fig)


def _zoom_day(pool: Mapping[str, Any], tz: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The local day to zoom on: the longest billed episode's, else the peak's."""
    billed = [e for e in pool.get("episodes", []) if not e["within_grace"]]
    if billed:
        anchor = datetime.fromisoformat(max(billed, key=lambda e: e["duration_seconds"])["start"])
    elif pool.get("peak_at"):
        anchor = datetime.fromisoformat(pool["peak_at"])
    else:
        return None
    local = anchor.astimezone(tz)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return day.astimezone(UTC), (day + timedelta(days=1)).astimezone(UTC)


# --- pages ----------------------------------------------------------------------------------------


def _head(doc: AccountDoc, month: str, rating_version: str, tz: ZoneInfo) -> list[str]:
    cur = doc["currency"]
    return [
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(doc['account'])} {month} overage report</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(doc['account'])}: overage report {month}</h1>",
        f'<p class="meta">Period {_esc(_local(doc["period"]["start"], tz))} to '
        f'{_esc(_local(doc["period"]["end"], tz))} ({_esc(doc["timezone"])}, half-open) &middot; '
        f'currency {_esc(cur)} &middot; {"finalized" if doc.get("finalized") else "not finalized"}'
        f'<br>input hash <code>{_esc(doc["input_hash"])}</code> over '
        f'{_esc(doc["inputs"]["events"])} events &middot; rating version {_esc(rating_version)}</p>',
    ]


def _summary(doc: AccountDoc, tz: ZoneInfo) -> list[str]:
    cur = doc["currency"]
    summary = [
        {"pool": p["pool"], "model": p["model"], "tier": p.get("tier"), "licensed": p.get("licensed"),
         "raw peak": p["peak"], "peak at": _local(p["peak_at"], tz),
         "billable peak": "" if p["billable_peak"] is None else p["billable_peak"],
         "overage seats": p["overage_seats"], f"overage ({cur})": p["overage_amount"]}
        for p in doc["pools"]
    ]
    return [
        "<h2>Summary</h2>",
        _table(summary, list(summary[0]) if summary else [],
               numeric=["licensed", "raw peak", "billable peak", "overage seats", f"overage ({cur})"]),
        f'<p class="total">Total {_esc(doc["total"])} {_esc(cur)}</p>',
        '<p class="note">The total is this period\'s variable charges: overage, seat changes '
        "and adjustments for late events; the subscription itself is invoiced as usual.</p>",
    ]


def _concurrent_pool(pool: PoolDoc, series: Mapping[str, Any], cur: str, month: str, *,
                     period: tuple[datetime, datetime], tz: ZoneInfo) -> list[str]:
    """A concurrent pool's section: grace rule, the month's chart, its busiest day, episodes."""
    grace = pool["grace"]
    out = [
        f"<h2>Pool {_esc(pool['pool'])} ({_esc(pool.get('tier'))}, concurrent)</h2>",
        f'<p>Grace rule: {_esc(grace and grace["rule"])}. Overage price {_esc(pool.get("overage_price"))} '
        f"{_esc(cur)} per seat. Distinct users seen: {_esc(pool.get('users'))}.</p>",
        '<div class="chart">' + _chart(pool, series, *period, tz=tz, title=
                                       f"{pool['pool']}: users counted c(t) against licensed "
                                       f"E(t), {month}") + "</div>",
    ]
    zoom = _zoom_day(pool, tz)
    if zoom is not None:
        day = zoom[0].astimezone(tz).strftime("%a %d %b %Y")
        out.append('<div class="chart">' + _chart(pool, series, zoom[0], zoom[1], tz=tz, title=
                                                  f"{pool['pool']}: {day} (local time)") + "</div>")
    episodes = pool["episodes"]
    rows = [
        {"start": _local(e["start"], tz), "end": _local(e["end"], tz),
         "duration": _span(e["duration_seconds"]), "peak excess": e["peak_excess"],
         "sustained level": e["sustained_level"],
         "grace": "within grace" if e["within_grace"] else "BILLED"}
        for e in episodes[:_MAX_ROWS]
    ]
    out.append(f"<h3>Excess episodes ({len(episodes)}, "
               f"{sum(1 for e in episodes if not e['within_grace'])} billed)</h3>")
    out.append(_table(rows, ["start", "end", "duration", "peak excess", "sustained level", "grace"],
                      numeric=["peak excess", "sustained level"]))
    if len(episodes) > _MAX_ROWS:
        out.append(f'<p class="note">{len(episodes) - _MAX_ROWS} more episodes are in the JSON '
                   "report.</p>")
    return out


def _named(doc: AccountDoc) -> list[str]:
    if not doc["named"]:
        return []
    return [
        "<h2>Named seats</h2>",
        _table(
            [{"pool": n["pool"], "licensed": n["licensed"], "assigned": n["assigned"],
              "active users": n["active_users"], "idle seats": n.get("idle_seats"),
              "unlicensed users": n["unlicensed_users"],
              "who": ", ".join(n.get("unlicensed", [])),
              "refused assigns": n["refused_assigns"]} for n in doc["named"]],
            ["pool", "licensed", "assigned", "active users", "idle seats", "unlicensed users",
             "who", "refused assigns"],
            numeric=["licensed", "assigned", "active users", "idle seats", "unlicensed users",
                     "refused assigns"]),
        '<p class="note">Idle seats are licensed seats no assigned user signed in with this '
        "period: money the customer can save.</p>",
    ]


def _lines(doc: AccountDoc, tz: ZoneInfo) -> list[str]:
    """Add-on coverage, charges and refused orders."""
    cur = doc["currency"]
    return [
        "<h2>Add-on coverage</h2>",
        _table([{"add-on": a["addon"], "required": a["required"], "purchased": a["purchased"],
                 "shortfall": a["shortfall"]} for a in doc["addons"]],
               ["add-on", "required", "purchased", "shortfall"],
               numeric=["required", "purchased", "shortfall"]),
        "<h2>Charges</h2>",
        _table([{"kind": c["kind"], "for": c["target"], "quantity": c["quantity"],
                 f"amount ({cur})": c["amount"], "at": _local(c["at"], tz),
                 "description": c["description"]} for c in doc["charges"]],
               ["kind", "for", "quantity", f"amount ({cur})", "at", "description"],
               numeric=["quantity", f"amount ({cur})"]),
        "<h2>Refused orders</h2>",
        _table([{"kind": r["kind"], "for": r["target"], "at": _local(r["at"], tz),
                 "quantity": r["quantity"], "reason": r["reason"]} for r in doc["refused"]],
               ["kind", "for", "at", "quantity", "reason"]),
    ]


def _right_sizing(doc: AccountDoc) -> list[str]:
    if not doc.get("right_sizing"):
        return []
    cur = doc["currency"]
    money = [f"cost now ({cur})", f"cost recommended ({cur})", f"saving ({cur})"]
    return [
        "<h2>Right-sizing</h2>",
        _table([{"pool": s["pool"], "licensed": s["licensed"], "billable peak": s["billable_peak"],
                 "recommended": s["recommended"], money[0]: s["current_cost"],
                 money[1]: s["recommended_cost"], money[2]: s["saving"], "how": s["rule"]}
                for s in doc["right_sizing"]],
               ["pool", "licensed", "billable peak", "recommended", *money, "how"],
               numeric=["licensed", "billable peak", "recommended", *money]),
        '<p class="note">The licence count that would have cost least for this period\'s '
        "concurrency under the pool's grace rule: licences at the monthly price plus overage "
        "for the billable peak above them.</p>",
    ]


def render_account(doc: AccountDoc, charts: Charts, month: str, rating_version: str) -> str:
    """One account's page."""
    mpl.rcParams["svg.hashsalt"] = "license-meter"  # stable element ids: byte-identical pages
    mpl.rcParams["svg.fonttype"] = "none"
    tz = ZoneInfo(doc["timezone"])
    period = (datetime.fromisoformat(doc["period"]["start"]).astimezone(UTC),
              datetime.fromisoformat(doc["period"]["end"]).astimezone(UTC))
    parts = _head(doc, month, rating_version, tz) + _summary(doc, tz)
    for pool in doc["pools"]:
        if pool["model"] == "concurrent":
            series: Mapping[str, Any] = charts.get(pool["pool"], {})
            parts += _concurrent_pool(pool, series, doc["currency"], month, period=period, tz=tz)
    parts += _named(doc) + _lines(doc, tz) + _right_sizing(doc)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_index(report: Report, names: Mapping[str, str]) -> str:
    """A page listing each account's total and linking its page."""
    rows = "".join(
        f'<tr><td><a href="{_esc(names[a.account])}">{_esc(a.account)}</a></td>'
        f'<td class="num">{_esc(a.doc["total"])}</td><td>{_esc(a.doc["currency"])}</td>'
        f'<td>{"finalized" if a.doc.get("finalized") else ""}</td></tr>'
        for a in report.accounts
    )
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Overage reports "
            f"{report.month}</title><style>{_CSS}</style></head><body><h1>Overage reports "
            f"{report.month}</h1><table><tr><th>account</th><th class=\"num\">total</th>"
            f"<th>currency</th><th></th></tr>{rows}</table></body></html>\n")


def write_html(report: Report, out: Path) -> list[Path]:
    """Write one page per account and an index into `out`; returns the paths, index first."""
    out.mkdir(parents=True, exist_ok=True)
    names = {a.account: f"report-{report.month}-{a.account}.html" for a in report.accounts}
    paths = []
    index = out / f"report-{report.month}.html"
    index.write_text(render_index(report, names), encoding="utf-8")
    paths.append(index)
    for part in report.accounts:
        path = out / names[part.account]
        path.write_text(render_account(part.doc, part.charts, report.month, RATING_VERSION),
                        encoding="utf-8")
        paths.append(path)
    return paths
