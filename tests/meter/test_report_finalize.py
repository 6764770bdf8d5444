"""`meter report --finalize` refuses a period that has not ended plus `--finalize-after` (default
1h) unless `--force`: one line on stderr, exit 2, nothing frozen."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.cli import main
from tests.contracts_toml import account, contracts, pool

CONTRACTS = contracts(
    account("acme", pools=[pool("agents", tier="premium", model="concurrent", quantity=2,
                                price="100.00", overage_price="150.00")]),
    account("tokyo", timezone="Asia/Tokyo", currency="JPY", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=2, price="100",
             overage_price="150")]),
)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    contracts = tmp_path / "contracts.toml"
    contracts.write_text(CONTRACTS)
    events = tmp_path / "e.jsonl"
    events.write_text('{"id": "1", "type": "login", "account": "acme", "user": "u", '
                      '"pool": "agents", "ts": "2026-01-05T10:00:00Z"}\n')
    db = tmp_path / "meter.db"
    assert 0 == main(["ingest", str(events), "--db", str(db), "--contracts", str(contracts)])
    return db, contracts


def _report(files: tuple[Path, Path], *argv: str) -> tuple[int, str, str]:
    db, contracts = files
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["report", "--db", str(db), "--contracts", str(contracts), *argv])
    return code, out.getvalue(), err.getvalue()


def _month(delta: int) -> str:
    """The month `delta` months from the current one (real clock, as the CLI reads it)."""
    today = datetime.now(UTC)
    index = today.year * 12 + today.month - 1 + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def test_report_finalize_refuses_a_period_that_has_not_ended(files: tuple[Path, Path]) -> None:
    """The current month has not ended: --finalize is a usage error, one line, exit 2, and
    nothing is frozen."""
    month = _month(0)
    code, out, err = _report(files, "--period", month, "--account", "acme", "--finalize")
    assert (2, "") == (code, out)
    assert 1 == len(err.splitlines())
    assert err.startswith(f"meter report: --finalize: acme {month} ends ")
    assert err.rstrip().endswith("(its end plus --finalize-after 1h) needs --force")
    code, out, _ = _report(files, "--period", month, "--account", "acme")
    assert (0, False) == (code, '"finalized": true' in out)


def test_report_finalize_refuses_before_end_plus_finalize_after(files: tuple[Path, Path]) -> None:
    """Last month ended, but not 1000 days ago: with --finalize-after 1000d it is refused."""
    code, _, err = _report(files, "--period", _month(-1), "--finalize",
                           "--finalize-after", "24000h")
    assert 2 == code
    assert "needs --force" in err


def test_report_finalize_force_freezes_an_open_period(files: tuple[Path, Path]) -> None:
    """--force finalizes anyway and says so."""
    month = _month(0)
    code, out, err = _report(files, "--period", month, "--account", "acme", "--finalize",
                             "--force")
    assert (0, f"meter report: no events stored for acme in {month} (the bill may still be "
               "right: a named pool bills by quantity)\n"
               f"finalized acme {month}\n") == (code, err)
    assert '"finalized": true' in out


def test_report_finalize_takes_an_ended_period(files: tuple[Path, Path]) -> None:
    """A period long past its end plus 1h is finalized without --force, for every account."""
    code, _, err = _report(files, "--period", "2026-01", "--finalize")
    assert (0, "meter report: no events stored for tokyo in 2026-01 (the bill may still be "
               "right: a named pool bills by quantity)\n"
               "finalized acme 2026-01\nfinalized tokyo 2026-01\n") == (code, err)


def test_report_finalize_after_must_be_a_duration(files: tuple[Path, Path]) -> None:
    """A bad --finalize-after is a one-line usage error."""
    code, _, err = _report(files, "--period", "2026-01", "--finalize", "--finalize-after", "5")
    assert 2 == code
    assert err.startswith("meter report: --finalize-after: ")
    assert 1 == len(err.splitlines())
