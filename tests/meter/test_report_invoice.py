"""`meter report` as an invoice on the sample month: the period chosen by --on or --period and
named by local dates, the invoice block, who was counted, daily peaks, the CSV files beside
each other, and several formats from one run."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meter.cli import main
from meter.report import make_report, render_json
from meter.report.command import FORMATS, parse_formats
from meter.report.compose import canonical
from meter.store import FinalizedReport, open_store
from rating.contracts import parse_contracts
from rating.usage import to_us
from tests.meter import test_report as base
from tests.meter.test_report import CONTRACTS, by_id, report, run_cli

# The sample database fixtures of test_report.py (module-scoped, so built once per module).
sample_events = base.sample_events
sample_db = base.sample_db
db_copy = base.db_copy

USER_KEYS = {"user", "sessions", "seconds", "first_login", "last_seen", "inferred_closes",
             "billed_window"}
DAY_KEYS = {"date", "peak", "peak_at", "seconds_at_peak"}


def report_on(db: Path, day: str) -> dict:  # type: ignore[type-arg]
    """`meter report --on DAY` as JSON on stdout, parsed."""
    code, out = run_cli("report", "--db", str(db), "--contracts", str(CONTRACTS), "--on", day)
    assert 0 == code
    return json.loads(out)  # type: ignore[no-any-return]


def local_days(doc: dict) -> list[str]:  # type: ignore[type-arg]
    first = date.fromisoformat(doc["local_period"]["first_day"])
    last = date.fromisoformat(doc["local_period"]["last_day"])
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def test_on_picks_each_accounts_period_holding_the_date(sample_db: Path) -> None:
    """--on 2026-11-20: acme's November, globex's period from the 15th, initech's from
    31 October (anchored on the 31st: its November usage); each named by local dates."""
    doc = report_on(sample_db, "2026-11-20")
    assert "2026-11-20" == doc["period"]["month"]
    got = {a["account"]: (a["local_period"]["label"], a["local_period"]["first_day"],
                          a["local_period"]["last_day"], a["period"]["start"])
           for a in doc["accounts"]}
    assert {
        "acme": ("2026-11", "2026-11-01", "2026-11-30", "2026-11-01T04:00:00Z"),
        "globex": ("2026-11", "2026-11-15", "2026-12-14", "2026-11-14T23:00:00Z"),
        "initech": ("2026-10", "2026-10-31", "2026-11-29", "2026-10-30T15:00:00Z"),
    } == got


def test_on_rates_what_period_names_for_the_month_the_period_starts(sample_db: Path) -> None:
    """The account parts of --on equal those of --period for the month each period starts in."""
    on = by_id(report_on(sample_db, "2026-11-29")["accounts"], "account")
    assert on["initech"] == by_id(report(sample_db, period="2026-10")["accounts"],
                                  "account")["initech"]
    november = by_id(report(sample_db)["accounts"], "account")
    assert (on["acme"], on["globex"]) == (november["acme"], november["globex"])


def test_period_local_dates_and_offsets(sample_db: Path) -> None:
    """acme's November starts on EDT and ends on EST (DST ends 1 November)."""
    acme = by_id(report(sample_db)["accounts"], "account")["acme"]
    assert {"label": "2026-11", "first_day": "2026-11-01", "last_day": "2026-11-30",
            "utc_offset_start": "-0400", "utc_offset_end": "-0500"} == acme["local_period"]


@pytest.mark.parametrize(("argv", "message"), [
    (("--on", "2026-11-31"), "--on: expected a date YYYY-MM-DD, got '2026-11-31'"),
    (("--on", "20261120"), "--on: expected a date YYYY-MM-DD, got '20261120'"),
    (("--period", "2026-11", "--format", "json,xml"),
     "--format: unknown format 'xml' (one or more of json, csv, html"),
    (("--period", "2026-11", "--format", "json,csv"),
     "--format: several formats need --out DIR (stdout takes one)"),
])
def test_bad_choice_is_one_line_and_exit_2(sample_db: Path, capsys: pytest.CaptureFixture[str],
                                           argv: tuple[str, ...], message: str) -> None:
    """A bad --on or --format is one stderr line and exit 2, before anything is rated."""
    code = main(["report", "--db", str(sample_db), "--contracts", str(CONTRACTS), *argv])
    assert 2 == code
    err = capsys.readouterr().err
    assert message in err
    assert 1 == len(err.strip().splitlines())


def test_period_and_on_exclude_each_other(sample_db: Path) -> None:
    """--period and --on together (or neither) is bad usage: exit 2."""
    base = ["report", "--db", str(sample_db), "--contracts", str(CONTRACTS)]
    for extra in (["--period", "2026-11", "--on", "2026-11-20"], []):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert 2 == exc.value.code


def test_invoice_number_customer_and_a_draft_has_no_issue_time(sample_db: Path) -> None:
    """The invoice number comes from account and period; the customer from the contracts; a
    draft (not finalized, no --as-of) is not issued, so its JSON is the same on every run."""
    doc = report(sample_db)
    invoices = {a["account"]: a["invoice"] for a in doc["accounts"]}
    assert ["ACME-2026-11", "GLOBEX-2026-11", "INITECH-2026-11"] == [
        invoices[a]["number"] for a in ("acme", "globex", "initech")]
    assert {None} == {i["issued_at"] for i in invoices.values()}
    assert {"id": "acme", "name": "Acme Contact Centers, Inc.",
            "bill_to": {"name": "Acme Contact Centers, Inc. - Accounts Payable",
                        "address": ["350 Fifth Avenue, Suite 4100", "New York, NY 10118",
                                    "United States"],
                        "email": "ap@acme.example", "tax_id": "US 12-3456789"}} == (
        invoices["acme"]["customer"])
    assert None is invoices["initech"]["customer"]["bill_to"]["tax_id"]


def test_invoice_issued_at_is_the_as_of_time(sample_db: Path) -> None:
    """--as-of: the invoice is issued as of that time."""
    doc = report(sample_db, "--account", "acme", "--as-of", "2026-11-20T12:00:00Z")
    assert "2026-11-20T12:00:00Z" == doc["accounts"][0]["invoice"]["issued_at"]


def test_a_finalized_invoice_keeps_its_issue_time_and_verifies(db_copy: Path,
                                                               tmp_path: Path) -> None:
    """Finalizing issues the invoice at the finalization time; it is stored with the report,
    so every later render is byte-identical and `meter verify` matches."""
    text = CONTRACTS.read_text(encoding="utf-8")
    contracts = parse_contracts(text)
    when = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)

    async def build(**kwargs: object) -> str:
        async with await open_store(db_copy) as store:
            return render_json(await make_report(store, contracts, text, "2026-11",
                                                 accounts=["acme"], workers=1, **kwargs))  # type: ignore[arg-type]

    first = asyncio.run(build(finalize=True, now=when))
    doc = json.loads(first)
    assert "2026-12-03T09:30:00Z" == doc["accounts"][0]["invoice"]["issued_at"]
    assert first == asyncio.run(build())
    path = tmp_path / "report.json"
    path.write_text(first, encoding="utf-8")
    assert 0 == main(["verify", str(path), "--db", str(db_copy), "--contracts", str(CONTRACTS)])


def test_every_pool_of_every_sample_account_has_the_keys(sample_db: Path) -> None:
    """usage_by_user[] and daily[] with every key, for every pool; one daily row per local day
    of the period; as many users as the pool counted."""
    for period in ("2026-10", "2026-11"):
        for account in report(sample_db, period=period)["accounts"]:
            for pool in account["pools"]:
                assert pool["users"] == len(pool["usage_by_user"]), (account["account"], pool)
                for user in pool["usage_by_user"]:
                    assert USER_KEYS == set(user)
                assert local_days(account) == [d["date"] for d in pool["daily"]]
                for day in pool["daily"]:
                    assert DAY_KEYS == set(day)
                assert pool["peak"] == max(d["peak"] for d in pool["daily"])


def test_who_was_counted_in_acmes_billed_window(sample_db: Path) -> None:
    """acme agents: 31 users, the 17 at the billed 2-hour peak on 12 November show a billed
    window; the daily row of that day has the peak, first reached at 15:00 UTC, held 2 hours."""
    agents = by_id(by_id(report(sample_db, "--account", "acme")["accounts"],
                         "account")["acme"]["pools"], "pool")["agents"]
    billed = [u for u in agents["usage_by_user"] if u["billed_window"]]
    assert (31, 17) == (len(agents["usage_by_user"]), len(billed))
    day = by_id(agents["daily"], "date")["2026-11-12"]
    assert (17, "2026-11-12T15:00:00Z", 7200) == (day["peak"], day["peak_at"],
                                                  day["seconds_at_peak"])
    names = [u["user"] for u in agents["usage_by_user"]]
    assert sorted(names) == names
    for user in agents["usage_by_user"]:
        assert "2026-11-01T04:00:00Z" <= user["first_login"] <= user["last_seen"]
        assert user["last_seen"] <= "2026-12-01T05:00:00Z"
        assert 0 <= user["seconds"] <= 30 * 86400 + 3600


def test_csv_files_agree_with_the_json(sample_db: Path, tmp_path: Path) -> None:
    """charges CSV sums to each JSON total; users and daily CSV carry the JSON rows; every
    row names the account's period by local dates."""
    doc = report(sample_db)
    code, _ = run_cli("report", "--db", str(sample_db), "--contracts", str(CONTRACTS),
                      "--period", "2026-11", "--format", "csv", "--out", str(tmp_path))
    assert 0 == code
    assert sorted(["charges-2026-11.csv", "pools-2026-11.csv", "users-2026-11.csv",
                   "daily-2026-11.csv"]) == sorted(p.name for p in tmp_path.iterdir())

    def rows(name: str) -> list[dict[str, str]]:
        with (tmp_path / f"{name}-2026-11.csv").open(newline="") as f:
            return list(csv.DictReader(f))

    accounts = by_id(doc["accounts"], "account")
    totals: dict[str, Decimal] = {}
    for row in rows("charges"):
        totals[row["account"]] = totals.get(row["account"], Decimal(0)) + Decimal(row["amount"])
        local = accounts[row["account"]]["local_period"]
        assert (local["first_day"], local["last_day"]) == (row["period_first_day"],
                                                           row["period_last_day"])
        assert accounts[row["account"]]["invoice"]["number"] == row["invoice"]
    for account in doc["accounts"]:
        assert Decimal(account["total"]) == totals.get(account["account"], Decimal(0))
    assert [(a["account"], p["pool"], u["user"], str(u["seconds"]), str(u["sessions"]),
             "true" if u["billed_window"] else "false")
            for a in doc["accounts"] for p in a["pools"] for u in p["usage_by_user"]] == [
        (r["account"], r["pool"], r["user"], r["seconds"], r["sessions"], r["billed_window"])
        for r in rows("users")]
    assert [(a["account"], p["pool"], d["date"], str(d["peak"]), d["peak_at"] or "",
             str(d["seconds_at_peak"]))
            for a in doc["accounts"] for p in a["pools"] for d in p["daily"]] == [
        (r["account"], r["pool"], r["date"], r["peak"], r["peak_at"], r["seconds_at_peak"])
        for r in rows("daily")]


def test_several_formats_from_one_run(sample_db: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--format json,csv,html writes every file of each format; the JSON is the same bytes as
    a JSON-only run's; no progress bar when stderr is not a terminal."""
    args = ("report", "--db", str(sample_db), "--contracts", str(CONTRACTS), "--period",
            "2026-11")
    assert 0 == main([*args, "--format", "json,csv,html", "--out", str(tmp_path / "all")])
    captured = capsys.readouterr()
    assert "" == captured.err
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert sorted(["report-2026-11.json", "charges-2026-11.csv", "pools-2026-11.csv",
                   "users-2026-11.csv", "daily-2026-11.csv", "report-2026-11.html",
                   "report-2026-11-acme.html", "report-2026-11-globex.html",
                   "report-2026-11-initech.html"]) == names
    assert sorted(str(tmp_path / "all" / n) for n in names) == sorted(
        captured.out.strip().splitlines())
    assert 0 == main([*args, "--format", "json", "--out", str(tmp_path / "one")])
    assert ((tmp_path / "one" / "report-2026-11.json").read_bytes()
            == (tmp_path / "all" / "report-2026-11.json").read_bytes())


def test_format_list_parsing() -> None:
    """A comma list, each format once, in the order given; every registered format parses."""
    assert ["csv", "json"] == parse_formats("csv, json,csv")
    assert list(FORMATS) == parse_formats(",".join(FORMATS))


def test_a_report_finalized_before_invoices_gets_them_on_reading(db_copy: Path) -> None:
    """A period finalized by an older meter (no invoice, no local dates, no usage lists) is
    rendered with them filled in, issued at its finalization time; the stored row is not
    rewritten, so every render is the same."""
    text = CONTRACTS.read_text(encoding="utf-8")
    contracts = parse_contracts(text)

    async def run() -> tuple[str, str, str]:
        async with await open_store(db_copy) as store:
            draft = await make_report(store, contracts, text, "2026-11", accounts=["globex"],
                                      workers=1)
            old: dict[str, Any] = dict(draft.accounts[0].doc)
            for key in ("invoice", "local_period"):
                del old[key]
            old["pools"] = [{k: v for k, v in p.items() if k not in ("usage_by_user", "daily")}
                            for p in old["pools"]]
            old["finalized"] = True
            period = old["period"]
            stored = FinalizedReport(
                account="globex", period_start_us=to_us(datetime.fromisoformat(period["start"])),
                period_end_us=to_us(datetime.fromisoformat(period["end"])),
                report=canonical(old), charts="{}", input_hash=old["input_hash"],
                cutoff_seq=await store.last_seq(),
                finalized_us=to_us(datetime(2026, 12, 15, 8, 0, tzinfo=UTC)))
            assert await store.add_finalized(stored)
            again = [render_json(await make_report(store, contracts, text, "2026-11",
                                                   accounts=["globex"], workers=1))
                     for _ in range(2)]
            row = await store.finalized("globex", stored.period_start_us)
            assert row is not None
            return again[0], again[1], row.report

    first, second, row = asyncio.run(run())
    assert first == second
    assert "invoice" not in json.loads(row)
    globex = json.loads(first)["accounts"][0]
    assert {"number": "GLOBEX-2026-11", "issued_at": "2026-12-15T08:00:00Z",
            "customer": {"id": "globex", "name": "Globex GmbH",
                         "bill_to": {"name": "Globex GmbH, Buchhaltung",
                                     "address": ["Friedrichstrasse 68", "10117 Berlin",
                                                 "Germany"],
                                     "email": "rechnungen@globex.example",
                                     "tax_id": "DE123456789"}}} == globex["invoice"]
    assert ("2026-11-15", "2026-12-14") == (globex["local_period"]["first_day"],
                                            globex["local_period"]["last_day"])
    assert [([], [])] * len(globex["pools"]) == [(p["usage_by_user"], p["daily"])
                                                 for p in globex["pools"]]


def test_progress_bar_on_a_terminal(sample_db: Path, tmp_path: Path) -> None:
    """On a terminal, stderr shows a progress bar with its total (3 accounts + 1 format)."""
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a fresh pty has 0, and tqdm then draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with (tmp_path / "out.json").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meter", "report", "--db", str(sample_db), "--contracts",
             str(CONTRACTS), "--period", "2026-11"], stdin=subprocess.DEVNULL, stdout=out,
            stderr=follower)
        os.close(follower)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the child has exited and closed it
            while chunk := os.read(leader, 4096):
                shown += chunk
        os.close(leader)
        assert 0 == proc.wait(timeout=300)
    assert b"/4 [" in shown
    assert ["acme", "globex", "initech"] == [
        a["account"] for a in json.loads((tmp_path / "out.json").read_text())["accounts"]]


@pytest.mark.parametrize(("workers", "ticks"), [(1, [1, 1, 1]), (2, [1, 2])])
def test_progress_counts_every_account_rated(sample_db: Path, workers: int,
                                             ticks: list[int]) -> None:
    """make_report's progress hears of each account once: one by one, or per worker shard."""
    text = CONTRACTS.read_text(encoding="utf-8")
    heard: list[int] = []

    async def run() -> None:
        async with await open_store(sample_db) as store:
            await make_report(store, parse_contracts(text), text, "2026-11", workers=workers,
                              charts=False, progress=heard.append)

    asyncio.run(run())
    assert ticks == sorted(heard)
