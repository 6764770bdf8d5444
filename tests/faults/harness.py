"""What the fault, fuzz and security suites share: the daemon as a process, a QoS 1 publisher
that records which events the broker accepted (PUBACK), and the Jepsen-style set check.

lost = accepted by the broker but not stored; unexpected = stored but never sent; duplicates are
redeliveries the store absorbed (a stored count per (account, id) above 1 would be a double count).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from meter.store import Store, open_store
from tests.conftest import ROOT, Broker, free_port, wait_port
from tests.contracts_toml import account, contracts, pool

T = TypeVar("T")

CONTRACTS_TOML = contracts(
    account("acme", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=1000, price="149.00",
             overage_price="149.00")]),
    account("globex", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=1000, price="99.00",
             overage_price="99.00")]),
)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds (a liveness
    bound, generous on purpose: these tests never assert on speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def event(i: int, account: str = "acme", *, prefix: str = "e", users: int = 200) -> dict[str, str]:
    """Event number `i`: logins and logouts cycling over `users` users, stamped now."""
    user = i % users
    return {
        "id": f"{prefix}{i}",
        "type": "login" if (i // users) % 2 == 0 else "logout",
        "account": account,
        "user": f"u{user}",
        "session": f"s{user}",
        "pool": "agents",
        "ts": datetime.now(UTC).isoformat(),
    }


# --- the store, read from outside the daemon ------------------------------------------------------

def _through_store(url: str, read: Callable[[Store], Awaitable[T]]) -> T:
    """`read` of the PostgreSQL store at `url`, through the store's interface."""

    async def run() -> T:
        async with await open_store(url) as store:
            return await read(store)

    return asyncio.run(run())


async def _ids(store: Store) -> Counter[tuple[str, str]]:
    return Counter((e.account, e.id) for e in await store.events())


def stored_ids(db: Path | str) -> Counter[tuple[str, str]]:
    """(account, id) -> how many rows hold it (the unique constraint keeps this at 1). `db` is
    the SQLite file or a PostgreSQL URL (`Daemon.store`)."""
    if isinstance(db, str):
        return _through_store(db, _ids)
    if not db.exists():
        return Counter()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return Counter({(a, i): n for a, i, n in
                        conn.execute("SELECT account, id, count(*) FROM events GROUP BY account, id")})


def table_count(db: Path | str, table: str) -> int:
    """Rows in `events` or `rejected` (0 before the daemon created the file)."""
    assert table in ("events", "rejected")
    if isinstance(db, str):
        async def count(store: Store) -> int:
            return (await store.counts())[table]

        return _through_store(db, count)
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet


@dataclass(frozen=True, slots=True)
class Verdict:
    """The set check's result."""

    sent: int
    acked: int
    stored: int
    lost: frozenset[tuple[str, str]]
    unexpected: frozenset[tuple[str, str]]
    double_counted: frozenset[tuple[str, str]]

    def summary(self) -> str:
        return (f"sent={self.sent} acked={self.acked} stored={self.stored} lost={len(self.lost)} "
                f"unexpected={len(self.unexpected)} double_counted={len(self.double_counted)}")


def set_check(sent: Iterable[tuple[str, str]], acked: Iterable[tuple[str, str]],
              stored: Counter[tuple[str, str]]) -> Verdict:
    """Compare what was sent and broker-accepted with what the store holds."""
    sent_set, acked_set = set(sent), set(acked)
    return Verdict(
        sent=len(sent_set),
        acked=len(acked_set),
        stored=len(stored),
        lost=frozenset(acked_set - set(stored)),
        unexpected=frozenset(set(stored) - sent_set),
        double_counted=frozenset(k for k, n in stored.items() if n != 1),
    )


# --- the daemon as a process ----------------------------------------------------------------------

def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape as {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


@dataclass
class Daemon:
    """`python -m meter serve` as a child process, restartable on the same database and port."""

    broker: Broker
    workdir: Path
    topic_prefix: str
    client_id: str = "meter-under-test"
    settings: Mapping[str, str] = field(default_factory=dict)
    #: A PostgreSQL URL to run on instead of the SQLite file `db`.
    url: str | None = None
    db: Path = field(init=False)
    contracts: Path = field(init=False)
    metrics_port: int = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db = self.workdir / "meter.db"
        self.contracts = self.workdir / "contracts.toml"
        if not self.contracts.exists():
            self.contracts.write_text(CONTRACTS_TOML)
        self.metrics_port = free_port()
        self.log = self.workdir / "daemon.log"

    @property
    def store(self) -> Path | str:
        """What the daemon stores into: the PostgreSQL `url`, or else the SQLite file `db`."""
        return self.url or self.db

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
        env.update({
            "METER_TOPIC_PREFIX": self.topic_prefix,
            "METER_CLIENT_ID": self.client_id,
            "METER_RECONNECT_MIN": "50ms",
            "METER_RECONNECT_MAX": "1s",
            "PYTHONPATH": str(ROOT),
        })
        env.update(self.settings)
        return env

    def start(self, *, wait: bool = True) -> None:
        """Start the daemon; with `wait`, until /metrics answers and it is connected."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meter", "serve", "--broker", self.broker.url,
                 "--db", self.url or str(self.db), "--contracts", str(self.contracts),
                 "--metrics-addr", f"127.0.0.1:{self.metrics_port}"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.workdir,
            )
        if wait:
            self.wait_connected()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return metric_samples(self.scrape())

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value, or None when the daemon is not answering or has no such sample."""
        try:
            samples = self.metrics()
        except OSError:
            return None
        return samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str) -> float:
        """The sum over every label set of a sample name (0 when absent or not answering)."""
        try:
            samples = self.metrics()
        except OSError:
            return 0.0
        return sum(v for (n, _), v in samples.items() if n == name)

    def wait_connected(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive:
                raise AssertionError(f"daemon exited with {self.proc and self.proc.returncode}:\n"
                                     f"{self.log_text()[-3000:]}")
            return 1.0 == self.value("meter_mqtt_connected")
        wait_for(ready, timeout, "the daemon to connect to the broker")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: a crash at whatever point the daemon is at."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM and wait up to `timeout` s for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# --- a publisher that knows what the broker accepted ----------------------------------------------

class Publisher:
    """A paho QoS 1 publisher with many messages in flight. A message is *acked* once the broker
    sent its PUBACK: from then on the broker, not the publisher, is responsible for it."""

    def __init__(self, broker: Broker, topic_prefix: str, *, client_id: str = "",
                 username: str | None = None, password: str | None = None,
                 inflight: int = 100) -> None:
        self.topic_prefix = topic_prefix
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=not client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 0.5)
        # paho scans its whole outgoing queue on every PUBACK: keep that queue at most `inflight`
        # long (a window), or 50,000 queued messages cost O(n^2).
        self._window = threading.BoundedSemaphore(inflight)
        self.client.on_publish = lambda *_: self._window.release()
        self.sent: list[tuple[str, str]] = []
        self._acked: set[tuple[str, str]] = set()
        self._unacked: list[tuple[tuple[str, str], mqtt.MQTTMessageInfo]] = []
        self._lock = threading.Lock()
        self.client.connect(broker.host, broker.port, keepalive=60)
        self.client.loop_start()

    def topic(self, account: str) -> str:
        return f"{self.topic_prefix}/{account}/events"

    def publish(self, doc: Mapping[str, str], *, topic_account: str | None = None,
                payload: bytes | None = None) -> None:
        """Publish one event (or raw `payload` under the event's key) at QoS 1."""
        key = (doc["account"], doc["id"])
        data = payload if payload is not None else json.dumps(doc).encode()
        self._window.acquire()
        info = self.client.publish(self.topic(topic_account or doc["account"]), data, qos=1)
        with self._lock:
            self.sent.append(key)
            self._unacked.append((key, info))

    def publish_many(self, docs: Iterable[Mapping[str, str]], *, rate: float | None = None,
                     stop: threading.Event | None = None) -> int:
        """Publish at about `rate` per second (None: as fast as paho takes them)."""
        start = time.monotonic()
        n = 0
        for n, doc in enumerate(docs, 1):
            if stop is not None and stop.is_set():
                break
            self.publish(doc)
            if rate is not None:
                ahead = start + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        return n

    def _settle(self) -> int:
        # Polling every message's state is O(n) under the GIL; scan only what is still open.
        with self._lock:
            still = []
            for key, info in self._unacked:
                # Not is_published(): it raises for a message queued while disconnected, which
                # paho still sends (and marks published) after it reconnects.
                if info._published:
                    self._acked.add(key)
                else:
                    still.append((key, info))
            self._unacked = still
            return len(still)

    def acked(self) -> set[tuple[str, str]]:
        """Keys of which at least one copy was PUBACKed by the broker."""
        self._settle()
        with self._lock:
            return set(self._acked)

    def pending(self) -> int:
        """Messages published but not PUBACKed yet."""
        return self._settle()

    def wait_all_acked(self, timeout: float = 60.0) -> None:
        wait_for(lambda: self.pending() == 0, timeout, "the broker to PUBACK every message",
                 every=0.25)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def in_background(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def wait_stored(db: Path | str, expected: int, timeout: float = 60.0) -> None:
    """Wait until the store holds at least `expected` events."""
    wait_for(lambda: table_count(db, "events") >= expected, timeout,
             f"{expected} stored events (have {table_count(db, 'events')})", every=0.2)


def settle_stored(db: Path | str, expected: int, quiet: float = 5.0, timeout: float = 120.0) -> int:
    """Wait until the store holds `expected` events or has not grown for `quiet` seconds (so a
    set check can then name what is missing); returns the count."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = table_count(db, "events")
        if n >= expected:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > quiet:
            return n
        time.sleep(0.2)
    return table_count(db, "events")


@dataclass
class Probe:
    """Scrapes a daemon's counters now and then, so a SIGKILL loses at most the last moment."""

    daemon: Daemon
    names: tuple[str, ...]
    last: dict[str, float] = field(default_factory=dict)

    def scrape(self) -> None:
        try:
            samples = self.daemon.metrics()
        except OSError:
            return
        for name in self.names:
            self.last[name] = sum(v for (n, _), v in samples.items() if n == name)


def iter_events(count: int, account: str = "acme", prefix: str = "e") -> Iterator[dict[str, str]]:
    return (event(i, account, prefix=prefix) for i in range(count))


def broker_port_open(broker: Broker) -> bool:
    try:
        wait_port(broker.port, timeout=0.2)
    except TimeoutError:
        return False
    return True
