"""Shared fixtures: real resources only (a Mosquitto per session, SQLite files in tmp_path, a
PostgreSQL cluster per session with a fresh database per test).

`mosquitto` is one broker for the whole test session (each test uses its own topic prefix);
`broker_factory` starts function-scoped brokers that fault tests may kill, stop and restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.missing import missing
from tests.pgserver import PgServer, find_bin
from tests.rabbitmq import RabbitNode
from tests.rabbitmq import installed as rabbitmq_installed

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on loopback right now (bind to port 0 and read it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Broker:
    """A Mosquitto process of our own on a loopback port."""

    port: int
    workdir: Path
    extra_conf: str = ""
    persistence: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.log = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        """Start (or restart) the broker on the same port and wait until it accepts."""
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 0",  # 0 = no limit: the meter's session must lose nothing
            "max_inflight_messages 0",
        ]
        if self.persistence:
            # Mosquitto run as root drops to the `mosquitto` user: the folder must be writable.
            os.chmod(self.workdir, 0o777)  # noqa: S103 - throwaway test folder
            lines += ["persistence true", f"persistence_location {self.workdir}/",
                      "autosave_interval 1", "autosave_on_changes true"]
        if self.extra_conf:
            lines.append(self.extra_conf)
        conf.write_text("\n".join(lines) + "\n")
        # An inherited file handle for the log: the dropped-privilege broker cannot open files
        # in pytest's private temp folders itself.
        logfile = self.log.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=logfile, stderr=subprocess.STDOUT,
        )
        logfile.close()
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; log:\n{self.log.read_text()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the broker with `sig` (SIGKILL for a crash) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the broker hangs with its sockets open (a stalled connection)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def _require_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        missing(f"mosquitto ({MOSQUITTO})", "mosquitto")


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Broker]:
    """One real Mosquitto for the test session, on a free loopback port."""
    _require_mosquitto()
    workdir = Path(tempfile.mkdtemp(prefix="meter-mosq-"))
    broker = Broker(port=free_port(), workdir=workdir)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def broker_factory() -> Iterator[type[Broker]]:
    """Start brokers a test may kill: `broker_factory.new(persistence=True)`."""
    _require_mosquitto()
    started: list[Broker] = []
    dirs: list[Path] = []

    class Factory(Broker):
        @staticmethod
        def new(persistence: bool = False, extra_conf: str = "") -> Broker:  # type: ignore[override]
            workdir = Path(tempfile.mkdtemp(prefix="meter-mosq-"))
            dirs.append(workdir)
            broker = Broker(port=free_port(), workdir=workdir, extra_conf=extra_conf,
                            persistence=persistence)
            broker.start()
            started.append(broker)
            return broker

    yield Factory
    for broker in started:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.resume()
        broker.stop(signal.SIGKILL)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _require_rabbitmq() -> None:
    if not rabbitmq_installed():
        missing("rabbitmq-server (/usr/lib/rabbitmq/bin/rabbitmq-server)", "rabbitmq-server")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitNode]:
    """One private RabbitMQ node with the MQTT plugin (tests/rabbitmq.py) for the session: its own
    ports, epmd port and folders; the machine's own RabbitMQ is never used."""
    _require_rabbitmq()
    node = RabbitNode.create()
    try:
        node.start()
        yield node
    finally:
        node.destroy()


@pytest.fixture
def rabbit_factory() -> Iterator[Callable[..., RabbitNode]]:
    """Start RabbitMQ nodes a test may SIGKILL and restart: `rabbit_factory(prefetch=...)`."""
    _require_rabbitmq()
    nodes: list[RabbitNode] = []

    def new(**kwargs: object) -> RabbitNode:
        node = RabbitNode.create(**kwargs)
        nodes.append(node)
        node.start()
        return node

    yield new
    for node in nodes:
        node.destroy()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test's own, so tests sharing a broker never see each other."""
    return f"t{uuid.uuid4().hex[:10]}/meter"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path (the store creates it)."""
    return tmp_path / "meter.db"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private PostgreSQL cluster for the test session (tests/pgserver.py): a free loopback
    port, trust auth, fsync on; stopped and removed at the end."""
    if find_bin() is None:
        missing("PostgreSQL's initdb and pg_ctl", "postgresql")
    server = PgServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The `postgresql://` URL of a fresh, empty database of this test's own (`t_<n>`), dropped
    after it."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)
