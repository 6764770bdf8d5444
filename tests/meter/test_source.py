"""The MQTT source contract against real brokers, for both implementations (`MqttSource` on
aiomqtt, `CodecSource` on the mqtt5 codec, MQTT 5 only) and both protocols: Mosquitto at MQTT 5 and
3.1.1, and a private RabbitMQ node (MQTT plugin, 3.1.1 only). Batches are handed over in arrival
order, at most one ahead of the batch committing (`MqttSource` none: one at a time; `CodecSource`
one: it validates the next while the store commits), and only a batch whose commit has returned
is acknowledged, after every batch before it (the rest come back to the next connection of the
same client id)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from meter.config import Settings, load_settings
from meter.errors import ConfigError
from meter.source import Delivery, MqttSource
from meter.source_codec import CodecSource
from meter.sources import make_source
from tests.conftest import MOSQUITTO, Broker, free_port, wait_port
from tests.missing import missing
from tests.rabbitmq import RabbitNode

pytestmark = pytest.mark.broker


#: Both implementations, as `make_source` builds them.
AnySource = MqttSource | CodecSource
SourceClass = Callable[..., AnySource]
#: The implementations that speak MQTT 5 (every contract test of MQTT 5 runs on each).
MQTT5_SOURCES = [pytest.param(MqttSource, id="aiomqtt"), pytest.param(CodecSource, id="codec")]


@dataclass(frozen=True)
class Target:
    """A broker, the protocol the source speaks to it and the implementation speaking it."""

    host: str
    port: int
    url: str
    mqtt_version: str
    source: SourceClass

    def new(self, settings: Settings, **callbacks: Callable[..., None]) -> AnySource:
        return self.source(settings, **callbacks)


@pytest.fixture(params=["mosquitto-5-aiomqtt", "mosquitto-5-codec", "mosquitto-3.1.1-aiomqtt",
                        "rabbitmq-3.1.1-aiomqtt"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each broker, protocol and implementation the source's contract holds on (the codec
    source speaks MQTT 5 only)."""
    name, version, impl = request.param.split("-")
    broker: Broker | RabbitNode = request.getfixturevalue(
        "mosquitto" if name == "mosquitto" else "rabbitmq")
    return Target(broker.host, broker.port, broker.url, version,
                  MqttSource if impl == "aiomqtt" else CodecSource)


class Recording:
    """A handler that logs each batch and can hold a batch's commit until released."""

    def __init__(self, hold: Sequence[int] = ()) -> None:
        self.log: list[tuple[str, int]] = []
        self.batches: list[list[str]] = []
        self.gates = {i: asyncio.Event() for i in hold}

    async def __call__(self, batch: Sequence[Delivery]) -> bool:
        self.batches.append([d.payload.decode() for d in batch])
        index = len(self.batches) - 1
        self.log.append(("commit", index))
        if index in self.gates:
            await self.gates[index].wait()
        self.log.append(("committed", index))
        return True

    @property
    def payloads(self) -> set[str]:
        return {p for batch in self.batches for p in batch}


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


#: What each implementation has handed over while batch 0 commits, and once batch 0 has
#: committed while batch 1 still commits (the log of `Recording`).
HANDED_OVER = {
    MqttSource: ([("commit", 0)], [("commit", 0), ("committed", 0), ("commit", 1)]),
    CodecSource: ([("commit", 0), ("commit", 1)],
                  [("commit", 0), ("commit", 1), ("committed", 0), ("commit", 2)]),
}


def messages(first: int, last: int) -> list[str]:
    return [f"m{i:02d}" for i in range(first, last + 1)]


async def test_batches_commit_in_order_and_only_committed_ones_are_acknowledged(
        target: Target, topic_prefix: str) -> None:
    """15 messages in batches of 5: while batch 0 commits, `MqttSource` hands over nothing more
    and `CodecSource` batch 1 alone (never batch 2). The daemon dies while batch 1 commits
    (and, on the codec, batch 2 waits on it): the next connection of the same client id gets
    exactly batches 1 and 2 back, and nothing of batch 0."""
    settings = load_settings({
        "broker": target.url, "topic_prefix": topic_prefix, "batch_max": "5",
        "batch_wait": "2s", "client_id": f"src-{uuid.uuid4().hex[:8]}",
        "mqtt_version": target.mqtt_version}, {})
    connected = asyncio.Event()
    first = Recording(hold=(0, 1, 2))
    task = asyncio.create_task(target.new(settings, on_connected=lambda up: up and connected.set())
                               .run(first, asyncio.Event()))
    await asyncio.wait_for(connected.wait(), 10)
    async with aiomqtt.Client(target.host, target.port) as publisher:
        for i in range(15):
            await publisher.publish(f"{topic_prefix}/acme/events", f"m{i:02d}", qos=1)

    while_first, after_first = HANDED_OVER[target.source]
    await until(lambda: ("commit", 0) in first.log, "batch 0")
    await asyncio.sleep(0.3)  # time enough to (wrongly) hand over another batch already
    assert while_first == first.log
    first.gates[0].set()
    await until(lambda: ("commit", 1) in first.log and ("committed", 0) in first.log, "batch 1")
    await asyncio.sleep(0.3)
    assert after_first == first.log
    assert [messages(b * 5, b * 5 + 4) for b in range(len(first.batches))] == first.batches
    task.cancel()  # the daemon dies while batch 1 commits
    with pytest.raises(asyncio.CancelledError):
        await task

    second = Recording()
    stop = asyncio.Event()
    task = asyncio.create_task(target.new(settings).run(second, stop))
    await until(lambda: len(second.payloads) >= 10, "the redelivery")
    await asyncio.sleep(0.5)  # anything acknowledged would have come back by now, too
    stop.set()
    await asyncio.wait_for(task, 10)
    assert set(messages(5, 14)) == second.payloads


async def test_the_codec_source_acknowledges_a_batch_only_after_the_one_before_it(
        mosquitto: Broker, topic_prefix: str) -> None:
    """Batch 1's commit returns while batch 0's still runs (a handler that does not keep its
    commits in order, unlike the daemon's): nothing is acknowledged and batch 2 is not handed
    over. The daemon dies then: all 15 messages come back, batch 1's too."""
    settings = load_settings({
        "broker": mosquitto.url, "topic_prefix": topic_prefix, "batch_max": "5",
        "batch_wait": "2s", "client_id": f"src-{uuid.uuid4().hex[:8]}"}, {})
    connected = asyncio.Event()
    first = Recording(hold=(0, 1))
    task = asyncio.create_task(CodecSource(settings, on_connected=lambda up: up and connected.set())
                               .run(first, asyncio.Event()))
    await asyncio.wait_for(connected.wait(), 10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(15):
            await publisher.publish(f"{topic_prefix}/acme/events", f"m{i:02d}", qos=1)
    await until(lambda: ("commit", 1) in first.log, "batch 1")
    first.gates[1].set()
    await until(lambda: ("committed", 1) in first.log, "batch 1's commit")
    await asyncio.sleep(0.3)  # time enough to (wrongly) acknowledge batch 1 and take batch 2
    assert [("commit", 0), ("commit", 1), ("committed", 1)] == first.log
    task.cancel()  # the daemon dies while batch 0 commits
    with pytest.raises(asyncio.CancelledError):
        await task

    second = Recording()
    stop = asyncio.Event()
    task = asyncio.create_task(CodecSource(settings).run(second, stop))
    await until(lambda: len(second.payloads) >= 15, "the redelivery")
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert set(messages(0, 14)) == second.payloads


#: How each implementation words a CONNECT RabbitMQ 3.10 closes without a CONNACK (paho reports
#: the close as a timeout).
NO_CONNACK = {MqttSource: "Operation timed out",
              CodecSource: "connection closed by the broker before a CONNACK"}


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_mqtt_5_to_a_broker_without_it_says_to_use_3_1_1(
        rabbitmq: RabbitNode, topic_prefix: str, caplog: pytest.LogCaptureFixture,
        source_class: SourceClass) -> None:
    """RabbitMQ 3.10 closes an MQTT 5 CONNECT without a CONNACK; the source's retry line says
    what to do instead of only "Operation timed out"."""
    settings = load_settings({"broker": rabbitmq.url, "topic_prefix": topic_prefix,
                              "client_id": f"src-{uuid.uuid4().hex[:8]}"}, {})
    stop = asyncio.Event()
    with caplog.at_level("WARNING", logger="meter.source"):
        task = asyncio.create_task(source_class(settings).run(Recording(), stop))
        await until(lambda: any("retrying" in r.getMessage() for r in caplog.records),
                    "the retry line")
        stop.set()
        await asyncio.wait_for(task, 10)
    line = next(r.getMessage() for r in caplog.records if "retrying" in r.getMessage())
    assert line.startswith(f"broker {rabbitmq.url}: {NO_CONNACK[source_class]}; retrying in ")
    assert line.endswith(" (no CONNACK to an MQTT 5 CONNECT: if this broker has no MQTT 5, such "
                         "as RabbitMQ before 3.13, use --mqtt-version 3.1.1)")


async def test_a_3_1_1_connection_quiet_after_traffic_reconnects_once(
        mosquitto: Broker, topic_prefix: str) -> None:
    """On 3.1.1 (RabbitMQ 3.10 may hold a few messages unacknowledged to a connected consumer
    until it reconnects) a connection that received messages and then nothing for
    `stall_seconds` reconnects, once per quiet spell; idle from the start, it never does."""
    settings = load_settings({
        "broker": mosquitto.url, "topic_prefix": topic_prefix, "mqtt_version": "3.1.1",
        "client_id": f"src-{uuid.uuid4().hex[:8]}"}, {})
    reconnects: list[int] = []
    connected = asyncio.Event()
    recording = Recording()
    source = MqttSource(settings, on_connected=lambda up: up and connected.set(),
                        on_reconnect=lambda: reconnects.append(1))
    source.stall_seconds = 0.5
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(recording, stop))
    await asyncio.wait_for(connected.wait(), 10)
    await asyncio.sleep(1.5)  # idle from the start: no reconnect
    assert ([], 0) == (reconnects, source.stall_reconnects)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(3):
            await publisher.publish(f"{topic_prefix}/acme/events", f"m{i}", qos=1)
    await until(lambda: source.stall_reconnects == 1, "the reconnect after the quiet spell")
    await asyncio.sleep(1.5)  # the new connection has had no message: it stays
    stop.set()
    await asyncio.wait_for(task, 10)
    assert ([1], 1) == (reconnects, source.stall_reconnects)
    assert {"m0", "m1", "m2"} == recording.payloads


def transitions(ups: list[bool]) -> list[bool]:
    """`on_connected` calls with repeats folded (each failed attempt reports False again)."""
    return [up for i, up in enumerate(ups) if i == 0 or ups[i - 1] != up]


def publish_settings(**values: str) -> dict[str, str]:
    return {"client_id": f"src-{uuid.uuid4().hex[:8]}", **values}


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_stop_commits_and_acknowledges_what_arrived(
        mosquitto: Broker, topic_prefix: str, source_class: SourceClass) -> None:
    """Stop set while batch 0 commits, 7 more messages already received: they are committed in
    batches of at most 5 and acknowledged before the source returns, so the next connection of the
    same client id gets nothing back."""
    settings = load_settings(publish_settings(
        broker=mosquitto.url, topic_prefix=topic_prefix, batch_max="5", batch_wait="1s"), {})
    connected = asyncio.Event()
    recording = Recording(hold=(0,))
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=lambda up: up and connected.set())
                               .run(recording, stop))
    await asyncio.wait_for(connected.wait(), 10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(12):
            await publisher.publish(f"{topic_prefix}/acme/events", f"m{i:02d}", qos=1)
    await until(lambda: ("commit", 0) in recording.log, "batch 0")
    await asyncio.sleep(0.5)  # the other 7 arrive meanwhile
    stop.set()
    recording.gates[0].set()
    await asyncio.wait_for(task, 10)
    assert [[f"m{i:02d}" for i in range(5)], [f"m{i:02d}" for i in range(5, 10)],
            ["m10", "m11"]] == recording.batches

    again = Recording()
    stop = asyncio.Event()
    connected.clear()
    task = asyncio.create_task(source_class(settings, on_connected=lambda up: up and connected.set())
                               .run(again, stop))
    await asyncio.wait_for(connected.wait(), 10)
    await asyncio.sleep(1.0)  # anything unacknowledged would be redelivered by now
    stop.set()
    await asyncio.wait_for(task, 10)
    assert [] == again.batches


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_receive_maximum_bounds_what_the_broker_has_in_flight(
        mosquitto: Broker, topic_prefix: str, source_class: SourceClass) -> None:
    """Receive Maximum 10, batches of up to 1000 within 1s: while batch 0 is held uncommitted
    the broker sends no more than 10 unacknowledged messages, so batch 0 holds exactly 10; the
    other 20 follow it in order. (How Mosquitto 2.0.11 refills after the PUBACKs varies: after
    batch 0's ten it sent all 20 to either implementation.)"""
    settings = load_settings(publish_settings(
        broker=mosquitto.url, topic_prefix=topic_prefix, receive_maximum="10",
        batch_wait="1s"), {})
    connected = asyncio.Event()
    recording = Recording(hold=(0,))
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=lambda up: up and connected.set())
                               .run(recording, stop))
    await asyncio.wait_for(connected.wait(), 10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(30):
            await publisher.publish(f"{topic_prefix}/acme/events", f"m{i:02d}", qos=1)
    await until(lambda: ("commit", 0) in recording.log, "batch 0")
    await asyncio.sleep(0.5)
    recording.gates[0].set()
    await until(lambda: len(recording.payloads) >= 30, "every message")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert [f"m{i:02d}" for i in range(10)] == recording.batches[0]
    assert [f"m{i:02d}" for i in range(30)] == [p for batch in recording.batches for p in batch]


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_an_idle_connection_is_kept_alive_by_pings(
        mosquitto: Broker, topic_prefix: str, source_class: SourceClass) -> None:
    """Keepalive 1s and nothing to receive for 3.5s: the source pings, so the broker (which drops a
    client silent for 1.5x its keepalive) keeps the connection; one connection throughout."""
    settings = load_settings(publish_settings(
        broker=mosquitto.url, topic_prefix=topic_prefix, keepalive="1s"), {})
    ups: list[bool] = []
    reconnects: list[int] = []
    recording = Recording()
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=ups.append,
                                            on_reconnect=lambda: reconnects.append(1))
                               .run(recording, stop))
    await until(lambda: bool(ups), "the connection")
    await asyncio.sleep(3.5)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        await publisher.publish(f"{topic_prefix}/acme/events", "late", qos=1)
    await until(lambda: bool(recording.batches), "the message")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert ([True, False], [], [["late"]]) == (ups, reconnects, recording.batches)


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_a_hung_broker_is_noticed_and_reconnected_to(
        broker_factory: type[Broker], topic_prefix: str, source_class: SourceClass) -> None:
    """A broker that stops answering (SIGSTOP, sockets open) is noticed within its keepalive
    (1s here): the source drops the connection, retries, and once the broker runs again it
    reconnects and delivers what is published then."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    settings = load_settings(publish_settings(
        broker=broker.url, topic_prefix=topic_prefix, keepalive="1s", reconnect_max="1s"), {})
    ups: list[bool] = []
    recording = Recording()
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=ups.append)
                               .run(recording, stop))
    await until(lambda: bool(ups), "the connection")
    broker.pause()
    try:
        await until(lambda: not ups[-1], "the hung broker to be noticed")
    finally:
        broker.resume()
    await until(lambda: ups[-1], "the reconnect")
    async with aiomqtt.Client(broker.host, broker.port) as publisher:
        await publisher.publish(f"{topic_prefix}/acme/events", "after", qos=1)
    await until(lambda: bool(recording.batches), "the message")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert ([True, False, True, False], [["after"]]) == (transitions(ups), recording.batches)


#: The password of the secure broker's one account (throwaway, made per test module).
SECURE_PASSWORD = "pw-meter"  # noqa: S105 - a test broker's


@dataclass(frozen=True)
class SecureBroker:
    """A Mosquitto behind TLS that wants a client certificate and a password."""

    port: int
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate made with openssl; a
    password file with license-meter/pw-meter; Mosquitto with `require_certificate true`."""
    for tool in ("openssl", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            missing(tool, tool)
    # Mosquitto run as root drops to the `mosquitto` user: its files must be readable by it.
    work = Path(tempfile.mkdtemp(prefix="meter-tls-"))
    os.chmod(work, 0o755)  # noqa: S103 - throwaway test folder
    try:
        ca, ca_key = work / "ca.pem", work / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 "/CN=meter test CA", "-keyout", str(ca_key), "-out", str(ca))
        for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                          ("client", "extendedKeyUsage=clientAuth")):
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                     "-keyout", str(work / f"{name}.key"), "-out", str(work / f"{name}.csr"))
            (work / f"{name}.ext").write_text(ext + "\n")
            _openssl("x509", "-req", "-in", str(work / f"{name}.csr"), "-CA", str(ca),
                     "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
                     "-extfile", str(work / f"{name}.ext"), "-out", str(work / f"{name}.pem"))
        passwd = work / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "license-meter", SECURE_PASSWORD],
                       check=True)
        for f in work.iterdir():
            os.chmod(f, 0o644)
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {passwd}\ncafile {ca}\ncertfile {work / 'server.pem'}\n"
                        f"keyfile {work / 'server.key'}\nrequire_certificate true\n")
        with (work / "mosquitto.log").open("ab") as log:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            wait_port(port)
            yield SecureBroker(port, ca, work / "client.pem", work / "client.key")
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: How each implementation words CONNACK 0x87 (Mosquitto's answer to a wrong password).
REFUSED = {MqttSource: "[code:135] Not authorized",
           CodecSource: "broker refused the connection: NOT_AUTHORIZED (0x87)"}


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_tls_with_a_client_certificate_and_a_password(
        secure_broker: SecureBroker, topic_prefix: str, source_class: SourceClass,
        caplog: pytest.LogCaptureFixture) -> None:
    """mqtts:// with the CA, client certificate and key files and a username/password: the
    source connects and delivers; with a wrong password the broker refuses it and it retries
    without ever reporting a connection."""
    b = secure_broker
    common = {"broker": f"mqtts://127.0.0.1:{b.port}", "topic_prefix": topic_prefix,
              "ca_file": str(b.ca), "cert_file": str(b.cert), "key_file": str(b.key),
              "username": "license-meter"}
    settings = load_settings(publish_settings(**common, password=SECURE_PASSWORD), {})
    connected = asyncio.Event()
    recording = Recording()
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=lambda up: up and connected.set())
                               .run(recording, stop))
    await asyncio.wait_for(connected.wait(), 10)
    tls = aiomqtt.TLSParameters(ca_certs=str(b.ca), certfile=str(b.cert), keyfile=str(b.key))
    async with aiomqtt.Client("127.0.0.1", b.port, username="license-meter", password=SECURE_PASSWORD,
                              tls_params=tls) as publisher:
        for i in range(3):
            await publisher.publish(f"{topic_prefix}/acme/events", f"s{i}", qos=1)
    await until(lambda: len(recording.payloads) >= 3, "the messages")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert ["s0", "s1", "s2"] == [p for batch in recording.batches for p in batch]

    wrong = load_settings(publish_settings(**common, password=SECURE_PASSWORD + "-not"), {})
    ups: list[bool] = []
    stop = asyncio.Event()
    with caplog.at_level("WARNING", logger="meter.source"):
        task = asyncio.create_task(source_class(wrong, on_connected=ups.append)
                                   .run(Recording(), stop))
        await until(lambda: any("retrying" in r.getMessage() for r in caplog.records),
                    "the retry line")
        stop.set()
        await asyncio.wait_for(task, 10)
    line = next(r.getMessage() for r in caplog.records if "retrying" in r.getMessage())
    assert line.startswith(f"broker mqtts://127.0.0.1:{b.port}: {REFUSED[source_class]}; "
                           "retrying in ")
    assert True not in ups


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_a_retiring_source_unsubscribes_and_gives_up_what_its_session_held(
        mosquitto: Broker, topic_prefix: str, source_class: SourceClass) -> None:
    """`retire` (a cluster slot that is no more): the source connects as the slot, unsubscribes
    instead of subscribing and delivers what the session queued while it was away; what is
    published after the UNSUBACK is no longer routed to it."""
    settings = load_settings(publish_settings(broker=mosquitto.url, topic_prefix=topic_prefix), {})
    connected = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=lambda up: up and connected.set())
                               .run(Recording(), stop))
    await asyncio.wait_for(connected.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(5):
            await publisher.publish(f"{topic_prefix}/acme/events", f"held{i}", qos=1)

        recording = Recording()
        connected.clear()
        stop = asyncio.Event()
        source = source_class(settings, on_connected=lambda up: up and connected.set())
        source.retire = True
        task = asyncio.create_task(source.run(recording, stop))
        await asyncio.wait_for(connected.wait(), 10)
        await until(lambda: len(recording.payloads) >= 5, "what the session held")
        await publisher.publish(f"{topic_prefix}/acme/events", "after", qos=1)
        await asyncio.sleep(0.5)  # it would have arrived by now
    stop.set()
    await asyncio.wait_for(task, 10)
    assert [f"held{i}" for i in range(5)] == [p for batch in recording.batches for p in batch]


@pytest.mark.parametrize(("version", "env", "expected"), [
    ("5", None, CodecSource),
    ("3.1.1", None, MqttSource),
    ("5", "aiomqtt", MqttSource),
    ("5", "codec", CodecSource),
    ("3.1.1", "aiomqtt", MqttSource),
    ("5", " Codec ", CodecSource),
])
def test_make_source_picks_the_codec_for_mqtt_5_unless_told(
        monkeypatch: pytest.MonkeyPatch, version: str, env: str | None,
        expected: SourceClass) -> None:
    """MQTT 5 gets the codec source, 3.1.1 aiomqtt; METER_SOURCE overrides."""
    if env is None:
        monkeypatch.delenv("METER_SOURCE", raising=False)
    else:
        monkeypatch.setenv("METER_SOURCE", env)
    settings = load_settings({"broker": "mqtt://127.0.0.1:1883", "mqtt_version": version}, {})
    assert expected is type(make_source(settings))


@pytest.mark.parametrize(("version", "env", "message"), [
    ("3.1.1", "codec", "the mqtt5 codec source speaks MQTT 5 only, not 3.1.1"),
    ("5", "paho", "METER_SOURCE: 'paho' is not one of codec, aiomqtt"),
])
def test_make_source_refuses_what_it_cannot_build(
        monkeypatch: pytest.MonkeyPatch, version: str, env: str, message: str) -> None:
    """A codec source for 3.1.1, or an unknown name, is one configuration error line."""
    monkeypatch.setenv("METER_SOURCE", env)
    settings = load_settings({"broker": "mqtt://127.0.0.1:1883", "mqtt_version": version}, {})
    with pytest.raises(ConfigError) as caught:
        make_source(settings)
    assert message == str(caught.value)
