"""`meter rejected`: events of an account missing from the contracts are rejected by the real
daemon, and once the account is restored `meter rejected reprocess` moves every one of them into
the log, where `meter report` bills them; a second run moves none."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meter.cli import main
from tests.conftest import Broker
from tests.contracts_toml import account, pool
from tests.meter.test_serve import (
    CONTRACTS,
    Daemon,
    count,
    daemon_factory,  # noqa: F401 - the fixture
    event,
    mosquitto_pub,
    stored,
    wait_for,
)

pytestmark = pytest.mark.broker

INITECH = account("initech", pools=[
    pool("agents", tier="premium", model="concurrent", quantity=5, price="149.00",
         overage_price="149.00")])
USERS = 20


def test_a_removed_account_is_recovered_by_reprocess(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon],  # noqa: F811
        topic_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """20 logins and 20 logouts for `initech`, absent from the contracts, are `unknown_account`;
    with it restored, reprocess moves all 40, the report counts 20 concurrent users, and a
    second reprocess moves nothing. Another account's events and rejects are left alone."""
    d = daemon_factory(mosquitto)
    d.start()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    lines = [event(i, "login", account="initech", user=f"u{i}", session=f"s{i}", ts=start,
                   eid=f"in{i}") for i in range(USERS)]
    lines += [event(i, "logout", account="initech", user=f"u{i}", session=f"s{i}",
                    ts=start + timedelta(minutes=5), eid=f"out{i}") for i in range(USERS)]
    mosquitto_pub(mosquitto, f"{topic_prefix}/initech/events", lines)
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [event(1), "not json"])
    wait_for(lambda: count(d.db, "rejected") == 2 * USERS + 1 and count(d.db) == 1,
             "the rejects to be stored")
    assert 0 == d.signal(signal.SIGTERM)
    assert [("unknown_account", 2 * USERS), ("not_json", 1)] == stored(
        d.db, "SELECT reason, count(*) FROM rejected GROUP BY reason ORDER BY count(*) DESC")

    db = str(d.db)
    capsys.readouterr()
    assert 0 == main(["rejected", "list", "--db", db, "--account", "initech"])
    listed = capsys.readouterr().out.splitlines()
    assert 2 * USERS == len(listed)
    assert f"{topic_prefix}/initech/events\tunknown_account" in listed[0]
    first = listed[0].split("\t")[0]
    assert 0 == main(["rejected", "show", first, "--db", db])
    assert '"id": "in0"' in capsys.readouterr().out

    contracts = tmp_path / "restored.toml"
    contracts.write_text(CONTRACTS + INITECH)
    reprocess = ["rejected", "reprocess", "--db", db, "--contracts", str(contracts),
                 "--account", "initech", "--topic-prefix", topic_prefix]
    assert 0 == main(reprocess)
    out = capsys.readouterr().out
    assert f"moved {2 * USERS} rejected messages into the log; initech: {2 * USERS}" in out
    assert [(1,)] == stored(d.db, "SELECT count(*) FROM rejected")  # acme's garbage stays
    assert 2 * USERS + 1 == count(d.db)

    assert 0 == main(["report", "--db", db, "--contracts", str(contracts),
                      "--period", start.strftime("%Y-%m"), "--account", "initech"])
    report = json.loads(capsys.readouterr().out)
    (pool,) = report["accounts"][0]["pools"]
    assert USERS == pool["peak"]

    assert 0 == main(reprocess)
    assert "moved 0 rejected messages" in capsys.readouterr().out
    assert 2 * USERS + 1 == count(d.db)


def test_reprocess_without_contracts_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """reprocess needs the contracts to judge by: exit 2 and one line."""
    assert 2 == main(["rejected", "reprocess", "--db", str(tmp_path / "m.db")])
    assert "needs --contracts" in capsys.readouterr().err


def test_file_rows_are_reprocessed_without_a_topic_account(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Lines `meter ingest` rejected (`file:PATH:LINE` rows) are parsed again as ingest parses
    them, with no topic account; what is still invalid stays, counted by reason."""
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join([event(i, account="initech", eid=f"f{i}") for i in range(3)]
                               + ["not json"]) + "\n")
    old, restored = tmp_path / "old.toml", tmp_path / "restored.toml"
    old.write_text(CONTRACTS)
    restored.write_text(CONTRACTS + INITECH)
    db = str(tmp_path / "m.db")
    assert 0 == main(["ingest", str(lines), "--db", db, "--contracts", str(old)])
    assert 0 == main(["rejected", "reprocess", "--db", db, "--contracts", str(restored)])
    out = capsys.readouterr().out
    assert "moved 3 rejected messages into the log; initech: 3" in out
    assert "1 stay rejected; not_json: 1" in out
    assert 3 == count(Path(db))
