"""`meter demo`: the whole pipeline on the sample month, and every process it started stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.demo import max_future

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Whether a process with this id still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m meter demo` to completion."""
    return subprocess.run([sys.executable, "-m", "meter", "demo", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=240, check=False)


def check_bills(stdout: str, out: Path) -> None:
    """The sample month's bills as sample_sessions/README.md plants them, and the reports."""
    assert "acme  2026-11-01T04:00:00Z .. 2026-12-01T05:00:00Z  total 3767.31 USD" in stdout
    assert ("pool agents     licensed  14  peak  17  billable  17  overage 3 seats = 447.00 USD"
            in stdout)
    assert "overage 2 seats = 158.00 USD" in stdout
    assert "globex  2026-11-14T23:00:00Z .. 2026-12-14T23:00:00Z  total 0.00 EUR" in stdout
    assert "initech  2026-10-30T15:00:00Z .. 2026-11-29T15:00:00Z  total 499408 JPY" in stdout
    pages = re.findall(r"HTML report (\d{4}-\d{2}): (\S+)", stdout)
    assert ["2026-10", "2026-11"] == [month for month, _ in pages]
    for _, page in pages:
        assert Path(page).is_file()
        assert Path(page).parent == (out / "report").resolve()
    assert (out / "report" / "report-2026-11-acme.html").is_file()


@pytest.mark.slow
@pytest.mark.broker
def test_demo_runs_broker_daemon_publish_and_bills_then_stops_everything(tmp_path: Path) -> None:
    """With Mosquitto installed: broker and daemon are started, the month is published and
    stored, gauges are scraped, the bills printed, and both processes are gone at the end."""
    result = demo(tmp_path / "demo")
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    assert re.search(r"broker     mosquitto on mqtt://127\.0\.0\.1:\d+", out)
    # As sample_sessions/README.md counts for `meter ingest` of the same file.
    assert "stored     31169 events, 13 rejected messages" in out
    assert 'meter_licensed_seats{account="acme",pool="agents"} 14.0' in out
    check_bills(out, tmp_path / "demo")
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert 2 == len(pids)
    assert [] == [p for p in pids if alive(p)]


@pytest.mark.slow
def test_demo_without_broker_ingests_the_same_file(tmp_path: Path) -> None:
    """--no-broker (as with no Mosquitto installed) says so and loads the file with ingest."""
    result = demo(tmp_path / "demo", "--no-broker")
    assert 0 == result.returncode, result.stderr
    assert "no mosquitto installed: loading the sample month with `meter ingest`" in result.stdout
    assert re.search(r"accepted\s+31169\n", result.stdout)
    check_bills(result.stdout, tmp_path / "demo")


@pytest.mark.slow
@pytest.mark.broker
def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    """SIGINT while publishing: the demo exits 130 and leaves no broker or daemon behind."""
    proc = subprocess.Popen([sys.executable, "-m", "meter", "demo", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("publish"):
            break
    time.sleep(1.0)  # publishing is under way
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "".join(seen))]
    assert 2 == len(pids)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert 130 == proc.returncode, err
    assert [] == [p for p in pids if alive(p)]


@pytest.mark.parametrize(("now", "expected"), [
    (datetime(2026, 11, 23, 18, 0, tzinfo=UTC), f"{8 * 86400 + 6 * 3600 + 1}s"),
    (datetime(2026, 12, 1, 23, 59, tzinfo=UTC), "300s"),   # never below the default 5 minutes
    (datetime(2030, 1, 1, tzinfo=UTC), "300s"),
])
def test_demo_future_skew_accepts_the_month_as_of_2_december(now: datetime, expected: str) -> None:
    """The daemon accepts what `ingest --as-of 2026-12-02T00:00:00Z` would."""
    assert expected == max_future(now)
