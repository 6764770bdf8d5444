"""One daemon per database, and one per client id: a second `meter serve` on the same database
exits 2 naming the holder; two on different databases with the same client id see the takeover
for what it is and back off instead of taking the session from each other several times a
second. Real processes against a broker of the test's own."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meter.source import SESSION_TAKEN_OVER, Takeovers
from tests.conftest import Broker
from tests.meter.test_serve import CONTRACTS, Daemon, wait_for

pytestmark = pytest.mark.broker


@dataclass
class Serve(Daemon):
    """A `Daemon` with extra flags."""

    extra: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        contracts = self.workdir / "contracts.toml"
        contracts.write_text(CONTRACTS)
        return [sys.executable, "-m", "meter", "serve", "--broker", self.broker.url,
                "--db", str(self.db), "--contracts", str(contracts),
                "--metrics-addr", f"127.0.0.1:{self.port}", "--topic-prefix", self.prefix,
                "--client-id", self.client_id, *self.extra]

    def start(self) -> None:
        with (self.workdir / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.value("meter_mqtt_connected") == 1, "the daemon to subscribe")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_a_second_daemon_on_the_same_database_exits_2_naming_the_first(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """The second `meter serve` on one database exits 2 with one line naming the first one's pid
    and host; after a SIGKILL of the first, a new one starts at once (the OS dropped the lock)."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    first = Serve(broker, tmp_path, topic_prefix)
    second = Serve(broker, tmp_path, topic_prefix)  # same workdir: the same database
    try:
        first.start()
        assert first.proc is not None
        done = subprocess.run(second.command(), capture_output=True, text=True, timeout=20,
                              check=False)
        assert 2 == done.returncode
        lines = done.stderr.splitlines()
        assert 1 == len(lines), done.stderr
        assert f"pid {first.proc.pid} on host {socket.gethostname()}" in lines[0]
        assert str(first.db) in lines[0]
        assert 1 == first.value("meter_mqtt_connected")  # the first one never noticed

        first.stop()  # SIGKILL: no cleanup ran
        second.start()
        assert second.proc is not None
        lock = Path(f"{second.db}.lock").read_text().split()
        assert [str(second.proc.pid), socket.gethostname()] == lock
    finally:
        first.stop()
        second.stop()


#: The test flag: the takeover delays double from 1s up to this cap (4s instead of 30s keeps the
#: test short; the arithmetic is the same).
RECONNECT_MAX = 4.0
#: How long the two daemons share the client id.
WINDOW = 15.0


def takeover_bound(window: float) -> int:
    """The most takeovers one daemon can count in `window` seconds.

    Takeover k in a row waits at least min(2**(k-1), RECONNECT_MAX) / 2 seconds (0.5, 1, then 2
    each) before the reconnect that the next one needs. So n takeovers take at least
    0.5 + 1 + 2 * (n - 3) seconds, and n <= 3 + (window - 1.5) / 2."""
    return 3 + int((window - 1.5) // (RECONNECT_MAX / 2))


def test_two_daemons_sharing_a_client_id_log_count_and_stop_fighting(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """Same client id, different databases: each logs "another client took over session",
    counts it in meter_session_takeovers_total, and reconnects at most `takeover_bound` times in
    the window (old code: 2-3 times a second each, about 40 in 15s, and no such log or metric)."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flags = ["--reconnect-max", f"{RECONNECT_MAX:g}s"]
    a = Serve(broker, tmp_path / "a", topic_prefix, client_id="shared-id", extra=flags)
    b = Serve(broker, tmp_path / "b", topic_prefix, client_id="shared-id", extra=flags)
    try:
        a.start()
        started = time.monotonic()
        with (b.workdir / "serve.log").open("ab") as log:
            b.proc = subprocess.Popen(b.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: (a.value("meter_session_takeovers_total") or 0) >= 1
                 and (b.value("meter_session_takeovers_total") or 0) >= 1,
                 "both daemons to see a takeover", timeout=WINDOW)
        time.sleep(max(0.0, WINDOW - (time.monotonic() - started)))
        counts = {}
        for d in (a, b):
            m = d.scrape()
            counts[d.workdir.name] = (m[("meter_session_takeovers_total", frozenset())],
                                      m[("meter_reconnects_total", frozenset())])
        window = time.monotonic() - started
        bound = takeover_bound(window)
        for name, (takeovers, reconnects) in counts.items():
            assert 1 <= takeovers <= bound, (name, counts, bound)
            # Two reconnects after closes without a reason, then one per takeover.
            assert reconnects <= takeovers + 2, (name, counts)
        for d in (a, b):
            assert "another client took over session `shared-id`" in d.log()
            assert d.proc is not None
            assert d.proc.poll() is None  # still running
    finally:
        a.stop()
        b.stop()
    print(f"takeovers/reconnects in {window:.1f}s: {counts}; bound {bound}", file=sys.stderr)


def test_lock_file_is_not_removed_on_exit(broker_factory: type[Broker], tmp_path: Path,
                                          topic_prefix: str) -> None:
    """A clean stop (SIGTERM, exit 0) leaves the lock file and releases the lock."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    d = Serve(broker, tmp_path, topic_prefix)
    d.start()
    assert 0 == d.signal(signal.SIGTERM)
    assert Path(f"{d.db}.lock").exists()
    d.start()
    d.stop()
    assert os.path.exists(f"{d.db}.lock")


def test_takeover_rules_without_a_broker() -> None:
    """0x8E is a takeover at once. A close without a reason (0x80) is one only when it ends the
    second connection in a row the broker took at the first try after such a close (one fast
    broker restart is not), and every later one in a row too. Delays double from 1s within
    [d/2, d] up to reconnect_max; a connection that outlives 2 * reconnect_max ends the streak;
    a keepalive timeout (0x8D) or a failed connect is never one."""
    t = Takeovers(4.0, random.Random(1))
    delays = [t.on_disconnect(SESSION_TAKEN_OVER, 0.1) for _ in range(4)]
    assert 4 == t.streak
    for delay, ceiling in zip(delays, (1.0, 2.0, 4.0, 4.0), strict=True):
        assert delay is not None
        assert ceiling / 2 <= delay <= ceiling
    assert t.on_disconnect(SESSION_TAKEN_OVER, 9.0) is not None  # outlived 8s: streak ends
    assert 1 == t.streak

    t = Takeovers(4.0, random.Random(1))
    assert t.on_disconnect(0x80, 30.0) is None  # a broker restart looks the same
    t.on_connected()  # back at the first try
    assert t.on_disconnect(0x80, 0.3) is not None  # dropped again: another client has it
    assert 1 == t.streak
    t.on_connected()
    assert t.on_disconnect(0x80, 0.3) is not None  # in a row
    assert t.on_disconnect(0x8D, 0.3) is None  # keepalive timeout: the network
    assert 2 == t.streak

    t = Takeovers(4.0, random.Random(1))
    assert t.on_disconnect(0x80, 30.0) is None
    assert t.on_disconnect(None, None) is None  # the reconnect failed: the broker was down
    t.on_connected()
    assert t.on_disconnect(0x80, 30.0) is None  # a second restart, later: still not one
    assert 0 == t.streak
