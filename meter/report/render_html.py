"""The HTML report for people: per account one self-contained, printable page (page 1 the
invoice, then the usage charts and the daily table, then an appendix), and an index.

Charts are SVG written here: each step function is reduced to one column per pixel of the chart's
width, keeping every column's first, highest, lowest and last value, so a month of second-exact
steps draws in a few thousand path commands and no peak disappears. Everything is drawn from the
report document and chart series, so a finalized period renders the same bytes every time.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
from babel.numbers import format_currency
from numpy.typing import NDArray

from meter.report.document import AccountDoc, Charts, PoolDoc, Report
from rating.bill import RATING_VERSION

__all__ = ["APPENDIX_ID", "money", "render_account", "render_index", "write_html"]

#: The `id` of the appendix heading; the appendix starts on a new printed page.
APPENDIX_ID = "appendix"
#: Babel locale of the amounts: the page's words are English.
LOCALE = "en_US"
_COLORS = {"c": "#1f5fa8", "e": "#222222", "grace": "#f2b233", "billed": "#d0312d"}
#: Episode and user tables longer than this show their first rows and say how many were left out.
_MAX_ROWS = 200
#: Chart geometry in SVG user units (one unit = one column of the downsampled series).
_PLOT_W = 960
_LEFT, _RIGHT, _TOP, _BOTTOM = 40, 22, 14, 24
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_ADDON_NAMES = {
    "wfm": "Workforce Management", "qm": "Quality Management", "aea": "AI Expert Assist",
    "virtual_agent": "Virtual Agent", "toll_free_numbers": "Toll-free numbers",
    "global_numbers": "Global numbers", "cloud_storage": "Cloud storage",
}
#: Charge kinds in the order the invoice groups them, with the group's heading.
_GROUPS = (("recurring", "Subscription"), ("seat", "Seat changes"), ("switch", "Billing switch"),
           ("overage", "Overage"), ("adjustment", "Adjustments for late events"),
           ("other", "Other charges"))

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, "DejaVu Sans",
       sans-serif; margin: 2em auto; max-width: 1040px; color: #1b1b1b; padding: 0 1em; }
h1 { font-size: 1.5em; margin: 0 0 0.2em; string-set: title content(); }
h2 { font-size: 1.2em; margin: 1.4em 0 0.4em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: 1em 0 0.3em; }
.meta, .note { color: #555; font-size: 0.92em; } .meta code { font-size: 0.85em; }
table.parties { width: 100%; margin: 0.6em 0 1em; }
table.parties td { border: none; padding: 0 1.5em 0 0; width: 33%; }
.label { color: #555; font-size: 0.85em; display: block; } .nowrap { white-space: nowrap; }
@media screen { .wide { overflow-x: auto; } }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } .num { text-align: right; white-space: nowrap; }
table.invoice { width: 100%; } table.invoice thead th:first-child { width: 62%; }
table.compact td, table.compact th { padding: 1px 6px; font-size: 0.88em; white-space: nowrap; }
table.compact td:last-child { white-space: normal; }
table.invoice tr.group th { background: none; border-bottom: 1px solid #999; padding-top: 0.7em; }
table.invoice tfoot td { border-bottom: none; } table.invoice tr.subtotal td { color: #444; }
table.invoice tr.total td { font-size: 1.2em; font-weight: 600; border-top: 2px solid #222; }
table.daily td, table.daily th { padding: 1px 6px; font-size: 0.88em; }
.draft { color: #8a5a00; font-weight: 600; }
figure { margin: 0.3em 0 0.8em; } figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; font-weight: 600; }
.key { font-size: 0.8em; color: #333; } .key span { white-space: nowrap; margin-right: 1.2em; }
.key i { display: inline-block; width: 1.6em; height: 0.7em; margin-right: 0.35em;
         vertical-align: middle; }
details summary { cursor: pointer; font-weight: 600; margin: 0.4em 0; }
@page { size: Letter; margin: 0.5in 0.55in 0.6in;
        @bottom-left { content: string(title); font: 7.5pt Helvetica, Arial, "DejaVu Sans", sans-serif;
                       color: #666; }
        @bottom-right { content: "page " counter(page) " of " counter(pages);
                        font: 7.5pt Helvetica, Arial, "DejaVu Sans", sans-serif; color: #666; } }
@media print {
  body { margin: 0; max-width: none; padding: 0; font-size: 9pt; }
  .usage, #appendix { break-before: page; }
  figure, tr, .parties { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
  details > summary { list-style: none; }
}
"""


# --- words, times and money -----------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape("" if text is None else str(text))


def money(amount: str | Decimal, currency: str, *, exact: bool = False) -> str:
    """`amount` for the page: the currency's symbol and minor unit ("$1,490.00", "¥8,592").
    `exact` keeps digits beyond the minor unit (unit prices such as a prorated 7.416667)."""
    return format_currency(Decimal(amount), currency, locale=LOCALE, decimal_quantization=not exact)


def _us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (as the chart series count time)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _instant(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(UTC)


def _offset(moment: datetime) -> str:
    off = moment.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _day(value: date) -> str:
    return f"{value.day} {value:%b %Y}"


def _duration(seconds: int) -> str:
    """A span in plain words: "45 s", "6 min 2 s", "2 h", "1 d 3 h 5 min"."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "",
             f"{minutes} min" if minutes else "", f"{secs} s" if secs and not days and not hours else ""]
    return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class _Page:
    """What every part of one account's page shares: its zone, currency and period."""

    tz: ZoneInfo
    currency: str
    start: datetime
    end: datetime

    def when(self, iso: str | None, *, seconds: bool = False) -> str:
        """An instant as local wall time: "10 Nov 2026 10:30" (the zone is named once, on top)."""
        if not iso:
            return ""
        local = _instant(iso).astimezone(self.tz)
        return f"{local.day} {local:%b %Y %H:%M}" + (f":{local:%S}" if seconds else "")

    def short(self, iso: str, *, after: str | None = None) -> str:
        """A time to the second, the year left to the heading: "Mon 16 Nov 14:51:55", or only
        "15:01:03" when on the same local day as `after`."""
        local = _instant(iso).astimezone(self.tz)
        if after is not None and _instant(after).astimezone(self.tz).date() == local.date():
            return f"{local:%H:%M:%S}"
        return f"{local:%a} {local.day} {local:%b %H:%M:%S}"

    def day_of(self, iso: str) -> str:
        return _day(_instant(iso).astimezone(self.tz).date())

    def clock(self, iso: str | None) -> str:
        return "" if not iso else f"{_instant(iso).astimezone(self.tz):%H:%M}"

    def last_day(self) -> date:
        """The period's last local day (the period ends at the start of the next)."""
        return (self.end.astimezone(self.tz) - timedelta(microseconds=1)).date()

    def dates(self) -> str:
        first = self.start.astimezone(self.tz).date()
        return f"{_day(first)} to {_day(self.last_day())}"

    def zone(self) -> str:
        """The zone and its offsets in the period: "America/New_York, UTC-04:00 (EDT) until
        02:00 on 1 Nov 2026, then UTC-05:00 (EST)"."""
        return _zone(self.tz, self.start, self.end)


def _label(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{_offset(local)} ({local.tzname()})"


@functools.lru_cache(maxsize=256)
def _zone(tz: ZoneInfo, start: datetime, end: datetime) -> str:
    # Offsets change on the hour (or half hour) in every zone in use: sample each day, and
    # each quarter hour of a day whose end differs from its start.
    shifts = [(start, _label(start, tz))]
    day, quarter = timedelta(days=1), timedelta(minutes=15)
    t = start
    while t < end:
        nxt = min(t + day, end - timedelta(microseconds=1))
        if _label(nxt, tz) != shifts[-1][1]:
            q = t
            while q <= nxt:
                if _label(q, tz) != shifts[-1][1]:
                    shifts.append((q, _label(q, tz)))
                q += quarter
        t += day
    parts = [shifts[0][1]]
    for i in range(1, len(shifts)):
        # The change in the wall time before it: "until 02:00 on 1 Nov 2026, then ...".
        wall = shifts[i][0] + (shifts[i - 1][0].astimezone(tz).utcoffset() or timedelta(0))
        parts.append(f"until {wall:%H:%M} on {wall.day} {wall:%b %Y}, then {shifts[i][1]}")
    return f"{tz.key}, " + " ".join(parts)


#: "x 23d 14h 0m 0s / 30d 1h": the share of a term a prorated line pays (a credit returns).
_SHARE = re.compile(r"x (\d+)d (\d+)h (\d+)m (\d+)s / (\d+)d(?: (\d+)h)?(?: (\d+)m)?")
_SEATS = re.compile(r"overage (\d+) -> (\d+) seats")
_TERM = re.compile(r"(\d{4}-\d\d-\d\d) through (\d{4}-\d\d-\d\d)")


def _seconds(match: re.Match[str], groups: Sequence[int]) -> int:
    """The span in days, hours, minutes (and seconds) of `match`'s `groups`, in seconds."""
    return sum(int(match[g] or 0) * unit for g, unit in zip(groups, (86400, 3600, 60, 1),
                                                            strict=False))


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
_HMS = re.compile(r"\b(\d+)h(\d{2})m(\d{2})s\b")
_MS = re.compile(r"\b(\d+)m(\d{2})s\b")
_JARGON = ((re.compile(r"\bc\(t\)"), "users signed in"), (re.compile(r"\bE\(t\)"), "licensed"),
           (re.compile(r",? ?\(?half-open\)?"), ""), (re.compile(r"sustained level"), "level held"),
           (re.compile(r"\bsustained\b"), "held"))


def _plain(text: str, page: _Page) -> str:
    """Text made elsewhere (a rule's reason, a line's description) in the page's words: local
    times, spans in words, no notation."""
    text = _ISO.sub(lambda m: page.when(m.group(0)), text)
    text = _HMS.sub(lambda m: _duration(int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])), text)
    text = _MS.sub(lambda m: _duration(int(m[1]) * 60 + int(m[2])), text)
    for pattern, words in _JARGON:
        text = pattern.sub(words, text)
    return text


def _get(value: Mapping[str, Any] | Any, key: str) -> Any:
    """An optional key of a document part (keys that newer reports add, older ones lack)."""
    return cast(Mapping[str, Any], value).get(key)


# --- the invoice ----------------------------------------------------------------------------------


def _target(doc: AccountDoc, target: str) -> str:
    """A pool or add-on by what it is: "agents (Elite concurrent licences)", "Quality Management"."""
    for pool in doc["pools"]:
        if pool["pool"] == target:
            return f"{target} ({pool['tier'].capitalize()} {pool['model']} licences)"
    return _ADDON_NAMES.get(target, target)


def _is_pool(doc: AccountDoc, target: str) -> bool:
    return any(p["pool"] == target for p in doc["pools"])


def _group(kind: str, description: str = "") -> str:
    if kind == "recurring":
        # A switch bills the new term at the switch: it reads with the credit it comes with.
        return "switch" if "switch" in description else "recurring"
    if kind.startswith("seat"):
        return "seat"
    if kind.startswith("switch"):
        return "switch"
    if kind in ("overage", "adjustment"):
        return kind
    return "other"


def _overage_words(pool: PoolDoc | None, page: _Page) -> str:
    if pool is None or pool["grace"] is None or pool["billable_peak"] is None:
        return ""
    grace = pool["grace"]
    licensed = pool["billable_peak"] - pool["overage_seats"]
    head = f"{pool['billable_peak']} signed in at once against {licensed} licensed"
    if grace["mode"] == "cumulative":
        return f"{head} for {_duration(grace['seconds'])} or more in total this period"
    billed = [e for e in pool["episodes"] if not e["within_grace"]]
    if billed:
        longest = max(billed, key=lambda e: (e["sustained_level"], e["duration_seconds"]))
        return (f"{head} for longer than the {_duration(grace['seconds'])} grace, "
                f"{page.when(longest['start'])} to {page.clock(longest['end'])}")
    return f"{head} for longer than the {_duration(grace['seconds'])} grace"


def _line_words(doc: AccountDoc, line: Mapping[str, Any], page: _Page) -> str:
    """One bill line in plain words, from its fields (times local), never from notation."""
    kind, target = str(line["kind"]), str(line["target"])
    label = _target(doc, target)
    qty, unit, amount = line.get("quantity"), line.get("unit_price"), Decimal(line["amount"])
    description = _plain(str(line.get("description") or ""), page)
    at = line.get("at")
    raw = str(line.get("description") or "")
    share = _SHARE.search(raw)
    left = "" if share is None else (
        f" ({_duration(_seconds(share, (1, 2, 3, 4)))} left of "
        f"{_duration(_seconds(share, (5, 6, 7)))})")
    if kind == "recurring":
        term = "annual" if "annual" in description else "monthly" if "monthly" in description else ""
        span = _TERM.search(raw)
        dates = "" if span is None else (f" {_day(date.fromisoformat(span[1]))} to "
                                         f"{_day(date.fromisoformat(span[2]))}")
        if span is not None and date.fromisoformat(span[1]) == page.start.astimezone(page.tz).date() \
                and date.fromisoformat(span[2]) == page.last_day():
            dates = ""  # the period itself, named in the group's heading
        new = ", billed at the switch at its new price" if "switch" in description else ""
        return f"{label}, {term + ' ' if term else ''}term{dates}{new}"
    if kind == "seat_add":
        full = unit is not None and qty is not None and Decimal(unit) * int(qty) == amount
        how = "at the term's full price" if full else f"prorated to the end of the term{left}"
        return f"{label}: {qty} more from {page.when(at)}, {how}"
    if kind == "switch_credit":
        yearly = "year" in raw
        old, new = ("annual", "monthly") if yearly else ("monthly", "annual")
        where = ("credited to the account balance" if "balance" in raw
                 else f"credited toward the {new} price")
        return (f"{label}: the unused part of the {old} term{left}, {where}; switched to {new} "
                f"billing on {page.when(at)}")
    if kind == "overage":
        pool = next((p for p in doc["pools"] if p["pool"] == target), None)
        words = _overage_words(pool, page)
        return f"{label}: {qty} seats over the licence" + (f" ({words})" if words else "")
    if kind == "adjustment":
        fp = line.get("for_period")
        which = "" if not fp else " " + _Page(page.tz, page.currency, _instant(fp["start"]),
                                              _instant(fp["end"])).dates()
        seats = _SEATS.search(raw)
        change = int(qty or 0)
        moved = (f"from {seats[1]} to {seats[2]} seats" if seats else
                 f"by {abs(change)} seat{'s' if abs(change) != 1 else ''}")
        way = "raised" if amount > 0 or change > 0 else "lowered" if amount < 0 or change < 0 else "changed"
        return f"{label}: events that arrived after the bill for{which} was final {way} its overage {moved}"
    return f"{label}: {description or kind.replace('_', ' ')}"


def _invoice_rows(doc: AccountDoc, page: _Page) -> tuple[list[str], list[tuple[str, Decimal]]]:
    cur = doc["currency"]
    order = {p["pool"]: i for i, p in enumerate(doc["pools"])}
    order.update({a["addon"]: len(order) + i for i, a in enumerate(doc["addons"])})
    rows: list[str] = []
    subtotals: list[tuple[str, Decimal]] = []
    ordered = sorted(doc["charges"],
                     key=lambda c: (c.get("at") or "", order.get(c["target"], len(order))))
    for key, heading in _GROUPS:
        lines = [c for c in ordered if _group(c["kind"], c["description"]) == key]
        if not lines:
            continue
        title = heading + (f", {page.dates()}" if key == "recurring" else "")
        rows.append(f'<tr class="group"><th colspan="4">{_esc(title)}</th></tr>')
        sub = Decimal(0)
        for line in lines:
            sub += Decimal(line["amount"])
            unit = line.get("unit_price")
            rows.append(
                f'<tr class="line" data-kind="{_esc(line["kind"])}"><td>'
                f"{_esc(_line_words(doc, cast(Mapping[str, Any], line), page))}</td>"
                f'<td class="num">{_esc(line.get("quantity"))}</td>'
                f'<td class="num">{_esc(money(unit, cur, exact=True) if unit else "")}</td>'
                f'<td class="num" data-amount="{_esc(line["amount"])}">'
                f"{_esc(money(line['amount'], cur))}</td></tr>")
        subtotals.append((heading, sub))
    return rows, subtotals


@dataclass(frozen=True, slots=True)
class _Customer:
    name: str
    attention: str
    address: tuple[str, ...]
    email: str
    tax_id: str


def _customer(doc: AccountDoc) -> _Customer:
    """Who the bill is for, from the report's invoice block where it has one."""
    invoice = _get(doc, "invoice")
    found = _get(invoice, "customer") if isinstance(invoice, Mapping) else None
    customer: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    to = customer.get("bill_to")
    bill_to: Mapping[str, Any] = to if isinstance(to, Mapping) else {}
    name = str(customer.get("name") or doc["account"])
    address = bill_to.get("address") or ()
    attention = str(bill_to.get("name") or "")
    return _Customer(name, "" if attention == name else attention,
                     (address,) if isinstance(address, str) else tuple(str(a) for a in address),
                     str(bill_to.get("email") or ""), str(bill_to.get("tax_id") or ""))


def _invoice(doc: AccountDoc, page: _Page) -> list[str]:
    cur = doc["currency"]
    who = _customer(doc)
    invoice = _get(doc, "invoice")
    number = _get(invoice, "number") if isinstance(invoice, Mapping) else None
    issued = _get(invoice, "issued_at") if isinstance(invoice, Mapping) else None
    rows, subtotals = _invoice_rows(doc, page)
    if not rows:
        rows = ['<tr class="group"><th colspan="4">No charges this period</th></tr>']
    foot = [f'<tr class="subtotal"><td colspan="3">{_esc(h)}</td>'
            f'<td class="num" data-amount="{s}">{_esc(money(s, cur))}</td></tr>'
            for h, s in subtotals] if len(subtotals) > 1 else []
    status = ("final" if doc.get("finalized") else
              '<span class="draft">draft: not finalized, it may still change</span>')
    bill_to = [who.attention, *who.address, who.email, f"Tax ID {who.tax_id}" if who.tax_id else ""]
    out = [
        f"<h1>{_esc(who.name)}: invoice {_esc(number or '')}</h1>",
        '<table class="parties"><tr>'
        f'<td><span class="label">Bill to</span><strong>{_esc(who.name)}</strong>'
        + "".join(f"<br>{_esc(v)}" for v in bill_to if v) + "</td>"
        f'<td><span class="label">Invoice</span>{_esc(number or "not numbered")}<br>'
        f'{"issued " + _esc(page.day_of(issued)) if issued else "not issued yet"}<br>'
        f"account <code>{_esc(doc['account'])}</code><br>{status}</td>"
        f'<td><span class="label">Period</span>{_esc(page.dates())}<br>'
        f'<span class="note">times in {_esc(page.zone())}</span></td>'
        "</tr></table>",
    ]
    as_of = doc.get("as_of")
    if as_of:
        out.append(f'<p class="draft">Usage so far: rated as of {_esc(page.when(as_of))}; the '
                   "period is still running.</p>")
    out += [
        f'<table class="invoice"><thead><tr><th>Charge</th><th class="num">Quantity</th>'
        f'<th class="num">Unit price</th><th class="num">Amount ({_esc(cur)})</th></tr></thead>',
        "<tbody>" + "".join(rows) + "</tbody>",
        "<tfoot>" + "".join(foot) +
        f'<tr class="total"><td colspan="3">Total due</td><td class="num" '
        f'data-amount="{_esc(doc["total"])}">{_esc(money(doc["total"], cur))}</td></tr></tfoot>',
        "</table>",
    ]
    if Decimal(doc["total"]) < 0:
        out.append(f'<p>{_esc(money(-Decimal(doc["total"]), cur))} is credited to the account '
                   "balance.</p>")
    if doc["refused"]:
        out.append('<h3>Orders not applied (not charged)</h3><ul class="note">')
        out += [f"<li>{_esc(page.when(r['at']))}: {_esc(_target(doc, r['target']))}"
                f"{' to ' + str(r['quantity']) if r['quantity'] is not None else ''}: "
                f"{_esc(_plain(r['reason'], page))}</li>" for r in doc["refused"]]
        out.append("</ul>")
    out.append('<p class="note">Overage counts the users signed in at the same time above the '
               "licensed quantity for longer than the pool's grace. The next pages show the "
               "period's use; the appendix lists every such stretch and who was signed in.</p>")
    return out


# --- charts -----------------------------------------------------------------------------------------


I64 = NDArray[np.int64]


def _series(pairs: Sequence[Sequence[int]]) -> tuple[I64, I64]:
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    arr = np.asarray(pairs, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def _value_at(times: I64, values: I64, at: I64, side: str) -> I64:
    """The step function's value at each of `at` (`side="left"`: just before it)."""
    idx = np.searchsorted(times, at, side=side) - 1  # type: ignore[call-overload]
    if not times.size:
        return np.zeros(at.shape[0], np.int64)
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], 0)


@dataclass(frozen=True, slots=True)
class _Columns:
    """A step function over one chart column each: value at its start, max, min, value at its end."""

    first: I64
    high: I64
    low: I64
    last: I64


def _columns(times: I64, values: I64, edges: I64) -> _Columns:
    """Reduce a step function (value `values[i]` from `times[i]` on, 0 before the first) to the
    columns `[edges[j], edges[j+1])`: exact, whatever the number of steps in a column."""
    first = _value_at(times, values, edges[:-1], "right")
    last = _value_at(times, values, edges[1:], "left")
    high, low = first.copy(), first.copy()
    inside = (times > edges[0]) & (times < edges[-1])
    if inside.any():
        col = np.searchsorted(edges, times[inside], side="right") - 1
        np.maximum.at(high, col, values[inside])
        np.minimum.at(low, col, values[inside])
    return _Columns(first, high, low, last)


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _step_path(cols: _Columns, y: Any) -> str:
    """An SVG path of the columns: horizontal runs, one vertical stroke where a column moves."""
    n = cols.first.shape[0]
    ys: dict[str, list[float]] = {k: y(getattr(cols, k)).tolist()
                                  for k in ("first", "high", "low", "last")}
    x0 = float(_LEFT)
    cur = ys["first"][0]
    out = [f"M{_fmt(x0)} {_fmt(cur)}"]
    first, high, low, last = ys["first"], ys["high"], ys["low"], ys["last"]
    for j in range(n):
        x = x0 + j
        if first[j] != cur:
            out.append(f"H{_fmt(x)}V{_fmt(first[j])}")
            cur = first[j]
        if high[j] != cur or low[j] != cur or last[j] != cur:
            out.append(f"H{_fmt(x + 0.5)}V{_fmt(high[j])}V{_fmt(low[j])}V{_fmt(last[j])}")
            cur = last[j]
    out.append(f"H{_fmt(x0 + n)}")
    return "".join(out)


def _runs(flags: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """The `[a, b)` index runs where `flags` is true."""
    if not flags.any():
        return []
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(change[::2], change[1::2], strict=True)]


def _ticks(top: int) -> list[int]:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if top / step <= 5:
            return list(range(0, top + 1, step))
    step = 10 ** len(str(top // 5))
    return list(range(0, top + 1, step))


def _x_ticks(start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[datetime, str, bool]]:
    """(instant, label, labelled) ticks: local midnights on a month, local hours on a day."""
    out: list[tuple[datetime, str, bool]] = []
    if end - start <= timedelta(days=2):
        t = start.replace(minute=0, second=0, microsecond=0)
        while t <= end:
            local = t.astimezone(tz)
            if t >= start and local.minute == 0:
                out.append((t, f"{local:%H:%M}", local.hour % 3 == 0 and t < end))
            t += timedelta(hours=1)
        return out
    day = start.astimezone(tz).date()
    days = (end - start).days + 2
    every = 1 if days <= 16 else 2 if days <= 40 else 7
    for i in range(days):
        d = day + timedelta(days=i)
        t = datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)
        if start <= t <= end:
            out.append((t, f"{d.day} {d:%b}", (d - day).days % every == 0 and t < end))
    return out


def _chart(pool: PoolDoc, series: Mapping[str, Any], start: datetime, end: datetime, *,
           tz: ZoneInfo, height: int, label: str) -> str:
    """Users signed in against licences over `[start, end)`, one column per unit of width;
    stretches over the licence shaded by outcome (amber within grace, red billed)."""
    lo, hi = _us(start), _us(end)
    edges = lo + (np.arange(_PLOT_W + 1, dtype=np.int64) * (hi - lo)) // _PLOT_W
    ct, cv = _series(series.get("c", []))
    et, ev = _series(series.get("e", []))
    c, e = _columns(ct, cv, edges), _columns(et, ev, edges)
    # The excess is a step function of its own, on the union of both functions' steps.
    grid = np.union1d(ct, et)
    xv = np.maximum(_value_at(ct, cv, grid, "right") - _value_at(et, ev, grid, "right"), 0)
    x = _columns(grid, xv, edges)
    top = max(int(c.high.max(initial=0)), int(e.high.max(initial=0)), 1)
    ymax = top * 1.12 + 0.5
    ph = height - _TOP - _BOTTOM
    width = _LEFT + _PLOT_W + _RIGHT

    def y(v: Any) -> Any:
        return np.round(_TOP + ph * (1 - np.asarray(v, dtype=float) / ymax), 1)

    def px(t_us: int) -> float:
        return _LEFT + _PLOT_W * (t_us - lo) / (hi - lo)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{_esc(label)}" font-family="Helvetica, Arial, sans-serif" '
             'font-size="13">']
    for v in _ticks(top):
        yy = _fmt(float(y(v)))
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{yy}" y2="{yy}" '
                     'stroke="#e5e5e5" stroke-width="0.6"/>'
                     f'<text x="{_LEFT - 4}" y="{yy}" dy="4.5" text-anchor="end" fill="#444">{v}</text>')
    for t, text, labelled in _x_ticks(start, end, tz):
        xx = _fmt(px(_us(t)))
        parts.append(f'<line x1="{xx}" x2="{xx}" y1="{_TOP + ph}" y2="{_TOP + ph + 3}" stroke="#888"/>')
        if labelled:
            parts.append(f'<text x="{xx}" y="{height - 5}" text-anchor="middle" fill="#444">'
                         f"{_esc(text)}</text>")
    # Episodes: a translucent band where billed, and a rug so minutes-long ones show on a month.
    billed_cols = np.zeros(_PLOT_W, bool)
    rug: dict[bool, NDArray[np.bool_]] = {True: np.zeros(_PLOT_W, bool), False: np.zeros(_PLOT_W, bool)}
    for episode in pool["episodes"]:
        s = _us(_instant(episode["start"]))
        t_end = _us(_instant(episode["end"]))
        if t_end <= lo or s >= hi:
            continue
        a = max(int((s - lo) * _PLOT_W // (hi - lo)), 0)
        b = min(max(int(-((lo - t_end) * _PLOT_W // (hi - lo))), a + 1), _PLOT_W)
        free = bool(episode["within_grace"])
        rug[free][a:b] = True
        if not free:
            billed_cols[a:b] = True
    rug[True] &= ~rug[False]
    for a, b in _runs(billed_cols):
        parts.append(f'<rect x="{_LEFT + a}" y="{_TOP}" width="{b - a}" height="{ph}" '
                     f'fill="{_COLORS["billed"]}" fill-opacity="0.08"/>')
    # The excess as bars from the licensed line up to the column's highest excess.
    over = x.high > 0
    base = y(e.first)
    bar_top = y(e.first + x.high)
    for is_billed in (False, True):
        mask = over & (billed_cols == is_billed)
        color = _COLORS["billed" if is_billed else "grace"]
        for a, b in _runs(mask):
            j = a
            while j < b:  # merge columns of the same extent into one rectangle
                k = j + 1
                while k < b and base[k] == base[j] and bar_top[k] == bar_top[j]:
                    k += 1
                parts.append(f'<rect x="{_LEFT + j}" y="{_fmt(float(bar_top[j]))}" width="{k - j}" '
                             f'height="{_fmt(float(base[j] - bar_top[j]))}" fill="{color}" '
                             'fill-opacity="0.85"/>')
                j = k
    rug_h = 5
    for free in (True, False):
        for a, b in _runs(rug[free]):
            parts.append(f'<rect x="{_LEFT + a}" y="{_TOP + ph - rug_h}" width="{b - a}" '
                         f'height="{rug_h}" fill="{_COLORS["grace" if free else "billed"]}"/>')
    parts.append(f'<path d="{_step_path(c, y)}" fill="none" stroke="{_COLORS["c"]}" '
                 'stroke-width="0.9"/>')
    parts.append(f'<path d="{_step_path(e, y)}" fill="none" stroke="{_COLORS["e"]}" '
                 'stroke-width="1.4" stroke-dasharray="5 3"/>')
    if pool["overage_seats"] and pool["billable_peak"] is not None:
        yy = _fmt(float(y(pool["billable_peak"])))
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{yy}" y2="{yy}" '
                     f'stroke="{_COLORS["billed"]}" stroke-width="0.8" stroke-dasharray="1.5 2"/>'
                     f'<text x="{_LEFT + _PLOT_W - 2}" y="{yy}" dy="-3" text-anchor="end" '
                     f'fill="{_COLORS["billed"]}">billed up to {pool["billable_peak"]}</text>')
    if pool["peak_at"]:
        p = _us(_instant(pool["peak_at"]))
        if lo <= p < hi:
            mx, my = px(p), float(y(pool["peak"]))
            parts.append(f'<path d="M{_fmt(mx - 4)} {_fmt(my - 7)}H{_fmt(mx + 4)}L{_fmt(mx)} {_fmt(my)}Z" '
                         f'fill="{_COLORS["billed"]}"/><text x="{_fmt(mx + 6)}" y="{_fmt(my - 2)}" '
                         f'fill="#222">peak {pool["peak"]}</text>')
    parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{_TOP + ph}" y2="{_TOP + ph}" '
                 'stroke="#888" stroke-width="0.8"/></svg>')
    return "".join(parts)


_KEY = (
    '<div class="key">'
    f'<span><i style="border-top:2px solid {_COLORS["c"]};height:0"></i>users signed in</span>'
    f'<span><i style="border-top:2px dashed {_COLORS["e"]};height:0"></i>licensed</span>'
    f'<span><i style="background:{_COLORS["grace"]}"></i>excess within grace (free)</span>'
    f'<span><i style="background:{_COLORS["billed"]}"></i>excess past grace (billed)</span></div>'
)


def _zoom_day(pool: PoolDoc, tz: ZoneInfo) -> tuple[datetime, datetime, str] | None:
    """The local day to zoom on: the longest billed stretch's, else the peak's."""
    billed = [e for e in pool["episodes"] if not e["within_grace"]]
    if billed:
        anchor = _instant(max(billed, key=lambda e: e["duration_seconds"])["start"])
        why = "the day of the longest billed stretch"
    elif pool["peak_at"]:
        anchor = _instant(pool["peak_at"])
        why = "the day of the peak"
    else:
        return None
    day = anchor.astimezone(tz).date()
    first = datetime(day.year, day.month, day.day, tzinfo=tz)
    nxt = day + timedelta(days=1)
    return (first.astimezone(UTC), datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC),
            f"{first:%a} {_day(day)}, {why}")


# --- usage ------------------------------------------------------------------------------------------


def _usage(doc: AccountDoc, charts: Charts, page: _Page) -> list[str]:
    concurrent = [p for p in doc["pools"] if p["model"] == "concurrent"]
    out = ['<section class="usage"><h2>Usage</h2>']
    if concurrent:
        out.append('<table><thead><tr><th>Pool</th><th class="num">Licensed</th>'
                   '<th class="num">Most at once</th><th>When</th><th class="num">Billed up to</th>'
                   '<th class="num">Seats over</th><th>Grace</th><th class="num">Users</th>'
                   "</tr></thead><tbody>")
        for p in concurrent:
            grace = p["grace"]
            out.append(
                f"<tr><td>{_esc(p['pool'])} ({_esc(p['tier'])})</td><td class=\"num\">{p['licensed']}</td>"
                f'<td class="num">{p["peak"]}</td><td class="nowrap">{_esc(page.when(p["peak_at"]))}</td>'
                f'<td class="num">{_esc(p["billable_peak"])}</td><td class="num">{p["overage_seats"]}</td>'
                f"<td>{_esc(_duration(grace['seconds']) + ', ' + grace['mode'] if grace else '')}</td>"
                f'<td class="num">{_esc(p["users"])}</td></tr>')
        out.append("</tbody></table>")
    for p in concurrent:
        series: Mapping[str, Any] = charts.get(p["pool"], {})
        title = f"{p['pool']}: users signed in at once against licences, {page.dates()}"
        out.append(f"<figure><figcaption>{_esc(title)}</figcaption>"
                   + _chart(p, series, page.start, page.end, tz=page.tz, height=190, label=title)
                   + "</figure>")
        zoom = _zoom_day(p, page.tz)
        if zoom is not None:
            title = f"{p['pool']}: {zoom[2]}, hour by hour"
            out.append(f"<figure><figcaption>{_esc(title)}</figcaption>"
                       + _chart(p, series, zoom[0], zoom[1], tz=page.tz, height=150, label=title)
                       + "</figure>")
    if concurrent:
        out.append(_KEY)
    out += _daily(concurrent, page) + _named(doc) + _addons(doc)
    out.append("</section>")
    return out


def _daily(pools: Sequence[PoolDoc], page: _Page) -> list[str]:
    """One row per local day, the pools side by side: the day's peak, when, and how long held."""
    days: dict[str, dict[str, Mapping[str, Any]]] = {}
    shown = []
    for p in pools:
        rows = _get(p, "daily")
        if not rows:
            continue
        shown.append(p["pool"])
        for row in rows:
            days.setdefault(str(row["date"]), {})[p["pool"]] = row
    if not shown:
        return []
    head = "".join(f'<th class="num">{_esc(n)} peak</th><th>at</th><th class="num">held</th>'
                   for n in shown)
    body = []
    for day in sorted(days):
        d = date.fromisoformat(day)
        cells = []
        for name in shown:
            row = days[day].get(name)
            if row is None:
                cells.append("<td></td><td></td><td></td>")
                continue
            cells.append(f'<td class="num">{_esc(row["peak"])}</td><td>{_esc(page.clock(row.get("peak_at")))}'
                         f'</td><td class="num">{_esc(_duration(int(row.get("seconds_at_peak") or 0)))}</td>')
        body.append(f"<tr><td>{d:%a} {d.day} {d:%b}</td>{''.join(cells)}</tr>")
    return ["<h3>Day by day</h3>",
            f'<div class="wide"><table class="daily"><thead><tr><th>Day</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>",
            '<p class="note">Each local day\'s most users signed in at once, when that level was '
            "first reached, and how long it was held in the day.</p>"]


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
           cls: str = "") -> str:
    cells = "".join(f'<th class="num">{_esc(h)}</th>' if i in numeric else f"<th>{_esc(h)}</th>"
                    for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="num">{_esc(v)}</td>' if i in numeric
                                    else f"<td>{_esc(v)}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    if not body:
        return '<p class="note">None.</p>'
    klass = f' class="{cls}"' if cls else ""
    return (f'<div class="wide"><table{klass}><thead><tr>{cells}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _named(doc: AccountDoc) -> list[str]:
    if not doc["named"]:
        return []
    return [
        "<h3>Named seats</h3>",
        _table(["Pool", "Licensed", "Assigned", "Signed in", "Idle seats", "Signed in without a seat"],
               [(n["pool"], n["licensed"], n["assigned"], n["active_users"], n["idle_seats"],
                 ", ".join(n["unlicensed"]) or "none") for n in doc["named"]], numeric=(1, 2, 3, 4)),
        '<p class="note">Idle seats are licensed seats no assigned user signed in with this '
        "period: seats the account could give up at renewal.</p>",
    ]


def _addons(doc: AccountDoc) -> list[str]:
    needed = [a for a in doc["addons"] if a["required"] or a["shortfall"]]
    if not needed:
        return []
    return [
        "<h3>Add-on coverage</h3>",
        _table(["Add-on", "Needed", "Bought", "Short by"],
               [(_ADDON_NAMES.get(a["addon"], a["addon"]), a["required"], a["purchased"],
                 a["shortfall"]) for a in needed], numeric=(1, 2, 3)),
    ]


# --- appendix ---------------------------------------------------------------------------------------


def _episode_outcomes(pool: PoolDoc) -> list[str]:
    """Per episode what it meant: within or past a continuous grace; under a cumulative grace,
    how much of the grace it used ("12 min of 30 min counted toward the grace")."""
    grace = pool["grace"]
    if grace is None:
        return ["" for _ in pool["episodes"]]
    g = int(grace["seconds"])
    if grace["mode"] != "cumulative":
        return ["within the grace: free" if e["within_grace"]
                else f"billed: {e['sustained_level']} over for longer than the grace"
                for e in pool["episodes"]]
    out, used = [], 0
    for e in pool["episodes"]:
        left = g - used
        counted = min(left, int(e["duration_seconds"]))
        used += counted
        if left <= 0:
            out.append("after the grace: counts toward the overage")
        elif used >= g:
            out.append(f"{_duration(counted)} of {_duration(g)} counted toward the grace; the grace "
                       "is used up")
        else:
            out.append(f"{_duration(counted)} of {_duration(g)} counted toward the grace "
                       f"({_duration(used)} so far)")
    return out


def _appendix(doc: AccountDoc, page: _Page, rating_version: str) -> list[str]:
    out = [f'<h2 id="{APPENDIX_ID}">Appendix</h2>',
           f'<p class="note">{_esc(page.dates())}; times in {_esc(page.zone())}.</p>']
    concurrent = [p for p in doc["pools"] if p["model"] == "concurrent"]
    for p in concurrent:
        episodes = p["episodes"]
        outcomes = _episode_outcomes(p)
        billed = sum(1 for e in episodes if not e["within_grace"])
        grace = p["grace"]
        kind = ("every stretch adds to the grace" if grace and grace["mode"] == "cumulative"
                else f"{billed} billed")
        out.append(f"<h3>{_esc(p['pool'])}: times above the licensed quantity ({len(episodes)}, "
                   f"{_esc(kind)})</h3>")
        out.append(_table(["From", "To", "Lasted", "Most over", "What it meant"],
                          [(page.short(e["start"]), page.short(e["end"], after=e["start"]),
                            _duration(e["duration_seconds"]), e["peak_excess"], outcome)
                           for e, outcome in zip(episodes[:_MAX_ROWS], outcomes, strict=False)],
                          numeric=(2, 3), cls="compact"))
        if len(episodes) > _MAX_ROWS:
            out.append(f'<p class="note">{len(episodes) - _MAX_ROWS} more are in the JSON report.</p>')
    for p in concurrent:
        users = _get(p, "usage_by_user")
        if users is None:
            continue
        out.append(f"<details><summary>{_esc(p['pool'])}: who was counted ({len(users)} users)</summary>")
        out.append(_table(["User", "Sessions", "Signed in", "First sign-in", "Last seen",
                           "Closed after silence", "In a billed stretch"],
                          [(u["user"], u["sessions"], _duration(u["seconds"]), page.short(u["first_login"]),
                            page.short(u["last_seen"]), u["inferred_closes"],
                            "yes" if u["billed_window"] else "no") for u in users[:_MAX_ROWS]],
                          numeric=(1, 2, 5), cls="compact"))
        if len(users) > _MAX_ROWS:
            out.append(f'<p class="note">{len(users) - _MAX_ROWS} more are in the JSON report.</p>')
        out.append("</details>")
    out += _right_sizing(doc, page)
    out.append("<h3>How the bill is worked out</h3><ul>")
    for p in concurrent:
        grace = p["grace"]
        if grace is None:
            continue
        words = (f"a level above the licensed quantity is billed once its time adds up to "
                 f"{_duration(grace['seconds'])} or more over the period"
                 if grace["mode"] == "cumulative" else
                 f"a level above the licensed quantity is billed when it lasts longer than "
                 f"{_duration(grace['seconds'])} without a break; exactly "
                 f"{_duration(grace['seconds'])} is free")
        price = money(p["overage_price"] or "0", page.currency, exact=True)
        out.append(f"<li>{_esc(p['pool'])}: {_esc(words)}. Rule: {_esc(grace['rule'])}. Overage "
                   f"price {_esc(price)} per seat.</li>")
    out += [
        "<li>A user counts once while signed in, however many devices or sessions they use; a "
        "session with no sign of life for longer than the account's session timeout is closed "
        "at its last event.</li>",
        "<li>Licences added during a term count from the moment they are bought; removals take "
        "effect at the end of the term.</li>",
        "<li>Amounts are rounded to the currency's smallest unit once per line.</li></ul>",
        "<h3>About this report</h3>",
        f'<p class="meta">Input hash <code>{_esc(doc["input_hash"])}</code> over '
        f'{_esc(doc["inputs"]["events"])} events &middot; rating version {_esc(rating_version)} '
        f"&middot; {'finalized' if doc.get('finalized') else 'not finalized'}"
        + (f" &middot; {doc['unresolved_events']} events named no pool and were not counted"
           if doc["unresolved_events"] else "") + "</p>",
    ]
    return out


def _right_sizing(doc: AccountDoc, page: _Page) -> list[str]:
    if not doc["right_sizing"]:
        return []
    cur = page.currency
    return [
        "<h3>Right-sizing</h3>",
        _table(["Pool", "Licensed", "Billed up to", "Cheapest count", "Cost now", "Cost then",
                "Saving", "How"],
               [(s["pool"], s["licensed"], s["billable_peak"], s["recommended"],
                 money(s["current_cost"], cur), money(s["recommended_cost"], cur),
                 money(s["saving"], cur), _plain(s["rule"], page)) for s in doc["right_sizing"]],
               numeric=(1, 2, 3, 4, 5, 6), cls="compact"),
        '<p class="note">The licence count that would have cost least for this period\'s use '
        "under the pool's grace rule: licences at the period's price plus overage above them.</p>",
    ]


# --- pages ------------------------------------------------------------------------------------------


def _doc_head(title: str) -> str:
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>")


def render_account(doc: AccountDoc, charts: Charts, month: str, rating_version: str) -> str:
    """One account's page: the invoice, the usage, the appendix."""
    tz = ZoneInfo(doc["timezone"])
    page = _Page(tz, doc["currency"], _instant(doc["period"]["start"]), _instant(doc["period"]["end"]))
    parts = [_doc_head(f"{_customer(doc).name} invoice {page.dates()}"), '<section class="invoice">']
    parts += _invoice(doc, page)
    parts.append("</section>")
    parts += _usage(doc, charts, page)
    parts += _appendix(doc, page, rating_version)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_index(report: Report, names: Mapping[str, str]) -> str:
    """A page listing each account's bill and linking its page."""
    rows = []
    for a in report.accounts:
        doc = a.doc
        page = _Page(ZoneInfo(doc["timezone"]), doc["currency"], _instant(doc["period"]["start"]),
                     _instant(doc["period"]["end"]))
        rows.append(
            f'<tr><td><a href="{_esc(names[a.account])}">{_esc(_customer(doc).name)}</a></td>'
            f"<td><code>{_esc(a.account)}</code></td><td>{_esc(page.dates())}</td>"
            f'<td class="num" data-amount="{_esc(doc["total"])}">'
            f'{_esc(money(doc["total"], doc["currency"]))}</td>'
            f'<td>{"final" if doc.get("finalized") else "draft"}</td></tr>')
    return (_doc_head(f"Bills {report.month}") + f"<h1>Bills for {_esc(report.month)}</h1>"
            '<table><thead><tr><th>Customer</th><th>Account</th><th>Period</th>'
            '<th class="num">Total</th><th></th></tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></body></html>\n")


def write_html(report: Report, out: Path) -> list[Path]:
    """Write one page per account and an index into `out`; returns the paths, index first."""
    out.mkdir(parents=True, exist_ok=True)
    names = {a.account: f"report-{report.month}-{a.account}.html" for a in report.accounts}
    index = out / f"report-{report.month}.html"
    index.write_text(render_index(report, names), encoding="utf-8")
    paths = [index]
    for part in report.accounts:
        path = out / names[part.account]
        path.write_text(render_account(part.doc, part.charts, report.month, RATING_VERSION),
                        encoding="utf-8")
        paths.append(path)
    return paths
