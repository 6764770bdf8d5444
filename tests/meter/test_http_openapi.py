"""The HTTP API keeps to its OpenAPI document: schemathesis generates requests from the
document the daemon serves (a running `meter serve` with a tokens file) and checks every
answer's status, content type and body against it; no request makes a server error. The
served document is docs/openapi.yaml, byte for byte."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import ROOT, Broker
from tests.meter.test_http_ingest import HttpDaemon, http_daemon

pytestmark = pytest.mark.broker

TOKEN = "schemathesis-operator-token"  # noqa: S105 - a test credential
OPERATIONS = [("/v1/events", "POST"), ("/v1/accounts/{account}/usage", "GET"),
              ("/v1/accounts/{account}/reports/{period}", "GET"), ("/healthz", "GET"),
              ("/readyz", "GET")]


@pytest.fixture
def daemon(mosquitto: Broker, tmp_path: Path, topic_prefix: str) -> Iterator[HttpDaemon]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\ntoken = "{TOKEN}"\naccounts = ["*"]\n')
    d = http_daemon(mosquitto, tmp_path / "meter", topic_prefix,
                    settings={"METER_HTTP_TOKENS": str(tokens), "METER_HTTP_MAX_BYTES": "65536"})
    d.start()
    yield d
    d.kill()


def test_the_served_document_is_the_committed_one(daemon: HttpDaemon) -> None:
    """GET /openapi.yaml answers docs/openapi.yaml."""
    with urllib.request.urlopen(daemon.api("/openapi.yaml"), timeout=10) as r:  # noqa: S310
        served = r.read().decode()
    assert (ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8") == served


@pytest.mark.slow
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_operation_conforms_to_the_document(daemon: HttpDaemon, path: str,
                                                  method: str) -> None:
    """Generated requests (40 per operation) each get an answer the document allows."""
    schema = schemathesis.openapi.from_url(daemon.api("/openapi.yaml"))
    operation = schema[path][method]
    base = daemon.api("")

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})

    check()
    assert daemon.alive
