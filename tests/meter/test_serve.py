"""`meter serve` as a real process against a real Mosquitto: events reach the store and the
gauges, duplicates and bad messages are handled, and nothing is lost or counted twice across
SIGKILL, broker restarts and SIGTERM."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Broker, free_port
from tests.contracts_toml import account, contracts, pool

pytestmark = pytest.mark.broker

CONTRACTS = contracts(
    account("acme", pools=[pool("agents", tier="premium", model="concurrent", quantity=2,
                                price="149.00", overage_price="149.00")]),
    account("globex", timezone="Europe/Berlin", currency="EUR", anchor="2026-01-15", pools=[
        pool("desk", tier="essentials", model="concurrent", quantity=10, price="49.00",
             overage_price="49.00")]),
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `predicate` holds; fail naming `what` after `timeout` (a hang guard, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Daemon:
    """`python -m meter serve` as a child process, restartable on the same database."""

    broker: Broker
    workdir: Path
    prefix: str
    client_id: str = field(default_factory=lambda: f"meter-{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.workdir / "meter.db"

    def start(self) -> None:
        contracts = self.workdir / "contracts.toml"
        contracts.write_text(CONTRACTS)
        with (self.workdir / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meter", "serve", "--broker", self.broker.url,
                 "--db", str(self.db), "--contracts", str(contracts),
                 "--metrics-addr", f"127.0.0.1:{self.port}", "--topic-prefix", self.prefix,
                 "--client-id", self.client_id],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.value("meter_mqtt_connected") == 1, "the daemon to subscribe")

    def scrape(self) -> Samples:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, frozenset(labels.items())))

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        self.proc = None
        return code

    def log(self) -> str:
        return (self.workdir / "serve.log").read_text()


@pytest.fixture
def daemon_factory(tmp_path: Path, topic_prefix: str) -> Iterator[Callable[[Broker], Daemon]]:
    made: list[Daemon] = []

    def make(broker: Broker) -> Daemon:
        d = Daemon(broker, tmp_path, topic_prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def stored(db: Path, sql: str = "SELECT count(*) FROM events") -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql))


def count(db: Path, table: str = "events") -> int:
    if not db.exists():
        return 0
    try:
        return int(str(stored(db, f"SELECT count(*) FROM {table}")[0][0]))  # noqa: S608
    except sqlite3.OperationalError:
        return 0  # not migrated yet


def event(i: int, kind: str = "login", *, account: str = "acme", user: str | None = None,
          session: str | None = "s", ts: datetime | None = None, eid: str | None = None) -> str:
    doc = {"id": eid or f"e{i}", "type": kind, "account": account, "user": user or f"u{i}",
           "ts": (ts or datetime.now(UTC)).isoformat()}
    if session is not None:
        doc["session"] = session
    return json.dumps(doc)


def mosquitto_pub(broker: Broker, topic: str, lines: list[str]) -> None:
    """Each line one QoS 1 message (mosquitto_pub -l)."""
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", topic, "-l"], input="\n".join(lines) + "\n", text=True, check=True)


def meter_publish(broker: Broker, prefix: str, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "meter", "publish", str(path), "--broker",
                             broker.url, "--topic-prefix", prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def write_events(path: Path, n: int, tag: str) -> set[str]:
    now = datetime.now(UTC)
    ids = [f"{tag}{i}" for i in range(n)]
    path.write_text("".join(
        event(i, "heartbeat", user=f"u{i % 40}", ts=now, eid=eid) + "\n"
        for i, eid in enumerate(ids)))
    return set(ids)


def test_events_reach_the_store_and_the_gauges(mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon],
                                               topic_prefix: str) -> None:
    """Logins published with mosquitto_pub are stored and shown: a user on two devices counts
    once, three users on two licences are an excess of one with the grace clock running."""
    d = daemon_factory(mosquitto)
    d.start()
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [
        event(1, user="ann", session="phone"),
        event(2, user="ann", session="desk"),
        event(3, user="bob"),
        event(4, user="cat"),
        event(5, user="dan"),
        event(6, "logout", user="dan"),
    ])
    wait_for(lambda: d.value("meter_events_received_total", account="acme") == 6, "6 events")
    assert 6 == count(d.db)
    wait_for(lambda: d.value("meter_active_users", account="acme", pool="agents") == 3,
             "the snapshot after the batch")
    m = d.scrape()
    acme = frozenset({("account", "acme"), ("pool", "agents")})
    assert 3 == m["meter_active_users", acme]
    assert 2 == m["meter_licensed_seats", acme]
    assert 1 == m["meter_excess_users", acme]
    assert 4 == m["meter_period_peak_users", acme]
    assert 0 == m["meter_period_billable_overage_seats", acme]
    assert 0 < m["meter_grace_remaining_seconds", acme] <= 1800
    globex = frozenset({("account", "globex"), ("pool", "desk")})
    assert (0, 10, 1800) == (m["meter_active_users", globex], m["meter_licensed_seats", globex],
                             m["meter_grace_remaining_seconds", globex])
    assert 0 == m["meter_events_duplicate_total", frozenset({("account", "acme")})]
    assert 0 == sum(v for (name, _), v in m.items() if name == "meter_events_rejected_total")
    assert 1 == m["meter_build_info", frozenset({("version", "0.1.0"),
                                                 ("python", sys.version.split()[0])})]
    assert 0 < m["meter_store_size_bytes", frozenset()]

    # A SIGKILL and a restart rebuild the same live state from the store.
    gauges = ("meter_active_users", "meter_licensed_seats", "meter_period_peak_users",
              "meter_period_peak_timestamp_seconds", "meter_excess_users",
              "meter_period_billable_overage_seats")
    before = {name: m[name, acme] for name in gauges}
    assert -signal.SIGKILL == d.signal(signal.SIGKILL)
    d.start()
    after = d.scrape()
    assert before == {name: after[name, acme] for name in gauges}


def test_duplicates_counted_once_and_bad_messages_rejected(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str) -> None:
    """An event sent twice is stored and counted once; a payload for another tenant's topic is
    tenant_mismatch and garbage is not_json, both stored whole; the daemon keeps going."""
    d = daemon_factory(mosquitto)
    d.start()
    once, foreign = event(1), event(2, account="acme")
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [once, once, "garbage{"])
    mosquitto_pub(mosquitto, f"{topic_prefix}/globex/events", [foreign])
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [event(3)])
    wait_for(lambda: d.value("meter_events_received_total", account="acme") == 2, "2 events")
    wait_for(lambda: count(d.db, "rejected") == 2, "2 rejected rows")
    m = d.scrape()
    assert 1 == m["meter_events_duplicate_total", frozenset({("account", "acme")})]
    assert 1 == m["meter_events_rejected_total",
                  frozenset({("account", ""), ("reason", "not_json")})]
    assert 1 == m["meter_events_rejected_total",
                  frozenset({("account", "globex"), ("reason", "tenant_mismatch")})]
    assert [("not_json", f"{topic_prefix}/acme/events", b"garbage{"),
            ("tenant_mismatch", f"{topic_prefix}/globex/events", foreign.encode())] == \
        stored(d.db, "SELECT reason, topic, raw FROM rejected ORDER BY seq")
    assert [("e1",), ("e3",)] == stored(d.db, "SELECT id FROM events ORDER BY id")
    assert d.proc is not None
    assert d.proc.poll() is None


def test_no_loss_under_sigkill(mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon],
                               topic_prefix: str, tmp_path: Path) -> None:
    """20,000 QoS 1 events while the daemon is SIGKILLed twice and restarted: every event the
    broker acknowledged is stored exactly once (the persistent session queues while it is down;
    unacknowledged deliveries come again and the store drops the copies)."""
    d = daemon_factory(mosquitto)
    d.start()
    ids = write_events(tmp_path / "load.jsonl", 20_000, "k")
    pub = meter_publish(mosquitto, topic_prefix, tmp_path / "load.jsonl")
    for threshold in (3_000, 9_000):
        wait_for(lambda t=threshold: count(d.db) >= t, f"{threshold} stored")
        assert -signal.SIGKILL == d.signal(signal.SIGKILL)
        d.start()
    out, _ = pub.communicate(timeout=120)
    assert 0 == pub.returncode, out
    wait_for(lambda: count(d.db) >= 20_000, "all 20,000 stored", timeout=60)
    rows = stored(d.db, "SELECT id, count(*) FROM events GROUP BY account, id")
    assert ids == {r[0] for r in rows}
    assert {1} == {r[1] for r in rows}
    assert 20_000 == count(d.db)


def test_broker_restart_while_running_loses_nothing(
        broker_factory: type[Broker], daemon_factory: Callable[[Broker], Daemon],
        topic_prefix: str, tmp_path: Path) -> None:
    """The broker (persistence on) restarts while it holds queued and in-flight messages for the
    daemon (frozen with SIGSTOP mid-stream): the daemon reconnects with backoff, gets them all
    again from the persisted session, and stores every acknowledged event once."""
    # Saved every second and at exit rather than on every message: same guarantees for a clean
    # restart, without rewriting the broker's database per message.
    broker = broker_factory.new(persistence=True,  # type: ignore[attr-defined]
                                extra_conf="autosave_on_changes false")
    d = daemon_factory(broker)
    d.start()
    first = write_events(tmp_path / "a.jsonl", 4_000, "a")
    pub = meter_publish(broker, topic_prefix, tmp_path / "a.jsonl")
    wait_for(lambda: count(d.db) >= 500, "500 stored")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)
    try:
        out, _ = pub.communicate(timeout=60)
        assert 0 == pub.returncode, out
        broker.stop(signal.SIGTERM)
        broker.start()
    finally:
        d.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: d.value("meter_reconnects_total") == 1, "the reconnect")
    second = write_events(tmp_path / "b.jsonl", 1_000, "b")
    pub = meter_publish(broker, topic_prefix, tmp_path / "b.jsonl")
    out, _ = pub.communicate(timeout=60)
    assert 0 == pub.returncode, out
    wait_for(lambda: count(d.db) >= 5_000, "all 5,000 stored")
    assert first | second == {r[0] for r in stored(d.db, "SELECT id FROM events")}
    assert 5_000 == count(d.db)
    assert 1 == d.value("meter_mqtt_connected")


def test_sigterm_drains_and_leaves_nothing_unacknowledged(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str,
        tmp_path: Path) -> None:
    """SIGTERM in the middle of a stream exits 0 within 5 s; everything it stored had been
    acknowledged, so the next run gets only the rest and sees no duplicate."""
    d = daemon_factory(mosquitto)
    d.start()
    ids = write_events(tmp_path / "load.jsonl", 5_000, "t")
    pub = meter_publish(mosquitto, topic_prefix, tmp_path / "load.jsonl")
    wait_for(lambda: count(d.db) >= 1_000, "1,000 stored")
    assert d.proc is not None
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(10)
    took = time.monotonic() - sent
    d.proc = None
    assert (0, True) == (code, took < 5.0), d.log()
    out, _ = pub.communicate(timeout=60)
    assert 0 == pub.returncode, out
    d.start()
    wait_for(lambda: count(d.db) >= 5_000, "the rest stored")
    assert ids == {r[0] for r in stored(d.db, "SELECT id FROM events")}
    assert 0 == d.value("meter_events_duplicate_total", account="acme")


def test_locked_store_is_retried_without_acknowledging(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str) -> None:
    """While another writer holds the database, the batch fails as retriable: nothing is
    acknowledged, the store errors counter rises, and the daemon stays up and stores every event
    once the lock is gone."""
    d = daemon_factory(mosquitto)
    d.start()
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [event(1)])
    wait_for(lambda: count(d.db) == 1, "the first event")
    blocker = sqlite3.connect(d.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the write lock; the store waits 5 s, then retries
        mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [event(2), event(3)])
        wait_for(lambda: (d.value("meter_store_errors_total") or 0) >= 1, "a store error")
        assert 0 == d.value("meter_store_healthy")
        assert 1 == d.value("meter_events_received_total", account="acme")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: count(d.db) == 3, "the retried batch")
    assert 1 == d.value("meter_store_healthy")
    assert (3, 0) == (d.value("meter_events_received_total", account="acme"),
                      d.value("meter_events_duplicate_total", account="acme"))
    assert d.proc is not None
    assert d.proc.poll() is None

def test_deploy_acl_keeps_tenants_apart(tmp_path: Path) -> None:
    """A real Mosquitto with deploy/mosquitto.acl and a password file: tenant acme can publish to
    meter/acme/events but not to globex's topic, the meter's account can read but not publish."""
    import os
    import shutil
    import tempfile

    from tests.conftest import MOSQUITTO, ROOT, wait_port

    # Mosquitto run as root drops to the `mosquitto` user: its files must be readable by it.
    work = Path(tempfile.mkdtemp(prefix="meter-acl-"))
    os.chmod(work, 0o755)  # noqa: S103 - throwaway test folder
    try:
        passwd = work / "passwd"
        for i, user in enumerate(("license-meter", "acme", "globex")):
            subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd),
                            user, f"pw-{user}"], check=True)
        os.chmod(passwd, 0o644)
        acl = work / "acl"
        shutil.copy(ROOT / "deploy" / "mosquitto.acl", acl)
        os.chmod(acl, 0o644)
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {passwd}\nacl_file {acl}\n")
        with (tmp_path / "mosquitto.log").open("ab") as log:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            wait_port(port)
            base = ["-h", "127.0.0.1", "-p", str(port), "-q", "1"]
            sub = subprocess.Popen(
                ["mosquitto_sub", *base, "-u", "license-meter", "-P", "pw-license-meter",
                 "-t", "meter/+/events", "-v", "-W", "20"],
                stdout=subprocess.PIPE, text=True)

            def pub(user: str, account: str, message: str) -> None:
                subprocess.run(["mosquitto_pub", *base, "-u", user, "-P", f"pw-{user}",
                                "-t", f"meter/{account}/events", "-m", message], check=True)

            def subscribed() -> bool:
                # Publish an allowed probe until the subscriber is listening; it is message 1.
                pub("acme", "acme", "acme-own")
                return sub.poll() is not None or _readable(sub)

            wait_for(subscribed, "the meter's subscription")
            pub("acme", "globex", "acme-into-globex")
            pub("license-meter", "acme", "meter-writes")
            pub("globex", "globex", "globex-own")  # the last message: read up to it
            assert sub.stdout is not None
            lines = []
            for line in sub.stdout:  # mosquitto_sub -W 20 ends the loop if it never comes
                lines.append(line.strip())
                if lines[-1] == "meter/globex/events globex-own":
                    break
            sub.terminate()
            sub.wait(10)
            sub.stdout.close()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The probe may have landed more than once; the refused messages never did.
    assert {"meter/acme/events acme-own", "meter/globex/events globex-own"} == set(lines)


def _readable(proc: subprocess.Popen[str]) -> bool:
    """Whether the child has written something to stdout yet (without consuming it)."""
    import select

    assert proc.stdout is not None
    return bool(select.select([proc.stdout], [], [], 0.2)[0])


async def test_run_in_process_stops_when_the_event_is_set(
        mosquitto: Broker, topic_prefix: str, tmp_path: Path) -> None:
    """`run(settings, stop)` needs no signals: it serves until the event is set, then returns
    after draining; the metrics land in the registry the caller passed."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from meter.config import load_settings
    from meter.serve import run

    contracts = tmp_path / "contracts.toml"
    contracts.write_text(CONTRACTS)
    settings = load_settings({
        "broker": mosquitto.url, "db": str(tmp_path / "m.db"), "contracts": str(contracts),
        "metrics_addr": f"127.0.0.1:{free_port()}", "topic_prefix": topic_prefix,
        "client_id": f"meter-{uuid.uuid4().hex[:8]}"}, {})
    registry = CollectorRegistry()
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop, registry=registry))

    async def until(predicate: Callable[[], bool], what: str) -> None:
        for _ in range(600):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    await until(lambda: registry.get_sample_value("meter_mqtt_connected") == 1, "subscribed")
    await asyncio.to_thread(mosquitto_pub, mosquitto, f"{topic_prefix}/globex/events",
                            [event(1, account="globex")])
    await until(lambda: registry.get_sample_value(
        "meter_events_received_total", {"account": "globex"}) == 1, "the event")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert 0 == registry.get_sample_value("meter_mqtt_connected")
    assert 1 == count(tmp_path / "m.db")


def test_one_accounts_future_event_does_not_move_another_accounts_gauges(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon], topic_prefix: str) -> None:
    """globex sends an event 4 minutes ahead (within max_future, 5 min); acme's on-time logins
    that follow are applied at their own times: the peak is at the third login, the grace clock
    runs from it, and a restart rebuilds the same (each account has its own watermark)."""
    d = daemon_factory(mosquitto)
    d.start()
    now = datetime.now(UTC)
    mosquitto_pub(mosquitto, f"{topic_prefix}/globex/events",
                  [event(1, account="globex", user="far", ts=now + timedelta(minutes=4))])
    wait_for(lambda: d.value("meter_events_received_total", account="globex") == 1, "globex")
    time.sleep(1.5)  # a tick: the daemon advances its tracker with globex's event seen
    t0 = datetime.now(UTC)
    mosquitto_pub(mosquitto, f"{topic_prefix}/acme/events", [
        event(2, user="ann", ts=t0),
        event(3, user="bob", ts=t0 + timedelta(milliseconds=100)),
        event(4, user="cat", ts=t0 + timedelta(milliseconds=200)),
    ])
    third_s = (t0 + timedelta(milliseconds=200)).timestamp()
    acme = {"account": "acme", "pool": "agents"}

    def grace_used() -> bool:
        grace = d.value("meter_grace_remaining_seconds", **acme)
        return grace is not None and grace < 1800

    for restarted in (False, True):  # live, then rebuilt from the store after a SIGKILL
        if restarted:
            assert -signal.SIGKILL == d.signal(signal.SIGKILL)
            d.start()
        wait_for(lambda: d.value("meter_active_users", **acme) == 3, "acme's three logins")
        key = frozenset(acme.items())
        m = d.scrape()
        assert (3, 1, 3) == (m["meter_active_users", key], m["meter_excess_users", key],
                             m["meter_period_peak_users", key])
        assert third_s == pytest.approx(m["meter_period_peak_timestamp_seconds", key], abs=1e-3)
        wait_for(grace_used, "acme's grace clock to run")
        m = d.scrape()
        assert 0 < 1800 - m["meter_grace_remaining_seconds", key] \
            <= datetime.now(UTC).timestamp() - third_s
