"""The HTML report on the sample month: page 1 an invoice that adds up, plain words in one time
zone, charts downsampled exactly per pixel column, and the grace of cumulative pools in words."""

from __future__ import annotations

import io
import itertools
import json
import re
from contextlib import redirect_stdout
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.cli import main
from meter.report.render_html import (
    _BOTTOM,
    _LEFT,
    _PLOT_W,
    APPENDIX_ID,
    _chart,
    _columns,
    _episode_outcomes,
    _line_words,
    _Page,
    _zone,
    money,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_sessions"
CONTRACTS = SAMPLES / "contracts.toml"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample month ingested, reported as JSON and HTML from one database."""
    tmp = tmp_path_factory.mktemp("html")
    db = tmp / "meter.db"
    code, _ = run_cli("ingest", str(SAMPLES / "events-2026-11.jsonl"), "--db", str(db),
                      "--contracts", str(CONTRACTS), "--as-of", "2026-12-02T00:00:00Z")
    assert 0 == code
    args = ("report", "--db", str(db), "--contracts", str(CONTRACTS), "--period", "2026-11")
    code, text = run_cli(*args)
    assert 0 == code
    assert 0 == run_cli(*args, "--format", "html", "--out", str(tmp / "a"))[0]
    assert 0 == run_cli(*args, "--format", "html", "--out", str(tmp / "b"))[0]
    assert 0 == run_cli("report", "--db", str(db), "--contracts", str(CONTRACTS), "--period",
                        "2026-10", "--account", "initech", "--format", "html", "--out",
                        str(tmp / "oct"))[0]
    return {"doc": {a["account"]: a for a in json.loads(text)["accounts"]}, "a": tmp / "a",
            "b": tmp / "b", "oct": tmp / "oct"}


def _page(pages: dict[str, Any], account: str) -> str:
    return Path(pages["a"] / f"report-2026-11-{account}.html").read_text(encoding="utf-8")


class _Invoice(HTMLParser):
    """The invoice table's rows: per row its class and each cell's text and `data-amount`."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[tuple[str, str | None]]]] = []
        self._in = False
        self._cell: list[str] | None = None
        self._amount: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("class") == "invoice":
            self._in = True
        elif self._in and tag == "tr":
            self.rows.append((a.get("class") or "", []))
        elif self._in and tag in ("td", "th"):
            self._cell, self._amount = [], a.get("data-amount")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in = False
        elif self._in and tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append(("".join(self._cell).strip(), self._amount))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _invoice(page: str) -> _Invoice:
    parser = _Invoice()
    parser.feed(page)
    return parser


@pytest.mark.parametrize("account", ["acme", "globex", "initech"])
def test_the_invoice_table_adds_up_to_its_total(pages: dict[str, Any], account: str) -> None:
    """The lines sum (as Decimal) to the total row, the subtotals too, and both equal the JSON
    total; every amount shown is its `data-amount` in the currency's format."""
    doc = pages["doc"][account]
    rows = _invoice(_page(pages, account)).rows
    lines = [cells[-1] for kind, cells in rows if kind == "line"]
    subtotals = [cells[-1] for kind, cells in rows if kind == "subtotal"]
    (total,) = [cells[-1] for kind, cells in rows if kind == "total"]
    assert len(doc["charges"]) == len(lines)
    for shown, raw in [*lines, *subtotals, total]:
        assert raw is not None
        assert money(raw, doc["currency"]) == shown
    assert Decimal(doc["total"]) == Decimal(str(total[1]))
    assert Decimal(doc["total"]) == sum((Decimal(str(raw)) for _, raw in lines), Decimal(0))
    if subtotals:
        assert Decimal(doc["total"]) == sum((Decimal(str(raw)) for _, raw in subtotals), Decimal(0))


def test_acme_invoice_lines_in_plain_words_and_local_time(pages: dict[str, Any]) -> None:
    """acme's seat purchase at 15:30 UTC reads 10:30 New York time; the overage line names the
    billed stretch in local time; the total is formatted for USD."""
    rows = _invoice(_page(pages, "acme")).rows
    text = {cells[0][0]: [c for c, _ in cells[1:]] for kind, cells in rows if kind == "line"}
    assert ["2", "$149.00", "$203.97"] == text[
        "agents (Elite concurrent licences): 2 more from 10 Nov 2026 10:30, prorated to the end "
        "of the term (20 d 13 h 30 min left of 30 d 1 h)"]
    assert ["3", "$149.00", "$447.00"] == text[
        "agents (Elite concurrent licences): 3 seats over the licence (17 signed in at once "
        "against 14 licensed for longer than the 30 min grace, 12 Nov 2026 10:00 to 12:00)"]
    assert ["2", "$79.00", "$158.00"] == text[
        "support (Essentials concurrent licences): 2 seats over the licence (8 signed in at once "
        "against 6 licensed for 30 min or more in total this period)"]
    (total,) = [cells for kind, cells in rows if kind == "total"]
    assert ("Total due", None) == total[0]


def test_a_switch_reads_as_credit_and_new_term(pages: dict[str, Any]) -> None:
    """initech's switch to annual billing on 20 November: per pool and add-on the credit for the
    unused 10 days and the annual term at its new price, in one group that sums into the total."""
    page = (pages["oct"] / "report-2026-10-initech.html").read_text(encoding="utf-8")
    rows = _invoice(page).rows
    switch = rows[[cells[0][0] for _, cells in rows].index("Billing switch") + 1:]
    lines = [[c for c, _ in cells] for kind, cells in switch[:4]]
    assert [
        ["desk (Essentials concurrent licences): the unused part of the monthly term (10 d left "
         "of 30 d), credited toward the annual price; switched to annual billing on 20 Nov 2026 "
         "00:00", "10", "¥4,500", "-¥15,000"],
        ["desk (Essentials concurrent licences), annual term 20 Nov 2026 to 19 Nov 2027, billed "
         "at the switch at its new price", "10", "¥45,000", "¥450,000"],
        ["Cloud storage: the unused part of the monthly term (10 d left of 30 d), credited toward "
         "the annual price; switched to annual billing on 20 Nov 2026 00:00", "2", "¥1,000", "-¥667"],
        ["Cloud storage, annual term 20 Nov 2026 to 19 Nov 2027, billed at the switch at its new "
         "price", "2", "¥10,000", "¥20,000"],
    ] == lines
    assert [("Billing switch", "454333"), ("Total due", "499408")] == [
        (cells[0][0], cells[-1][1]) for kind, cells in rows if kind in ("subtotal", "total")][2:]


def test_the_page_names_one_zone_and_no_notation(pages: dict[str, Any]) -> None:
    """One time zone with its offsets (the DST change of 1 November said once); no UTC
    timestamps, no c(t)/E(t), 'half-open', 'sustained' or 'BILLED' anywhere on the page."""
    page = _page(pages, "acme")
    assert ("America/New_York, UTC-04:00 (EDT) until 02:00 on 1 Nov 2026, then UTC-05:00 (EST)"
            in page)
    assert "1 Nov 2026 to 30 Nov 2026" in page
    text = re.sub(r"<svg.*?</svg>|<style>.*?</style>|<[^>]+>", " ", page, flags=re.S)
    for word in ("c(t)", "E(t)", "half-open", "sustained", "BILLED", "UTC)"):
        assert word not in text
    assert [] == re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page


def test_the_page_order_invoice_usage_appendix(pages: dict[str, Any]) -> None:
    """Invoice, then usage with four charts (a month and a day per concurrent pool) and the daily
    table, then the appendix with episodes, the user list collapsed and the rule text."""
    page = _page(pages, "acme")
    marks = ['class="invoice"', '<section class="usage">', "<h3>Day by day</h3>",
             f'id="{APPENDIX_ID}"', "times above the licensed quantity", "<details><summary>",
             "How the bill is worked out"]
    positions = [page.index(m) for m in marks]
    assert sorted(positions) == positions
    assert 4 == page.count("<svg")
    assert 4 == page[:page.index(f'id="{APPENDIX_ID}"')].count("<svg")
    assert "<details><summary>agents: who was counted (31 users)</summary>" in page
    assert "continuous: a level is billed when held for one unbroken stretch longer than 30m00s" in page
    # The daily table in local days: the 15:00 UTC peak of 12 November is at 10:00 in New York.
    assert ('<tr><td>Thu 12 Nov</td><td class="num">17</td><td>10:00</td><td class="num">2 h</td>'
            in page)


def test_pages_are_self_contained_and_render_identically(pages: dict[str, Any]) -> None:
    """No scripts or fetched resources, and the same bytes every time."""
    names = sorted(p.name for p in pages["a"].iterdir())
    assert ["report-2026-11-acme.html", "report-2026-11-globex.html",
            "report-2026-11-initech.html", "report-2026-11.html"] == names
    for name in names:
        assert (pages["a"] / name).read_bytes() == (pages["b"] / name).read_bytes()
        page = (pages["a"] / name).read_text(encoding="utf-8")
        for forbidden in ("<script", "<link", "<img", "src=", "url(http", "url(//", "@import"):
            assert forbidden not in page


def test_index_lists_every_bill_with_its_total(pages: dict[str, Any]) -> None:
    """The index links each account's page with its customer, local period and total."""
    index = (pages["a"] / "report-2026-11.html").read_text(encoding="utf-8")
    doc = pages["doc"]["acme"]
    assert (f'<td class="num" data-amount="{doc["total"]}">{money(doc["total"], "USD")}</td>'
            in index)
    assert '<a href="report-2026-11-initech.html">' in index


@pytest.mark.parametrize(("amount", "currency", "exact", "shown"), [
    ("1490.00", "USD", False, "$1,490.00"),
    ("0.00", "EUR", False, "€0.00"),
    ("45000", "JPY", False, "¥45,000"),
    ("-8592", "JPY", False, "-¥8,592"),
    ("7.416667", "EUR", True, "€7.416667"),
    ("149.00", "USD", True, "$149.00"),
])
def test_money_is_formatted_for_its_currency(amount: str, currency: str, exact: bool,
                                             shown: str) -> None:
    """Babel's currency format: symbol, grouping, the minor unit (none for JPY)."""
    assert shown == money(amount, currency, exact=exact)


def _episode(seconds: int) -> dict[str, Any]:
    return {"start": "2026-11-02T15:00:00Z", "end": "2026-11-02T15:10:00Z",
            "duration_seconds": seconds, "peak_excess": 1, "sustained_level": 1,
            "within_grace": False}


def test_cumulative_grace_says_how_much_each_episode_used() -> None:
    """Under a cumulative 30-minute grace the stretches add up: each says its share, the one
    that exhausts the grace says so, and later ones count toward the overage."""
    pool: Any = {"grace": {"seconds": 1800, "mode": "cumulative", "rule": ""},
                 "episodes": [_episode(720), _episode(600), _episode(900), _episode(300)]}
    assert [
        "12 min of 30 min counted toward the grace (12 min so far)",
        "10 min of 30 min counted toward the grace (22 min so far)",
        "8 min of 30 min counted toward the grace; the grace is used up",
        "after the grace: counts toward the overage",
    ] == _episode_outcomes(pool)


def test_continuous_grace_says_free_or_billed() -> None:
    """Under a continuous grace each stretch is free or billed at the level held too long."""
    free = {**_episode(600), "within_grace": True, "sustained_level": 0}
    pool: Any = {"grace": {"seconds": 1800, "mode": "continuous", "rule": ""},
                 "episodes": [free, {**_episode(7200), "sustained_level": 3}]}
    assert ["within the grace: free", "billed: 3 over for longer than the grace"] == \
        _episode_outcomes(pool)


def _oracle(times: list[int], values: list[int], edges: list[int]) -> list[tuple[int, ...]]:
    """Per column [edges[j], edges[j+1]): the step function's value at every microsecond where it
    can change, brute force (first, max, min, last)."""

    def at(t: int) -> int:
        current = 0
        for ti, vi in zip(times, values, strict=True):
            if ti <= t:
                current = vi
        return current

    out = []
    for a, b in itertools.pairwise(edges):
        seen = [at(a)] + [at(t) for t in times if a < t < b]
        out.append((at(a), max(seen), min(seen), at(b - 1)))
    return out


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 30)), max_size=40),
       width=st.integers(1, 12))
def test_columns_keep_each_pixel_columns_extremes(steps: list[tuple[int, int]], width: int) -> None:
    """The downsampling is exact: per column the value at its start, its highest and lowest
    value and the value at its end, as a brute-force walk finds them."""
    ordered = sorted(dict(steps).items())
    times = [t for t, _ in ordered]
    values = [v for _, v in ordered]
    edges = [10 + (j * 380) // width for j in range(width + 1)]
    cols = _columns(np.array(times, np.int64), np.array(values, np.int64), np.array(edges, np.int64))
    got = list(zip(cols.first.tolist(), cols.high.tolist(), cols.low.tolist(), cols.last.tolist(),
                   strict=True))
    assert _oracle(times, values, edges) == got


def test_a_chart_of_many_steps_stays_a_few_commands_per_pixel_column() -> None:
    """200,000 steps draw as a few path commands per column of the 960 drawn."""
    n = 200_000
    t0 = 1_793_505_600_000_000  # 2026-11-01T04:00:00Z in microseconds
    times = t0 + np.arange(n, dtype=np.int64) * 12_960_000  # ~30 days
    values = (np.arange(n) % 7).astype(np.int64)
    series = {"c": np.stack([times, values], axis=1).tolist(), "e": [[t0, 5]]}
    pool: Any = {"episodes": [], "overage_seats": 0, "billable_peak": None, "peak_at": None,
                 "peak": 6}
    svg = _chart(pool, series, datetime(2026, 11, 1, 4, tzinfo=UTC),
                 datetime(2026, 12, 1, 5, tzinfo=UTC), tz=ZoneInfo("America/New_York"),
                 height=190, label="x")
    path = re.search(r'<path d="([^"]+)" fill="none" stroke="#1f5fa8"', svg)
    assert path is not None
    # Every column holds all of 0..6: its high and low are kept (one H and three V), and a
    # column whose first value differs from the last one's end adds one H and one V more.
    d = path.group(1)
    bottom = 190 - _BOTTOM  # the zero line of a 190-unit-high chart
    assert d.startswith(f"M{_LEFT} {bottom}H{_LEFT + 0.5}V")
    assert d.endswith(f"H{_LEFT + _PLOT_W}")
    assert 960 < d.count("H") <= 2 * 960 + 1
    assert 2 * 960 < d.count("V") <= 4 * 960


@pytest.mark.parametrize(("zone", "start", "end", "said"), [
    ("Asia/Tokyo", datetime(2026, 11, 29, 15, tzinfo=UTC), datetime(2026, 12, 30, 15, tzinfo=UTC),
     "Asia/Tokyo, UTC+09:00 (JST)"),
    ("Europe/Berlin", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC),
     "Europe/Berlin, UTC+01:00 (CET) until 02:00 on 29 Mar 2026, then UTC+02:00 (CEST) until "
     "03:00 on 25 Oct 2026, then UTC+01:00 (CET)"),
    ("Australia/Lord_Howe", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC),
     "Australia/Lord_Howe, UTC+11:00 (+11) until 02:00 on 5 Apr 2026, then UTC+10:30 (+1030)"),
])
def test_the_zone_line_names_every_offset_of_the_period(zone: str, start: datetime,
                                                        end: datetime, said: str) -> None:
    """Each change of offset in the period, at its wall time before the change (a half-hour
    shift included)."""
    assert said == _zone(ZoneInfo(zone), start, end)


_POOL: Any = {"pool": "agents", "tier": "elite", "model": "concurrent"}
_NOV = _Page(ZoneInfo("America/New_York"), "USD", datetime(2026, 11, 1, 4, tzinfo=UTC),
             datetime(2026, 12, 1, 5, tzinfo=UTC))


@pytest.mark.parametrize(("line", "words"), [
    ({"kind": "adjustment", "target": "agents", "quantity": 1, "amount": "149.00",
      "unit_price": "149.00", "at": "2026-12-01T05:00:00Z",
      "for_period": {"start": "2026-10-01T04:00:00Z", "end": "2026-11-01T04:00:00Z"},
      "description": "late events for finalized period 2026-10 (3 received after finalization): "
                     "overage 2 -> 3 seats, billed 298.00, now 447.00"},
     "agents (Elite concurrent licences): events that arrived after the bill for 1 Oct 2026 to "
     "31 Oct 2026 was final raised its overage from 2 to 3 seats"),
    ({"kind": "switch_credit", "target": "agents", "quantity": 10, "amount": "-9863.01",
      "unit_price": "1800.00", "at": "2026-11-10T15:30:00Z",
      "description": "unused part of the year, credit to the account balance for the monthly "
                     "plan: 10 seats x 1800.00 x 200d 0h 0m 0s / 365d"},
     "agents (Elite concurrent licences): the unused part of the annual term (200 d left of "
     "365 d), credited to the account balance; switched to monthly billing on 10 Nov 2026 10:30"),
    ({"kind": "recurring", "target": "agents", "quantity": 12, "amount": "1788.00",
      "unit_price": "149.00", "at": "2026-11-01T04:00:00Z",
      "description": "12 seats x 149.00 for the monthly term 2026-11-01 through 2026-11-30"},
     "agents (Elite concurrent licences), monthly term"),
    ({"kind": "recurring", "target": "wfm", "quantity": 10, "amount": "300.00",
      "unit_price": "300.00", "at": "2026-11-01T04:00:00Z",
      "description": "10 seats x 300.00 for the annual term 2026-11-01 through 2027-10-31"},
     "Workforce Management, annual term 1 Nov 2026 to 31 Oct 2027"),
])
def test_lines_in_plain_words(line: dict[str, Any], words: str) -> None:
    """Each kind of line said from its fields: local times, spans in words, no arrows."""
    doc: Any = {"pools": [_POOL], "addons": [{"addon": "wfm"}]}
    assert words == _line_words(doc, line, _NOV)
