"""The /metrics endpoint's TLS and basic auth options, on the daemon as a process.

With a certificate it speaks TLS only; with a username, a scrape without the right password gets
401 and no metric; the password (from a file) is in no log line.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Broker, wait_port
from tests.faults.harness import Daemon

PASSWORD = "scrape-Pa55-not-in-logs"  # noqa: S105 - a test credential, looked for in the outputs


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    cert, key = tmp_path / "metrics.crt", tmp_path / "metrics.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _get(url: str, context: ssl.SSLContext | None, auth: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 - a local test URL
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:  # noqa: S310
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


@pytest.mark.broker
def test_metrics_over_tls_with_basic_auth(broker_factory: type[Broker], tmp_path: Path,
                                          topic_prefix: str, certificate: tuple[Path, Path]) -> None:
    """TLS only; no or wrong credentials get 401 without a metric; the right ones get the scrape."""
    cert, key = certificate
    secret = tmp_path / "metrics-password"
    secret.write_text(PASSWORD + "\n")
    broker = broker_factory.new()  # type: ignore[attr-defined]
    daemon = Daemon(broker, tmp_path / "meter", topic_prefix, settings={
        "METER_METRICS_CERT_FILE": str(cert), "METER_METRICS_KEY_FILE": str(key),
        "METER_METRICS_USERNAME": "prometheus", "METER_METRICS_PASSWORD_FILE": str(secret),
    })
    daemon.start(wait=False)
    try:
        wait_port(daemon.metrics_port, timeout=30)
        url = f"https://127.0.0.1:{daemon.metrics_port}/metrics"
        tls = ssl.create_default_context(cafile=str(cert))
        anonymous = _get(url, tls, None)
        wrong = _get(url, tls, "prometheus:guess")
        right = _get(url, tls, f"prometheus:{PASSWORD}")
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            _get(f"http://127.0.0.1:{daemon.metrics_port}/metrics", None, f"prometheus:{PASSWORD}")
        assert daemon.alive
    finally:
        daemon.stop()
    assert 401 == anonymous[0]
    assert "meter_" not in anonymous[1]
    assert 401 == wrong[0]
    assert 200 == right[0]
    assert "meter_build_info" in right[1]
    log = daemon.log_text()
    assert "https://" in log
    assert PASSWORD not in log


@pytest.mark.parametrize(("env", "message"), [
    ({"METER_METRICS_USERNAME": "prometheus"}, "needs both"),
    ({"METER_METRICS_PASSWORD_FILE": "PASSWORD_FILE"}, "needs both"),
    ({"METER_METRICS_KEY_FILE": "/nonexistent.key"}, "needs --metrics-cert-file"),
])
def test_half_configured_metrics_security_is_refused(env: dict[str, str], message: str,
                                                     tmp_path: Path) -> None:
    """A username without a password (or the reverse), or a key without a certificate, is a
    one-line error and exit code 2, not an open endpoint."""
    secret = tmp_path / "password"
    secret.write_text("x\n")
    env = {k: str(secret) if v == "PASSWORD_FILE" else v for k, v in env.items()}
    done = subprocess.run([sys.executable, "-m", "meter", "serve", "--broker", "mqtt://127.0.0.1:1",
                           "--db", str(tmp_path / "m.db")],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert 2 == done.returncode
    assert message in done.stderr
    assert 1 == len(done.stderr.strip().splitlines())
