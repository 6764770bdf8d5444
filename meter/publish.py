"""`meter publish`: replay a JSONL file onto `<prefix>/<account>/events` at QoS 1, for demos, load
and tests. Many messages are in flight at once (or a steady N per second); the command returns
only when the broker has acknowledged every one, and prints a summary. It is the reference
producer (README "Producers"): when the broker goes away mid-file it reconnects within a few
seconds and resends every message not PUBACKed yet (paho keeps them), so a broker restart loses
nothing; the ids make the resent copies harmless.

A line that is not a JSON object with a usable `account` goes to `<prefix>/unknown/events`, so the
daemon rejects and stores it instead of this tool dropping it. Blank lines are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from meter.config import BrokerAddress, Settings, load_settings, setting
from meter.errors import MeterError, UsageError
from meter.progress import byte_size
from rating.durations import parse_duration

__all__ = ["PublishResult", "publish", "run", "topic_for"]

UNKNOWN: Final = "unknown"
#: Unacknowledged messages we allow in flight: enough to keep the broker busy, bounded memory.
IN_FLIGHT: Final = 1000
#: Reconnect backoff after the broker went away (seconds, doubling from the first to the second).
RECONNECT_MIN: Final = 1
RECONNECT_MAX: Final = 5
#: The `meter serve` settings publish shares: where the broker is and how to log in to it.
SETTING_KEYS: Final = ("broker", "username", "password", "password_file", "ca_file", "cert_file",
                       "key_file", "topic_prefix")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish did."""

    published: int
    acknowledged: int
    unknown: int  # lines sent to <prefix>/unknown/events
    blank: int
    seconds: float

    def render(self) -> str:
        """One summary line."""
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        return (f"published {self.published} events ({self.acknowledged} acknowledged, "
                f"{self.unknown} without an account, {self.blank} blank lines skipped) "
                f"in {self.seconds:.2f}s ({rate:.0f}/s)")


def topic_for(line: bytes, prefix: str) -> str:
    """The topic of one JSONL line: its account's, or the `unknown` account's."""
    try:
        doc = json.loads(line)
    except ValueError:
        return f"{prefix}/{UNKNOWN}/events"
    account = doc.get("account") if isinstance(doc, dict) else None
    if not isinstance(account, str) or not account or any(c in account for c in "/+#\0"):
        return f"{prefix}/{UNKNOWN}/events"
    return f"{prefix}/{account}/events"


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    for raw in stream:
        yield raw.rstrip(b"\r\n")


class _Acks:
    """PUBACK bookkeeping shared with paho's network thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.acked = 0
        self.connected = False
        self.error: str | None = None

    def on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        with self.cond:
            if getattr(reason, "is_failure", False):
                self.error = f"broker refused the connection: {reason}"
            else:
                self.connected = True
            self.cond.notify_all()

    def on_publish(self, _c: Any, _u: Any, _mid: int, _reason: Any, _p: Any = None) -> None:
        with self.cond:
            self.acked += 1
            self.cond.notify_all()


def publish(stream: IO[bytes], broker: BrokerAddress, *, prefix: str = "meter",
            rate: float | None = None, username: str | None = None,
            password: str | None = None, ca_file: str | None = None,
            cert_file: str | None = None, key_file: str | None = None,
            timeout: float = 60.0, progress: bool = False) -> PublishResult:
    """Publish every non-blank line of `stream` at QoS 1; wait for all acknowledgements."""
    acks = _Acks()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, clean_session=True)
    client.on_connect = acks.on_connect
    client.on_publish = acks.on_publish
    client.max_inflight_messages_set(IN_FLIGHT)
    # paho's loop reconnects by itself; its default backoff grows to 2 minutes.
    client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
    if username is not None:
        client.username_pw_set(username, password)
    if broker.tls:
        client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as exc:
        raise MeterError(f"broker {broker.url}: {exc.strerror or exc}") from None
    client.loop_start()
    bar = None
    try:
        with acks.cond:
            if not acks.cond.wait_for(lambda: acks.connected or acks.error is not None, 10):
                raise MeterError(f"broker {broker.url}: no CONNACK within 10s")
            if acks.error:
                raise MeterError(f"broker {broker.url}: {acks.error}")
        if progress:
            from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

            size = byte_size(stream)
            # A file has a total (bytes, so the bar shows an ETA); a pipe counts events.
            bar = (tqdm(unit="ev", desc="published", file=sys.stderr) if size is None else
                   tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                        desc="published", file=sys.stderr))
        started = time.monotonic()
        published = unknown = blank = 0
        for line in _lines(stream):
            if not line.strip():
                blank += 1
                continue
            topic = topic_for(line, prefix)
            unknown += topic == f"{prefix}/{UNKNOWN}/events"
            with acks.cond:
                # Keep at most IN_FLIGHT unacknowledged: paho would otherwise queue the whole file.
                acks.cond.wait_for(lambda n=published: n - acks.acked < IN_FLIGHT  # type: ignore[misc]
                                   or acks.error is not None)
            info = client.publish(topic, line, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                raise MeterError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            published += 1
            if bar is not None:
                if size is None:
                    bar.update(1)
                elif published % 256 == 0:
                    bar.update(stream.tell() - bar.n)
            if rate:
                delay = started + published / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        deadline = time.monotonic() + timeout
        with acks.cond:
            acks.cond.wait_for(lambda: acks.acked >= published,
                               max(0.0, deadline - time.monotonic()))
            acked = acks.acked
        seconds = time.monotonic() - started
    finally:
        if bar is not None:
            if size is not None:
                bar.update(stream.tell() - bar.n)
            bar.close()
        client.disconnect()
        client.loop_stop()
    result = PublishResult(published, acked, unknown, blank, seconds)
    if acked < published:
        raise MeterError(f"{published - acked} of {published} events were not acknowledged by "
                         f"{broker.url} within {timeout:g}s")
    return result


def _settings(args: argparse.Namespace) -> Settings:
    """The broker settings from the flags, and from the environment only for these keys (a
    variable meant for serve, such as a bad `METER_BATCH_WAIT`, must not stop a publish).
    A bad value is a `ConfigError` naming the flag or variable (exit 2)."""
    flags = {key: getattr(args, key, None) for key in SETTING_KEYS}
    names = {name for key in SETTING_KEYS for name in setting(key).env_names}
    return load_settings(flags, {k: v for k, v in os.environ.items() if k in names})


def run(args: argparse.Namespace) -> int:
    """`meter publish FILE --broker URL [--rate N] [--timeout DURATION]`."""
    if args.rate is not None and args.rate <= 0:
        raise UsageError(f"--rate: must be more than 0, got {args.rate:g}")
    try:
        timeout = parse_duration(args.timeout).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--timeout: {exc}") from None
    settings = _settings(args)

    def go(stream: IO[bytes]) -> PublishResult:
        return publish(stream, settings.broker, prefix=settings.topic_prefix, rate=args.rate,
                       username=settings.username, password=settings.password,
                       ca_file=str(settings.ca_file) if settings.ca_file else None,
                       cert_file=str(settings.cert_file) if settings.cert_file else None,
                       key_file=str(settings.key_file) if settings.key_file else None,
                       timeout=timeout, progress=sys.stderr.isatty())

    if args.file == "-":
        result = go(sys.stdin.buffer)
    else:
        try:
            stream = Path(args.file).open("rb")  # noqa: SIM115 - closed below, errors kept apart
        except OSError as exc:
            raise UsageError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
        with stream:
            result = go(stream)
    print(result.render())
    return 0
