"""`meter demo`: the whole pipeline on the sample month, from a fresh database to the bills.

A private Mosquitto on a free loopback port (or, with none installed, `meter ingest` of the same
file), `meter serve` as a subprocess, the sample month published onto the broker, a scrape of the
live gauges, then each account's bill and the HTML report. Every process it starts is stopped,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

from meter.config import is_postgres, redact
from meter.errors import MeterError, UsageError
from meter.report import Report, make_report, summary, write_outputs
from meter.store import open_store
from rating.contracts import parse_contracts
from rating.periods import monthly_period

__all__ = ["DemoPaths", "main_demo", "run", "sample_paths"]

ROOT: Final = Path(__file__).resolve().parent.parent
SAMPLES: Final = ROOT / "sample_sessions"
#: The middle of the sample month: each account's bill is for the period holding it.
MID_SAMPLE: Final = datetime(2026, 11, 15, 12, tzinfo=UTC)
#: The receive time sample_sessions/README.md ingests with: the month's last events are at 04:10Z on
#: 1 December, and its one planted `future` line (5 December) stays rejected.
AS_OF: Final = datetime(2026, 12, 2, tzinfo=UTC)
GAUGES: Final = ("meter_active_users", "meter_licensed_seats", "meter_period_peak_users",
                 "meter_excess_users", "meter_grace_remaining_seconds")


@dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where the demo reads the sample month and writes its database and reports."""

    contracts: Path
    events: Path
    out: Path
    #: `meter demo --db`: a store of the operator's (a PostgreSQL URL must name an empty one).
    store: Path | str | None = None

    @property
    def db(self) -> Path | str:
        """The store the demo loads: `--db`, or its own SQLite database (made fresh every run)."""
        return self.store if self.store is not None else self.out / "meter.db"

    def db_argv(self) -> list[str]:
        """`--db` for a child `meter` command; none for a URL, which goes in `child_env` (a
        password in a URL must not show in the process list)."""
        return [] if is_postgres(self.db) else ["--db", str(self.db)]

    def child_env(self) -> dict[str, str] | None:
        """The environment of a child `meter` command (None: ours as it is)."""
        return {**os.environ, "METER_DB": str(self.db)} if is_postgres(self.db) else None


def sample_paths(out: Path, db: Path | str | None = None) -> DemoPaths:
    """The committed sample month (a clone's `sample_sessions/`), writing into `out`."""
    contracts = SAMPLES / "contracts.toml"
    events = SAMPLES / "events-2026-11.jsonl"
    if not contracts.is_file():
        raise UsageError(f"{contracts}: the sample contracts are missing (run from a clone)")
    if not events.is_file():
        generator = SAMPLES / "generate.py"
        if not generator.is_file():
            raise UsageError(f"{events}: the sample month is missing (run from a clone)")
        out.mkdir(parents=True, exist_ok=True)
        events = out / "events-2026-11.jsonl"
        subprocess.run([sys.executable, str(generator), "--out", str(events)], check=True,  # noqa: S603 - our own script
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return DemoPaths(contracts=contracts, events=events, out=out, store=db)


def max_future(now: datetime | None = None) -> str:
    """The daemon's future skew: the sample month may lie ahead of today (it is November 2026),
    so accept what a receive time of `AS_OF` would, and never less than the default 5 minutes."""
    ahead = AS_OF - (now or datetime.now(UTC))
    return f"{max(300, int(ahead.total_seconds()) + 1)}s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
               timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MeterError(f"{what} exited with code {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise MeterError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log}")


def find_mosquitto() -> str | None:
    """The Mosquitto binary: on PATH, or Debian's /usr/sbin (not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


@dataclass
class Processes:
    """The processes the demo started, stopped in reverse order whatever happens."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` with output to `log`, in its own process group (Ctrl-C is ours to handle)."""
        handle = log.open("ab")
        self.files.append(handle)
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT,  # noqa: S603 - fixed argv
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 8.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running, newest first, and close their logs."""
        for _, proc in reversed(self.procs):
            with contextlib.suppress(OSError):
                self.stop(proc)
        for handle in self.files:
            handle.close()


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    """Processes started inside are stopped on the way out (errors and Ctrl-C included)."""
    group = Processes()
    try:
        yield group
    finally:
        group.stop_all()


def _meter(*args: str) -> list[str]:
    return [sys.executable, "-m", "meter", *args]


def _counts(db: Path | str) -> tuple[int, int]:
    """Accepted and rejected rows so far (the daemon created the database before it listened)."""

    async def count() -> dict[str, int]:
        async with await open_store(db) as store:
            return await store.counts()

    counts = asyncio.run(count())
    return counts["events"], counts["rejected"]


def _wait_stored(db: Path | str, serve: subprocess.Popen[bytes], quiet_for: float = 1.5,
                 timeout: float = 60.0) -> tuple[int, int]:
    """Wait until the daemon has stored everything: the counts stop moving for `quiet_for` s."""
    deadline = time.monotonic() + timeout
    last, since = _counts(db), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if serve.poll() is not None:
            raise MeterError(f"meter serve exited with code {serve.returncode} while storing")
        now = _counts(db)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return now
    return last


def scrape(port: int) -> list[str]:
    """The live gauges' sample lines from the daemon's /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    wanted = (*GAUGES, "meter_events_received_total", "meter_events_duplicate_total")
    return [line for line in text.splitlines()
            if line.startswith(wanted) and not line.startswith("#")]


def _say(text: str = "") -> None:
    print(text, flush=True)


def collect_with_broker(paths: DemoPaths, mosquitto: str, group: Processes) -> list[str]:
    """Broker, daemon, publish; returns the scraped gauge lines. Leaves the processes running."""
    broker_port, metrics_port = _free_port(), _free_port()
    conf = paths.out / "mosquitto.conf"
    conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n", encoding="utf-8")
    broker_log = paths.out / "mosquitto.log"
    broker = group.start("mosquitto", [mosquitto, "-c", str(conf)], broker_log)
    _wait_port(broker_port, broker, "mosquitto", broker_log)
    url = f"mqtt://127.0.0.1:{broker_port}"
    _say(f"broker     mosquitto on {url} (pid {broker.pid})")

    serve_log = paths.out / "serve.log"
    serve = group.start("meter serve", _meter(
        "serve", "--broker", url, *paths.db_argv(), "--contracts", str(paths.contracts),
        "--metrics-addr", f"127.0.0.1:{metrics_port}", "--max-future", max_future(),
        "--tracker-clock", "events", "--client-id", f"meter-demo-{os.getpid()}",
        # A replay of a past month must not be frozen half-way by the wall clock.
        "--finalize-after", "0s",
    ), serve_log, env=paths.child_env())
    _wait_port(metrics_port, serve, "meter serve", serve_log)
    _say(f"daemon     meter serve (pid {serve.pid}), metrics on "
         f"http://127.0.0.1:{metrics_port}/metrics, log {serve_log}")

    _say(f"publish    {paths.events} -> {url}")
    # The publisher writes its progress bar to our terminal (tqdm shows one only on a TTY).
    subprocess.run(_meter("publish", str(paths.events), "--broker", url),  # noqa: S603 - fixed argv
                   check=True, stdin=subprocess.DEVNULL)
    events, rejected = _wait_stored(paths.db, serve)
    _say(f"stored     {events} events, {rejected} rejected messages")
    lines = scrape(metrics_port)
    group.stop(serve)
    return lines


def collect_with_ingest(paths: DemoPaths) -> None:
    """No broker installed: `meter ingest` the same file through the same validation."""
    _say("broker     no mosquitto installed: loading the sample month with `meter ingest` "
         "instead (same validation and dedupe as the daemon)")
    subprocess.run(_meter("ingest", str(paths.events), *paths.db_argv(), "--contracts",  # noqa: S603 - fixed argv
                          str(paths.contracts), "--as-of", AS_OF.isoformat()),
                   check=True, stdin=subprocess.DEVNULL, env=paths.child_env())


async def bills(paths: DemoPaths) -> list[tuple[Report, list[Path]]]:
    """Rate each account's period holding the middle of the sample month; write all formats."""
    text = paths.contracts.read_text(encoding="utf-8")
    contracts = parse_contracts(text, source=str(paths.contracts))
    months: dict[str, list[str]] = {}
    for account in contracts.accounts:
        start = monthly_period(account, MID_SAMPLE).start.astimezone(account.tz)
        months.setdefault(f"{start:%Y-%m}", []).append(account.id)
    results = []
    async with await open_store(paths.db) as store:
        for month, accounts in sorted(months.items()):
            report = await make_report(store, contracts, text, month, accounts=accounts)
            written: list[Path] = []
            for fmt in ("json", "csv", "html"):
                written += write_outputs(report, fmt, paths.out / "report")
            results.append((report, written))
    return results


def _fresh(paths: DemoPaths) -> None:
    """Start from nothing: remove the demo's own SQLite file, or refuse a `--db` store that
    holds anything (the demo never deletes an operator's rows)."""
    if paths.store is None:
        db = Path(paths.db)
        for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            stale.unlink(missing_ok=True)
        return
    events, rejected = _counts(paths.db)
    if events or rejected:
        raise UsageError(f"--db {redact(paths.db)}: holds {events} events and {rejected} "
                         "rejected messages; the demo loads the sample month into an empty "
                         "database")


def main_demo(out: Path, *, use_broker: bool = True, db: Path | str | None = None) -> int:
    """Run the demo writing into `out` (and the store `db`, default `out`/meter.db); returns the
    exit code."""
    started = time.monotonic()
    paths = sample_paths(out, db)
    out.mkdir(parents=True, exist_ok=True)
    _fresh(paths)
    shutil.rmtree(out / "report", ignore_errors=True)
    _say(f"meter demo: the sample month {paths.events.name} into a fresh database "
         f"{redact(paths.db)}")
    mosquitto = find_mosquitto() if use_broker else None
    gauges: list[str] = []
    with processes() as group:
        if mosquitto:
            gauges = collect_with_broker(paths, mosquitto, group)
        else:
            collect_with_ingest(paths)
    if gauges:
        _say("\nlive gauges (a scrape of /metrics after the replay):")
        for line in gauges:
            _say(f"  {line}")
    results = asyncio.run(bills(paths))
    _say("\nbills (each account's period holding 15 November 2026):")
    for report, _ in results:
        _say(summary(report))
    _say("")
    for report, written in results:
        index = next(p for p in written if p.suffix == ".html")
        _say(f"HTML report {report.month}: {index.resolve()}")
        _say(f"JSON {report.month}:        {next(p for p in written if p.suffix == '.json').resolve()}")
    _say(f"done in {time.monotonic() - started:.1f}s")
    return 0


def run(args: argparse.Namespace) -> int:
    """`meter demo`."""
    out = Path(getattr(args, "out", None) or "demo-out")
    try:
        return main_demo(out, use_broker=not getattr(args, "no_broker", False),
                         db=getattr(args, "db", None))
    except subprocess.CalledProcessError as exc:
        raise MeterError(f"{Path(str(exc.cmd[3] if len(exc.cmd) > 3 else exc.cmd[0])).name} "
                         f"failed with exit code {exc.returncode}") from None
