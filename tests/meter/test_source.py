"""The MQTT source against real brokers, on both protocols: Mosquitto at MQTT 5 and 3.1.1, and a
private RabbitMQ node (MQTT plugin, 3.1.1 only). Batches are handed over one at a time in arrival
order, and only a batch whose commit has returned is acknowledged (the rest come back to the next
connection of the same client id)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiomqtt
import pytest

from meter.config import load_settings
from meter.source import Delivery, MqttSource
from tests.conftest import Broker
from tests.rabbitmq import RabbitNode

pytestmark = pytest.mark.broker


@dataclass(frozen=True)
class Target:
    """A broker and the protocol the source speaks to it."""

    host: str
    port: int
    url: str
    mqtt_version: str


@pytest.fixture(params=["mosquitto-5", "mosquitto-3.1.1", "rabbitmq-3.1.1"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each broker and protocol the source's contract holds on."""
    name, version = request.param.split("-")
    broker: Broker | RabbitNode = request.getfixturevalue(
        "mosquitto" if name == "mosquitto" else "rabbitmq")
    return Target(broker.host, broker.port, broker.url, version)


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


async def test_batches_commit_one_at_a_time_and_only_committed_ones_are_acknowledged(
        target: Target, topic_prefix: str) -> None:
    """15 messages in batches of 5: batch 1 is handed over only after batch 0's commit returned.
    The daemon dies while batch 1 commits: the next connection of the same client id gets
    exactly batches 1 and 2 back, and nothing of batch 0."""
    settings = load_settings({
        "broker": target.url, "topic_prefix": topic_prefix, "batch_max": "5",
        "batch_wait": "2s", "client_id": f"src-{uuid.uuid4().hex[:8]}",
        "mqtt_version": target.mqtt_version}, {})
    connected = asyncio.Event()
    first = Recording(hold=(0, 1))
    task = asyncio.create_task(MqttSource(settings, on_connected=lambda up: up and connected.set())
                               .run(first, asyncio.Event()))
    await asyncio.wait_for(connected.wait(), 10)
    async with aiomqtt.Client(target.host, target.port) as publisher:
        for i in range(15):
            await publisher.publish(f"{topic_prefix}/acme/events", f"m{i:02d}", qos=1)

    await until(lambda: ("commit", 0) in first.log, "batch 0")
    await asyncio.sleep(0.3)  # time enough to (wrongly) hand over batch 1 already
    assert [("commit", 0)] == first.log
    first.gates[0].set()
    await until(lambda: ("commit", 1) in first.log, "batch 1")
    await asyncio.sleep(0.3)
    assert [("commit", 0), ("committed", 0), ("commit", 1)] == first.log
    assert [[f"m{i:02d}" for i in range(b * 5, b * 5 + 5)] for b in range(2)] == first.batches
    task.cancel()  # the daemon dies while batch 1 commits
    with pytest.raises(asyncio.CancelledError):
        await task

    second = Recording()
    stop = asyncio.Event()
    task = asyncio.create_task(MqttSource(settings).run(second, stop))
    await until(lambda: len(second.payloads) >= 10, "the redelivery")
    await asyncio.sleep(0.5)  # anything acknowledged would have come back by now, too
    stop.set()
    await asyncio.wait_for(task, 10)
    assert {f"m{i:02d}" for i in range(5, 15)} == second.payloads


async def test_mqtt_5_to_a_broker_without_it_says_to_use_3_1_1(
        rabbitmq: RabbitNode, topic_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ 3.10 closes an MQTT 5 CONNECT without a CONNACK; the source's retry line says
    what to do instead of only "Operation timed out"."""
    settings = load_settings({"broker": rabbitmq.url, "topic_prefix": topic_prefix,
                              "client_id": f"src-{uuid.uuid4().hex[:8]}"}, {})
    stop = asyncio.Event()
    with caplog.at_level("WARNING", logger="meter.source"):
        task = asyncio.create_task(MqttSource(settings).run(Recording(), stop))
        await until(lambda: any("retrying" in r.getMessage() for r in caplog.records),
                    "the retry line")
        stop.set()
        await asyncio.wait_for(task, 10)
    line = next(r.getMessage() for r in caplog.records if "retrying" in r.getMessage())
    assert line.startswith(f"broker {rabbitmq.url}: Operation timed out; retrying in ")
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
