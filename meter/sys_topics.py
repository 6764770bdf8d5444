"""The broker's own counters from Mosquitto's `$SYS` tree: messages it dropped (a full queue, a
packet too large) and messages it holds. A second, plain connection (clean session, QoS 0, its
own client id) reads them, so the meter's session and its acknowledgements are never involved.

Where `$SYS` is not readable (an ACL, RabbitMQ, which has no such tree) nothing arrives: the
metrics stay absent and one log line says so once `SYS_WAIT_SECONDS` pass without a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Final

import aiomqtt

from meter.config import Settings
from meter.source import backoff_delay

__all__ = ["DROPPED", "QUEUED", "SYS_WAIT_SECONDS", "BrokerStats", "parse_count", "watch"]

log = logging.getLogger("meter.sys_topics")

#: Messages Mosquitto dropped, broker-wide, since it started (reset by a broker restart).
DROPPED: Final = "$SYS/broker/publish/messages/dropped"
#: Messages Mosquitto holds (queued for sessions, in flight, retained).
QUEUED: Final = "$SYS/broker/store/messages/count"
#: How long to wait for a first `$SYS` value before saying the tree is not readable. Mosquitto
#: publishes it every `sys_interval` (10 s by default) and keeps the last value retained.
SYS_WAIT_SECONDS: Final = 30.0


@dataclass(slots=True)
class BrokerStats:
    """The latest values read (None: never seen on this broker)."""

    dropped: int | None = None
    queued: int | None = None


def parse_count(payload: bytes) -> int | None:
    """A `$SYS` counter's payload (ASCII digits) as an int; None for anything else."""
    text = payload.decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


async def watch(settings: Settings, stats: BrokerStats, stop: asyncio.Event, *,
                rng: random.Random | None = None) -> None:
    """Keep `stats` current from `$SYS` until `stop` is set; reconnect on broker errors."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    s = settings
    tls = None
    if s.broker.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(s.ca_file) if s.ca_file else None,
            certfile=str(s.cert_file) if s.cert_file else None,
            keyfile=str(s.key_file) if s.key_file else None)
    protocol = (aiomqtt.ProtocolVersion.V311 if s.mqtt_version == "3.1.1"
                else aiomqtt.ProtocolVersion.V5)
    said = False
    attempt = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                    s.broker.host, s.broker.port, username=s.username, password=s.password,
                    identifier=f"{s.client_id}-sys", protocol=protocol, keepalive=s.keepalive,
                    timeout=5, tls_params=tls) as client:
                await client.subscribe([(DROPPED, 0), (QUEUED, 0)])
                attempt = 0
                while not stop.is_set():
                    wait = None if said or stats.dropped is not None else max(
                        0.0, started + SYS_WAIT_SECONDS - loop.time())
                    message = await _next(client, stop, wait)
                    if message is None:
                        if not said and stats.dropped is None and stats.queued is None:
                            said = True
                            log.warning(
                                "no broker $SYS values from %s in %.0fs ($SYS not readable: an "
                                "ACL, or a broker without it such as RabbitMQ): "
                                "meter_broker_dropped_messages_total and "
                                "meter_broker_queued_messages are absent",
                                s.broker.url, SYS_WAIT_SECONDS)
                        continue
                    value = parse_count(message.payload if isinstance(message.payload, bytes)
                                        else str(message.payload).encode())
                    if value is None:
                        continue
                    if message.topic.matches(DROPPED):
                        stats.dropped = value
                    elif message.topic.matches(QUEUED):
                        stats.queued = value
        except aiomqtt.MqttError as exc:
            if stop.is_set():
                return
            delay = backoff_delay(attempt, s.reconnect_min, s.reconnect_max, rng)
            attempt += 1
            log.debug("$SYS connection to %s: %s; retrying in %.1fs", s.broker.url, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


async def _next(client: aiomqtt.Client, stop: asyncio.Event,
                wait: float | None) -> aiomqtt.Message | None:
    """The next message (from aiomqtt 2.x's `_queue`, as meter.source reads it); None after
    `wait` seconds or when `stop` is set; MqttError when the connection drops."""
    disconnected = client._disconnected
    getter = asyncio.ensure_future(client._queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({getter, stopper, disconnected},  # type: ignore[type-var]
                           timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    if disconnected.done():
        raise aiomqtt.MqttError(f"connection lost: {disconnected.exception()}")
    return None
