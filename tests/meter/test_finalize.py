"""Finalization: frozen reports re-render byte for byte; late events adjust the next period."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meter.cli import main
from meter.config import load_settings
from meter.finalization import Link
from meter.report import finalize_due
from meter.report.build import Watch
from meter.serve import _next_check
from tests.conftest import Broker, free_port
from tests.contracts_toml import account, contracts, pool
from tests.faults.harness import Daemon, Publisher, wait_for

CONTRACTS = contracts(
    account("acme", pools=[pool("agents", tier="premium", model="concurrent", quantity=2,
                                price="100.00", overage_price="150.00", grace="30m")]),
    account("quiet", currency="EUR", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=2, price="100.00",
             overage_price="150.00")]),
)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Receive time for ingests: after every event these tests write, whatever today's date.
AS_OF = max(datetime(2027, 3, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1)).isoformat()


class Meter:
    """A contracts file and a database in tmp_path, driven through the real CLI."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.contracts = tmp_path / "contracts.toml"
        self.contracts.write_text(CONTRACTS)
        self.db = tmp_path / "meter.db"
        self.batches = 0

    def cli(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(list(argv))
        return code, out.getvalue()

    def crowd(self, n: int, start: str, hours: float, tag: str) -> None:
        """Ingest `n` users of acme `agents` signed in from `start` for `hours`."""
        t0 = datetime.fromisoformat(start)
        t1 = t0 + timedelta(hours=hours)
        lines = []
        for i in range(n):
            for kind, at in (("login", t0), ("logout", t1)):
                lines.append(json.dumps({
                    "id": f"{tag}-{i}-{kind}", "type": kind, "account": "acme",
                    "user": f"{tag}-u{i}", "pool": "agents", "session": "s",
                    "ts": at.isoformat().replace("+00:00", "Z")}))
        self.batches += 1
        path = self.dir / f"batch{self.batches}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        code, _ = self.cli("ingest", str(path), "--db", str(self.db), "--contracts",
                           str(self.contracts), "--as-of", AS_OF)
        assert 0 == code

    def report(self, period: str, *extra: str) -> str:
        code, out = self.cli("report", "--db", str(self.db), "--contracts", str(self.contracts),
                             "--period", period, "--account", "acme", *extra)
        assert 0 == code
        return out

    def acme(self, period: str, *extra: str) -> dict[str, Any]:
        return json.loads(self.report(period, *extra))["accounts"][0]  # type: ignore[no-any-return]


@pytest.fixture
def meter(tmp_path: Path) -> Meter:
    """acme with one sustained overage seat in November (3 users for 1 h on 2 licences)."""
    m = Meter(tmp_path)
    m.crowd(3, "2026-11-10T10:00:00+00:00", 1, "nov")
    return m


#: acme's subscription, billed at the start of every monthly period: 2 seats x 100.00.
SUB = ("recurring", "agents", 2, "200.00")


def charges(doc: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(kind, target, quantity, amount) of each bill line."""
    return [(c["kind"], c["target"], c["quantity"], c["amount"]) for c in doc["charges"]]


def test_finalized_report_is_frozen_and_late_events_adjust_the_next_period(meter: Meter) -> None:
    """After --finalize, late events leave November's bytes alone and bill the difference in
    December as an adjustment line for November."""
    frozen = meter.report("2026-11", "--finalize")
    nov = json.loads(frozen)["accounts"][0]
    assert (True, [SUB, ("overage", "agents", 1, "150.00")]) == (nov["finalized"], charges(nov))
    assert frozen == meter.report("2026-11")

    meter.crowd(4, "2026-11-20T10:00:00+00:00", 2, "late")  # 2 over for 2 h: one more seat
    assert frozen == meter.report("2026-11")
    dec = meter.acme("2026-12")
    assert [SUB, ("adjustment", "agents", 1, "150.00")] == charges(dec)
    line = dec["charges"][1]
    assert {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"} == line["for_period"]
    assert ("late events for finalized period 2026-11 (8 received after finalization): "
            "overage 1 -> 2 seats, billed 150.00, now 300.00") == line["description"]
    assert "350.00" == dec["total"]  # December's subscription and November's adjustment


def test_finalized_html_rerenders_byte_identically_after_late_events(meter: Meter,
                                                                     tmp_path: Path) -> None:
    """The HTML of a finalized period is drawn from what was stored."""
    meter.report("2026-11", "--finalize")
    meter.cli("report", "--db", str(meter.db), "--contracts", str(meter.contracts), "--period",
              "2026-11", "--account", "acme", "--format", "html", "--out", str(tmp_path / "a"))
    meter.crowd(4, "2026-11-20T10:00:00+00:00", 2, "late")
    meter.cli("report", "--db", str(meter.db), "--contracts", str(meter.contracts), "--period",
              "2026-11", "--account", "acme", "--format", "html", "--out", str(tmp_path / "b"))
    page = "report-2026-11-acme.html"
    assert (tmp_path / "a" / page).read_bytes() == (tmp_path / "b" / page).read_bytes()


def test_verify_of_a_finalized_report_still_matches_after_late_events(meter: Meter) -> None:
    """The report names the events it rated (through_seq): late arrivals do not break it."""
    report = meter.dir / "nov.json"
    report.write_text(meter.report("2026-11", "--finalize"))
    meter.crowd(4, "2026-11-20T10:00:00+00:00", 2, "late")
    code, out = meter.cli("verify", str(report), "--db", str(meter.db), "--contracts",
                          str(meter.contracts))
    assert (0, "match") == (code, out.strip().splitlines()[-1])


def test_adjustments_already_billed_are_not_billed_twice(meter: Meter) -> None:
    """November late events adjusted in a finalized December; more late events for November
    bill only the further difference in January."""
    meter.report("2026-11", "--finalize")
    meter.crowd(4, "2026-11-20T10:00:00+00:00", 2, "late")
    # December may not have ended by the real clock: --force, as an operator closing it would.
    dec = json.loads(meter.report("2026-12", "--finalize", "--force"))["accounts"][0]
    assert [SUB, ("adjustment", "agents", 1, "150.00")] == charges(dec)
    meter.crowd(5, "2026-11-25T10:00:00+00:00", 2, "later")  # 3 over: one seat more again
    jan = meter.acme("2027-01")
    assert [SUB, ("adjustment", "agents", 1, "150.00")] == charges(jan)
    assert "overage 2 -> 3 seats" in jan["charges"][1]["description"]
    assert "billed 300.00, now 450.00" in jan["charges"][1]["description"]


def test_late_events_that_change_nothing_add_no_line(meter: Meter) -> None:
    """A late session inside the licences changes no overage: no adjustment."""
    meter.report("2026-11", "--finalize")
    meter.crowd(1, "2026-11-21T10:00:00+00:00", 1, "late")
    assert [SUB] == charges(meter.acme("2026-12"))


def test_unfinalized_period_takes_late_events_itself(meter: Meter) -> None:
    """Without finalization there is nothing to adjust: November is simply rated again."""
    meter.crowd(4, "2026-11-20T10:00:00+00:00", 2, "late")
    assert [SUB, ("overage", "agents", 2, "300.00")] == charges(meter.acme("2026-11"))
    assert [SUB] == charges(meter.acme("2026-12"))


def test_finalizing_twice_keeps_the_first(meter: Meter) -> None:
    """A second --finalize of a frozen period returns the stored report unchanged."""
    first = meter.report("2026-11", "--finalize")
    meter.crowd(4, "2026-11-20T10:00:00+00:00", 2, "late")
    assert first == meter.report("2026-11", "--finalize")
    with closing(sqlite3.connect(meter.db)) as conn:
        assert 1 == conn.execute("SELECT count(*) FROM finalized").fetchone()[0]


@pytest.mark.parametrize(("now", "lateness", "expected"), [
    ("2026-12-01T00:59:59Z", timedelta(hours=1), []),
    ("2026-12-01T01:00:00Z", timedelta(hours=1), [("acme", "2026-11")]),
    ("2026-12-01T00:10:00Z", timedelta(minutes=5), [("acme", "2026-11")]),
    ("2026-11-30T12:00:00Z", timedelta(hours=1), []),  # October: no events before its end
])
async def test_finalize_due_after_the_lateness(meter: Meter, now: str, lateness: timedelta,
                                               expected: list[tuple[str, str]]) -> None:
    """meter serve's hook finalizes the last completed period once the lateness has passed;
    an account with no events is left alone."""
    instant = datetime.fromisoformat(now).astimezone(UTC)
    assert expected == await finalize_due(meter.db, meter.contracts, instant, lateness)
    assert [] == await finalize_due(meter.db, meter.contracts, instant, lateness)


H = timedelta(hours=1)
QUIET = timedelta(seconds=10)


def _due(*args: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """finalize_due from synchronous code (these tests also ingest through the CLI)."""
    return asyncio.run(finalize_due(*args, **kwargs))


def test_finalize_due_waits_for_the_broker_and_for_late_events(meter: Meter) -> None:
    """With a watch (the daemon's), a due period waits while disconnected, while messages still
    arrive, and for finalize_after after an event for it arrived; each reason is left in
    `watch.waiting` (accounts without events are not waiting: they are never finalized)."""
    now = datetime(2026, 12, 1, 2, tzinfo=UTC)
    watch = Watch(started=now - 2 * H, link=Link(None, None))
    assert [] == _due(meter.db, meter.contracts, now, H, quiet=QUIET, watch=watch)
    assert {"acme": ("2026-11", "disconnected")} == watch.waiting
    watch.link = Link(now - timedelta(seconds=5), None)
    assert [] == _due(meter.db, meter.contracts, now, H, quiet=QUIET, watch=watch)
    assert {"acme": ("2026-11", "draining")} == watch.waiting
    watch.link = Link(now - H, now - QUIET)
    meter.crowd(1, "2026-11-21T10:00:00+00:00", 1, "late")  # a November event arrives now
    assert [] == _due(meter.db, meter.contracts, now, H, quiet=QUIET, watch=watch)
    assert {"acme": ("2026-11", "late_events")} == watch.waiting
    later = now + H - timedelta(seconds=1)
    assert [] == _due(meter.db, meter.contracts, later, H, quiet=QUIET, watch=watch)
    assert [("acme", "2026-11")] == _due(meter.db, meter.contracts, now + H, H,
                                                       quiet=QUIET, watch=watch)
    assert {} == watch.waiting


def test_events_stored_before_a_restart_count_as_arriving_at_it(meter: Meter) -> None:
    """A daemon did not see what was stored before it started: it waits finalize_after from
    its start (then finalizes, the connection idle)."""
    start = datetime(2026, 12, 3, tzinfo=UTC)
    idle = Link(start, None)
    watch = Watch(started=start, link=idle)
    at = start + timedelta(minutes=59)
    assert [] == _due(meter.db, meter.contracts, at, H, quiet=QUIET, watch=watch)
    assert {"acme": ("2026-11", "late_events")} == watch.waiting
    assert [("acme", "2026-11")] == _due(meter.db, meter.contracts, start + H, H,
                                                       quiet=QUIET, watch=watch)


@pytest.mark.broker
@pytest.mark.slow
def test_meter_serve_finalizes_a_period_after_the_lateness(mosquitto: Broker, tmp_path: Path) -> None:
    """The daemon freezes the last period on its own once `--finalize-after` has passed: the
    month before the current one (by the real clock, as the daemon reads it) is finalized
    shortly after start, then reported from storage."""
    meter = Meter(tmp_path)
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = (month_start - timedelta(days=1)).replace(day=1)
    label = f"{last:%Y-%m}"
    meter.crowd(3, (last + timedelta(days=9, hours=10)).isoformat(), 1, "last")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter", "serve", "--broker", mosquitto.url, "--db", str(meter.db),
         "--contracts", str(meter.contracts), "--metrics-addr", f"127.0.0.1:{free_port()}",
         "--topic-prefix", f"t{uuid.uuid4().hex[:8]}/meter", "--client-id",
         f"fin-{uuid.uuid4().hex[:8]}", "--finalize-after", "1s", "--finalize-quiet", "1s"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        rows: list[tuple[str, int]] = []
        while time.monotonic() < deadline and not rows:
            time.sleep(0.3)
            with closing(sqlite3.connect(meter.db, timeout=5)) as conn:
                rows = conn.execute("SELECT account, period_start_us FROM finalized").fetchall()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()
    assert [("acme", (last - EPOCH) // timedelta(microseconds=1))] == rows
    assert 0 == proc.returncode
    assert f"finalized acme {label}" in (tmp_path / "serve.log").read_text()
    assert meter.acme(label)["finalized"] is True


def _users(n: int, start: datetime, hours: float, tag: str) -> list[dict[str, str]]:
    """`n` acme `agents` users signed in together from `start` for `hours`, as events."""
    docs = []
    for kind, at in (("login", start), ("logout", start + timedelta(hours=hours))):
        for i in range(n):
            docs.append({"id": f"{tag}-{i}-{kind}", "type": kind, "account": "acme",
                         "user": f"{tag}-u{i}", "pool": "agents", "session": "s",
                         "ts": at.isoformat().replace("+00:00", "Z")})
    return docs


@pytest.mark.broker
@pytest.mark.slow
def test_a_restart_past_month_end_finalizes_only_after_the_backlog(mosquitto: Broker,
                                                                  tmp_path: Path) -> None:
    """Last month partly stored, the daemon down over its end, the rest of the month queued on
    the broker (persistent session, QoS 1), the daemon restarted past end + finalize_after:
    it waits while disconnected and while the backlog drains, and the finalized report counts
    every queued event (before the quiet rule it froze the month from the stored part)."""
    meter = Meter(tmp_path)
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = (month_start - timedelta(days=1)).replace(day=1)
    label = f"{last:%Y-%m}"
    meter.crowd(3, (last + timedelta(days=9, hours=10)).isoformat(), 1, "stored")
    prefix = f"t{uuid.uuid4().hex[:8]}/meter"
    daemon = Daemon(mosquitto, tmp_path, prefix, client_id=f"fin-{uuid.uuid4().hex[:8]}",
                    settings={"METER_FINALIZE_AFTER": "0s"})  # first run: only the session
    assert (meter.db, meter.contracts) == (daemon.db, daemon.contracts)
    daemon.start()
    assert 0 == daemon.terminate()

    backlog = _users(2500, last + timedelta(days=20, hours=10), 2, "queued")
    publisher = Publisher(mosquitto, prefix)
    try:
        publisher.publish_many(backlog)
        publisher.wait_all_acked()
    finally:
        publisher.close()

    daemon.settings = {"METER_FINALIZE_AFTER": "1s", "METER_FINALIZE_QUIET": "2s"}
    daemon.start(wait=False)
    try:
        def finalized() -> bool:
            assert daemon.alive, daemon.log_text()[-3000:]
            with closing(sqlite3.connect(meter.db, timeout=5)) as conn:
                return bool(conn.execute("SELECT count(*) FROM finalized").fetchone()[0])
        wait_for(finalized, 60, "the daemon to finalize last month")
    finally:
        daemon.stop()
    doc = meter.acme(label)
    pool = doc["pools"][0]
    assert (True, 2500, 2498) == (doc["finalized"], pool["peak"], pool["overage_seats"])
    with closing(sqlite3.connect(meter.db)) as conn:
        assert 6 + len(backlog) == conn.execute("SELECT count(*) FROM events").fetchone()[0]
    log = daemon.log_text()
    assert f"finalization of acme {label} waits (disconnected)" in log
    assert f"finalization of acme {label} waits (draining)" in log
    assert f"finalized acme {label}" in log


@pytest.mark.parametrize(("waiting", "expected"), [
    ({}, 60.0),
    ({"acme": ("2026-11", "lateness")}, 60.0),
    ({"acme": ("2026-11", "draining")}, 5.0),
    ({"acme": ("2026-11", "disconnected"), "b": ("2026-11", "late_events")}, 5.0),
    ({"acme": ("2026-11", "late_events")}, 7.0),
])
def test_the_next_finalization_check_comes_when_the_wait_can_end(
        waiting: dict[str, tuple[str, str]], expected: float) -> None:
    """Each minute; every half quiet interval while a period waits for the broker; once
    finalize_after while late events hold one back (finalize_quiet 10s, finalize_after 7s)."""
    settings = load_settings({"broker": "mqtt://b", "finalize_quiet": "10s",
                              "finalize_after": "7s"}, {})
    assert expected == _next_check(settings, waiting)
