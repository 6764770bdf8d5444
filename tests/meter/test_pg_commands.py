"""Every command on PostgreSQL as on SQLite: the sample month gives byte-identical reports on both
stores, `meter verify` passes on both, `meter migrate` copies one into the other (and refuses a
target that is not empty), a second `meter serve` on one PostgreSQL database exits 2 naming the
first, and no password in a URL is ever printed. A real PostgreSQL of the tests' own (`pg_url`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from meter.cli import main
from meter.config import load_settings, parse_db, redact, share_password
from meter.report.rate import PARALLEL_MIN
from meter.serve import hold_database
from meter.store import open_store
from tests.conftest import Broker
from tests.contracts_toml import account, contracts, pool
from tests.meter.test_one_daemon import Serve

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_sessions" / "events-2026-11.jsonl"
CONTRACTS = ROOT / "sample_sessions" / "contracts.toml"
AS_OF = "2026-12-02T00:00:00Z"
#: The periods the sample month touches: acme's November; globex's (anchor the 15th) and
#: initech's (anchor the 31st) periods starting in October and in November.
PERIODS = ("2026-10", "2026-11")
ACCOUNTS = ("acme", "globex", "initech")


def _timeless(report: Path) -> bytes:
    """The report's bytes with each invoice's `issued_at` (the wall clock of finalizing, the one
    timing in a report) blanked; everything else compares byte for byte."""
    return re.sub(rb'"issued_at": "[^"]*"', b'"issued_at": ""', report.read_bytes())


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _ingest(capsys: pytest.CaptureFixture[str], db: str) -> str:
    code, out, err = _cli(capsys, "ingest", str(SAMPLE), "--db", db, "--contracts",
                          str(CONTRACTS), "--as-of", AS_OF)
    assert (0, "") == (code, err)
    return out


def _report(capsys: pytest.CaptureFixture[str], db: str, period: str, *extra: str) -> str:
    code, out, _ = _cli(capsys, "report", "--db", db, "--contracts", str(CONTRACTS),
                        "--period", period, *extra)
    assert 0 == code
    return out


def _verify(capsys: pytest.CaptureFixture[str], db: str, report: Path) -> tuple[int, str]:
    code, out, _ = _cli(capsys, "verify", str(report), "--db", db, "--contracts", str(CONTRACTS))
    return code, out


def test_db_values_keep_urls_verbatim_and_paths_as_paths() -> None:
    """A URL is kept as written (a Path would fold `//`); `sqlite:PATH` and a bare path are
    paths; the setting resolves the same from a flag and from METER_DB."""
    assert "postgresql://meter@db.example:5433/meter" == parse_db(
        "postgresql://meter@db.example:5433/meter")
    assert "postgres:///meter" == parse_db("postgres:///meter")
    assert Path("/var/lib/meter/meter.db") == parse_db("sqlite:/var/lib/meter/meter.db")
    assert Path("meter.db") == parse_db("meter.db")
    url = "postgresql://meter@127.0.0.1/meter"
    settings = load_settings({"broker": "mqtt://127.0.0.1:1883"}, {"METER_DB": url})
    assert url == settings.db
    assert f"db={url} " in settings.describe()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://meter:s3cret@db:5432/meter", "postgresql://meter:***@db:5432/meter"),
    ("postgresql://meter@db/meter?password=s3cret&sslmode=require",
     "postgresql://meter@db/meter?password=***&sslmode=require"),
    ("postgresql://meter@db/meter", "postgresql://meter@db/meter"),
    ("postgres:///meter", "postgres:///meter"),
    ("/var/lib/meter/meter.db", "/var/lib/meter/meter.db"),
])
def test_redact_hides_the_password_and_nothing_else(url: str, shown: str) -> None:
    """The password of a URL, in the authority or the query, becomes `***`."""
    assert shown == redact(url)


@pytest.mark.parametrize(("url", "password"), [
    ("postgresql://meter:s%40cret@db/meter", "s@cret"),
    ("postgresql://meter@db/meter?password=s3cret", "s3cret"),
    ("postgresql://meter@db/meter", None),
    ("/var/lib/meter/meter.db", None),
])
def test_a_url_password_reaches_the_workers_through_pgpassword(
        url: str, password: str | None) -> None:
    """The report's worker processes open the store's location, which has no password: the
    URL's password is put in PGPASSWORD for them (and nothing is set without one)."""
    environ: dict[str, str] = {}
    share_password(url, environ)
    assert ({} if password is None else {"PGPASSWORD": password}) == environ


def test_the_startup_line_never_shows_the_password() -> None:
    """`meter serve` logs its settings with the URL's password replaced."""
    settings = load_settings({"broker": "mqtt://127.0.0.1:1883",
                              "db": "postgresql://meter:s3cret@127.0.0.1:5432/meter"}, {})
    assert "db=postgresql://meter:***@127.0.0.1:5432/meter " in settings.describe()
    assert "s3cret" not in settings.describe()


@pytest.mark.parametrize("command", ["ingest", "report", "rejected", "migrate"])
def test_a_server_that_cannot_be_reached_is_one_line_without_the_password(
        command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Nothing listens on port 1: one line on stderr naming the database, never its password."""
    url = "postgresql://meter:s3cret@127.0.0.1:1/meter?connect_timeout=2"
    sqlite = tmp_path / "m.db"
    argv = {
        "ingest": ["ingest", str(SAMPLE), "--db", url, "--contracts", str(CONTRACTS)],
        "report": ["report", "--db", url, "--contracts", str(CONTRACTS), "--period", "2026-11"],
        "rejected": ["rejected", "list", "--db", url],
        "migrate": ["migrate", "--from", str(sqlite), "--to", url, "--contracts",
                    str(CONTRACTS)],
    }[command]
    if command == "migrate":
        _ingest(capsys, str(sqlite))
    code, out, err = _cli(capsys, *argv)
    assert 1 == code
    lines = err.splitlines()
    assert 1 == len(lines), err
    assert lines[0].startswith(f"meter {command}: ")
    assert "s3cret" not in err + out
    assert "127.0.0.1" in lines[0]


def test_the_sample_month_reports_byte_identically_on_sqlite_and_postgres(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """Ingest the sample month into both stores: the same summary, the same report JSON for every
    account and period, and `meter verify` of each store's finalized report passes on both."""
    sqlite = str(tmp_path / "meter.db")
    assert _ingest(capsys, sqlite) == _ingest(capsys, pg_url)
    for period in PERIODS:
        on_sqlite = _report(capsys, sqlite, period)
        assert on_sqlite == _report(capsys, pg_url, period)
        assert sorted(ACCOUNTS) == sorted(a["account"] for a in json.loads(on_sqlite)["accounts"])
        for acc in ACCOUNTS:
            assert (_report(capsys, sqlite, period, "--account", acc)
                    == _report(capsys, pg_url, period, "--account", acc))
    for period in PERIODS:
        outs = {}
        for name, db in (("sqlite", sqlite), ("pg", pg_url)):
            out = tmp_path / name / period
            _report(capsys, db, period, "--finalize", "--force", "--out", str(out))
            outs[name] = out / f"report-{period}.json"
        assert _timeless(outs["sqlite"]) == _timeless(outs["pg"])
        for report in outs.values():
            for db in (sqlite, pg_url):
                code, text = _verify(capsys, db, report)
                assert (0, "match") == (code, text.splitlines()[-1])
                assert len(ACCOUNTS) == text.count(": match ")


def test_migrate_sqlite_to_postgres_and_back_keeps_every_report(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """SQLite (one period finalized) -> PostgreSQL -> a new SQLite file: each copy verifies, every
    report is byte-identical to the original's, and the finalized one verifies on the copy."""
    sqlite, back = tmp_path / "meter.db", tmp_path / "back.db"
    _ingest(capsys, str(sqlite))
    frozen = tmp_path / "frozen"
    _report(capsys, str(sqlite), "2026-10", "--finalize", "--force", "--out", str(frozen))
    before = {p: _report(capsys, str(sqlite), p) for p in PERIODS}
    counts = _counts(str(sqlite))

    for source, target in ((str(sqlite), pg_url), (pg_url, f"sqlite:{back}")):
        code, out, err = _cli(capsys, "migrate", "--from", source, "--to", target,
                              "--contracts", str(CONTRACTS))
        assert (0, "") == (code, err)
        assert [
            f"copied {counts['events']} events (last seq {counts['last_seq']}), "
            f"{counts['rejected']} rejected messages, {len(ACCOUNTS)} finalized reports from "
            f"{source} to {parse_db(target)}",
            "verified: counts, last seq and every finalized report's input hash match",
        ] == out.splitlines()
    for db in (pg_url, str(back)):
        assert before == {p: _report(capsys, db, p) for p in PERIODS}
        code, text = _verify(capsys, db, frozen / "report-2026-10.json")
        assert (0, "match") == (code, text.splitlines()[-1])
        assert _counts(db) == counts


def _counts(db: str) -> dict[str, int]:
    """Rows and the last seq, read through the store (no SQL in tests of commands)."""

    async def read() -> dict[str, int]:
        async with await open_store(parse_db(db)) as store:
            return {**await store.counts(), "last_seq": await store.last_seq()}

    return asyncio.run(read())


def test_migrate_refuses_a_target_that_is_not_empty(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """A target holding anything is refused with one line and exit 2, and left as it was."""
    sqlite = tmp_path / "meter.db"
    _ingest(capsys, str(sqlite))
    _ingest(capsys, pg_url)
    before = _counts(pg_url)
    code, out, err = _cli(capsys, "migrate", "--from", str(sqlite), "--to", pg_url,
                          "--contracts", str(CONTRACTS))
    assert (2, "") == (code, out)
    assert [f"meter migrate: {pg_url}: not empty ({before['events']} events, "
            f"{before['rejected']} rejected messages); migrate copies into an empty store only "
            "(a merge would renumber arrivals): drop and create the database, or name a new "
            "file"] == err.splitlines()
    assert before == _counts(pg_url)


def test_migrate_refuses_a_missing_source_and_the_same_store(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """Bad usage is one line and exit 2 before anything is opened."""
    missing = tmp_path / "missing.db"
    assert (2, "", f"meter migrate: --from {missing}: no such database\n") == _cli(
        capsys, "migrate", "--from", str(missing), "--to", pg_url, "--contracts", str(CONTRACTS))
    assert (2, "", "meter migrate: --from and --to name the same store\n") == _cli(
        capsys, "migrate", "--from", pg_url, "--to", pg_url, "--contracts", str(CONTRACTS))
    sqlite = tmp_path / "meter.db"
    _ingest(capsys, str(sqlite))
    assert (2, "", "meter migrate: --from and --to name the same store\n") == _cli(
        capsys, "migrate", "--from", str(sqlite), "--to", f"sqlite:{tmp_path}/./meter.db",
        "--contracts", str(CONTRACTS))


@dataclass
class PgServe(Serve):
    """`meter serve --db URL`."""

    url: str = ""

    def command(self) -> list[str]:
        argv = super().command()
        at = argv.index("--db")
        return [*argv[:at], "--db", self.url, *argv[at + 2:]]


@pytest.mark.broker
def test_a_second_daemon_on_the_same_postgres_database_exits_2_naming_the_first(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """One daemon per PostgreSQL database: the second exits 2 with one line naming the first's
    pid; after a SIGKILL of the first the server drops its lock and a new one starts."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    first = PgServe(broker, tmp_path / "a", topic_prefix, url=pg_url)
    second = PgServe(broker, tmp_path / "b", topic_prefix, url=pg_url)
    for d in (first, second):
        d.workdir.mkdir()
    try:
        first.start()
        assert first.proc is not None
        done = subprocess.run(second.command(), capture_output=True, text=True, timeout=30,
                              check=False)
        assert 2 == done.returncode, done.stderr
        lines = done.stderr.splitlines()
        assert 1 == len(lines), done.stderr
        assert f"pid {first.proc.pid}" in lines[0]
        assert 1 == first.value("meter_mqtt_connected")

        first.stop()  # SIGKILL: the server ends its session, and with it the lock
        second.start()
        assert 1 == second.value("meter_mqtt_connected")
    finally:
        first.stop()
        second.stop()


@pytest.mark.broker
def test_a_daemon_that_loses_its_lock_to_another_stops_with_exit_1(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """The lock's connection ends (as in a server restart) and another session takes the lock
    before the daemon can take it again: the daemon drains, stops and exits 1 with a line saying
    so (its writes would no longer be the only ones)."""
    import psycopg

    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = PgServe(broker, tmp_path, topic_prefix, url=pg_url)
    daemon.start()
    assert daemon.proc is not None
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'meter serve pid %%' "
                "AND datname = current_database()").fetchone()
            assert (1,) == ended
            conn.execute("SELECT pg_advisory_lock(120282511929858)")  # the other daemon
            assert 1 == daemon.proc.wait(timeout=60)
        assert "the daemon lock was lost to another meter serve" in daemon.log()
    finally:
        daemon.stop()


def test_every_command_falls_back_to_meter_db(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    """Without --db, ingest, report and rejected use METER_DB (a URL need not be in argv)."""
    monkeypatch.setenv("METER_DB", pg_url)
    code, out, err = _cli(capsys, "ingest", str(SAMPLE), "--contracts", str(CONTRACTS),
                          "--as-of", AS_OF)
    assert (0, "") == (code, err)
    counts = _counts(pg_url)
    assert f"{'accepted':<18}{counts['events']:>10}" in out.splitlines()
    code, out, _ = _cli(capsys, "report", "--contracts", str(CONTRACTS), "--period", "2026-11")
    assert 0 == code
    assert sorted(ACCOUNTS) == sorted(a["account"] for a in json.loads(out)["accounts"])
    code, out, _ = _cli(capsys, "rejected", "list")
    assert 0 == code
    assert counts["rejected"] == len(out.splitlines())


def test_migrate_waits_for_no_daemon_it_refuses_one_holding_the_source(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """A `meter serve` holding the source (its lock) makes migrate exit 2 naming it; nothing
    is copied."""
    sqlite = tmp_path / "meter.db"
    _ingest(capsys, str(sqlite))
    with hold_database(sqlite):
        code, out, err = _cli(capsys, "migrate", "--from", str(sqlite), "--to", pg_url,
                              "--contracts", str(CONTRACTS))
    assert (2, "") == (code, out)
    lines = err.splitlines()
    assert 1 == len(lines)
    assert lines[0].startswith(f"meter migrate: --db {sqlite}: in use by another meter serve "
                               f"(pid {os.getpid()} on host ")
    assert {"events": 0, "rejected": 0, "last_seq": 0} == _counts(pg_url)


def test_demo_on_postgres_bills_as_on_sqlite(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """`meter demo --db URL` loads the sample month into PostgreSQL and writes the same JSON
    bills as the demo on its own SQLite file; a second run refuses the now non-empty database."""
    for name, db in (("sqlite", []), ("pg", ["--db", pg_url])):
        code, _, err = _cli(capsys, "demo", "--no-broker", "--out", str(tmp_path / name), *db)
        assert 0 == code, err
    sqlite_reports = sorted((tmp_path / "sqlite" / "report").glob("*.json"))
    assert sqlite_reports
    for path in sqlite_reports:
        assert path.read_bytes() == (tmp_path / "pg" / "report" / path.name).read_bytes()
    counts = _counts(pg_url)
    code, _, err = _cli(capsys, "demo", "--no-broker", "--out", str(tmp_path / "again"),
                        "--db", pg_url)
    assert 2 == code
    assert [f"meter demo: --db {pg_url}: holds {counts['events']} events and "
            f"{counts['rejected']} rejected messages; the demo loads the sample month into an "
            "empty database"] == err.splitlines()
    # A SQLite file given with --db is the operator's too: refused, not made fresh.
    own = tmp_path / "sqlite" / "meter.db"
    code, _, err = _cli(capsys, "demo", "--no-broker", "--out", str(tmp_path / "again"),
                        "--db", str(own))
    assert 2 == code
    assert err.startswith(f"meter demo: --db {own}: holds {counts['events']} events")
    assert counts == _counts(str(own))


def test_many_accounts_rate_in_worker_processes_on_postgres_as_on_sqlite(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """PARALLEL_MIN accounts and more are rated by worker processes that open the store's
    location themselves: on PostgreSQL the report is byte-identical to SQLite's."""
    count = PARALLEL_MIN + 2
    text = contracts(*(account(f"a{a}", pools=[pool("agents", tier="premium", model="concurrent",
                                                     quantity=3, price="10.00",
                                                     overage_price="10.00")])
                       for a in range(count)))
    contracts_path, events = tmp_path / "contracts.toml", tmp_path / "events.jsonl"
    contracts_path.write_text(text)
    with events.open("w") as f:
        for a in range(count):
            for i in range(6):
                for kind, hour in (("login", 9 + i % 3), ("logout", 12 + i)):
                    f.write(json.dumps({
                        "id": f"{kind}{i}", "type": kind, "account": f"a{a}", "user": f"u{i}",
                        "ts": f"2026-11-{2 + a % 20:02d}T{hour:02d}:00:00Z", "pool": "agents",
                        "session": f"s{i}"}) + "\n")
    reports = []
    for db in (str(tmp_path / "meter.db"), pg_url):
        code, _, err = _cli(capsys, "ingest", str(events), "--db", db, "--contracts",
                            str(contracts_path))
        assert (0, "") == (code, err)
        code, out, _ = _cli(capsys, "report", "--db", db, "--contracts", str(contracts_path),
                            "--period", "2026-11")
        assert 0 == code
        reports.append(out)
    assert reports[0] == reports[1]
    doc = json.loads(reports[1])
    assert count == len(doc["accounts"])
    # Six users, three licensed, all signed in at 12:00 (logins 9-11, logouts from 12): 3 over.
    assert {3} == {a["pools"][0]["peak"] - 3 for a in doc["accounts"]}


def test_migrate_names_each_finalized_report_the_contracts_do_not_match(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_url: str) -> None:
    """Contracts changed since finalization: the copy is made, but each finalized report of the
    changed account is a MISMATCH line saying the source does not match either; exit 1."""
    sqlite = tmp_path / "meter.db"
    _ingest(capsys, str(sqlite))
    _report(capsys, str(sqlite), "2026-10", "--finalize", "--force", "--out", str(tmp_path / "f"))
    text = CONTRACTS.read_text()
    changed = tmp_path / "contracts.toml"
    changed.write_text(text.replace('price = "149.00"', 'price = "150.00"', 1))
    code, out, err = _cli(capsys, "migrate", "--from", str(sqlite), "--to", pg_url,
                          "--contracts", str(changed))
    assert (1, "") == (code, err)
    lines = out.splitlines()
    assert lines[0].startswith("copied ")
    assert 1 == sum(1 for line in lines if line.startswith("MISMATCH "))
    mismatch = next(line for line in lines if line.startswith("MISMATCH "))
    assert mismatch.startswith("MISMATCH finalized report acme 2026-")
    assert mismatch.endswith("(the source does not match either: --contracts is not the file "
                             "it was finalized with)")
    assert "verification failed: see MISMATCH lines" == lines[-1]
