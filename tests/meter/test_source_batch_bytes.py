"""The MQTT source bounds a batch by payload bytes as well as by count: what the daemon holds
of messages it has received but not yet committed stays under `batch_max_bytes` plus one
message, however large the messages are."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import aiomqtt
import pytest

from meter.config import load_settings
from meter.source import Delivery
from tests.conftest import Broker
from tests.meter.test_source import MQTT5_SOURCES, SourceClass, until

pytestmark = pytest.mark.broker

#: 40 messages of 100 KiB with a cap of 256 KiB: without it they fit one batch of 1000 (4 MB).
COUNT, SIZE, CAP = 40, 100 * 1024, 256 * 1024


@pytest.mark.parametrize("source_class", MQTT5_SOURCES)
async def test_a_batch_is_capped_by_payload_bytes(mosquitto: Broker, topic_prefix: str,
                                                  source_class: SourceClass) -> None:
    """Every batch holds at most CAP bytes plus the one message that crossed it (3 of these
    messages), and every message is delivered once, in order (old code: the count cap alone,
    so batches of up to 1000 such messages, 100 MB, at the count cap of then)."""
    settings = load_settings({
        "broker": mosquitto.url, "topic_prefix": topic_prefix, "batch_max_bytes": str(CAP),
        "batch_wait": "1s", "max_bytes": str(2 * SIZE),
        "client_id": f"src-{uuid.uuid4().hex[:8]}"}, {})
    assert 4000 == settings.batch_max
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def handle(batch: Sequence[Delivery]) -> bool:
        batches.append([int(d.payload[:4]) for d in batch])
        await gate.wait()  # hold the first commit so the rest queue up behind it
        return True

    connected = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(source_class(settings, on_connected=lambda up: up and connected.set())
                               .run(handle, stop))
    await asyncio.wait_for(connected.wait(), 10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(COUNT):
            await publisher.publish(f"{topic_prefix}/acme/events",
                                    f"{i:04d}".encode() + b"x" * (SIZE - 4), qos=1)
    await until(lambda: len(batches) >= 1, "the first batch")
    await asyncio.sleep(0.3)  # the rest arrive and wait in the queue
    gate.set()
    await until(lambda: sum(map(len, batches)) >= COUNT, "every message")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert list(range(COUNT)) == [i for b in batches for i in b]
    sizes = [len(b) for b in batches]
    assert CAP // SIZE + 1 == max(sizes), sizes
