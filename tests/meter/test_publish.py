"""`meter publish`: JSONL lines onto each account's topic at QoS 1, the rest onto `unknown`."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meter.config import parse_broker_url
from meter.publish import publish, topic_for
from tests.conftest import Broker


@pytest.mark.parametrize(("line", "expected"), [
    (b'{"account": "acme", "id": "1"}', "p/acme/events"),
    (b'{"account": "globex"}', "p/globex/events"),
    (b"not json", "p/unknown/events"),
    (b'["account", "acme"]', "p/unknown/events"),
    (b'{"account": 7}', "p/unknown/events"),
    (b'{"account": ""}', "p/unknown/events"),
    (b'{"account": "a/b"}', "p/unknown/events"),
    (b'{"account": "+"}', "p/unknown/events"),
])
def test_topic_for(line: bytes, expected: str) -> None:
    """A line goes to its account's topic; anything without a usable account to `unknown`."""
    assert expected == topic_for(line, "p")


class Collector:
    """A QoS 1 subscriber that records (topic, payload) until it has `want` messages."""

    def __init__(self, broker: Broker, topic: str, want: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.want = want
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        self.got.append((message.topic, message.payload))
        if len(self.got) >= self.want:
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.broker
def test_publish_sends_every_line_and_waits_for_acks(mosquitto: Broker, topic_prefix: str) -> None:
    """Every non-blank line is published once to its topic, and all are acknowledged."""
    lines = [b'{"account": "acme", "id": "1"}', b"", b"garbage", b'{"account": "globex", "id": "2"}']
    collector = Collector(mosquitto, f"{topic_prefix}/#", 3)
    try:
        result = publish(io.BytesIO(b"\n".join(lines) + b"\n"), parse_broker_url(mosquitto.url),
                         prefix=topic_prefix)
        assert collector.done.wait(10)
    finally:
        collector.close()
    assert (3, 3, 1, 1) == (result.published, result.acknowledged, result.unknown, result.blank)
    assert sorted([(f"{topic_prefix}/acme/events", lines[0]),
                   (f"{topic_prefix}/unknown/events", b"garbage"),
                   (f"{topic_prefix}/globex/events", lines[3])]) == sorted(collector.got)


@pytest.mark.broker
def test_cli_publishes_at_a_rate_and_prints_a_summary(mosquitto: Broker, topic_prefix: str,
                                                      tmp_path: Path) -> None:
    """`meter publish FILE --rate N` exits 0 and prints one summary line."""
    path = tmp_path / "ev.jsonl"
    path.write_text("".join(f'{{"account": "acme", "id": "{i}"}}\n' for i in range(20)))
    proc = subprocess.run([sys.executable, "-m", "meter", "publish", str(path), "--broker",
                           mosquitto.url, "--topic-prefix", topic_prefix, "--rate", "400"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert 0 == proc.returncode, proc.stderr
    assert proc.stdout.startswith("published 20 events (20 acknowledged, 0 without an account, "
                                  "0 blank lines skipped) in ")


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jsonl", "--broker", "mqtt://127.0.0.1:1"], "missing.jsonl: cannot read"),
    (["-", "--broker", "http://x"], "--broker: expected mqtt://HOST:PORT"),
    (["-", "--broker", "mqtt://x", "--rate", "0"], "--rate: must be more than 0"),
])
def test_cli_bad_usage_is_one_line_and_exit_2(args: list[str], message: str,
                                              tmp_path: Path) -> None:
    """Bad input is exit code 2 with one line on stderr naming what is wrong."""
    proc = subprocess.run([sys.executable, "-m", "meter", "publish", *args], cwd=tmp_path,
                          check=False, capture_output=True, text=True, timeout=30, input="")
    assert 2 == proc.returncode
    assert 1 == len(proc.stderr.splitlines()), proc.stderr
    assert f"meter publish: {message}" in proc.stderr
