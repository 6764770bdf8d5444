"""A private RabbitMQ node with the MQTT plugin, for tests: its own HOME, node name, mnesia and log
folders, config, AMQP/MQTT/distribution ports and its own epmd port, so the machine's own
RabbitMQ (5672) and epmd (4369) are never touched.

The node runs in a process group of its own (beam and the epmd it starts), so `kill()` is a
crash of the whole node (SIGKILL to the group) and `start()` brings it back on the same mnesia
folder: a durable queue and what it held survive, as they would on a real machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The server script itself, not the Debian wrapper in /usr/sbin (which switches to the
#: `rabbitmq` user and its own folders).
SERVER = next((p for p in ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")
               if Path(p).exists()), "rabbitmq-server")


#: The durable broker profile's config, which the test node runs.
DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "rabbitmq.conf"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"


def installed() -> bool:
    """Whether a RabbitMQ server is installed here."""
    return Path(SERVER).exists() or shutil.which("rabbitmq-server") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RabbitNode:
    """One RabbitMQ node on loopback ports of its own; `url` is its MQTT listener."""

    workdir: Path
    prefetch: int = 2000
    queue_type: str = "quorum"
    host: str = "127.0.0.1"
    port: int = field(default_factory=_free_port)
    amqp_port: int = field(default_factory=_free_port)
    dist_port: int = field(default_factory=_free_port)
    epmd_port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    name: str = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"meter-test-{self.port}@localhost"
        self.log = self.workdir / "rabbitmq.out"

    @classmethod
    def create(cls, **kwargs: object) -> RabbitNode:
        """A node in a fresh temp folder (not started)."""
        return cls(Path(tempfile.mkdtemp(prefix="meter-rabbit-")), **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def config(self) -> str:
        """The durable profile's own deploy/rabbitmq.conf, moved onto our ports (and the
        prefetch / queue type a test asks for)."""
        lines = []
        for line in DEPLOY_CONF.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if key in ("mqtt.listeners.tcp.default", "listeners.tcp.default", "mqtt.prefetch",
                       "mqtt.durable_queue_type"):
                continue
            lines.append(line)
        return "\n".join([
            *lines,
            f"listeners.tcp.default = {self.host}:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            f"mqtt.prefetch = {self.prefetch}",
            f"mqtt.durable_queue_type = {self.queue_type}",
            "",
        ])

    def env(self) -> dict[str, str]:
        base = self.workdir
        (base / "home").mkdir(exist_ok=True)
        conf = base / "rabbitmq.conf"
        conf.write_text(self.config())
        plugins = base / "enabled_plugins"
        plugins.write_text("[rabbitmq_mqtt].\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(base / "home"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
        })
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same mnesia folder) and wait until MQTT accepts."""
        with self.log.open("ab") as out:
            # epmd in the foreground, in the node's process group: `epmd -daemon` (what the
            # server would start) leaves the group and outlives a kill of it.
            script = (f'"{EPMD}" -port {self.epmd_port} -address {self.host} & '
                      f'exec "{SERVER}"')
            self.proc = subprocess.Popen(["/bin/sh", "-c", script], env=self.env(),
                                         stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            if self._mqtt_answers():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"rabbitmq did not open MQTT on {self.port} within {timeout}s:\n"
                           f"{self.log.read_text(errors='replace')[-3000:]}")

    def _mqtt_answers(self) -> bool:
        """A CONNECT at 3.1.1 gets a CONNACK (the port alone opens before the plugin is ready)."""
        connect = bytes([0x10, 17, 0, 4, *b"MQTT", 4, 0x02, 0, 10, 0, 5, *b"probe"])
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(connect)
                return s.recv(4)[:1] == b"\x20"
        except OSError:
            return False

    def _group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole node (beam and its epmd): a crash."""
        if self.proc is None:
            return
        self._group(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown), then the group's leftovers (epmd) are killed."""
        if self.proc is None:
            return
        self._group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._group(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
