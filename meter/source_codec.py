"""The MQTT 5 source on the `mqtt5` sans-I/O codec over a plain asyncio Protocol: the same
contract as `meter.source.MqttSource` (batches, PUBACK only after the commit, in arrival order, on
the connection that delivered the message; keepalive, reconnect with backoff, takeover detection,
TLS, username/password, session expiry, Receive Maximum, a drain barrier on stop) at a fraction of
its CPU per message.

The client is ours: the codec turns bytes into packets and packets into bytes, `_Connection`
(one per TCP connection) only moves bytes and queues deliveries, `CodecSource.run` owns the
connection's life. A message is a `Delivery` built once, in `data_received`, which parses every
complete packet of a read; PUBACKs of a batch go out as one write. A delivery belongs to the
connection that received it: when that connection is gone its queue is dropped unacknowledged and
the broker redelivers to the next one (the store drops the copies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import mqtt5

from meter.config import Settings
from meter.errors import ConfigError
from meter.source import (
    _CLOSED_WITHOUT_REASON,
    Delivery,
    Handler,
    Reconnecting,
)

__all__ = ["CONNECT_TIMEOUT", "CodecSource"]

log = logging.getLogger("meter.source")

#: Seconds for the TCP (and TLS) connect, and again for the CONNACK (aiomqtt's `timeout=5`).
CONNECT_TIMEOUT: Final = 5.0
_SUBSCRIBE_ID: Final = 1
_BARRIER_ID: Final = 2
_PINGREQ: Final = mqtt5.PingReqPacket().write()
#: A PUBACK with reason Success and no properties is 4 bytes: 0x40, 0x02, packet id (big endian),
#: so a batch's PUBACKs are one struct.pack of 0x40020000 | id per message.
_PUBACK_BASE: Final = 0x40020000
_Publish: Final = mqtt5.PublishPacket


@dataclass(frozen=True, slots=True)
class _Pending:
    """A batch handed to the handler: acknowledged once `committed` says True."""

    batch: list[Delivery]
    committed: asyncio.Future[bool]


class _Lost(Exception):
    """Internal: the connection failed or closed; retried with backoff (a broker error)."""


class _NoConnAck(_Lost):
    """Internal: connected over TCP, but the broker answered the CONNECT with no CONNACK."""


class _Connection(asyncio.Protocol):
    """One TCP connection: parses what arrives, queues deliveries, answers nothing on its own
    except what `CodecSource` tells it to write."""

    def __init__(self, owner: CodecSource, generation: int) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Delivery] = deque()
        self._buf = bytearray()
        self.heard = self.sent = self._loop.time()
        self.ping_out = False
        #: Reading is paused while the queue is above `high_water` (set once subscribed).
        self.paused = False
        self.high_water: int | None = None
        self.lost = False
        #: Done once the connection is closed, whoever closed it.
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.keepalive_task: asyncio.Task[None] | None = None
        self.why = ""
        #: A DISCONNECT's reason code, or 0x80 for a close by the broker without one; None when
        #: we closed it ourselves (what `Takeovers` reads).
        self.reason: int | None = None
        self._closing = False
        self._waiter: asyncio.Future[None] | None = None
        self.connack: asyncio.Future[mqtt5.ConnAckPacket | None] = self._loop.create_future()
        self.acks: dict[int, asyncio.Future[mqtt5.SubAckPacket | mqtt5.UnsubAckPacket | None]] = {}

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.heard = self._loop.time()
        buf = self._buf
        source: bytes | bytearray = data
        if buf:
            buf += data
            source = buf
        view = memoryview(source)
        end = len(source)
        pos = 0
        queue = self.queue
        generation = self.generation
        published = False
        read, publish = mqtt5.read, _Publish
        try:
            while pos < end:
                try:
                    packet, n = read(view[pos:])
                except IndexError:  # "Not enough bytes": the rest comes with the next read
                    break
                pos += n
                if type(packet) is publish:
                    qos = packet.qos
                    if qos == 1:
                        queue.append(Delivery(packet.topic, packet.payload, packet.packet_id or 0,
                                              1, generation))
                    elif qos == 0:
                        queue.append(Delivery(packet.topic, packet.payload, 0, 0, generation))
                    else:
                        raise ValueError(f"a QoS {int(qos)} PUBLISH on a QoS 1 subscription")
                    published = True
                else:
                    self._control(packet)
        except ValueError as exc:  # the codec's word for a malformed packet
            view.release()
            self.fail(f"malformed packet from the broker: {exc}")
            return
        view.release()
        if source is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        if published:
            self._owner.received_at = time.time()
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self.high_water is not None and len(queue) >= self.high_water and not self.paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.why:
            self.why = f"connection lost: {exc}" if exc else "connection closed by the broker"
        if self.reason is None and not self._closing:
            self.reason = _CLOSED_WITHOUT_REASON
        if not self.connack.done():
            self.connack.set_result(None)
        for fut in self.acks.values():
            if not fut.done():
                fut.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        self.wake()

    # --- control packets --------------------------------------------------------------------------

    def _control(self, packet: object) -> None:
        if isinstance(packet, mqtt5.PingRespPacket):
            self.ping_out = False
        elif isinstance(packet, mqtt5.SubAckPacket | mqtt5.UnsubAckPacket):
            fut = self.acks.get(packet.packet_id)
            if fut is not None and not fut.done():
                fut.set_result(packet)
        elif isinstance(packet, mqtt5.ConnAckPacket):
            if not self.connack.done():
                self.connack.set_result(packet)
        elif isinstance(packet, mqtt5.DisconnectPacket):
            self.reason = int(packet.reason_code)
            self.why = (f"the broker disconnected: {packet.reason_code.name} "
                        f"(0x{self.reason:02X}){': ' + packet.reason_str if packet.reason_str else ''}")
            self.close()
        else:
            # Nothing else comes to a subscriber that never publishes (AUTH: no method asked for).
            raise ValueError(f"unexpected {type(packet).__name__}")

    # --- used by CodecSource ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)
            self.sent = self._loop.time()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def woken(self, _: object) -> None:
        """`wake` as a done callback (of the stop event's waiter)."""
        self.wake()

    async def wait(self, until: float | None) -> None:
        """Until something arrives, the connection is lost, `wake`, or loop time `until`."""
        waiter = self._waiter = self._loop.create_future()
        handle = None if until is None else self._loop.call_at(until, self.wake)
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def took(self) -> None:
        """The consumer took deliveries off the queue: resume reading below half the mark."""
        if self.paused and self.high_water is not None and len(self.queue) <= self.high_water // 2:
            self.resume()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.lost:
            self.transport.resume_reading()
        self.paused = False

    def fail(self, why: str) -> None:
        """Drop the connection at once (no DISCONNECT): a dead or misbehaving broker."""
        if not self.why:
            self.why = why
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()


class CodecSource(Reconnecting):
    """Connects, subscribes, batches and acknowledges over the `mqtt5` codec (MQTT 5 only);
    reconnects on broker errors forever. The public surface is `MqttSource`'s."""

    def __init__(self, settings: Settings, *,
                 on_connected: Callable[[bool], None] = lambda _: None,
                 on_reconnect: Callable[[], None] = lambda: None,
                 on_takeover: Callable[[], None] = lambda: None,
                 rng: random.Random | None = None) -> None:
        if settings.mqtt_version != "5":
            raise ConfigError(f"the mqtt5 codec source speaks MQTT 5 only, not "
                              f"{settings.mqtt_version}")
        super().__init__(settings, on_connected=on_connected, on_reconnect=on_reconnect,
                         on_takeover=on_takeover, rng=rng)

    async def run(self, handle: Handler, stop: asyncio.Event) -> None:
        """Deliver batches to `handle` until `stop` is set; then commit and acknowledge what had
        arrived, disconnect cleanly and return. Only broker errors are retried."""
        attempt = 0
        first = True
        while not stop.is_set():
            if not first:
                self._on_reconnect()
            first = False
            conn: _Connection | None = None
            subscribed: float | None = None
            stopper: asyncio.Task[bool] | None = None
            try:
                conn = await self._connect()
                self.generation = conn.generation
                stopper = asyncio.ensure_future(stop.wait())
                stopper.add_done_callback(conn.woken)
                granted = await self._subscribe(conn)
                if granted not in (1, 2):
                    raise _Lost(f"broker refused the subscription to {self.settings.subscription} "
                                f"(reason {granted}); check the ACL")
                self.takeovers.on_connected()
                attempt = 0
                self.connected_at = subscribed = time.time()
                self._on_connected(True)
                log.info("connected to %s as %s (connection %d, mqtt5 codec), subscribed to %s",
                         self.settings.broker.url, self.settings.client_id, self.generation,
                         self.settings.subscription)
                try:
                    await self._consume(conn, handle, stop)
                finally:
                    self.connected_at = None
                    self._on_connected(False)
                await self._disconnect(conn)
                log.info("disconnected from %s", self.settings.broker.url)
                return
            except (_Lost, OSError) as exc:
                lived = None if subscribed is None else time.time() - subscribed
                self.connected_at = None
                self._on_connected(False)
                if stop.is_set():
                    return
                attempt = await self._wait_after_loss(
                    str(exc), self._hint(exc),
                    reason=conn.reason if conn is not None else None, lived=lived,
                    attempt=attempt, stop=stop)
            finally:
                if stopper is not None:
                    stopper.cancel()
                if conn is not None:
                    if conn.keepalive_task is not None:
                        conn.keepalive_task.cancel()
                    if not conn.lost:
                        conn.fail("closed")

    def _hint(self, exc: BaseException) -> str:
        """What to try when a CONNECT got no CONNACK: a broker without MQTT 5 (RabbitMQ before
        3.13) closes a v5 CONNECT without one."""
        if not isinstance(exc, _NoConnAck):
            return ""
        return (" (no CONNACK to an MQTT 5 CONNECT: if this broker has no MQTT 5, such as "
                "RabbitMQ before 3.13, use --mqtt-version 3.1.1)")

    def _ssl(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.broker.tls:
            return None
        # As paho's tls_set: the system's CAs unless a CA file is given; the host name checked.
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if s.cert_file:
            context.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        return context

    async def _connect(self) -> _Connection:
        """A connection the broker has accepted (CONNACK Success), keepalive running."""
        s = self.settings
        loop = asyncio.get_running_loop()
        conn = _Connection(self, next(self._generations))
        context = self._ssl()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(
                    lambda: conn, s.broker.host, s.broker.port, ssl=context,
                    server_hostname=s.broker.host if context is not None else None)
        except TimeoutError:
            raise _Lost(f"timed out connecting (no TCP{'/TLS' if context else ''} connection "
                        f"within {CONNECT_TIMEOUT:g}s)") from None
        try:
            conn.send(mqtt5.ConnectPacket(
                s.client_id, username=s.username,
                password=s.password.encode() if s.password is not None else None,
                clean_start=False,  # never: a clean start would drop what the broker queued for us
                keep_alive=s.keepalive, session_expiry_interval=s.session_expiry,
                receive_max=s.receive_maximum).write())
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    connack = await asyncio.shield(conn.connack)
            except TimeoutError:
                raise _NoConnAck(f"no CONNACK within {CONNECT_TIMEOUT:g}s") from None
            if connack is None:
                raise _NoConnAck(f"{conn.why} before a CONNACK")
            if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
                raise _Lost(f"broker refused the connection: {connack.reason_code.name} "
                            f"(0x{int(connack.reason_code):02X})"
                            f"{': ' + connack.reason_str if connack.reason_str else ''}")
        except BaseException:
            conn.fail("closed")
            raise
        keepalive = connack.server_keep_alive
        conn.keepalive_task = asyncio.ensure_future(
            self._keepalive(conn, s.keepalive if keepalive is None else keepalive))
        return conn

    async def _keepalive(self, conn: _Connection, keepalive: int) -> None:
        """PINGREQ when nothing was sent or heard for `keepalive` seconds; the connection is dead
        when nothing came for 1.5x that (reading paused by us does not count)."""
        if keepalive <= 0:
            return
        loop = asyncio.get_running_loop()
        tick = min(1.0, keepalive / 4)
        while not conn.lost:
            await asyncio.sleep(tick)
            now = loop.time()
            if conn.paused:
                conn.heard = now
            if now - conn.heard > 1.5 * keepalive:
                conn.fail(f"nothing from the broker for {now - conn.heard:.1f}s "
                          f"(keepalive {keepalive}s)")
                return
            if not conn.ping_out and (now - conn.sent >= keepalive or now - conn.heard >= keepalive):
                conn.ping_out = True
                conn.send(_PINGREQ)

    async def _subscribe(self, conn: _Connection) -> int:
        """Subscribe and wait for the SUBACK for as long as the connection lives (a resumed
        session's redeliveries come first and may be many; see MqttSource._subscribe)."""
        fut = conn.acks[_SUBSCRIBE_ID] = asyncio.get_running_loop().create_future()
        if self.retire:
            conn.send(mqtt5.UnsubscribePacket(
                _SUBSCRIBE_ID, [self.settings.subscription]).write())
        else:
            conn.send(mqtt5.SubscribePacket(_SUBSCRIBE_ID, [mqtt5.TopicFilter(
                self.settings.subscription, max_qos=mqtt5.QoS.AT_LEAST_ONCE,
                retain_as_published=False)]).write())
        answer = await fut
        del conn.acks[_SUBSCRIBE_ID]
        if answer is None:
            raise _Lost(f"{conn.why} while {'un' if self.retire else ''}subscribing")
        # From here on the consumer drains the queue: bound it by pausing reads.
        conn.high_water = max(2 * self.settings.batch_max, 2 * self.settings.receive_maximum)
        if self.retire:  # whatever the UNSUBACK says, the session holds no subscription now
            return 1
        return int(answer.reason_codes[0]) if answer.reason_codes else -1

    async def _consume(self, conn: _Connection, handle: Handler, stop: asyncio.Event) -> None:
        # One batch commits while the next is gathered and validated: the commit's SQLite work
        # runs in the store's thread with the GIL released, the next batch's parsing in the loop
        # (one after the other they took turns, ~45% / ~55% of the daemon's time). The ingest
        # lock keeps the commits in batch order; a batch is acknowledged only once its commit is
        # done, and before the next one's.
        s = self.settings
        loop = asyncio.get_running_loop()
        queue = conn.queue
        batch_max, batch_max_bytes = s.batch_max, s.batch_max_bytes
        pending: _Pending | None = None
        try:
            while True:
                if conn.lost:
                    raise _Lost(conn.why)
                if pending is not None and (stop.is_set() or not queue):
                    # Nothing to validate meanwhile: acknowledge it as soon as it commits.
                    done, pending = pending, None
                    if not await self._acknowledge(conn, done.batch, done.committed):
                        return
                    continue
                if stop.is_set():
                    break
                if not queue:
                    await conn.wait(None)
                    continue
                first = queue.popleft()
                batch = [first]
                size = len(first.payload)
                deadline = loop.time() + s.batch_wait
                # Bounded by bytes too: a batch of large messages is held whole while it commits.
                while len(batch) < batch_max and size < batch_max_bytes:
                    if queue:
                        d = queue.popleft()
                        batch.append(d)
                        size += len(d.payload)
                        continue
                    if loop.time() >= deadline or stop.is_set():
                        break
                    if conn.lost:
                        raise _Lost(conn.why)
                    conn.took()
                    await conn.wait(deadline)
                conn.took()
                before, pending = pending, _Pending(batch, asyncio.ensure_future(handle(batch)))
                if before is not None and not await self._acknowledge(conn, before.batch,
                                                                      before.committed):
                    return
        except asyncio.CancelledError:
            if pending is not None:
                pending.committed.cancel()  # as a cancel inside a one-at-a-time commit would
            raise
        finally:
            if pending is not None and not pending.committed.done():
                # Left by an error, a lost connection or a handler that gave up: let its commit
                # finish (a copy the broker redelivers is stored once), unacknowledged; its own
                # error is the lesser one.
                with contextlib.suppress(Exception):
                    await pending.committed
        # Stopping: commit and acknowledge what had arrived (see MqttSource._consume); what
        # arrives from now on stays unacknowledged and comes back to the next connection.
        left = len(queue)
        started = time.monotonic()
        while left > 0 and time.monotonic() - started < s.shutdown_timeout:
            batch = []
            size = 0
            while len(batch) < min(left, batch_max) and size < batch_max_bytes:
                batch.append(queue.popleft())
                size += len(batch[-1].payload)
            left -= len(batch)
            if not await self._acknowledge(conn, batch, handle(batch)):
                return
        await self._barrier(conn)

    async def _acknowledge(self, conn: _Connection, batch: list[Delivery],
                           committed: Awaitable[bool]) -> bool:
        """Wait for the batch's commit, then PUBACK it; False if the handler gave up (nothing is
        acknowledged then)."""
        if not await committed:
            return False
        if conn.lost or conn.generation != self.generation:
            # Committed, but the connection that delivered it is gone: the broker redelivers to
            # the next connection and the store counts those as duplicates.
            raise _Lost("connection lost before acknowledging a committed batch")
        mids = [_PUBACK_BASE | d.mid for d in batch if d.qos]
        conn.send(struct.pack(f">{len(mids)}I", *mids))
        self.acked += len(batch)
        return True

    async def _barrier(self, conn: _Connection) -> None:
        """Return once the broker has processed every PUBACK sent so far: the broker answers in
        order, so the UNSUBACK of a filter we never use proves them (see MqttSource._barrier)."""
        if conn.lost:
            return
        conn.resume()
        conn.high_water = None
        fut = conn.acks[_BARRIER_ID] = asyncio.get_running_loop().create_future()
        conn.send(mqtt5.UnsubscribePacket(
            _BARRIER_ID, [f"{self.settings.topic_prefix}/meter-drain-barrier"]).write())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), min(2.0, self.settings.shutdown_timeout))

    async def _disconnect(self, conn: _Connection) -> None:
        """A normal DISCONNECT (the session and its queue stay), then the socket closes."""
        if conn.lost:
            return
        conn.send(mqtt5.DisconnectPacket().write())
        conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.closed), 2.0)
