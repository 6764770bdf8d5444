"""`meter report` and `meter verify` on the sample month: keys, values, formats, reproducibility."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing, redirect_stdout
from decimal import Decimal
from pathlib import Path

import pytest

from meter.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_sessions"
CONTRACTS = SAMPLES / "contracts.toml"


def run_cli(*argv: str) -> tuple[int, str]:
    """Run `meter ARGV` in-process; returns (exit code, stdout)."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def sample_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed sample month, or the deterministic generator's output where not committed."""
    committed = SAMPLES / "events-2026-11.jsonl"
    if committed.is_file():
        return committed
    out = tmp_path_factory.mktemp("sample") / "events-2026-11.jsonl"
    subprocess.run([sys.executable, str(SAMPLES / "generate.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory: pytest.TempPathFactory, sample_events: Path) -> Path:
    """A database holding the sample month, loaded with `meter ingest` (read-only for tests)."""
    db = tmp_path_factory.mktemp("db") / "meter.db"
    code, _ = run_cli("ingest", str(sample_events), "--db", str(db), "--contracts", str(CONTRACTS),
                      "--as-of", "2026-12-02T00:00:00Z")  # as sample_sessions/README.md
    assert 0 == code
    return db


@pytest.fixture
def db_copy(sample_db: Path, tmp_path: Path) -> Path:
    """A private copy of the sample database that a test may change."""
    copy = tmp_path / "meter.db"
    shutil.copy(sample_db, copy)
    return copy


def report(db: Path, *extra: str, period: str = "2026-11") -> dict:  # type: ignore[type-arg]
    """`meter report` as JSON on stdout, parsed."""
    code, out = run_cli("report", "--db", str(db), "--contracts", str(CONTRACTS), "--period",
                        period, *extra)
    assert 0 == code
    return json.loads(out)  # type: ignore[no-any-return]


def by_id(items: list[dict], key: str) -> dict:  # type: ignore[type-arg]
    """Index a list of JSON objects by one key."""
    return {item[key]: item for item in items}


def test_report_json_has_the_design_keys(sample_db: Path) -> None:
    """Every key DESIGN section 3 fixes is there, plus the hash, the version and right-sizing."""
    doc = report(sample_db)
    assert {"period", "accounts", "rating_version", "input_hash"} == set(doc)
    assert {"month", "start", "end"} == set(doc["period"])
    assert ["acme", "globex", "initech"] == [a["account"] for a in doc["accounts"]]
    for account in doc["accounts"]:
        assert {"account", "pools", "addons", "named", "charges", "refused", "total",
                "input_hash", "right_sizing", "period", "currency", "timezone", "inputs",
                "finalized", "unresolved_events", "local_period", "invoice"} == set(account)
        for pool in account["pools"]:
            assert {"pool", "model", "peak", "peak_at", "billable_peak", "overage_seats",
                    "overage_amount", "episodes", "usage_by_user", "daily"} <= set(pool)
            for episode in pool["episodes"]:
                assert {"start", "end", "duration_seconds", "peak_excess", "sustained_level",
                        "within_grace"} == set(episode)
        for addon in account["addons"]:
            assert {"addon", "required", "purchased", "shortfall"} == set(addon)
        for named in account["named"]:
            assert {"pool", "licensed", "assigned", "active_users", "unlicensed_users",
                    "refused_assigns"} <= set(named)
        for charge in account["charges"]:
            assert {"kind", "amount", "target", "description"} <= set(charge)
        for refused in account["refused"]:
            assert "reason" in refused


def test_acme_bill_has_the_planted_overage_and_the_seat_changes(sample_db: Path) -> None:
    """acme: 3 agents seats sustained 2 h past grace, 2 support seats by cumulative grace."""
    acme = by_id(report(sample_db, "--account", "acme")["accounts"], "account")["acme"]
    assert {"start": "2026-11-01T04:00:00Z", "end": "2026-12-01T05:00:00Z"} == acme["period"]
    pools = by_id(acme["pools"], "pool")
    agents, support = pools["agents"], pools["support"]
    assert (17, "2026-11-12T15:00:00Z", 17, 3, "447.00") == (
        agents["peak"], agents["peak_at"], agents["billable_peak"], agents["overage_seats"],
        agents["overage_amount"])
    billed = [e for e in agents["episodes"] if not e["within_grace"]]
    assert [("2026-11-12T15:00:00Z", "2026-11-12T17:00:00Z", 7200, 3, 3)] == [
        (e["start"], e["end"], e["duration_seconds"], e["peak_excess"], e["sustained_level"])
        for e in billed]
    # The shift-change spikes are all inside the grace.
    assert all(e["duration_seconds"] <= 1800 for e in agents["episodes"] if e["within_grace"])
    assert len(agents["episodes"]) > 10
    assert (8, 2, "158.00") == (support["billable_peak"], support["overage_seats"],
                                support["overage_amount"])
    # The subscription (price x quantity of every pool and add-on), then the changes.
    assert [("recurring", "agents", "1788.00"), ("recurring", "support", "414.00"),
            ("recurring", "wfm", "100.00"), ("recurring", "qm", "120.00"),
            ("recurring", "virtual_agent", "500.00"), ("recurring", "toll_free_numbers", "12.00"),
            ("seat_add", "agents", "203.97"), ("seat_add", "wfm", "24.34"),
            ("overage", "agents", "447.00"), ("overage", "support", "158.00")] == [
        (c["kind"], c["target"], c["amount"]) for c in acme["charges"]]
    assert "3767.31" == acme["total"]
    assert [] == acme["refused"]
    addons = by_id(acme["addons"], "addon")
    # 32 declared users (roster) - 14 Elite concurrent licences = 18 wfm and qm needed.
    assert (18, 6, 12) == (addons["wfm"]["required"], addons["wfm"]["purchased"],
                           addons["wfm"]["shortfall"])
    assert (18, 6, 12) == (addons["qm"]["required"], addons["qm"]["purchased"],
                           addons["qm"]["shortfall"])
    sizing = by_id(acme["right_sizing"], "pool")
    assert (8, "572.00", "552.00", "20.00") == (
        sizing["support"]["recommended"], sizing["support"]["current_cost"],
        sizing["support"]["recommended_cost"], sizing["support"]["saving"])


def test_globex_and_initech_periods_follow_their_anchors(sample_db: Path) -> None:
    """--period 2026-11 is the period starting in November: globex on the 15th (Berlin),
    initech on the 30th (Tokyo, anchor 31st clamped); refusals and JPY amounts show."""
    accounts = by_id(report(sample_db)["accounts"], "account")
    globex, initech = accounts["globex"], accounts["initech"]
    assert {"start": "2026-11-14T23:00:00Z", "end": "2026-12-14T23:00:00Z"} == globex["period"]
    assert {"start": "2026-11-29T15:00:00Z", "end": "2026-12-30T15:00:00Z"} == initech["period"]
    assert [("order", "agents", 20)] == [(r["kind"], r["target"], r["quantity"])
                                         for r in globex["refused"]]
    assert "renewal window" in globex["refused"][0]["reason"]
    assert "0.00" == globex["total"]
    leads = by_id(globex["named"], "pool")["leads"]
    assert (5, 5, 1) == (leads["licensed"], leads["assigned"], leads["unlicensed_users"])
    assert "0" == initech["total"]  # JPY has no minor unit
    october = by_id(report(sample_db, period="2026-10")["accounts"], "account")
    # Monthly -> annual on 20 November: the month's recurring lines and seat add, the credit
    # for its unused part, and the annual term at the switch's prices.
    assert [("recurring", "desk", "36000"), ("recurring", "cloud_storage", "2000"),
            ("seat_add", "desk", "7075"), ("switch_credit", "desk", "-15000"),
            ("switch_credit", "cloud_storage", "-667"), ("recurring", "desk", "450000"),
            ("recurring", "cloud_storage", "20000")] == [
        (c["kind"], c["target"], c["amount"]) for c in october["initech"]["charges"]]
    assert "499408" == october["initech"]["total"]
    reasons = [r["reason"] for r in october["globex"]["refused"] if r["kind"] == "order"]
    assert 2 == len(reasons)
    assert ["assign"] == [r["kind"] for r in october["globex"]["refused"] if r["kind"] != "order"]
    assert "whole packs of 5" in reasons[0]
    assert "cannot be removed during the term" in reasons[1]


def test_csv_totals_equal_json_totals(sample_db: Path, tmp_path: Path) -> None:
    """Summing the charges CSV per account gives each JSON `total` exactly."""
    doc = report(sample_db)
    code, _ = run_cli("report", "--db", str(sample_db), "--contracts", str(CONTRACTS),
                      "--period", "2026-11", "--format", "csv", "--out", str(tmp_path))
    assert 0 == code
    sums: dict[str, Decimal] = {}
    with (tmp_path / "charges-2026-11.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            sums[row["account"]] = sums.get(row["account"], Decimal(0)) + Decimal(row["amount"])
    for account in doc["accounts"]:
        assert Decimal(account["total"]) == sums.get(account["account"], Decimal(0))
    with (tmp_path / "pools-2026-11.csv").open(newline="") as f:
        pools = {(r["account"], r["pool"]): r for r in csv.DictReader(f)}
    assert ("3", "447.00") == (pools["acme", "agents"]["overage_seats"],
                               pools["acme", "agents"]["overage_amount"])
    assert 5 == len(pools)


def test_csv_to_stdout_without_out(sample_db: Path) -> None:
    """Without --out, the charges CSV goes to stdout."""
    code, out = run_cli("report", "--db", str(sample_db), "--contracts", str(CONTRACTS),
                        "--period", "2026-11", "--account", "acme", "--format", "csv")
    assert 0 == code
    rows = list(csv.DictReader(io.StringIO(out)))
    assert ["recurring"] * 6 + ["seat_add", "seat_add", "overage", "overage"] == [
        r["kind"] for r in rows]


def test_html_is_self_contained_with_charts_and_renders_identically(sample_db: Path,
                                                                     tmp_path: Path) -> None:
    """One page per account and an index; inline SVG charts, no scripts, no fetched resources;
    rendering twice gives the same bytes."""
    args = ("report", "--db", str(sample_db), "--contracts", str(CONTRACTS), "--period",
            "2026-11", "--format", "html")
    assert 0 == run_cli(*args, "--out", str(tmp_path / "a"))[0]
    assert 0 == run_cli(*args, "--out", str(tmp_path / "b"))[0]
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert ["report-2026-11-acme.html", "report-2026-11-globex.html",
            "report-2026-11-initech.html", "report-2026-11.html"] == names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    page = (tmp_path / "a" / "report-2026-11-acme.html").read_text()
    for forbidden in ("<script", "<link", "<img", "src=", "url(http", "url(//", "@import"):
        assert forbidden not in page
    # Two concurrent pools: a month chart and a zoomed day each.
    assert 4 == page.count("<svg")
    assert "excess past grace (billed)" in page
    assert "excess within grace (free)" in page
    assert "continuous: a level is billed when held for one unbroken stretch longer than 30m00s" in page
    assert "3767.31" in page  # the bill's total, as the JSON states it


def test_html_needs_an_out_directory(sample_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HTML is one file per account: without --out it is a usage error (exit 2)."""
    code = main(["report", "--db", str(sample_db), "--contracts", str(CONTRACTS), "--period",
                 "2026-11", "--format", "html"])
    assert 2 == code
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (("--period", "2026-13"), "expected YYYY-MM"),
    (("--period", "November"), "expected YYYY-MM"),
    (("--period", "2026-11", "--account", "nobody"), "no account 'nobody'"),
])
def test_bad_report_arguments_exit_2(sample_db: Path, capsys: pytest.CaptureFixture[str],
                                     argv: tuple[str, ...], message: str) -> None:
    """Bad usage is one line on stderr and exit code 2."""
    code = main(["report", "--db", str(sample_db), "--contracts", str(CONTRACTS), *argv])
    assert 2 == code
    err = capsys.readouterr().err
    assert message in err
    assert 1 == len(err.strip().splitlines())


def test_missing_database_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database path that does not exist is not created: exit 2 naming it."""
    code = main(["report", "--db", str(tmp_path / "nope.db"), "--contracts", str(CONTRACTS),
                 "--period", "2026-11"])
    assert 2 == code
    assert "nope.db: no such database" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


def test_json_rerender_is_byte_identical_and_to_out(sample_db: Path, tmp_path: Path) -> None:
    """The same inputs give the same bytes, on stdout and in --out."""
    args = ("report", "--db", str(sample_db), "--contracts", str(CONTRACTS), "--period", "2026-11")
    first = run_cli(*args)[1]
    assert first == run_cli(*args)[1]
    assert 0 == run_cli(*args, "--out", str(tmp_path))[0]
    assert first == (tmp_path / "report-2026-11.json").read_text()


def test_verify_matches_then_detects_a_tampered_event(db_copy: Path, tmp_path: Path) -> None:
    """verify recomputes each account's input hash: 0 on match, 1 after an UPDATE of a row."""
    path = tmp_path / "report.json"
    assert 0 == run_cli("report", "--db", str(db_copy), "--contracts", str(CONTRACTS),
                        "--period", "2026-11", "--out", str(tmp_path))[0]
    (tmp_path / "report-2026-11.json").rename(path)
    code, out = run_cli("verify", str(path), "--db", str(db_copy), "--contracts", str(CONTRACTS))
    assert (0, "match") == (code, out.strip().splitlines()[-1])
    with closing(sqlite3.connect(db_copy)) as conn, conn:
        conn.execute("UPDATE events SET user = 'someone-else' WHERE seq = "
                     "(SELECT min(seq) FROM events WHERE account = 'acme' AND type = 'login' "
                     "AND ts_us >= 1793577600000000)")  # 2026-11-02, inside acme's window
    code, out = run_cli("verify", str(path), "--db", str(db_copy), "--contracts", str(CONTRACTS))
    lines = out.strip().splitlines()
    assert (1, "mismatch") == (code, lines[-1])
    assert lines[0].startswith("acme: MISMATCH")
    assert lines[1].startswith("globex: match")


def test_verify_detects_a_changed_contract(sample_db: Path, tmp_path: Path) -> None:
    """The account's contract is an input: a changed price is a mismatch for that account only."""
    code, out = run_cli("report", "--db", str(sample_db), "--contracts", str(CONTRACTS),
                        "--period", "2026-11")
    path = tmp_path / "report.json"
    path.write_text(out)
    changed = tmp_path / "contracts.toml"
    changed.write_text(CONTRACTS.read_text().replace('price = "89.00"', 'price = "88.00"'))
    code, out = run_cli("verify", str(path), "--db", str(sample_db), "--contracts", str(changed))
    assert 1 == code
    assert ["acme: match", "globex: MISMATCH", "initech: match"] == [
        " ".join(line.split()[:2]) for line in out.strip().splitlines()[:3]]


def test_verify_of_something_that_is_not_a_report_exits_2(sample_db: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not a report is bad input."""
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert 2 == main(["verify", str(bad), "--db", str(sample_db), "--contracts", str(CONTRACTS)])
    assert "not a report" in capsys.readouterr().err


async def test_worker_processes_give_the_same_report(sample_db: Path) -> None:
    """Spreading the accounts over worker processes changes nothing in the report."""
    from meter.report import make_report, render_json
    from meter.store import open_store
    from rating.contracts import parse_contracts

    text = CONTRACTS.read_text()
    async with await open_store(sample_db) as store:
        one = await make_report(store, parse_contracts(text), text, "2026-11", workers=1)
        two = await make_report(store, parse_contracts(text), text, "2026-11", workers=2)
    assert render_json(one) == render_json(two)
    assert one.accounts[0].charts == two.accounts[0].charts
