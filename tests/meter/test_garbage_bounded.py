"""Garbage is bounded: a 64 MiB payload and 150 payloads of 1 MB through a real Mosquitto to the
daemon are rejected as `oversized` and stored as their size, sha256 and first KiB, not whole."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.meter.test_serve import (
    Daemon,
    count,
    daemon_factory,  # noqa: F401 - the fixture
    event,
    mosquitto_pub,
    stored,
    wait_for,
)

pytestmark = pytest.mark.broker

MB = 1_000_000
SMALL = 150


def _vm_hwm_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    raise AssertionError("no VmHWM in /proc status")


def _send_garbage(broker: Broker, topic: str, tmp_path: Path) -> bytes:
    """The 64 MiB payload, then 150 of 1 MB, then one good event; returns the big one."""
    huge = b"{" + b"x" * (64 * 1024 * 1024 - 1)
    (tmp_path / "huge.bin").write_bytes(huge)
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", topic, "-f", str(tmp_path / "huge.bin")], check=True)
    mosquitto_pub(broker, topic, [f"{i:07d}" + "y" * (MB - 7) for i in range(SMALL)])
    mosquitto_pub(broker, topic, [event(1)])
    return huge


def _garbage_through_the_daemon(broker: Broker, make: Callable[[Broker], Daemon],
                                prefix: str, tmp_path: Path) -> tuple[Daemon, bytes, float]:
    d = make(broker)
    d.start()
    assert d.proc is not None
    huge = _send_garbage(broker, f"{prefix}/acme/events", tmp_path)
    wait_for(lambda: count(d.db, "rejected") == SMALL + 1 and count(d.db) == 1,
             "the garbage and the good event to be stored", timeout=30)
    return d, huge, _vm_hwm_mb(d.proc.pid)


def test_oversized_payloads_keep_only_size_digest_and_first_bytes(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon],  # noqa: F811
        topic_prefix: str, tmp_path: Path) -> None:
    """The rejected table grows by under 1 MB for 214 MB of garbage, each row keeping the size
    and sha256 of the whole payload and its first KiB; a good event after it is stored."""
    d, huge, hwm = _garbage_through_the_daemon(mosquitto, daemon_factory, topic_prefix, tmp_path)
    (kept, total, cut, longest), = stored(
        d.db, "SELECT sum(length(raw)), sum(size), sum(truncated), max(length(raw)) FROM rejected")
    print(f"rejected rows hold {kept} bytes for {total} received; daemon VmHWM {hwm:.0f} MB")
    assert (SMALL + 1, 64 * 1024 * 1024 + SMALL * MB, 1024) == (cut, total, longest)
    assert isinstance(kept, int)
    assert kept < MB
    (digest, head), = stored(d.db, "SELECT sha256, raw FROM rejected WHERE size > 2000000")
    assert (hashlib.sha256(huge).hexdigest(), huge[:1024]) == (digest, head)


@pytest.mark.xfail(strict=True, reason="issue 15 item 4: paho alone peaks at ~219 MB receiving "
                   "one 64 MiB message (a bare paho subscriber, measured); the daemon at ~263 MB. "
                   "deploy/mosquitto.conf's max_packet_size 1 MiB keeps such a message from it")
def test_the_daemon_rss_stays_under_150_mb_through_the_garbage(
        mosquitto: Broker, daemon_factory: Callable[[Broker], Daemon],  # noqa: F811
        topic_prefix: str, tmp_path: Path) -> None:
    """Peak RSS (VmHWM) of the daemon stays under 150 MB while 214 MB of garbage arrives."""
    _, _, hwm = _garbage_through_the_daemon(mosquitto, daemon_factory, topic_prefix, tmp_path)
    assert hwm < 150
