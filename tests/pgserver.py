"""A private PostgreSQL cluster for tests: `initdb` + the `postgres` server from the Debian
packages, in a temporary folder, on a free loopback port, never the machine's own service.

The cluster runs as the `postgres` user when the tests run as root (`initdb` refuses root), with
trust authentication on loopback and its unix socket in the temporary folder, and `fsync` on
(durability is tested). `PgServer.kill()` is a crash (SIGKILL to every server process), `stop()` a
clean shutdown, `start()` starts it again on the same port and data.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

#: Where Debian's `postgresql-NN` packages put the server binaries (not on PATH).
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: The version the store is written against; another installed one is used when it is missing.
PREFERRED_MAJOR = "15"
MISSING = ("PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin; "
           "install the Debian package `postgresql` (.ci/run does it with apt-get)")


def find_bin() -> Path | None:
    """The folder holding `initdb` and `postgres`: version 15 where installed, else the newest."""
    found = [Path(p) for p in glob.glob(PG_BIN_GLOB)
             if (Path(p) / "initdb").exists() and (Path(p) / "postgres").exists()]
    if not found:
        return None
    preferred = [p for p in found if p.parent.name == PREFERRED_MAJOR]
    return preferred[0] if preferred else max(found, key=lambda p: int(p.parent.name)
                                              if p.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A PostgreSQL cluster of our own: `PgServer.create()`, then `start()`, ..., `destroy()`."""

    bindir: Path
    workdir: Path
    port: int
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    proc: subprocess.Popen[bytes] | None = None
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def create(cls, bindir: Path | None = None) -> PgServer:
        """`initdb` a new cluster in a new temporary folder (not started yet)."""
        bindir = bindir or find_bin()
        if bindir is None:
            raise FileNotFoundError(MISSING)
        # Not pytest's tmp_path: its folders are private to root, and the server runs as postgres.
        workdir = Path(tempfile.mkdtemp(prefix="meter-pg-"))
        server = cls(bindir=bindir, workdir=workdir, port=_free_port())
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        (server.workdir / "socket").mkdir()
        if os.geteuid() == 0:
            os.chown(server.workdir / "socket", pw.pw_uid, pw.pw_gid)
        out = server._run([str(bindir / "initdb"), "-D", str(server.data), "-U", server.superuser,
                           "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        if out.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({out.returncode}):\n{out.stdout.decode()}")
        return server

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "socket"

    def url(self, dbname: str = "postgres") -> str:
        """The `postgresql://` URL of database `dbname` over loopback TCP."""
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def _user(self) -> dict[str, object]:
        """Popen arguments that run a child as `postgres` when we are root."""
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        out: subprocess.CompletedProcess[bytes] = subprocess.run(  # type: ignore[call-overload]
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.workdir, check=False,
            **self._user())
        return out

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (again) on the same port and data; returns once it accepts logins."""
        if self.proc is not None and self.proc.poll() is None:
            return
        # An inherited handle for the log: the server's user cannot open files of ours.
        with self.log.open("ab") as logfile:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                [str(self.bindir / "postgres"), "-D", str(self.data),
                 "-c", f"port={self.port}", "-c", f"listen_addresses={self.host}",
                 "-c", f"unix_socket_directories={self.socket_dir}",
                 "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
                 "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                 "-c", "log_min_messages=warning", "-c", "logging_collector=off"],
                stdout=logfile, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True,  # its own process group: kill() reaches every backend
                **self._user())
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc = None if self.proc.poll() is not None else self.proc
                    raise RuntimeError(f"postgres did not start; log:\n{self.log_text()}") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGINT: PostgreSQL's fast mode, open sessions are ended)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster and every backend at once (its process group).
        `start()` then runs crash recovery from the WAL."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        # Backends outside the group (none expected) would keep the shared memory: wait for them.
        pidfile = self.data / "postmaster.pid"
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            pid = int(pidfile.read_text().split()[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (`t_<n>` unless named) and return its URL."""
        name = name or f"t_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of `url`, ending its sessions (a test may leave some open)."""
        name = url.rsplit("/", 1)[1]
        if self.proc is None or self.proc.poll() is not None:
            return
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def query(url: str, statement: str) -> list[tuple[object, ...]]:
    """Run one statement on `url` in autocommit; its rows (none for a command)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type,unused-ignore]  # tests' own SQL
        return cur.fetchall() if cur.description else []
