"""The MQTT source: a persistent QoS 1 subscription that hands messages over in batches and
acknowledges each one only after the handler has committed its batch.

Under aiomqtt 2.x, paho acknowledges a QoS 1 message as soon as it is read, before the
application sees it: a crash then loses billing data the broker has already forgotten. We switch
paho's `manual_ack` on before connecting and send each PUBACK ourselves, in arrival order, after
the commit. aiomqtt exposes neither this nor a race-free "next message or timeout", so this module
reaches into `client._client` (paho) and `client._queue` / `client._disconnected`; both are
stable across aiomqtt 2.x and pinned in pyproject.

Every connection is a new `aiomqtt.Client`: a batch is acknowledged only through the connection
that delivered it and only while that connection is up, so a message id from an earlier
connection is never acknowledged (the broker redelivers those; the store drops the copies).
MQTT 5 with a fixed client id, clean start off and a session expiry keeps the session (and its
queue) across restarts; Receive Maximum bounds how much the broker has in flight to us. MQTT 3.1.1
(`mqtt_version`, for RabbitMQ 3.x) keeps it with clean_session off; the broker's own limit
(RabbitMQ's `mqtt.prefetch`) bounds what is in flight. Acknowledging, batching and redelivery are
the same on both.

RabbitMQ 3.10 sometimes leaves a few messages unacknowledged to a connected consumer, never
delivered, until it reconnects. On 3.1.1 a connection that received messages and then nothing for
`STALL_SECONDS` is therefore closed and opened again, once per quiet spell: the broker then
redelivers whatever it still holds for us.

A client id belongs to one daemon. When a second one connects with it, the broker drops the first
(a session takeover) and the two would take the session from each other forever, each storing
some of the events; `Takeovers` names that and makes the loser back off with a growing delay.

`make_source` picks the implementation: for MQTT 5 the `mqtt5` codec source
(meter/source_codec.py, same contract at a fraction of the CPU), for 3.1.1 this one. The
environment variable METER_SOURCE=aiomqtt|codec overrides that (an escape hatch: aiomqtt for MQTT
5 if the codec source misbehaves somewhere; codec with 3.1.1 is a configuration error).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from meter.config import Settings

__all__ = ["SESSION_TAKEN_OVER", "STALL_SECONDS", "Delivery", "Handler", "MqttSource",
           "Reconnecting", "Takeovers", "backoff_delay", "topic_account"]

log = logging.getLogger("meter.source")


class _PublishProperties(Properties):
    """paho's MQTT 5 `Properties` with its lookup tables built once instead of per message.

    paho decodes every incoming PUBLISH into a new `Properties`, whose constructor rebuilds two
    27-entry tables through a validating `__setattr__`: a third of the daemon's CPU at full load
    (bench/ingest.py with py-spy). The tables are never mutated, so instances share them.
    """

    _STOCK: ClassVar[Properties] = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _OWN: ClassVar[frozenset[str]] = frozenset(("packetType", "types", "names", "properties"))

    def __init__(self, packetType: int) -> None:
        stock = self._STOCK.__dict__
        self.__dict__.update(packetType=packetType, types=stock["types"], names=stock["names"],
                             properties=stock["properties"])

    def clear(self) -> None:
        for key in [k for k in self.__dict__ if k not in self._OWN]:
            del self.__dict__[key]


def _use_fast_publish_properties() -> None:
    # Only the PUBLISH decoder's name is swapped; everything else paho builds stays stock.
    from paho.mqtt import _packet  # noqa: PLC0415 - private module, touched once, here only

    if getattr(_packet, "Properties", None) is Properties:
        _packet.Properties = _PublishProperties  # type: ignore[attr-defined]


_use_fast_publish_properties()


class Delivery(msgspec.Struct, frozen=True):
    """One message as handed to the handler (a `msgspec.Struct`: one is built per message, in
    0.17 us against a frozen dataclass's 1.2)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection delivered it (1, 2, ...)


#: Commits a batch; returns True once it is durable (then it is acknowledged), False when it was
#: not stored (shutdown with the store down): nothing is acknowledged and the broker redelivers.
#: `CodecSource` calls it for the next batch while the last one's call is still running (at most
#: one ahead), so a handler commits in call order (`meter.serve.Ingestor` does, under its lock).
Handler = Callable[[Sequence[Delivery]], Awaitable[bool]]


def topic_account(topic: str, prefix: str) -> str | None:
    """The account level of `<prefix>/<account>/events`, or None for any other topic."""
    head, sep, rest = topic.partition(prefix + "/")
    if head or not sep:
        return None
    account, sep, tail = rest.partition("/")
    return account if sep and tail == "events" and account else None


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter: uniform in [low, min(high, low * 2**attempt)]."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return rng.uniform(low, max(low, ceiling))


#: MQTT 5 DISCONNECT reason code "Session taken over".
SESSION_TAKEN_OVER: Final = 0x8E
#: What paho reports for a connection the broker closed without a DISCONNECT packet (and for a
#: DISCONNECT with "Unspecified error").
_CLOSED_WITHOUT_REASON: Final = 0x80
#: MQTT 3.1.1 only: reconnect after this long without a message on a connection that had some.
STALL_SECONDS: Final = 10.0
#: The first takeover delay; each further takeover in a row doubles it, up to `reconnect_max`.
TAKEOVER_FIRST_DELAY: Final = 1.0


def disconnect_reason(client: aiomqtt.Client | None) -> int | None:
    """The reason code of the disconnect `client` saw (None: it was not connected, or no code)."""
    if client is None or not client._disconnected.done() or client._disconnected.cancelled():
        return None
    exc = client._disconnected.exception()
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


class Takeovers:
    """Tells a session takeover from other disconnects and says how long to stay away.

    A takeover is certain when the broker says so (DISCONNECT 0x8E: EMQX, HiveMQ, RabbitMQ 3.13,
    newer Mosquitto). Mosquitto 2.0.11 says nothing: it closes the old connection without a
    DISCONNECT, which paho reports as 0x80, as it does for a broker that crashed. So a close
    without a reason counts as a takeover only when it ends the second connection in a row that
    the broker accepted at the first try after such a close: one fast broker restart (the fault
    tests restart it within 0.1s) is not a takeover, two daemons fighting are, from their second
    round on. Once in a streak every such close of a connection is one.

    Takeover n in a row waits uniformly in [d/2, d], d = TAKEOVER_FIRST_DELAY * 2**(n-1) capped at
    `reconnect_max`: at least half the cap once capped, so two daemons sharing a client id
    reconnect at most 2 * 60 / reconnect_max times a minute each (4 with the default 30s), not 2-3
    times a second. The streak ends only when a connection outlives 2 * `reconnect_max`: the other
    daemon's delay is at most `reconnect_max`, so while both run it never ends.
    """

    def __init__(self, reconnect_max: float, rng: random.Random) -> None:
        self.reconnect_max = reconnect_max
        self._rng = rng
        self.streak = 0
        self._unexplained = False  # the last drop was a close without a reason
        self._suspect = False  # ... and the broker took us back at the first try

    def on_disconnect(self, reason: int | None, lived: float | None) -> float | None:
        """A connection ended with `reason` after `lived` seconds subscribed (None: it never
        was): the delay before reconnecting if it was a takeover, else None (the usual backoff)."""
        if lived is not None and lived > 2 * self.reconnect_max:
            self.streak = 0
            self._suspect = False
        closed = reason == _CLOSED_WITHOUT_REASON and lived is not None
        taken = reason == SESSION_TAKEN_OVER or (closed and (self.streak > 0 or self._suspect))
        self._unexplained = closed and not taken
        self._suspect = False
        return self._taken() if taken else None

    def on_connected(self) -> None:
        """Subscribed again; a close without a reason just before makes the next one a takeover."""
        self._suspect = self._unexplained
        self._unexplained = False

    def _taken(self) -> float:
        self.streak += 1
        ceiling = min(self.reconnect_max,
                      TAKEOVER_FIRST_DELAY * 2 ** min(self.streak - 1, 30))
        return self._rng.uniform(ceiling / 2, ceiling)


def _size(message: aiomqtt.Message) -> int:
    """Payload bytes of a message (what a batch holds of it)."""
    payload = message.payload
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 8


class _Stall(aiomqtt.MqttError):
    """Internal: a 3.1.1 connection went quiet after traffic; reconnect at once."""


class _Stopped(Exception):
    """Internal: stop was requested while waiting for the first message of a batch."""


class Reconnecting:
    """What both MQTT sources share (`MqttSource`, `meter.source_codec.CodecSource`): the state
    `meter serve` reads, the callbacks, and the wait after a lost connection (capped, jittered
    backoff; a longer one after a session takeover)."""

    def __init__(self, settings: Settings, *,
                 on_connected: Callable[[bool], None] = lambda _: None,
                 on_reconnect: Callable[[], None] = lambda: None,
                 on_takeover: Callable[[], None] = lambda: None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self._on_connected = on_connected
        self._on_reconnect = on_reconnect
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._on_takeover = on_takeover
        self.takeovers = Takeovers(settings.reconnect_max, self._rng)
        # One number per connection attempt: a failed attempt uses one up, so they may skip.
        self._generations = itertools.count(1)
        self.generation = 0
        self.acked = 0
        #: Wall-clock time (time.time()) the current connection was subscribed; None while down.
        self.connected_at: float | None = None
        #: Wall-clock time the last message was received, on any connection; None before one.
        self.received_at: float | None = None
        #: Unsubscribe instead of subscribing: the session of a retired cluster slot stops
        #: getting its share of new messages and only gives up what it holds (meter.cluster).
        self.retire = False

    def _took_over(self, how: str, delay: float) -> None:
        self._on_takeover()
        log.error("another client took over session `%s` on %s (%s, %d in a row); reconnecting "
                  "in %.1fs instead of fighting: a client id belongs to one meter serve, give "
                  "each database its own --client-id", self.settings.client_id,
                  self.settings.broker.url, how, self.takeovers.streak, delay)

    async def _wait_after_loss(self, why: str, hint: str, *, reason: int | None,
                               lived: float | None, attempt: int, stop: asyncio.Event) -> int:
        """Wait before connecting again after a connection was lost (`reason`: the broker's
        DISCONNECT reason, if it sent one; `lived`: how long it was subscribed); returns the
        attempt count to go on with."""
        taken = self.takeovers.on_disconnect(reason, lived)
        if taken is not None:
            how = ("MQTT reason 0x8E" if reason == SESSION_TAKEN_OVER else
                   "closed without a reason twice after reconnects the broker took at once")
            self._took_over(how, taken)
            delay, attempt = taken, 0
        else:
            delay = backoff_delay(attempt, self.settings.reconnect_min,
                                  self.settings.reconnect_max, self._rng)
            attempt += 1
            log.warning("broker %s: %s; retrying in %.1fs%s", self.settings.broker.url, why,
                        delay, hint)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        return attempt


class MqttSource(Reconnecting):
    """Connects, subscribes, batches and acknowledges; reconnects on broker errors forever."""

    def __init__(self, settings: Settings, *,
                 on_connected: Callable[[bool], None] = lambda _: None,
                 on_reconnect: Callable[[], None] = lambda: None,
                 on_takeover: Callable[[], None] = lambda: None,
                 rng: random.Random | None = None) -> None:
        super().__init__(settings, on_connected=on_connected, on_reconnect=on_reconnect,
                         on_takeover=on_takeover, rng=rng)
        #: Quiet spell on a 3.1.1 connection after which it reconnects (see STALL_SECONDS).
        self.stall_seconds = STALL_SECONDS
        self.stall_reconnects = 0

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        tls = None
        if s.broker.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
            )
        common: dict[str, Any] = {
            "username": s.username, "password": s.password, "identifier": s.client_id,
            "keepalive": s.keepalive, "timeout": 5, "tls_params": tls}
        if s.mqtt_version == "3.1.1":
            # clean_session off: the broker keeps the subscription and its queue while we are away.
            client = aiomqtt.Client(s.broker.host, s.broker.port,
                                    protocol=aiomqtt.ProtocolVersion.V311, clean_session=False,
                                    **common)
        else:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry
            props.ReceiveMaximum = s.receive_maximum
            client = aiomqtt.Client(
                s.broker.host, s.broker.port,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,  # never: a clean start would drop what the broker queued for us
                properties=props, **common)
        # Before connecting: the broker may deliver queued messages right after CONNACK.
        client._client.manual_ack_set(True)
        return client

    async def run(self, handle: Handler, stop: asyncio.Event) -> None:
        """Deliver batches to `handle` until `stop` is set; then commit and acknowledge what had
        arrived, disconnect cleanly and return. Only broker errors are retried."""
        attempt = 0
        first = True
        while not stop.is_set():
            if not first:
                self._on_reconnect()
            first = False
            client: aiomqtt.Client | None = None
            subscribed: float | None = None
            try:
                client = self._client()
                async with client:
                    self.generation = next(self._generations)
                    granted = await self._subscribe(client)
                    codes = [getattr(c, "value", c) for c in granted]
                    if not codes or codes[0] not in (1, 2):
                        raise aiomqtt.MqttError(
                            f"broker refused the subscription to {self.settings.subscription} "
                            f"(reason {granted[0] if granted else '?'}); check the ACL")
                    self.takeovers.on_connected()
                    attempt = 0
                    self.connected_at = subscribed = time.time()
                    self._on_connected(True)
                    log.info("connected to %s as %s (connection %d), subscribed to %s",
                             self.settings.broker.url, self.settings.client_id, self.generation,
                             self.settings.subscription)
                    try:
                        await self._consume(client, handle, stop)
                    finally:
                        self.connected_at = None
                        self._on_connected(False)
                log.info("disconnected from %s", self.settings.broker.url)
                return
            except aiomqtt.MqttError as exc:
                lived = None if subscribed is None else time.time() - subscribed
                self.connected_at = None
                self._on_connected(False)
                if stop.is_set():
                    return
                if isinstance(exc, _Stall):
                    continue
                attempt = await self._wait_after_loss(
                    str(exc), self._hint(exc, connected=client is not None
                                         and client._connected.done()),
                    reason=disconnect_reason(client), lived=lived, attempt=attempt, stop=stop)

    def _hint(self, exc: aiomqtt.MqttError, *, connected: bool) -> str:
        """What to try when a CONNECT got no CONNACK: a broker without MQTT 5 (RabbitMQ before
        3.13) closes a v5 CONNECT without one, which paho reports only as a timeout."""
        if connected or self.settings.mqtt_version != "5" or "timed out" not in str(exc):
            return ""
        return (" (no CONNACK to an MQTT 5 CONNECT: if this broker has no MQTT 5, such as "
                "RabbitMQ before 3.13, use --mqtt-version 3.1.1)")

    async def _subscribe(self, client: aiomqtt.Client) -> Sequence[object]:
        """Subscribe and wait for the SUBACK for as long as the connection lives. A broker that
        resumes our session first resends the unacknowledged messages, and the SUBACK queues
        behind them; after repeated SIGKILLs under load Mosquitto 2.0.11 resent some 35,000 at
        once (more than Receive Maximum). Reading those can outlast any fixed timeout, and
        timing out here reconnected into the same flood forever (tests/faults found it)."""
        sub = asyncio.ensure_future(
            client.unsubscribe(self.settings.subscription, timeout=math.inf) if self.retire else
            client.subscribe(self.settings.subscription, qos=1, timeout=math.inf))
        disconnected = client._disconnected
        try:
            await asyncio.wait({sub, disconnected}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        finally:
            if not sub.done():
                sub.cancel()
        if sub.done() and not sub.cancelled():
            granted = sub.result()
            return [1] if self.retire or granted is None else granted
        raise aiomqtt.MqttError(f"connection lost while subscribing: {disconnected.exception()}")

    async def _next(self, client: aiomqtt.Client, wait: float | None,
                    stop: asyncio.Event | None) -> aiomqtt.Message | None:
        """The next message, or None after `wait` seconds; raises MqttError when the connection drops
        and `_Stopped` when `stop` is set. A message is never lost to a timeout: the queue
        getter is cancelled only when it has not completed (asyncio.Queue then keeps the item)."""
        queue = client._queue
        disconnected = client._disconnected
        if disconnected.done():
            raise aiomqtt.MqttError(f"connection lost: {disconnected.exception()}")
        if stop is not None and stop.is_set():
            # Checked before the queue: under steady load the queue is never empty, and the
            # bounded drain in _consume must take over from here.
            raise _Stopped
        with contextlib.suppress(asyncio.QueueEmpty):
            message = queue.get_nowait()
            self.received_at = time.time()
            return message
        if wait is not None and wait <= 0:
            return None
        getter = asyncio.ensure_future(queue.get())
        waiters: set[asyncio.Future[object]] = {getter, disconnected}  # type: ignore[arg-type]
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waiters.add(stopper)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            self.received_at = time.time()
            return getter.result()
        if disconnected.done():
            raise aiomqtt.MqttError(f"connection lost: {disconnected.exception()}")
        if stopper is not None and stop is not None and stop.is_set():
            raise _Stopped
        return None

    async def _consume(self, client: aiomqtt.Client, handle: Handler, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        # On 3.1.1 (RabbitMQ), wait at most STALL_SECONDS after the last message of this
        # connection; None: wait for the next one however long (nothing received since connecting).
        watch_stall = s.mqtt_version == "3.1.1"
        received = False
        while True:
            try:
                message = await self._next(client, self.stall_seconds if received else None, stop)
            except _Stopped:
                break
            if message is None:
                # Received some, then nothing for a while: let the broker redeliver what it may
                # still hold for us (see the module docstring).
                log.info("no message for %.0fs after %d on connection %d; reconnecting so the "
                         "broker redelivers anything it still holds unacknowledged",
                         self.stall_seconds, self.acked, self.generation)
                self.stall_reconnects += 1
                raise _Stall("quiet after traffic")
            received = watch_stall
            batch = [message]
            size = _size(message)
            deadline = loop.time() + s.batch_wait
            # Bounded by bytes too: a batch of large messages (up to the broker's packet size
            # each) is held whole while it is parsed and committed.
            while len(batch) < s.batch_max and size < s.batch_max_bytes:
                remaining = deadline - loop.time()
                message = await self._next(client, max(0.0, remaining), None)
                if message is None:
                    break
                batch.append(message)
                size += _size(message)
            if not await self._commit(client, batch, handle):
                return
        # Stopping: what has already arrived is in flight to us; commit and acknowledge it so a
        # restart sees nothing twice. Whatever arrives from now on stays unacknowledged and the
        # broker redelivers it to the next connection (we keep the subscription: unsubscribing
        # would end the queueing that makes a restart lose nothing).
        pending = client._queue.qsize()
        started = time.monotonic()
        while pending > 0 and time.monotonic() - started < s.shutdown_timeout:
            batch = []
            size = 0
            while len(batch) < min(pending, s.batch_max) and size < s.batch_max_bytes:
                batch.append(client._queue.get_nowait())
                size += _size(batch[-1])
            pending -= len(batch)
            if not await self._commit(client, batch, handle):
                return
        await self._barrier(client)

    async def _barrier(self, client: aiomqtt.Client) -> None:
        """Return once the broker has processed every acknowledgement sent so far.

        The broker keeps sending while we stop, so our socket closes with unread data and the
        kernel resets the connection, which can drop PUBACKs still on their way: a restart then
        gets committed messages again (harmless, but not a clean stop). The broker answers
        packets in order, so its UNSUBACK for a filter we never use proves the PUBACKs before it
        arrived. (Unsubscribing the real filter would end the session's queueing.)"""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(f"{self.settings.topic_prefix}/meter-drain-barrier",
                                     timeout=min(2.0, self.settings.shutdown_timeout))

    async def _commit(self, client: aiomqtt.Client, batch: list[aiomqtt.Message],
                      handle: Handler) -> bool:
        generation = self.generation
        deliveries = [
            Delivery(m.topic.value, m.payload if isinstance(m.payload, bytes) else
                     str(m.payload).encode(), m.mid, m.qos, generation)
            for m in batch
        ]
        if not await handle(deliveries):
            return False
        if client._disconnected.done() or generation != self.generation:
            # Committed but the connection that delivered it is gone: the broker redelivers to
            # the next connection and the store counts those as duplicates.
            raise aiomqtt.MqttError("connection lost before acknowledging a committed batch")
        paho = client._client
        for m in batch:
            paho.ack(m.mid, m.qos)
        self.acked += len(batch)
        return True
