"""Tenant isolation and secrets, through the daemon as a process and a real Mosquitto.

One tenant cannot write another's usage: the broker ACL of deploy/mosquitto.acl refuses the
publish (the daemon never sees it), and where a message does arrive on a tenant's topic with
another account in its payload, the daemon rejects it as tenant_mismatch. Whatever arrives is
stored or rejected, never dropped (received = stored + rejected). The broker password comes
from a file or the environment and appears in no log line, scrape, or command line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.config import DEFAULT_METRICS_ADDR, load_settings, parse_host_port
from meter.events import Event, Rejection, parse
from rating.contracts import parse_contracts
from tests.conftest import ROOT, Broker
from tests.faults.harness import (
    Daemon,
    Publisher,
    event,
    table_count,
    wait_for,
    wait_stored,
)

SECRET = "s3cret-Pa55-do-not-log"  # noqa: S105 - a test credential, looked for in the outputs


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql))


@pytest.mark.broker
def test_payload_account_must_match_the_topic_through_the_daemon(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """A payload naming another account than its topic is rejected as tenant_mismatch and
    stored only in the rejected table; labels never come from payload values."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.start()
    publisher = Publisher(broker, topic_prefix)
    try:
        publisher.publish(event(1, "acme", prefix="own"))
        publisher.publish(event(2, "globex", prefix="into-acme"), topic_account="acme")
        publisher.publish(event(3, "acme", prefix="into-globex"), topic_account="globex")
        publisher.publish(event(4, "evil-tenant", prefix="unknown"))
        publisher.wait_all_acked()
        wait_for(lambda: table_count(daemon.db, "events") + table_count(daemon.db, "rejected") >= 4,
                 30, "4 messages handled")
        scrape = daemon.scrape()
        mismatches = daemon.value("meter_events_rejected_total", account="acme",
                                  reason="tenant_mismatch")
    finally:
        daemon.stop()
        publisher.close()
    assert [("acme", "own1")] == _rows(daemon.db, "SELECT account, id FROM events")
    assert [("acme", "tenant_mismatch"), ("globex", "tenant_mismatch"),
            (None, "unknown_account")] == _rows(
        daemon.db, "SELECT account, reason FROM rejected ORDER BY account IS NULL, account")
    assert 1.0 == mismatches
    assert "evil-tenant" not in scrape


def garbage(rng: random.Random, i: int) -> bytes:
    """Payload number `i` of a deterministic mix of hostile messages."""
    valid = event(i, prefix="fz")
    kind = i % 10
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:
        return json.dumps(valid).encode()[: rng.randrange(1, 60)]  # truncated
    if kind == 2:
        field = rng.choice(list(valid))
        return json.dumps({**valid, field: rng.choice([1, None, [], {}, 1e308, True])}).encode()
    if kind == 3:
        depth = rng.choice([100, 5000])
        return b'{"id":"x","extra":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 4:
        return json.dumps({**valid, "pad": "x" * 9000}).encode()  # oversized
    if kind == 5:
        return json.dumps(valid).encode().replace(b'"u', b'"\xff\xfe', 1)  # invalid UTF-8
    if kind == 6:
        return json.dumps({**valid, "n": float("nan")}).encode()
    if kind == 7:
        return json.dumps({**valid, "ts": "2026-13-45T99:00:00Z"}).encode()
    return json.dumps(valid).encode()  # 8, 9: valid events


@pytest.mark.broker
def test_received_equals_stored_plus_rejected_for_hostile_payloads(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """Every message the broker accepted ends as an event or a rejection, never dropped, and the
    daemon keeps running: 1,000 hostile payloads (random bytes, truncated, wrong types, deep,
    oversized, invalid UTF-8, NaN, bad timestamps) and valid events."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.start()
    publisher = Publisher(broker, topic_prefix)
    rng = random.Random(20261123)
    count = 1000
    payloads = [garbage(rng, i) for i in range(count)]
    # The oracle: the same parser in this process (a wrong type in an optional field is valid).
    contracts = parse_contracts(daemon.contracts.read_text())
    outcomes = [parse(b, contracts=contracts, received_at=datetime.now(UTC), topic_account="acme")
                for b in payloads]
    valid = sum(1 for o in outcomes if isinstance(o, Event))
    expected_reasons = Counter(o.reason for o in outcomes if isinstance(o, Rejection))
    try:
        for i, payload in enumerate(payloads):
            publisher.publish({"account": "acme", "id": f"m{i}"}, payload=payload)
        publisher.wait_all_acked()
        wait_for(lambda: table_count(daemon.db, "events") + table_count(daemon.db, "rejected")
                 >= count, 60, "every message handled")
        received = daemon.total("meter_events_received_total")
        rejected = daemon.total("meter_events_rejected_total")
        duplicates = daemon.total("meter_events_duplicate_total")
        assert daemon.alive
    finally:
        daemon.stop()
        publisher.close()
    events, rejects = table_count(daemon.db, "events"), table_count(daemon.db, "rejected")
    print(f"\n{count} hostile messages: {events} stored, {rejects} rejected")
    assert count == events + rejects
    assert valid == events
    assert 200 <= events
    assert (events, rejects, 0.0) == (received, rejected, duplicates)
    reasons = dict(_rows(daemon.db, "SELECT reason, count(*) FROM rejected GROUP BY reason"))
    assert expected_reasons == reasons
    assert {"not_json", "schema", "oversized", "bad_timestamp"} == set(reasons)


@pytest.fixture
def acl_broker(broker_factory: type[Broker]) -> Iterator[Broker]:
    """A broker with deploy/mosquitto.acl and a password file made by mosquitto_passwd."""
    # Not tmp_path: pytest's folders are private and the broker drops to the mosquitto user.
    workdir = Path(tempfile.mkdtemp(prefix="meter-acl-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the broker drops to the mosquitto user and must read
    passwd = workdir / "passwd"
    for i, user in enumerate(("license-meter", "acme", "globex")):
        password = SECRET if user == "license-meter" else f"pw-{user}"
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd),
                        user, password], check=True)
    acl = workdir / "acl"
    shutil.copy(ROOT / "deploy" / "mosquitto.acl", acl)
    for f in (passwd, acl):
        os.chmod(f, 0o644)
    broker: Broker = broker_factory.new(  # type: ignore[attr-defined]
        extra_conf=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}")
    yield broker
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.broker
@pytest.mark.parametrize("secret_from", ["file", "env"])
def test_acl_keeps_tenants_apart_and_the_password_stays_secret(
        acl_broker: Broker, tmp_path: Path, secret_from: str) -> None:
    """With deploy/mosquitto.acl: acme's credentials publishing onto globex's topic never reach
    the daemon (nothing stored, nothing rejected), nor does a publish with the meter's own
    read-only credentials; acme's own events are stored. The meter's password, from a file or
    the environment, is in no log line, scrape, or command line."""
    settings = {"METER_USERNAME": "license-meter"}
    if secret_from == "file":  # noqa: S105 - a parameter name, not a password
        secret_file = tmp_path / "broker-password"
        secret_file.write_text(SECRET + "\n")
        settings["METER_PASSWORD_FILE"] = str(secret_file)
    else:
        settings["METER_PASSWORD"] = SECRET
    # The ACL in deploy/ is written for the default prefix `meter`.
    daemon = Daemon(acl_broker, tmp_path / "meter", "meter",
                    settings={**settings, "METER_LOG_LEVEL": "DEBUG"})
    daemon.start()
    acme = Publisher(acl_broker, "meter", username="acme", password="pw-acme")  # noqa: S106 - test account
    meter = Publisher(acl_broker, "meter", username="license-meter", password=SECRET)
    try:
        acme.publish(event(1, "acme", prefix="own"))
        acme.publish(event(2, "globex", prefix="forged"))          # acme -> globex's topic
        acme.publish(event(3, "acme", prefix="forged"), topic_account="globex")
        meter.publish(event(4, "acme", prefix="meter-writes"))     # the meter may only read
        acme.publish(event(5, "acme", prefix="own"))                # the last one: read up to it
        acme.wait_all_acked()
        meter.wait_all_acked()
        wait_stored(daemon.db, 2)
        # The refused publishes were PUBACKed (MQTT 3.1.1 cannot say no) but never delivered.
        wait_for(lambda: daemon.total("meter_events_received_total") >= 2, 30, "2 received")
        scrape = daemon.scrape()
        assert daemon.proc is not None
        cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
        received = daemon.total("meter_events_received_total")
    finally:
        daemon.stop()
        acme.close()
        meter.close()
    assert [("acme", "own1"), ("acme", "own5")] == _rows(
        daemon.db, "SELECT account, id FROM events ORDER BY id")
    assert 0 == table_count(daemon.db, "rejected")
    assert 2.0 == received
    log = daemon.log_text()
    assert "license-meter" in log  # the log does name the user...
    assert SECRET not in log  # ...never the password
    assert SECRET not in scrape
    assert SECRET.encode() not in cmdline


@pytest.mark.broker
def test_metrics_bind_loopback_by_default(broker_factory: type[Broker], tmp_path: Path,
                                          topic_prefix: str) -> None:
    """Without a host the metrics endpoint listens on 127.0.0.1 only, never on all interfaces."""
    assert "127.0.0.1" == DEFAULT_METRICS_ADDR[0]
    assert "127.0.0.1" == load_settings({"broker": "mqtt://127.0.0.1:1883"}).metrics_addr[0]
    assert ("127.0.0.1", 9999) == parse_host_port("9999")
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    # Only a port, as an operator might write it.
    proc = subprocess.Popen(
        [*_serve_cmd(daemon), "--metrics-addr", str(daemon.metrics_port)],
        env=daemon.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        daemon.proc = proc
        daemon.wait_connected()
        listeners = _listeners(daemon.metrics_port)
    finally:
        daemon.stop()
    assert ["127.0.0.1"] == listeners


def _serve_cmd(daemon: Daemon) -> list[str]:
    import sys

    return [sys.executable, "-m", "meter", "serve", "--broker", daemon.broker.url,
            "--db", str(daemon.db), "--contracts", str(daemon.contracts)]


def _listeners(port: int) -> list[str]:
    """Local addresses listening on TCP `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                if len(addr) == 8:
                    found.append(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.append(addr)
    return found
