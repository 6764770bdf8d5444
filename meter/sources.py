"""The two MQTT sources behind one interface, and the choice between them: `CodecSource`
(`meter.source_codec`, the mqtt5 codec on an asyncio Protocol) for MQTT 5, `MqttSource`
(`meter.source`, aiomqtt/paho) for 3.1.1; the environment's METER_SOURCE overrides it."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from typing import Final, Protocol

from meter.config import Settings
from meter.errors import ConfigError
from meter.source import Handler, MqttSource, Takeovers
from meter.source_codec import CodecSource

__all__ = ["SOURCES", "Source", "make_source"]


class Source(Protocol):
    """What `meter serve` uses of a source (`MqttSource`, `CodecSource`)."""

    acked: int
    generation: int
    connected_at: float | None
    received_at: float | None
    takeovers: Takeovers
    retire: bool

    async def run(self, handle: Handler, stop: asyncio.Event) -> None: ...


#: The implementations METER_SOURCE names.
SOURCES: Final = ("codec", "aiomqtt")


def make_source(settings: Settings, *,
                on_connected: Callable[[bool], None] = lambda _: None,
                on_reconnect: Callable[[], None] = lambda: None,
                on_takeover: Callable[[], None] = lambda: None,
                rng: random.Random | None = None) -> MqttSource | CodecSource:
    """The source for `settings`: the codec one for MQTT 5, aiomqtt for 3.1.1, unless the
    environment's METER_SOURCE names one."""
    choice = os.environ.get("METER_SOURCE", "").strip().lower()
    if choice and choice not in SOURCES:
        raise ConfigError(f"METER_SOURCE: {choice!r} is not one of {', '.join(SOURCES)}")
    if not choice:
        choice = "codec" if settings.mqtt_version == "5" else "aiomqtt"
    if choice == "aiomqtt":
        return MqttSource(settings, on_connected=on_connected, on_reconnect=on_reconnect,
                          on_takeover=on_takeover, rng=rng)
    return CodecSource(settings, on_connected=on_connected, on_reconnect=on_reconnect,
                       on_takeover=on_takeover, rng=rng)
