"""/healthz and /readyz on the metrics port, on the daemon as a process with a real HTTP client:
/healthz says the process answers, /readyz that its store writes and broker connection are up
(503 and a one-line reason otherwise); neither needs credentials with metrics auth on, /metrics
still does, any other path is 404. The container's HEALTHCHECK command, run as the Containerfile
states it, passes against a daemon with TLS and basic auth on, and fails once the daemon is gone.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Broker, wait_port
from tests.deploy.tools import DEPLOY
from tests.faults.harness import Daemon, event, wait_for

pytestmark = pytest.mark.broker

PASSWORD = "health-Pa55"  # noqa: S105 - a test credential
NOT_CONNECTED = "not ready: not connected to the MQTT broker (meter_mqtt_connected 0)\n"
STORE_FAILING = "not ready: store writes are failing (meter_store_healthy 0)\n"


def _get(url: str, *, auth: str | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    """(status, body, content type) of a GET; an HTTP error status is an answer, not a raise."""
    request = urllib.request.Request(url)  # noqa: S310 - a loopback test URL
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:  # noqa: S310
            return int(r.status), r.read().decode(), str(r.headers["Content-Type"])
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(), str(exc.headers["Content-Type"])


def _answers(url: str, status: int, body: str) -> bool:
    try:
        return (status, body) == _get(url)[:2]
    except OSError:  # not listening yet
        return False


def _auth_settings(tmp_path: Path) -> dict[str, str]:
    secret = tmp_path / "metrics-password"
    secret.write_text(PASSWORD + "\n")
    return {"METER_METRICS_USERNAME": "prometheus", "METER_METRICS_PASSWORD_FILE": str(secret)}


def test_health_and_ready_answer_without_credentials_and_other_paths_are_404(
        mosquitto: Broker, tmp_path: Path, topic_prefix: str) -> None:
    """With basic auth on /metrics: /healthz is 200 "ok", /readyz 200 "ready" once connected,
    both without credentials; /metrics is 401 without them and 200 with them; /, /metricsx and
    /healthz/x are 404 and show no metric."""
    daemon = Daemon(mosquitto, tmp_path / "meter", topic_prefix, settings=_auth_settings(tmp_path))
    base = f"http://127.0.0.1:{daemon.metrics_port}"
    daemon.start(wait=False)
    try:
        wait_port(daemon.metrics_port, timeout=30)
        wait_for(lambda: _answers(f"{base}/readyz", 200, "ready\n"), 30, "/readyz to say ready")
        health = _get(f"{base}/healthz")
        ready = _get(f"{base}/readyz")
        anonymous = _get(f"{base}/metrics")
        scrape = _get(f"{base}/metrics", auth=f"prometheus:{PASSWORD}")
        unknown = [_get(f"{base}{path}") for path in ("/", "/metricsx", "/healthz/x")]
    finally:
        daemon.stop()
    assert (200, "ok\n", "text/plain; charset=utf-8") == health
    assert (200, "ready\n", "text/plain; charset=utf-8") == ready
    assert 401 == anonymous[0]
    assert "meter_" not in anonymous[1]
    assert 200 == scrape[0]
    assert "\nmeter_mqtt_connected 1.0\n" in scrape[1]
    expected_404 = (404, "not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")
    assert [expected_404] * 3 == unknown


def test_readyz_is_503_while_the_broker_is_gone(broker_factory: type[Broker], tmp_path: Path,
                                               topic_prefix: str) -> None:
    """A broker that stops makes /readyz 503 with the reason in one line while /healthz stays
    200; when the broker is back and the daemon has reconnected, /readyz is 200 again."""
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix)
    base = f"http://127.0.0.1:{daemon.metrics_port}"
    daemon.start()
    try:
        wait_for(lambda: _answers(f"{base}/readyz", 200, "ready\n"), 30, "/readyz to say ready")
        broker.stop()
        wait_for(lambda: _answers(f"{base}/readyz", 503, NOT_CONNECTED), 30, "/readyz to be 503")
        down = (_get(f"{base}/readyz"), _get(f"{base}/healthz"))
        broker.start()
        wait_for(lambda: _answers(f"{base}/readyz", 200, "ready\n"), 30, "/readyz ready again")
    finally:
        daemon.stop()
    assert ((503, NOT_CONNECTED, "text/plain; charset=utf-8"),
            (200, "ok\n", "text/plain; charset=utf-8")) == down


def test_readyz_is_503_while_the_store_cannot_be_written(mosquitto: Broker, tmp_path: Path,
                                                         topic_prefix: str) -> None:
    """Another writer holding the database's write lock makes the daemon's batch fail: /readyz
    is 503 naming the store until the lock is gone and the retried batch commits."""
    daemon = Daemon(mosquitto, tmp_path / "meter", topic_prefix)
    base = f"http://127.0.0.1:{daemon.metrics_port}"
    daemon.start()
    topic = f"{topic_prefix}/acme/events"
    try:
        wait_for(lambda: _answers(f"{base}/readyz", 200, "ready\n"), 30, "/readyz to say ready")
        blocker = sqlite3.connect(daemon.db, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port),
                            "-q", "1", "-t", topic, "-m", json.dumps(event(1))],
                           check=True, timeout=30)
            wait_for(lambda: _answers(f"{base}/readyz", 503, STORE_FAILING), 60,
                     "/readyz to name the store")
            failing = _get(f"{base}/readyz")[:2]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        wait_for(lambda: _answers(f"{base}/readyz", 200, "ready\n"), 60, "/readyz ready again")
        stored = daemon.value("meter_events_received_total", account="acme")
    finally:
        daemon.stop()
    assert (503, STORE_FAILING) == failing
    assert 1.0 == stored


# --- the container's HEALTHCHECK --------------------------------------------------------------------

def _healthcheck_command() -> list[str]:
    """The Containerfile's HEALTHCHECK CMD (exec form), with the image's paths made local."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK ")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    copied = re.findall(r"^COPY deploy/(\S+) (\S+)$", text, flags=re.MULTILINE)
    local = {target: str(DEPLOY / source) for source, target in copied}
    return [sys.executable if arg == "python" else local.get(arg, arg) for arg in command]


def test_containerfile_healthcheck_probes_healthz() -> None:
    """HEALTHCHECK runs deploy/healthcheck.py (copied into the image) with the image's Python."""
    assert [sys.executable, str(DEPLOY / "healthcheck.py")] == _healthcheck_command()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for a public name (not 127.0.0.1), made with openssl."""
    cert, key = tmp_path / "metrics.crt", tmp_path / "metrics.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=meter.example.internal", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_healthcheck_passes_with_tls_and_auth_on_and_fails_when_the_daemon_is_gone(
        mosquitto: Broker, tmp_path: Path, topic_prefix: str,
        certificate: tuple[Path, Path]) -> None:
    """With TLS and basic auth on, the HEALTHCHECK command exits 0 with the daemon's own METER_*
    variables and no password; after the daemon stops it exits 1 with one line on stderr."""
    cert, key = certificate
    settings = _auth_settings(tmp_path) | {"METER_METRICS_CERT_FILE": str(cert),
                                           "METER_METRICS_KEY_FILE": str(key)}
    daemon = Daemon(mosquitto, tmp_path / "meter", topic_prefix, settings=settings)
    env = {"PATH": "/usr/bin:/bin", "METER_METRICS_ADDR": f"0.0.0.0:{daemon.metrics_port}",
           "METER_METRICS_CERT_FILE": "/etc/meter/metrics.crt"}

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(_healthcheck_command(), env=env, capture_output=True, text=True,
                              timeout=30, check=False)

    daemon.start(wait=False)
    try:
        wait_port(daemon.metrics_port, timeout=30)
        up = check()
    finally:
        daemon.stop()
    down = check()
    assert (0, "", "") == (up.returncode, up.stdout, up.stderr)
    assert (1, "") == (down.returncode, down.stdout)
    assert [f"healthcheck: https://127.0.0.1:{daemon.metrics_port}/healthz: "
            "<urlopen error [Errno 111] Connection refused>"] == down.stderr.splitlines()
