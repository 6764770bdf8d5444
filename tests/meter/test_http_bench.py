"""bench/http_ingest.py runs at a tiny size so it cannot rot: its own Mosquitto, `meter serve`
with --http-addr fed by the aiohttp load client, then the MQTT round; every event of both is
stored, and the ratio is written with the machine. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.broker
def test_http_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """600 events over 3 accounts in requests of 100, 2 in flight: both rounds store all 600."""
    out = tmp_path / "http_ingest.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "http_ingest.py"), "--events",
                           "600", "--accounts", "3", "--rounds", "1", "--concurrency", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert 0 == done.returncode, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert "http_ingest" == doc["bench"]
    (first,) = doc["results"]["rounds"]
    assert (600, 600, 6) == (first["http"]["received"], first["mqtt"]["received"],
                             round(first["http"]["requests_per_s"] * first["http"]["seconds"]))
    assert [first["http_of_mqtt"]] == doc["results"]["http_of_mqtt"]
