"""`meter report`'s worker processes die with it: a SIGKILL of the report leaves none behind."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meter.report.rate import PARALLEL_MIN
from tests.contracts_toml import account, contracts, pool

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = PARALLEL_MIN + 12

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")


def _events(path: Path) -> None:
    """Enough logins and logouts per account that rating takes a while."""
    with path.open("w") as f:
        for a in range(ACCOUNTS):
            for i in range(1200):
                for kind, minute in (("login", i % 50), ("logout", i % 50 + 7)):
                    day = 2 + i % 25
                    f.write(json.dumps({
                        "id": f"{kind}{i}", "type": kind, "account": f"a{a}", "user": f"u{i % 40}",
                        "ts": f"2026-11-{day:02d}T{10 + minute // 60:02d}:{minute % 60:02d}:00Z",
                        "pool": "agents", "session": f"s{i}"}) + "\n")


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _rating(pid: int, db: Path) -> bool:
    """Whether worker `pid` has the database open: spawned, initialized and at work. (Killed
    earlier, a spawned child dies anyway, reading its preparation data from the dead parent.)"""
    try:
        return any(os.readlink(fd) == str(db) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever reaps orphans here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_report_and_wait(report: subprocess.Popen[bytes], at_work: Callable[[int], bool]
                         ) -> tuple[set[int], set[int]]:
    """Wait (up to 60 s) until the report's spawned workers are all `at_work`, SIGKILL the
    report, and give the workers 5 s to follow it. Returns the workers seen and the survivors
    (killed here, so none outlives the test)."""
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and report.poll() is None and not (
            workers and all(at_work(p) for p in workers)):
        workers |= {p for p in _children(report.pid) if _is_worker(p)}
        time.sleep(0.01)
    assert workers, "the report finished or never spawned workers"
    assert report.poll() is None, "the report ended before it could be killed"
    os.kill(report.pid, signal.SIGKILL)
    report.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    survivors = {p for p in workers if _alive(p)}
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    return workers, survivors


def test_sigkill_of_report_leaves_no_worker(tmp_path: Path) -> None:
    """Workers seen while the report rates are all gone within 5 s of its SIGKILL (before the fix
    they blocked on their call queue and stayed alive)."""
    text = contracts(*(account(f"a{a}", pools=[pool("agents", tier="elite", model="concurrent",
                                                     quantity=10, price="10.00",
                                                     overage_price="10.00")])
                       for a in range(ACCOUNTS)))
    contracts_path = tmp_path / "contracts.toml"
    contracts_path.write_text(text)
    events = tmp_path / "events.jsonl"
    _events(events)
    db = tmp_path / "meter.db"
    done = subprocess.run([sys.executable, "-m", "meter", "ingest", str(events), "--db", str(db),
                           "--contracts", str(contracts_path)], capture_output=True, text=True,
                          cwd=ROOT, stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert 0 == done.returncode, done.stderr
    with subprocess.Popen([sys.executable, "-m", "meter", "report", "--db", str(db),
                           "--contracts", str(contracts_path), "--period", "2026-11",
                           "--out", str(tmp_path / "out")],
                          cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as report:
        _, survivors = kill_report_and_wait(report, functools.partial(_rating, db=db))
    assert set() == survivors
