"""`meter quote`: prints an order's charge or credit and why; refusals and bad input exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meter.cli import main
from meter.quote import run
from tests.contracts_toml import account, addon, order, pool

CONTRACTS = account(
    "acme", anchor="2026-11-01",
    pools=[pool("agents", tier="elite", model="concurrent", quantity=10, price="149.00",
                overage_price="149.00")],
    addons=[addon("wfm", quantity=0, price="25.00")],
    orders=[order("2026-11-10T00:00:00Z", pool="agents", quantity=8)],
) + account(
    "globex", billing="annual", policy="packs",
    pools=[pool("seats", tier="premium", model="named", quantity=10, price="5.00")],
)


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    path = tmp_path / "contracts.toml"
    path.write_text(CONTRACTS)
    return path


def quote_cli(contracts: Path, *args: str) -> int:
    return main(["quote", "--contracts", str(contracts), *args])


def test_prorated_addition_prints_the_charge_and_why(contracts: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """10 seats (8 scheduled) raised to 14: 2 restored free, 4 new seats prorated to the second."""
    code = quote_cli(contracts, "--account", "acme", "--pool", "agents", "--quantity", "14",
                     "--at", "2026-11-17T00:00:00Z")
    out, err = capsys.readouterr()
    assert (0, "") == (code, err)
    assert [
        "account acme pool agents: 10 -> 14 seats at 2026-11-17T00:00:00Z",
        "  4 seats added, charged for the rest of the billing period ending 2026-12-01T00:00:00Z;"
        " 2 seats restored from a scheduled removal at no charge",
        "  seat_add agents 278.13 USD: 4 seats x 149.00 x 14d 0h 0m 0s / 30d",
        "charge 278.13 USD",
    ] == out.splitlines()


def test_restoring_a_scheduled_removal_costs_nothing(contracts: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Buying back the 2 seats scheduled for removal is free (seed 001)."""
    code = quote_cli(contracts, "--account", "acme", "--pool", "agents", "--quantity", "10",
                     "--at", "2026-11-17T00:00:00+02:00")
    out, _ = capsys.readouterr()
    assert 0 == code
    assert [
        "account acme pool agents: 10 -> 10 seats at 2026-11-16T22:00:00Z",
        "  2 seats restored from a scheduled removal at no charge",
        "no charge (0.00 USD)",
    ] == out.splitlines()


def test_addon_quote(contracts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An add-on order is quoted at the add-on's price."""
    assert 0 == run(str(contracts), "acme", None, "wfm", 3, "2026-11-16T00:00:00Z")
    out, _ = capsys.readouterr()
    assert "  seat_add wfm 37.50 USD: 3 seats x 25.00 x 15d 0h 0m 0s / 30d" == out.splitlines()[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "globex", "--pool", "seats", "--quantity", "12", "--at",
          "2026-06-01T00:00:00Z"],
         "meter quote: refused: packs policy: seats are sold in whole packs of 5; 10 -> 12 adds 2"),
        (["--account", "globex", "--pool", "seats", "--quantity", "15", "--at",
          "2026-12-15T00:00:00Z"],
         "meter quote: refused: packs policy: no purchases in the last 30 days of the term "
         "(renewal window from 2026-12-02T00:00:00Z to 2027-01-01T00:00:00Z); renew first"),
        (["--account", "nobody", "--pool", "seats", "--quantity", "1"],
         "meter quote: {path}: no account 'nobody' (accounts: acme, globex)"),
        (["--account", "acme", "--pool", "desk", "--quantity", "1"],
         "meter quote: {path}: account 'acme' has no pool 'desk' (pools: agents)"),
        (["--account", "acme", "--addon", "qm", "--quantity", "1"],
         "meter quote: {path}: account 'acme' has no add-on 'qm' (add-ons: wfm)"),
        (["--account", "acme", "--pool", "agents", "--quantity", "-1"],
         "meter quote: --quantity: the new total must be >= 0, got -1"),
        (["--account", "acme", "--pool", "agents", "--quantity", "1", "--at", "2026-11-17"],
         "meter quote: --at: '2026-11-17' has no UTC offset (add Z or +HH:MM)"),
        (["--account", "acme", "--pool", "agents", "--quantity", "1", "--at", "soon"],
         "meter quote: --at: expected an RFC 3339 time with offset, got 'soon'"),
    ],
)
def test_refused_or_bad_orders_exit_2_with_one_line(
        contracts: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """A refused order prints its reason, bad input says what is wrong: one line, exit 2."""
    code = quote_cli(contracts, *args)
    out, err = capsys.readouterr()
    assert (2, "", message.format(path=contracts) + "\n") == (code, out, err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = [\n", "not valid TOML"),
        ("[[account]]\nid = 'a'\n", "account 'a', table [account], key 'timezone': is required"),
    ],
)
def test_bad_contracts_file_exits_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    """A contracts file that does not parse is one line naming the file, exit 2."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = quote_cli(path, "--account", "a", "--pool", "p", "--quantity", "1")
    _, err = capsys.readouterr()
    assert 2 == code
    assert 1 == len(err.splitlines())
    assert err.startswith(f"meter quote: {path}: ")
    assert message in err


def test_missing_contracts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A contracts file that cannot be read exits 2 naming it."""
    path = tmp_path / "missing.toml"
    assert 2 == quote_cli(path, "--account", "a", "--pool", "p", "--quantity", "1")
    assert f"meter quote: {path}: cannot read: No such file or directory\n" == \
        capsys.readouterr().err


def test_python_dash_m_meter_quote(contracts: Path) -> None:
    """The installed entry point runs the quote end to end (default --at is now)."""
    proc = subprocess.run(
        [sys.executable, "-m", "meter", "quote", "--contracts", str(contracts), "--account",
         "acme", "--pool", "agents", "--quantity", "9"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (0, "") == (proc.returncode, proc.stderr)
    assert proc.stdout.startswith("account acme pool agents: ")
