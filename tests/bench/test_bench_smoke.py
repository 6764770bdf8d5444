"""Every bench runs at a tiny size as a subprocess, so none can rot: it exits 0 and writes its
results JSON with the machine and the keys the README figures come from. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
COMMON = ("bench", "machine", "params", "results", "started", "seconds")
MACHINE = ("cores", "cpu_model", "python", "sqlite", "git_commit")

#: bench script -> (tiny-size arguments, keys its `results` must have)
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "store_index": (["--rows", "3000", "--variants", "v1,tsuniq", "--ids", "uuid4"],
                    ("variants",)),
    "tracker": (["--sessions", "2000", "--accounts", "10", "--heartbeat-rounds", "1"],
                ("bytes_per_session", "login_us_per_event", "heartbeat_us_per_event")),
    "ingest_file": (["--accounts", "3", "--agents", "2", "--days", "1", "--repeat", "1"],
                    ("lines", "runs", "ratio_best")),
    "store_pg": (["--rows", "3000", "--accounts", "3", "--days", "1", "--repeat", "1"],
                 ("server_version", "insert", "report")),
    "ingest": (["--events", "300", "--latency-events", "200", "--latency-rate", "1000",
                "--rounds", "1"],
               ("rounds", "meter_of_aiomqtt", "meter_of_raw", "daemon_peak_rss_mb")),
}


def _run(name: str, args: list[str], out: Path) -> dict[str, object]:
    script = BENCH / f"{name}.py"
    if not script.exists():
        pytest.skip(f"bench/{name}.py does not exist yet")
    done = subprocess.run([sys.executable, str(script), *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert 0 == done.returncode, done.stderr[-3000:]
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("name", ["store_index", "tracker", "ingest_file", "store_pg"])
def test_bench_runs_at_a_tiny_size(name: str, tmp_path: Path) -> None:
    """The bench exits 0 and writes its results with the machine and its figures' keys."""
    args, keys = CASES[name]
    doc = _run(name, args, tmp_path / f"{name}.json")
    assert name == doc["bench"]
    assert set(COMMON) <= set(doc)
    assert set(MACHINE) <= set(doc["machine"])  # type: ignore[arg-type]
    assert set(keys) <= set(doc["results"])  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.broker
def test_restart_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """bench/restart.py generates a tiny current period, starts `meter serve` twice against its
    own Mosquitto (a full rebuild, then from the checkpoint the first saved on SIGTERM) and
    measures each start's first ack and peak RSS."""
    doc = _run("restart", ["--events", "2000", "--accounts", "5"], tmp_path / "restart.json")
    (size,) = doc["results"]["sizes"]  # type: ignore[index]
    assert 2000 == size["events"]
    assert size["full"]["how"].startswith("rebuilt live state from 2000 stored events")
    assert size["checkpoint"]["how"].startswith("restored the checkpoint")
    for start in ("full", "checkpoint"):
        assert 0 < size[start]["first_ack_s"]
        assert 0 < size[start]["peak_rss_mb"]


@pytest.mark.slow
@pytest.mark.broker
def test_ingest_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """bench/ingest.py starts its own Mosquitto and `meter serve`, measures every subscriber and
    the latency round, and the meter stores every event it was sent."""
    args, keys = CASES["ingest"]
    doc = _run("ingest", args, tmp_path / "ingest.json")
    results: dict[str, object] = doc["results"]  # type: ignore[assignment]
    assert set(keys) <= set(results)
    (first,) = results["rounds"]  # type: ignore[misc]
    for subscriber in ("raw", "aiomqtt", "meter"):
        assert 300 == first[subscriber]["received"]
    assert 200 == first["latency"]["events"]


#: Tiny values for the size flags other benches may have; only the flags a bench lists in its
#: --help are passed, so this keeps working as their options settle.
TINY: dict[str, str] = {"--smoke": "", "--events": "5000", "--accounts": "5", "--repeat": "1",
                        "--days": "1", "--agents": "2"}


@pytest.mark.slow
def test_rating_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """bench/rating.py (the rating issue's) exits 0 at 5,000 events over 5 accounts and writes
    its ratio to np.argsort with the machine."""
    doc = _run("rating", ["--events", "5000", "--accounts", "5", "--repeat", "1"],
               tmp_path / "rating.json")
    assert {"machine", "ratio_best", "seconds"} <= set(doc)


@pytest.mark.slow
def test_report_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """bench/report.py (the report issue's) exits 0 at its smallest size and writes its results
    with the machine."""
    script = BENCH / "report.py"
    if not script.exists():
        pytest.skip("bench/report.py does not exist yet")
    help_text = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=False).stdout
    args: list[str] = []
    for flag, value in TINY.items():
        if flag in help_text:
            args += [flag, value] if value else [flag]
    doc = _run("report", args, tmp_path / "report.json")
    assert "machine" in doc
