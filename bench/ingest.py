"""End-to-end MQTT ingest against the machine's own ceilings, on one Mosquitto of our own.

In one run, with a raw-socket QoS 1 publisher sending N 150-byte events as fast as the broker
takes them, it measures messages per second taken off the broker by:
  * raw:     a hand-rolled MQTT 3.1.1 QoS 1 subscriber (CONNECT/SUBSCRIBE/PUBACK over a socket),
             the machine's physical limit;
  * aiomqtt: a no-op aiomqtt QoS 1 subscriber (paho acknowledges on receipt);
  * codec_min: the best deferred-ack client measured here, the ceiling the meter is held to
             (>= 80%): the mqtt5 codec on a bare asyncio Protocol, PUBACKs of each read sent
             after it (no batching, no commit);
  * source_aiomqtt / source_codec: meter.source's MqttSource and CodecSource with a handler
             that commits nothing (the sources' own cost, acks after each "commit");
  * meter:   `meter serve` (its default source), counted when the rows are committed (it
             acknowledges after commit); with --meter-sources, again with METER_SOURCE set to
             each (`meter_variants`; the implementation that ran is read from the daemon's log);
then publish-to-commit latency p50/p99 at a fixed rate (default 5,000 events/s) and the daemon's
peak RSS. Each subscriber is its own process, as the daemon is.

    python bench/ingest.py                         # 200,000 events, 2 rounds
    python bench/ingest.py --events 2000 --latency-events 500 --rounds 1   # the smoke size
    python bench/ingest.py --broker-profile memory,single,durable --events 50000

`--broker-profile` measures `meter serve` end to end on each broker profile instead: `memory`
(Mosquitto without persistence), `single` (deploy/mosquitto.conf itself), `durable` (a private
RabbitMQ node running deploy/rabbitmq.conf, the meter at MQTT 3.1.1). For each: the rate with the
meter live (empty queue), and the rate at which it takes a backlog of --events queued while it was
down, with ratios to the memory-only broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MOSQUITTO,
    PYTHON,
    ROOT,
    Run,
    free_port,
    peak_rss_kb,
    results_arg,
    table,
    wait_port,
)

HERE = Path(__file__).resolve()
PREFIX = "bench"
ACCOUNTS = int(os.environ.get("BENCH_INGEST_ACCOUNTS", "1000"))  # set by --accounts for the roles
EVENT_BYTES = 150

# --- a minimal MQTT 3.1.1 codec (enough for QoS 1 publish and subscribe) -------------------------


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, clean: bool = True, keepalive: int = 60) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack("!H", keepalive) + _str(client_id)
    return b"\x10" + _remaining(len(body)) + body


def subscribe_packet(topic: str, pid: int = 1) -> bytes:
    body = struct.pack("!H", pid) + _str(topic) + b"\x01"
    return b"\x82" + _remaining(len(body)) + body


def publish_packet(topic: bytes, pid: int, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", pid) + payload
    return b"\x32" + _remaining(len(body)) + body


def packets(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(first byte, body) of each packet read from `sock`, until it closes."""
    buf = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buf += chunk
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            mult, length, i = 1, 0, pos + 1
            complete = False
            while i < len(buf):
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    complete = True
                    break
            if not complete or len(buf) - i < length:
                break
            yield buf[pos], buf[i:i + length]
            pos = i + length
        buf = buf[pos:]


def mqtt_connect(port: int, client_id: str, clean: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, clean))
    head = sock.recv(4)
    if len(head) < 4 or head[0] != 0x20 or head[3] != 0:
        raise RuntimeError(f"CONNACK refused: {head!r}")
    return sock


# --- roles run as subprocesses --------------------------------------------------------------------


def event_payload(i: int, round_: str, ts: str) -> tuple[bytes, bytes]:
    """(topic, payload) of event i: a heartbeat of one of 10 agents in one of ACCOUNTS accounts,
    padded to EVENT_BYTES."""
    account = f"acct{i % ACCOUNTS:04d}"
    user = f"agent-{(i // ACCOUNTS) % 10:02d}"
    body = (f'{{"id":"{round_}-{i:08d}","type":"heartbeat","account":"{account}","user":"{user}",'
            f'"ts":"{ts}","session":"s-')
    pad = EVENT_BYTES - len(body) - 2
    payload = (body + "x" * max(pad, 1) + '"}').encode()
    return f"{PREFIX}/{account}/events".encode(), payload


def role_publish(port: int, n: int, rate: float, round_: str, window: int) -> None:
    """Publish n events at QoS 1 (rate 0: as fast as the broker takes them, `window` unacked).
    Prints JSON: wall start and end, and the send time of each event when paced."""
    sock = mqtt_connect(port, f"bench-pub-{os.getpid()}")
    acked = 0
    lock = threading.Condition()

    def read_acks() -> None:
        nonlocal acked
        for first, _ in packets(sock):
            if first >> 4 == 4:
                with lock:
                    acked += 1
                    lock.notify()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    sent_at: list[float] = []
    start = time.time()
    chunk = 1 if rate else 200
    i = 0
    while i < n:
        if rate:
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
        else:
            with lock:
                while i - acked > window:
                    lock.wait(1)
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        out = []
        for j in range(i, min(i + chunk, n)):
            topic, payload = event_payload(j, round_, ts)
            out.append(publish_packet(topic, j % 65535 + 1, payload))
            if rate:
                sent_at.append(now)
        sock.sendall(b"".join(out))
        i += len(out)
    end_sent = time.time()
    with lock:
        while acked < n:
            if not lock.wait(30):
                break
    end = time.time()
    sock.close()
    print(json.dumps({"start": start, "end_sent": end_sent, "end_acked": end, "acked": acked,
                      "sent_at": sent_at}))


def role_raw_sub(port: int, n: int) -> None:
    """Receive n QoS 1 messages on a raw socket, PUBACK each (one write per read)."""
    sock = mqtt_connect(port, f"bench-raw-{os.getpid()}")
    sock.sendall(subscribe_packet(f"{PREFIX}/+/events"))
    got = 0
    first = last = 0.0
    ready = False
    acks: list[bytes] = []
    for kind, body in packets(sock):
        if kind >> 4 == 9 and not ready:
            ready = True
            print("ready", flush=True)
            continue
        if kind >> 4 != 3:
            continue
        tlen = struct.unpack_from("!H", body)[0]
        pid = body[2 + tlen:4 + tlen]
        acks.append(b"\x40\x02" + pid)
        got += 1
        if got == 1:
            first = time.time()
        if len(acks) >= 64 or got >= n:
            sock.sendall(b"".join(acks))
            acks.clear()
        if got >= n:
            last = time.time()
            break
    sock.close()
    print(json.dumps({"received": got, "first": first, "last": last}), flush=True)


def role_aiomqtt_sub(port: int, n: int, use_uvloop: bool) -> None:
    """A no-op aiomqtt QoS 1 subscriber: count n messages (paho acknowledges on receipt)."""
    import aiomqtt

    async def main() -> None:
        got = 0
        first = last = 0.0
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-aiomqtt-{os.getpid()}",
                                  max_queued_incoming_messages=0) as client:
            await client.subscribe(f"{PREFIX}/+/events", qos=1)
            print("ready", flush=True)
            async for _ in client.messages:
                got += 1
                if got == 1:
                    first = time.time()
                if got >= n:
                    last = time.time()
                    break
        print(json.dumps({"received": got, "first": first, "last": last}), flush=True)

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def role_codec_min_sub(port: int, n: int) -> None:
    """The mqtt5 codec on a bare asyncio Protocol: every complete packet of a read parsed, the
    PUBACKs of that read sent as one write after it (deferred acks, nothing else)."""
    import mqtt5

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        subscribed = loop.create_future()
        state = {"got": 0, "first": 0.0, "last": 0.0}
        publish = mqtt5.PublishPacket

        class Sub(asyncio.Protocol):
            def __init__(self) -> None:
                self.buf = bytearray()
                self.transport: asyncio.Transport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]

            def data_received(self, data: bytes) -> None:
                self.buf += data
                view = memoryview(self.buf)
                pos, end, mids = 0, len(self.buf), []
                while pos < end:
                    try:
                        packet, used = mqtt5.read(view[pos:])
                    except IndexError:
                        break
                    pos += used
                    if type(packet) is publish:
                        mids.append(0x40020000 | packet.packet_id)
                    elif isinstance(packet, mqtt5.SubAckPacket) and not subscribed.done():
                        subscribed.set_result(None)
                view.release()
                del self.buf[:pos]
                if mids:
                    assert self.transport is not None
                    self.transport.write(struct.pack(f">{len(mids)}I", *mids))
                    if not state["got"]:
                        state["first"] = time.time()
                    state["got"] += len(mids)
                    if state["got"] >= n and not done.done():
                        state["last"] = time.time()
                        done.set_result(None)

        transport, _ = await loop.create_connection(Sub, "127.0.0.1", port)
        transport.write(mqtt5.ConnectPacket(f"bench-codec-{os.getpid()}", clean_start=True,
                                            keep_alive=60, receive_max=4000).write())
        transport.write(mqtt5.SubscribePacket(1, [mqtt5.TopicFilter(
            f"{PREFIX}/+/events", max_qos=mqtt5.QoS.AT_LEAST_ONCE)]).write())
        await subscribed
        print("ready", flush=True)
        cpu = _cpu_seconds()
        await done
        cpu = _cpu_seconds() - cpu
        transport.write(mqtt5.DisconnectPacket().write())
        transport.close()
        print(json.dumps({"received": state["got"], "first": state["first"],
                          "last": state["last"], "cpu_s": cpu}), flush=True)

    asyncio.run(main())


def role_source_sub(port: int, n: int, which: str) -> None:
    """meter.source's MqttSource or CodecSource with a handler that commits nothing: count n."""
    sys.path.insert(0, str(ROOT))
    from meter.config import load_settings
    from meter.source import MqttSource
    from meter.source_codec import CodecSource

    async def main() -> None:
        settings = load_settings({"broker": f"mqtt://127.0.0.1:{port}", "topic_prefix": PREFIX,
                                  "client_id": f"bench-src-{which}-{os.getpid()}"}, {})
        stop = asyncio.Event()
        state = {"got": 0, "first": 0.0, "last": 0.0}

        async def handle(batch: object) -> bool:
            if not state["got"]:
                state["first"] = time.time()
            state["got"] += len(batch)  # type: ignore[arg-type]
            if state["got"] >= n and not stop.is_set():
                state["last"] = time.time()
                stop.set()
            return True

        def connected(up: bool) -> None:
            if up:
                print("ready", flush=True)

        source = (CodecSource if which == "codec" else MqttSource)(settings,
                                                                   on_connected=connected)
        cpu = _cpu_seconds()
        await source.run(handle, stop)
        cpu = _cpu_seconds() - cpu
        print(json.dumps({"received": state["got"], "first": state["first"],
                          "last": state["last"], "cpu_s": cpu,
                          "client_id": settings.client_id}), flush=True)

    asyncio.run(main())


# --- the orchestration ----------------------------------------------------------------------------


class Broker:
    """A Mosquitto of our own on a free loopback port."""

    def __init__(self, workdir: Path, inflight: int) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        f"max_queued_messages 0\nmax_inflight_messages {inflight}\n")
        log = (workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _role(*args: str) -> list[str]:
    return [PYTHON, str(HERE), "--role", *args]


def publish(port: int, n: int, round_: str, rate: float = 0, window: int = 2000) -> dict[str, object]:
    done = subprocess.run(_role("publish", str(port), str(n), str(rate), round_, str(window)),
                          check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def subscriber_round(port: int, role: str, n: int, round_: str) -> dict[str, float]:
    """Start a subscriber process, publish n events, and return its rate (end to end)."""
    sub = subprocess.Popen(_role(role, str(port), str(n)), stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "ready":
        sub.kill()
        raise RuntimeError(f"{role} did not subscribe")
    pub = publish(port, n, round_)
    out, _ = sub.communicate(timeout=600)
    got = json.loads(out.strip().splitlines()[-1])
    if "client_id" in got:  # a persistent session: drop it, or later rounds fill its queue
        mqtt_connect(port, got["client_id"], clean=True).close()
    start = float(pub["start"])  # type: ignore[arg-type]
    result = {"received": got["received"], "seconds": got["last"] - start,
              "per_s": got["received"] / max(got["last"] - start, 1e-9),
              "publisher_per_s": n / (float(pub["end_sent"]) - start)}  # type: ignore[arg-type]
    if "cpu_s" in got:
        result["cpu_s_per_100k"] = got["cpu_s"] / max(got["received"], 1) * 100_000
    return result


def contracts_text() -> str:
    parts = []
    for a in range(ACCOUNTS):
        parts.append(
            f'[[account]]\nid = "acct{a:04d}"\ntimezone = "UTC"\ncurrency = "USD"\n'
            f'billing = "monthly"\nanchor = "2026-01-01"\npolicy = "prorate"\n'
            f'[[account.pool]]\nid = "agents"\ntier = "premium"\nmodel = "concurrent"\n'
            f'quantity = 5\nprice = "99.00"\noverage_price = "99.00"\ngrace = "30m"\n')
    return "\n".join(parts)


class Daemon:
    """`meter serve` on the bench broker, with its own database and metrics port."""

    def __init__(self, workdir: Path, broker_port: int, extra: list[str],
                 client_id: str | None = None, source: str | None = None) -> None:
        self.db = workdir / "meter.db"
        for f in workdir.glob("meter.db*"):
            f.unlink()
        contracts = workdir / "contracts.toml"
        contracts.write_text(contracts_text())
        self.metrics_port = free_port()
        self.log_path = workdir / "daemon.log"
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = self.log_path.open("ab")
        # A client id of its own per daemon: its persistent session is removed in stop(), so no
        # round inherits a backlog queued for an earlier daemon.
        self.client_id = client_id or f"bench-meter-{os.getpid()}-{time.monotonic_ns()}"
        self.broker_port = broker_port
        env = {**os.environ, "METER_TOPIC_PREFIX": PREFIX, "METER_CLIENT_ID": self.client_id}
        if source is not None:
            env["METER_SOURCE"] = source  # meter.sources.make_source: codec or aiomqtt
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "meter", "serve", "--broker", f"mqtt://127.0.0.1:{broker_port}",
             "--db", str(self.db), "--contracts", str(contracts),
             "--metrics-addr", f"127.0.0.1:{self.metrics_port}", *extra],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meter serve exited {self.proc.returncode}; see {workdir}/daemon.log")
            if self.metric("meter_mqtt_connected") == 1.0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"meter serve did not connect within 90 s; see {workdir}/daemon.log")

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = None
        for line in text.splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total

    def committed(self) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def implementation(self) -> str:
        """Which source the daemon ran, from its connect log line."""
        with self.log_path.open("rb") as f:
            f.seek(self.log_start)
            text = f.read().decode(errors="replace")
        return "codec" if "mqtt5 codec)" in text else "aiomqtt" if "subscribed to" in text else "?"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the daemon has used so far (0 if unknown)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, *, keep_session: bool = False) -> int:
        rss = peak_rss_kb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if not keep_session:
            mqtt_connect(self.broker_port, self.client_id, clean=True).close()  # drop its session
        return rss


def meter_round(workdir: Path, port: int, n: int, round_: str, *, extra: list[str],
                profile: Path | None = None, source: str | None = None) -> dict[str, float]:
    """`meter serve` takes n events: rate counted at the commit of the last one. With `profile`,
    py-spy samples the daemon meanwhile (collapsed stacks, for `--profile-top`). `source`:
    METER_SOURCE for the daemon (None: its default)."""
    daemon = Daemon(workdir, port, extra, source=source)
    cpu = daemon.cpu_seconds()
    spy = None
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        spy = subprocess.Popen([py_spy, "record", "--pid", str(daemon.proc.pid), "--rate", "250",
                                "--format", "raw", "--output", str(profile), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        before = daemon.committed()
        pub_box: dict[str, dict[str, object]] = {}
        pub = threading.Thread(target=lambda: pub_box.update(p=publish(port, n, round_)))
        pub.start()
        deadline = time.monotonic() + 600
        last = 0.0
        while time.monotonic() < deadline:
            if daemon.committed() - before >= n:
                last = time.time()
                break
            time.sleep(0.02)
        pub.join()
        start = float(pub_box["p"]["start"])  # type: ignore[arg-type]
        got = daemon.committed() - before
        cpu = daemon.cpu_seconds() - cpu
        time.sleep(0.3)  # let the last acknowledgements go out before reading the counters
        duplicates = daemon.metric("meter_events_duplicate_total") or 0.0
    finally:
        rss = daemon.stop()
        if spy is not None:
            spy.wait(30)
    return {"received": got, "seconds": last - start, "per_s": got / max(last - start, 1e-9),
            "duplicates": duplicates, "peak_rss_mb": rss / 1024,
            "cpu_s_per_100k": cpu / max(got, 1) * 100_000, "source": daemon.implementation()}


class ProfileBroker:
    """The broker of one `--broker-profile`, on free loopback ports in `workdir`."""

    def __init__(self, name: str, workdir: Path, inflight: int) -> None:
        self.name = name
        self.node = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []
        if name == "durable":
            sys.path.insert(0, str(ROOT))
            from tests.rabbitmq import RabbitNode

            self.node = RabbitNode(workdir / "rabbit")
            self.node.workdir.mkdir()
            self.node.start()
            self.port = self.node.port
            self.extra = ["--mqtt-version", "3.1.1"]
            return
        self.port = free_port()
        conf = workdir / f"mosquitto-{name}.conf"
        if name == "single":
            data = workdir / "mosq-data"
            data.mkdir(exist_ok=True)
            os.chmod(data, 0o777)  # noqa: S103 - mosquitto may drop to its own user
            text = (ROOT / "deploy" / "mosquitto.conf").read_text()
            text = text.replace("listener 1883", f"listener {self.port} 127.0.0.1")
            text = text.replace("/mosquitto/data/", f"{data}/")
            conf.write_text(text + f"\nmax_inflight_messages {inflight}\n")
        else:
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                            f"max_queued_messages 0\nmax_inflight_messages {inflight}\n")
        log = (workdir / f"mosquitto-{name}.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port)

    def stop(self) -> None:
        if self.node is not None:
            self.node.destroy()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def backlog_round(workdir: Path, port: int, n: int, round_: str, *,
                  extra: list[str]) -> dict[str, float]:
    """n events published while the meter is down (its session exists), then the meter starts:
    rate = events committed after it was connected / (last commit - connected); the daemon's
    start (imports, rebuild) is not the backlog's cost."""
    first = Daemon(workdir, port, extra)
    client_id = first.client_id
    first.stop(keep_session=True)
    publish(port, n, round_)
    daemon = Daemon(workdir, port, extra, client_id=client_id)
    started = time.time()
    at_connect = daemon.committed()
    deadline = time.monotonic() + 900
    last = 0.0
    try:
        while time.monotonic() < deadline:
            if daemon.committed() >= n:
                last = time.time()
                break
            time.sleep(0.05)
        got = daemon.committed()
    finally:
        daemon.stop()
    return {"received": got, "seconds": last - started, "at_connect": at_connect,
            "per_s": (got - at_connect) / max(last - started, 1e-9)}


def profiles_main(args: argparse.Namespace) -> int:
    """`--broker-profile`: live and backlog rates of `meter serve` on each broker profile."""
    names = args.broker_profile.split(",")
    unknown = set(names) - {"memory", "single", "durable"}
    if unknown:
        print(f"--broker-profile: unknown {', '.join(sorted(unknown))} "
              "(memory, single, durable)", file=sys.stderr)
        return 2
    run = Run("ingest_profiles", {k: v for k, v in vars(args).items() if k not in ("out", "keep")})
    load = os.getloadavg()
    results: dict[str, dict[str, object]] = {}
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-ingest-{name}-"))
        os.chmod(workdir, 0o777)  # noqa: S103 - mosquitto may drop to its own user
        broker = ProfileBroker(name, workdir, args.inflight)
        try:
            tag = f"{name[0]}{int(time.time()) % 100000}"
            extra = [*broker.extra, *args.serve_arg]
            live = meter_round(workdir, broker.port, args.events, tag + "l", extra=extra)
            backlog = backlog_round(workdir, broker.port, args.backlog_events or args.events,
                                    tag + "b", extra=extra)
            results[name] = {"live": live, "backlog": backlog}
            print(f"  {name}: live {live['per_s']:,.0f}/s, backlog {backlog['per_s']:,.0f}/s",
                  flush=True)
        finally:
            broker.stop()
            if args.keep:
                print(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    memory = results.get("memory", {}).get("live", {}).get("per_s")  # type: ignore[attr-defined]
    rows = []
    for name, r in results.items():
        live_s: float = r["live"]["per_s"]  # type: ignore[index]
        back_s: float = r["backlog"]["per_s"]  # type: ignore[index]
        rows.append((name, f"{live_s:,.0f}", f"{live_s / memory:.0%}" if memory else "-",
                     f"{back_s:,.0f}", f"{back_s / live_s:.0%}"))
    print(f"\nmeter serve end to end, {args.events:,} events of {EVENT_BYTES} bytes at QoS 1 "
          f"(backlog {args.backlog_events or args.events:,}); load average before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(table(["profile", "live events/s", "of memory", "backlog events/s", "backlog of live"],
                rows))
    run.save({"profiles": results, "load_before": load,
              "targets": {"single_of_memory": 0.9, "backlog_of_live": 0.8,
                          "durable_of_memory": 0.5}},
             results_arg(args.out, "ingest_profiles"))
    return 0


def latency_round(workdir: Path, port: int, n: int, *, rate: float, round_: str,
                  extra: list[str]) -> dict[str, float]:
    """Publish n events at `rate`/s; each event's commit time is when a reader polling the
    database every 2 ms first sees its row (so figures carry up to ~2 ms of polling)."""
    daemon = Daemon(workdir, port, extra)
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        conn = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True, timeout=5)
        last_seq = 0
        while not stop.is_set():
            rows = conn.execute("SELECT seq, id FROM events WHERE seq > ?", (last_seq,)).fetchall()
            now = time.time()
            for seq, id_ in rows:
                seen.setdefault(id_, now)
                last_seq = max(last_seq, seq)
            time.sleep(0.002)
        conn.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        pub = publish(port, n, round_, rate=rate)
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        poller.join()
        rss = daemon.stop()
    sent_at: list[float] = pub["sent_at"]  # type: ignore[assignment]
    lat = sorted((seen[f"{round_}-{i:08d}"] - t) * 1000 for i, t in enumerate(sent_at)
                 if f"{round_}-{i:08d}" in seen)
    if not lat:
        return {"events": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                "peak_rss_mb": rss / 1024}
    q = statistics.quantiles(lat, n=100) if len(lat) >= 100 else [lat[len(lat) // 2]] * 99
    return {"events": len(lat), "p50_ms": q[49], "p99_ms": q[98], "max_ms": lat[-1],
            "rate": rate, "peak_rss_mb": rss / 1024}


def profile_top(path: Path, n: int = 25) -> dict[str, object]:
    """Self and inclusive share of samples per function from py-spy's collapsed stacks."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";")]
        total += c
        if frames:
            self_[frames[-1]] = self_.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
    top_self = sorted(self_.items(), key=lambda kv: -kv[1])[:n]
    top_incl = sorted(incl.items(), key=lambda kv: -kv[1])[:n]
    print(f"\ndaemon profile ({total} samples): self time")
    print(table(["function", "self"], [(f, f"{c / total:.1%}") for f, c in top_self]))
    print("\ninclusive")
    print(table(["function", "incl"], [(f, f"{c / total:.1%}") for f, c in top_incl]))
    return {"samples": total,
            "self": [[f, round(c / total, 4)] for f, c in top_self],
            "inclusive": [[f, round(c / total, 4)] for f, c in top_incl]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2, help="repeat everything (figures are noisy)")
    ap.add_argument("--accounts", type=int, default=1000, help="accounts (topics) the events "
                    "are spread over")
    ap.add_argument("--latency-rate", type=float, default=5000.0)
    ap.add_argument("--latency-events", type=int, default=50_000)
    ap.add_argument("--inflight", type=int, default=4000,
                    help="broker max_inflight_messages (MQTT 3.1.1 subscribers; the meter's own "
                         "Receive Maximum is 4000 by default)")
    ap.add_argument("--uvloop", action="store_true", help="also measure aiomqtt on uvloop")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `meter serve` flag, e.g. --serve-arg=--batch-max=2000")
    ap.add_argument("--only", default="raw,aiomqtt,codec_min,sources,meter,latency",
                    help="comma list of raw, aiomqtt, codec_min, sources (source_aiomqtt and "
                         "source_codec), meter, latency")
    ap.add_argument("--meter-sources", default="",
                    help="comma list of codec,aiomqtt: also run meter serve with METER_SOURCE "
                         "set to each (rows meter[codec], meter[aiomqtt])")
    ap.add_argument("--profile", metavar="FILE",
                    help="py-spy the daemon during the meter round (collapsed stacks to FILE; "
                         "needs py-spy on PATH) and print where its time goes")
    ap.add_argument("--broker-profile", metavar="LIST",
                    help="comma list of memory,single,durable: measure meter serve live and on "
                         "a backlog on each broker profile (instead of the other rounds)")
    ap.add_argument("--backlog-events", type=int, default=0,
                    help="backlog size for --broker-profile (default: --events)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    ap.add_argument("--out", help="results JSON (default bench/results/ingest.json)")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    global ACCOUNTS  # noqa: PLW0603 - the roles and the contracts read it; subprocesses via env
    ACCOUNTS = args.accounts
    os.environ["BENCH_INGEST_ACCOUNTS"] = str(args.accounts)
    if args.broker_profile:
        return profiles_main(args)
    run = Run("ingest", {k: v for k, v in vars(args).items() if k not in ("out", "keep")})
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    os.chmod(workdir, 0o777)  # noqa: S103 - mosquitto may drop to its own user
    broker = Broker(workdir, args.inflight)
    rounds: list[dict[str, object]] = []
    try:
        for r in range(args.rounds):
            res: dict[str, object] = {"round": r + 1}
            tag = f"r{r}{int(time.time()) % 100000}"
            if "raw" in only:
                res["raw"] = subscriber_round(broker.port, "raw-sub", args.events, tag + "a")
            if "aiomqtt" in only:
                res["aiomqtt"] = subscriber_round(broker.port, "aiomqtt-sub", args.events, tag + "b")
                if args.uvloop:
                    res["aiomqtt_uvloop"] = subscriber_round(broker.port, "aiomqtt-uvloop-sub",
                                                             args.events, tag + "c")
            if "codec_min" in only:
                res["codec_min"] = subscriber_round(broker.port, "codec-min-sub", args.events,
                                                    tag + "f")
            if "sources" in only:
                for which in ("aiomqtt", "codec"):
                    res[f"source_{which}"] = subscriber_round(
                        broker.port, f"source-{which}-sub", args.events, tag + "g" + which[0])
            if "meter" in only:
                res["meter"] = meter_round(
                    workdir, broker.port, args.events, tag + "d", extra=args.serve_arg,
                    profile=Path(args.profile) if args.profile and r == 0 else None)
                # A list, not a dict per source: readers of the results treat every dict with
                # per_s but "meter" as a client subscriber.
                res["meter_variants"] = [
                    meter_round(workdir, broker.port, args.events, tag + "h" + which[0],
                                extra=args.serve_arg, source=which)
                    for which in filter(None, args.meter_sources.split(","))]
            if "latency" in only:
                res["latency"] = latency_round(workdir, broker.port, args.latency_events,
                                               rate=args.latency_rate, round_=tag + "e",
                                               extra=args.serve_arg)
            rounds.append(res)
            print(f"  round {r + 1}: " + ", ".join(
                [f"{k} {v['per_s']:,.0f}/s" for k, v in res.items()
                 if isinstance(v, dict) and "per_s" in v]
                + [f"meter[{v['source']}] {v['per_s']:,.0f}/s"
                   for v in res.get("meter_variants", [])]), flush=True)  # type: ignore[attr-defined]
    finally:
        broker.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    names = ("raw", "aiomqtt", "aiomqtt_uvloop", "codec_min", "source_aiomqtt", "source_codec",
             "meter")
    for res in rounds:
        ceiling = res.get("aiomqtt", {}).get("per_s")  # type: ignore[union-attr]
        raw = res.get("raw", {}).get("per_s")  # type: ignore[union-attr]
        best = res.get("codec_min", {}).get("per_s")  # type: ignore[union-attr]
        measured: list[tuple[str, dict[str, float]]] = [
            (n, res[n]) for n in names if n in res]  # type: ignore[misc]
        if "meter" in res:
            measured[-1] = (f"meter ({res['meter']['source']})", res["meter"])  # type: ignore[index]
        measured += [(f"meter[{v['source']}]", v)
                     for v in res.get("meter_variants", [])]  # type: ignore[attr-defined]
        for name, v in measured:
            cpu = v.get("cpu_s_per_100k")
            rows.append((res["round"], name, v["received"], v["per_s"],
                         f"{v['per_s'] / raw:.0%}" if raw else "-",
                         f"{v['per_s'] / ceiling:.0%}" if ceiling else "-",
                         f"{v['per_s'] / best:.0%}" if best else "-",
                         f"{cpu:.2f}" if cpu is not None else "-",
                         v.get("publisher_per_s", "-")))
    print(f"\n{args.events:,} events of {EVENT_BYTES} bytes at QoS 1, {args.accounts} accounts; "
          "rate = events / (last received or committed - first published); best = codec_min, "
          "the best deferred-ack client; CPU = the subscriber process's user+system seconds per "
          "100k events")
    print(table(["round", "subscriber", "events", "events/s", "of raw", "of aiomqtt", "of best",
                 "CPU s/100k", "publisher/s"], rows))
    lat_rows = [(res["round"], v["events"], v["p50_ms"], v["p99_ms"], v["max_ms"], v["peak_rss_mb"])
                for res in rounds if isinstance(v := res.get("latency"), dict)]
    if lat_rows:
        print(f"\npublish-to-commit latency at {args.latency_rate:,.0f} events/s")
        print(table(["round", "events", "p50 ms", "p99 ms", "max ms", "daemon peak RSS MB"], lat_rows))
    meter_rss = [res["meter"]["peak_rss_mb"] for res in rounds if "meter" in res]  # type: ignore[index]
    summary = {
        "meter_of_aiomqtt": [round(res["meter"]["per_s"] / res["aiomqtt"]["per_s"], 3)  # type: ignore[index]
                             for res in rounds if "meter" in res and "aiomqtt" in res],
        "meter_of_raw": [round(res["meter"]["per_s"] / res["raw"]["per_s"], 3)  # type: ignore[index]
                         for res in rounds if "meter" in res and "raw" in res],
        "meter_of_best": [round(res["meter"]["per_s"] / res["codec_min"]["per_s"], 3)  # type: ignore[index]
                          for res in rounds if "meter" in res and "codec_min" in res],
        "daemon_peak_rss_mb": max(meter_rss) if meter_rss else None,
        "target_of_best": 0.8,
        "target_events_per_s": 40_000,
        "goal_of_raw": 0.5,
        "load_after": os.getloadavg(),
    }
    print("\n" + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if args.profile and Path(args.profile).exists():
        summary["profile"] = profile_top(Path(args.profile))
    run.save({"rounds": rounds, **summary}, results_arg(args.out, "ingest"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, rest = sys.argv[2], sys.argv[3:]
        if role == "publish":
            role_publish(int(rest[0]), int(rest[1]), float(rest[2]), rest[3], int(rest[4]))
        elif role == "raw-sub":
            role_raw_sub(int(rest[0]), int(rest[1]))
        elif role in ("aiomqtt-sub", "aiomqtt-uvloop-sub"):
            role_aiomqtt_sub(int(rest[0]), int(rest[1]), role == "aiomqtt-uvloop-sub")
        elif role == "codec-min-sub":
            role_codec_min_sub(int(rest[0]), int(rest[1]))
        elif role in ("source-aiomqtt-sub", "source-codec-sub"):
            role_source_sub(int(rest[0]), int(rest[1]), role.split("-")[1])
        raise SystemExit(0)
    raise SystemExit(main())
