"""The two broker profiles and what each loses, against real brokers and the daemon as a process.

- A Mosquitto that drops (a queue limit) is noticed: the meter exports the broker's own count.
- Single machine: `deploy/mosquitto.conf` itself keeps a 20,000-event backlog across a broker
  restart (SIGTERM), and the meter then stores all of it.
- Durable: RabbitMQ (`deploy/rabbitmq.conf`, quorum queues) SIGKILLed mid-burst with the meter
  down; the producer resends what was not PUBACKed; every PUBACKed event is stored exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MOSQUITTO, ROOT, Broker, free_port, wait_port
from tests.faults.harness import (
    Daemon,
    Publisher,
    in_background,
    iter_events,
    set_check,
    settle_stored,
    stored_ids,
    table_count,
    wait_for,
    wait_stored,
)
from tests.rabbitmq import RabbitNode

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEPLOY = ROOT / "deploy"


def test_a_broker_that_drops_is_seen_in_the_meters_metrics(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """Mosquitto with `max_queued_messages 100`: the meter down while 1,000 events are published,
    then up. The meter stores the 100 queued and exports the broker's 900 dropped."""
    broker = broker_factory.new(extra_conf="max_queued_messages 100\nsys_interval 1")  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.start()  # the session exists: the broker queues for it from now on
    daemon.stop()
    publisher = Publisher(broker, topic_prefix)
    try:
        publisher.publish_many(iter_events(1000))
        publisher.wait_all_acked()  # Mosquitto PUBACKs the producer for every one, dropped or not
        daemon.start()
        wait_for(lambda: (daemon.value("meter_broker_dropped_messages_total") or 0) >= 900, 30,
                 "the broker's drop count in the meter's metrics")
        wait_stored(daemon.db, 100)
        assert 900.0 == daemon.value("meter_broker_dropped_messages_total")
        assert 100 == settle_stored(daemon.db, 1000, quiet=2.0)
        assert daemon.value("meter_broker_queued_messages") is not None
    finally:
        daemon.stop()
        publisher.close()


def _profile_conf(port: int, data: Path) -> str:
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    return conf.replace("/mosquitto/data/", f"{data}/")


def test_single_machine_profile_keeps_a_backlog_across_a_broker_restart(
        tmp_path: Path, topic_prefix: str) -> None:
    """deploy/mosquitto.conf: 20,000 events queued with the meter down, the broker stopped
    (SIGTERM: it saves) and started again; the meter then stores all 20,000, once each."""
    # Not under tmp_path: pytest's folders are private, and Mosquitto run as root drops to its
    # own user, which then cannot save there.
    data = Path(tempfile.mkdtemp(prefix="meter-mosq-profile-"))
    os.chmod(data, 0o777)  # noqa: S103 - throwaway test folder
    broker = Broker(port=free_port(), workdir=data)
    conf = data / "profile.conf"
    conf.write_text(_profile_conf(broker.port, data))

    def start() -> subprocess.Popen[bytes]:
        with broker.log.open("ab") as log:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                    stderr=subprocess.STDOUT)
        wait_port(broker.port)
        return proc

    proc = start()
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    publisher: Publisher | None = None
    try:
        daemon.start()
        daemon.stop()
        publisher = Publisher(broker, topic_prefix, inflight=1000)
        publisher.publish_many(iter_events(20_000))
        publisher.wait_all_acked()
        publisher.close()
        publisher = None
        proc.terminate()
        assert 0 == proc.wait(30)
        proc = start()
        daemon.start()
        wait_stored(daemon.db, 20_000, timeout=120)
        verdict = set_check([("acme", f"e{i}") for i in range(20_000)],
                            [("acme", f"e{i}") for i in range(20_000)], stored_ids(daemon.db))
        assert (20_000, frozenset(), frozenset()) == (verdict.stored, verdict.lost,
                                                     verdict.double_counted)
    finally:
        daemon.stop()
        if publisher is not None:
            publisher.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path}: none)"


def test_durable_profile_loses_nothing_it_acknowledged_when_the_broker_is_killed(
        rabbit_factory: Callable[..., RabbitNode], tmp_path: Path, topic_prefix: str) -> None:
    """RabbitMQ with quorum queues, SIGKILLed (beam and epmd) while 20,000 events are published
    with the meter down; restarted on the same data. The producer resends whatever was not
    PUBACKed; every event is then stored exactly once."""
    node = rabbit_factory()
    daemon = Daemon(node, tmp_path / "meter", topic_prefix,  # type: ignore[arg-type]
                    settings={"METER_MQTT_VERSION": "3.1.1"})
    daemon.start()
    daemon.stop()
    publisher = Publisher(node, topic_prefix, inflight=500)  # type: ignore[arg-type]
    done = threading.Event()

    def publish() -> None:
        publisher.publish_many(iter_events(20_000), rate=4000)
        done.set()

    thread = in_background(publish, "publisher")
    try:
        wait_for(lambda: len(publisher.acked()) >= 3000, 60, "3,000 PUBACKs before the crash")
        node.kill()
        acked_before = len(publisher.acked())
        node.start()
        thread.join(180)
        assert done.is_set()
        publisher.wait_all_acked(120)
        daemon.start()
        stored = settle_stored(daemon.db, 20_000, quiet=15.0, timeout=180)
        verdict = set_check(publisher.sent, publisher.acked(), stored_ids(daemon.db))
        print(f"\nPUBACKed before the kill: {acked_before}; {verdict.summary()}")
        assert 0 < acked_before < 20_000
        # Seen once in CI (8 December, not reproduced in 8 runs since): every event PUBACKed,
        # only those queued before the kill stored. The logs say which side lost the rest.
        assert (20_000, 20_000, 20_000) == (verdict.sent, verdict.acked, stored), (
            f"daemon log:\n{_tail(daemon.log)}\nbroker log:\n{_tail(node.log)}")
        assert (frozenset(), frozenset(), frozenset()) == (
            verdict.lost, verdict.unexpected, verdict.double_counted)
    finally:
        daemon.stop()
        publisher.close()


def test_meter_publish_survives_a_broker_restart_mid_file(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str) -> None:
    """`meter publish` of 20,000 lines with the broker (persistent, as deployed) restarted in the
    middle: it reconnects, resends what was not PUBACKed, exits 0, and the meter stores all."""
    # Saved by time, as deploy/mosquitto.conf does (the fixture's per-change saves are far slower).
    broker = broker_factory.new(persistence=True,  # type: ignore[attr-defined]
                                extra_conf="autosave_on_changes false")
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    daemon.start()
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in iter_events(20_000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update({"PYTHONPATH": str(ROOT), "METER_TOPIC_PREFIX": topic_prefix})
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter", "publish", str(events), "--broker", broker.url,
         "--rate", "4000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: table_count(daemon.db, "events") >= 2000, 60, "2,000 stored")
        broker.stop()
        broker.start()
        out, err = proc.communicate(timeout=180)
        assert (0, b"") == (proc.returncode, err)
        assert out.startswith(b"published 20000 events (20000 acknowledged")
        wait_stored(daemon.db, 20_000, timeout=120)
        assert 20_000 == table_count(daemon.db, "events")
    finally:
        if proc.poll() is None:
            proc.kill()
        daemon.stop()


def test_the_readme_producer_example_gets_every_event_stored(
        mosquitto: Broker, tmp_path: Path, topic_prefix: str) -> None:
    """The paho example in README "Producers", run as written (broker address and topic prefix
    moved to the test's), publishes 500 events that the meter then stores, every one."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Producers"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    assert 'client.connect("broker", 1883)' in code
    code = code.replace('client.connect("broker", 1883)',
                        f'client.connect("{mosquitto.host}", {mosquitto.port})')
    code = code.replace('f"meter/{', f'f"{topic_prefix}/{{')
    daemon = Daemon(mosquitto, tmp_path / "meter", topic_prefix)
    daemon.start()
    try:
        scope: dict[str, object] = {"events": list(iter_events(500, prefix="readme"))}
        exec(compile(code, "README.md#producers", "exec"), scope)  # noqa: S102 - our own README
        scope["client"].disconnect()  # type: ignore[attr-defined]
        scope["client"].loop_stop()  # type: ignore[attr-defined]
        wait_stored(daemon.db, 500)
        assert 500 == table_count(daemon.db, "events")
    finally:
        daemon.stop()
