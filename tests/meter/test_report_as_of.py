"""`meter report --as-of`: a period still running, rated as of a time, counts the sessions open
then as open up to it (what the live gauges show), instead of closing them at their last event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meter.cli import main
from tests.contracts_toml import account, contracts, pool

CONTRACTS = contracts(account("acme", pools=[pool(
    "agents", tier="premium", model="concurrent", quantity=1, price="10.00",
    overage_price="10.00", grace="30m")]))
EVENTS = [
    {"id": "a", "type": "login", "account": "acme", "user": "ann", "ts": "2026-11-10T10:00:00Z"},
    {"id": "b", "type": "login", "account": "acme", "user": "bob", "ts": "2026-11-10T10:05:00Z"},
]


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, Path]:
    """Two logins with no logout yet, ingested."""
    (tmp_path / "contracts.toml").write_text(CONTRACTS)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    paths = (tmp_path / "meter.db", tmp_path / "contracts.toml")
    assert 0 == main(["ingest", str(tmp_path / "events.jsonl"), "--db", str(paths[0]),
                      "--contracts", str(paths[1]), "--as-of", "2026-12-02T00:00:00Z"])
    return paths


def _pool(db: tuple[Path, Path], capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    capsys.readouterr()
    assert 0 == main(["report", "--db", str(db[0]), "--contracts", str(db[1]),
                      "--period", "2026-11", *argv])
    doc = json.loads(capsys.readouterr().out)["accounts"][0]
    return {"as_of": doc.get("as_of"), **{k: doc["pools"][0][k] for k in (
        "peak", "peak_at", "billable_peak", "overage_seats")}}


def test_as_of_counts_open_sessions_up_to_it(db: tuple[Path, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """At 11:00 both sessions are open: peak 2 from 10:05, one seat over for 55 minutes (past
    the 30-minute grace: billable, and level 2 of c(t) held longer than it). At 10:30 no level
    has held longer than the grace (level 1 exactly 30:00, which is free). Without --as-of the
    horizon is the period's end plus the session timeout, where both closed at their logins
    long before: nobody counted."""
    assert {"as_of": "2026-11-10T11:00:00Z", "peak": 2, "peak_at": "2026-11-10T10:05:00Z",
            "billable_peak": 2, "overage_seats": 1} == _pool(
        db, capsys, "--as-of", "2026-11-10T11:00:00Z")
    assert {"as_of": "2026-11-10T10:30:00Z", "peak": 2, "peak_at": "2026-11-10T10:05:00Z",
            "billable_peak": 0, "overage_seats": 0} == _pool(
        db, capsys, "--as-of", "2026-11-10T10:30:00Z")
    assert {"as_of": None, "peak": 0, "peak_at": None, "billable_peak": 0,
            "overage_seats": 0} == _pool(db, capsys)


def test_as_of_past_the_period_and_its_timeout_changes_nothing(
        db: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Once the period and its session timeout are over the bill is the same with or without
    --as-of, and says no `as_of`."""
    assert _pool(db, capsys) == _pool(db, capsys, "--as-of", "2026-12-05T00:00:00Z")


def test_as_of_and_finalize_do_not_go_together(db: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A finalized bill has one horizon: asking for both is a usage error, one line, exit 2."""
    capsys.readouterr()
    assert 2 == main(["report", "--db", str(db[0]), "--contracts", str(db[1]), "--period",
                      "2026-11", "--finalize", "--as-of", "now"])
    err = capsys.readouterr().err
    assert err.startswith("meter report: --as-of: a finalized bill is rated to the period's end")
    assert 1 == len(err.splitlines())
