"""HTTP ingest on `meter serve` as a process, posted to with curl: NDJSON and JSON bodies are
stored with MQTT's validation and dedupe and answered after the commit (a SIGKILL right after
the answer loses nothing), a redelivered request changes nothing, an oversized body is 413 and
stores nothing; the usage API equals the gauges, which equal the report."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, free_port, wait_port
from tests.contracts_toml import account, contracts, pool
from tests.faults.harness import Daemon, stored_ids, table_count, wait_for

pytestmark = pytest.mark.broker

CONTRACTS = contracts(
    account("acme", pools=[pool("agents", tier="premium", model="concurrent", quantity=2,
                                price="149.00", overage_price="149.00")]),
    account("globex", pools=[pool("agents", tier="premium", model="concurrent", quantity=1000,
                                  price="99.00", overage_price="99.00")]),
)


class HttpDaemon(Daemon):
    """The harness daemon with `--http-addr` on a free loopback port."""

    http_port: int

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def start(self, *, wait: bool = True) -> None:
        super().start(wait=wait)
        if wait:
            wait_port(self.http_port, timeout=30)


def http_daemon(broker: Broker, workdir: Path, prefix: str,
                settings: Mapping[str, str] | None = None, url: str | None = None) -> HttpDaemon:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "contracts.toml").write_text(CONTRACTS)
    port = free_port()
    d = HttpDaemon(broker, workdir, prefix,
                   settings={"METER_HTTP_ADDR": f"127.0.0.1:{port}", **(settings or {})}, url=url)
    d.http_port = port
    return d


@pytest.fixture
def daemon(mosquitto: Broker, tmp_path: Path, topic_prefix: str) -> Iterator[HttpDaemon]:
    d = http_daemon(mosquitto, tmp_path / "meter", topic_prefix)
    yield d
    d.kill()


def curl(url: str, body: bytes, *, token: str | None = None,
         content_type: str = "application/x-ndjson") -> tuple[int, Any]:
    """POST `body` with curl; (status, the JSON answer)."""
    cmd = ["curl", "-sS", "--max-time", "60", "-X", "POST", "-H", f"Content-Type: {content_type}",
           "--data-binary", "@-", "-w", "\n%{http_code}", url]
    if token is not None:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, input=body, capture_output=True, check=True).stdout.decode()
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text) if text else None


def get(url: str, *, token: str | None = None) -> tuple[int, Any]:
    """GET; (status, the JSON answer)."""
    request = urllib.request.Request(url)  # noqa: S310 - a loopback test URL
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:  # noqa: S310
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def doc(i: int, kind: str = "login", *, account: str = "acme", user: str | None = None,
        ts: datetime | None = None, eid: str | None = None) -> dict[str, str]:
    return {"id": eid or f"h{i}", "type": kind, "account": account, "user": user or f"u{i}",
            "session": f"s{i}", "pool": "agents",
            "ts": (ts or datetime.now(UTC)).isoformat()}


def ndjson(docs: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


def test_ndjson_is_answered_after_the_commit_and_a_sigkill_then_loses_nothing(
        daemon: HttpDaemon) -> None:
    """100 events with a blank line and a bad line among them: 207 naming the bad line (line
    numbers count the blank one), and after a SIGKILL sent the moment the answer arrived the
    store holds exactly the 100 events and the rejected line."""
    daemon.start()
    docs = [doc(i) for i in range(100)]
    body = ndjson(docs[:50]) + b"\n" + b'{"id": "bad", "type": "login"}\n' + ndjson(docs[50:])
    status, answer = curl(daemon.api("/v1/events"), body)
    daemon.kill()
    assert 207 == status
    assert {"accepted": 100, "duplicates": 0, "rejected": [
        {"line": 52, "reason": "schema",
         "detail": "Object missing required field `account`"}]} == answer
    assert {("acme", f"h{i}"): 1 for i in range(100)} == dict(stored_ids(daemon.db))
    assert 1 == table_count(daemon.db, "rejected")


def test_a_redelivered_request_changes_nothing(daemon: HttpDaemon) -> None:
    """The same 100 events posted again, after a restart too: 200 with every one a duplicate,
    and the store and the event counter unchanged."""
    daemon.start()
    body = ndjson([doc(i) for i in range(100)])
    first = curl(daemon.api("/v1/events"), body)
    again = curl(daemon.api("/v1/events"), body)
    daemon.kill()
    daemon.start()
    after_restart = curl(daemon.api("/v1/events"), body)
    received = daemon.value("meter_events_duplicate_total", account="acme")
    daemon.stop()
    assert (200, {"accepted": 100, "duplicates": 0, "rejected": []}) == first
    assert (200, {"accepted": 0, "duplicates": 100, "rejected": []}) == again
    assert (200, {"accepted": 0, "duplicates": 100, "rejected": []}) == after_restart
    assert 100.0 == received
    assert {("acme", f"h{i}"): 1 for i in range(100)} == dict(stored_ids(daemon.db))
    assert 0 == table_count(daemon.db, "rejected")


def test_json_event_and_array_and_the_limits(mosquitto: Broker, tmp_path: Path,
                                            topic_prefix: str) -> None:
    """One JSON event, a JSON array (a repeated id inside it is a duplicate), a body that is
    not JSON (one not_json rejection), an array of bad items (one rejection each, numbered by
    item), an oversized body (413, nothing stored) and a text/plain
    body (415)."""
    d = http_daemon(mosquitto, tmp_path / "meter", topic_prefix,
                    settings={"METER_HTTP_MAX_BYTES": "2000"})
    d.start()
    try:
        one = curl(d.api("/v1/events"), json.dumps(doc(1)).encode(), content_type="application/json")
        array = curl(d.api("/v1/events"), json.dumps([doc(2), doc(3), doc(2)]).encode(),
                     content_type="application/json")
        broken = curl(d.api("/v1/events"), b'{"id": ', content_type="application/json")
        items = curl(d.api("/v1/events"), b'[1, {"id": "x"}]', content_type="application/json")
        big = curl(d.api("/v1/events"), ndjson([doc(i) for i in range(100, 130)]))
        plain = curl(d.api("/v1/events"), ndjson([doc(4)]), content_type="text/plain")
    finally:
        d.stop()
    assert (200, {"accepted": 1, "duplicates": 0, "rejected": []}) == one
    assert (200, {"accepted": 2, "duplicates": 1, "rejected": []}) == array
    assert 207 == broken[0]
    assert [(1, "not_json")] == [(r["line"], r["reason"]) for r in broken[1]["rejected"]]
    assert (207, [(1, "schema"), (2, "schema")]) == (
        items[0], [(r["line"], r["reason"]) for r in items[1]["rejected"]])
    assert 413 == big[0]
    assert "too_large" == big[1]["error"]
    assert 415 == plain[0]
    assert {("acme", "h1"), ("acme", "h2"), ("acme", "h3")} == set(stored_ids(d.db))


GAUGES = {"active_users": "meter_active_users", "licensed": "meter_licensed_seats",
          "excess_users": "meter_excess_users", "period_peak": "meter_period_peak_users",
          "billable_overage_seats": "meter_period_billable_overage_seats",
          "grace_remaining_seconds": "meter_grace_remaining_seconds"}


def _usage_as_gauges(pool_row: Mapping[str, Any]) -> dict[str, float]:
    out = {GAUGES[k]: float(pool_row[k]) for k in GAUGES}
    at = pool_row["period_peak_at"]
    out["meter_period_peak_timestamp_seconds"] = (datetime.fromisoformat(at).timestamp()
                                                  if at else 0.0)
    return out


def _gauges(d: Daemon) -> dict[str, float]:
    names = [*GAUGES.values(), "meter_period_peak_timestamp_seconds"]
    return {n: d.value(n, account="acme", pool="agents") or 0.0 for n in names}


def test_usage_equals_the_gauges_and_the_report(daemon: HttpDaemon) -> None:
    """Four users for two hours on two licences, posted hours late: once the daemon is idle the
    usage API shows the gauges' values (peak 4 at the first login, 2 billable), and those are
    the report's; the report API answers what `meter report` prints."""
    now = datetime.now(UTC).replace(microsecond=0)
    month_start = now.replace(day=1, hour=0, minute=0, second=0)
    base = max(now - timedelta(hours=9), month_start + timedelta(minutes=1))
    if now - base < timedelta(hours=4):
        pytest.skip("the current month is less than 4 hours old: no room for late events")
    daemon.start()
    docs = []
    for i, user in enumerate(["ann", "bob", "cat", "dan"]):
        docs += [doc(i, user=user, ts=base, eid=f"in-{user}"),
                 doc(i, "logout", user=user, ts=base + timedelta(hours=2), eid=f"out-{user}")]
    assert (200, {"accepted": 8, "duplicates": 0, "rejected": []}) == curl(
        daemon.api("/v1/events"), ndjson(docs))
    month = f"{now:%Y-%m}"
    report = subprocess.run(
        [sys.executable, "-m", "meter", "report", "--db", str(daemon.db), "--contracts",
         str(daemon.contracts), "--period", month, "--account", "acme"],
        capture_output=True, text=True, check=True, env=daemon.env()).stdout
    billed = json.loads(report)["accounts"][0]["pools"][0]
    assert (4, base.timestamp(), 2) == (billed["peak"],
                                        datetime.fromisoformat(billed["peak_at"]).timestamp(),
                                        billed["overage_seats"])
    expected = {"meter_active_users": 0.0, "meter_licensed_seats": 2.0,
                "meter_excess_users": 0.0, "meter_period_peak_users": 4.0,
                "meter_period_billable_overage_seats": 2.0,
                "meter_grace_remaining_seconds": 1800.0,
                "meter_period_peak_timestamp_seconds": base.timestamp()}
    wait_for(lambda: _gauges(daemon) == expected, 30, f"the gauges to equal the bill {expected}")
    status, usage = get(daemon.api("/v1/accounts/acme/usage"))
    gauges = _gauges(daemon)
    status_report, served = get(daemon.api(f"/v1/accounts/acme/reports/{month}"))
    daemon.stop()
    assert 200 == status
    assert ["acme", ["agents"]] == [usage["account"], [p["pool"] for p in usage["pools"]]]
    assert expected == _usage_as_gauges(usage["pools"][0]) == gauges
    assert datetime.fromisoformat(usage["period"]["start"]) == month_start
    assert (200, json.loads(report)) == (status_report, served)


def test_unknown_account_and_bad_period(daemon: HttpDaemon) -> None:
    """An account outside the contracts is 404; a period that is not YYYY-MM is 400."""
    daemon.start()
    try:
        unknown = get(daemon.api("/v1/accounts/initech/usage"))
        bad = get(daemon.api("/v1/accounts/acme/reports/2026-13"))
        health = get(daemon.api("/healthz"))
    finally:
        daemon.stop()
    assert (404, {"error": "not_found", "detail": "no account 'initech' in the contracts"}) == unknown
    assert (400, {"error": "bad_period", "detail": "period '2026-13': expected YYYY-MM"}) == bad
    assert (200, {"status": "ok"}) == health


def test_while_the_store_cannot_be_written_the_answer_waits_for_the_commit(
        daemon: HttpDaemon) -> None:
    """Another process holds the database's write lock: a posted request is retried by the
    daemon (meter_store_errors_total rises) and stays unanswered with nothing stored; once the
    lock is gone it is committed, then answered 200. SIGTERM then exits 0."""
    daemon.start()
    blocker = sqlite3.connect(daemon.db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    body = daemon.workdir / "events.ndjson"
    body.write_bytes(ndjson([doc(i) for i in range(10)]))
    client = subprocess.Popen(
        ["curl", "-sS", "--max-time", "120", "-H", "Content-Type: application/x-ndjson",
         "--data-binary", f"@{body}", "-w", "\n%{http_code}", daemon.api("/v1/events")],
        stdout=subprocess.PIPE)
    try:
        wait_for(lambda: (daemon.value("meter_store_errors_total") or 0) >= 2, 60,
                 "the daemon to retry the locked store")
        unanswered = client.poll()
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    out, _ = client.communicate(timeout=120)
    assert None is unanswered
    text, _, status = out.decode().rpartition("\n")
    assert ("200", {"accepted": 10, "duplicates": 0, "rejected": []}) == (status, json.loads(text))
    assert 10 == len(stored_ids(daemon.db))
    assert 0 == daemon.terminate(timeout=10)


def test_on_postgresql_a_sigkill_after_the_answer_loses_nothing(
        mosquitto: Broker, tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """The same contract on the PostgreSQL store: 100 events answered 200, SIGKILL at once, all
    100 stored; posted again after the restart, all duplicates; the report API reads it."""
    d = http_daemon(mosquitto, tmp_path / "meter", topic_prefix, url=pg_url)
    d.start()
    body = ndjson([doc(i) for i in range(100)])
    try:
        first = curl(d.api("/v1/events"), body)
        d.kill()
        stored = dict(stored_ids(d.store))
        d.start()
        again = curl(d.api("/v1/events"), body)
        report = get(d.api(f"/v1/accounts/acme/reports/{datetime.now(UTC):%Y-%m}"))
    finally:
        d.kill()
    assert (200, {"accepted": 100, "duplicates": 0, "rejected": []}) == first
    assert {("acme", f"h{i}"): 1 for i in range(100)} == stored
    assert (200, {"accepted": 0, "duplicates": 100, "rejected": []}) == again
    assert (200, ["acme"]) == (report[0], [a["account"] for a in report[1]["accounts"]])
