"""Tenant isolation on HTTP, through the daemon as a process: a token for one account cannot
write another (each such line is a tenant_mismatch row, filed under the token's account, and no
event of the other account is stored), cannot read another's usage or report (403), and no
token or an unknown one is 401. An operator token (`accounts = ["*"]`) writes and reads every
account. Tokens appear in no log line; without a tokens file the daemon refuses a non-loopback
address with one line and exit 2."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Broker
from tests.faults.harness import stored_ids
from tests.meter.test_http_ingest import HttpDaemon, curl, doc, get, http_daemon, ndjson

ACME = "acme-token-0123456789abcdef"
GLOBEX = "globex-token-fedcba9876543210"
OPERATOR = "operator-token-00112233445566"

TOKENS = f"""
[[token]]
name = "acme-ingest"
token = "{ACME}"
accounts = ["acme"]

[[token]]
name = "globex-ingest"
token_sha256 = "{hashlib.sha256(GLOBEX.encode()).hexdigest()}"
accounts = ["globex"]

[[token]]
name = "ops"
token = "{OPERATOR}"
accounts = ["*"]
"""


@pytest.fixture
def daemon(mosquitto: Broker, tmp_path: Path, topic_prefix: str) -> HttpDaemon:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    d = http_daemon(mosquitto, tmp_path / "meter", topic_prefix,
                    settings={"METER_HTTP_TOKENS": str(tokens)})
    yield d  # type: ignore[misc]
    d.kill()


def _rejected(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT account, reason, topic FROM rejected ORDER BY seq"))


@pytest.mark.broker
def test_a_token_for_one_account_cannot_write_or_read_another(daemon: HttpDaemon,
                                                              topic_prefix: str) -> None:
    """acme's token posting acme's and globex's events: acme's are stored, globex's are
    tenant_mismatch rows filed under acme; globex's usage and report are 403 for it; no token
    and a wrong one are 401; the operator token writes globex and reads both."""
    daemon.start()
    url = daemon.api("/v1/events")
    mixed = curl(url, ndjson([doc(1), doc(2, account="globex"), doc(3)]), token=ACME)
    anonymous = curl(url, ndjson([doc(4)]))
    wrong = curl(url, ndjson([doc(5)]), token=ACME + "x")
    own_globex = curl(url, ndjson([doc(6, account="globex")]), token=GLOBEX)
    ops = curl(url, ndjson([doc(7, account="globex"), doc(8)]), token=OPERATOR)
    reads = {(who, acct): get(daemon.api(f"/v1/accounts/{acct}/usage"), token=token)[0]
             for who, token in (("acme", ACME), ("globex", GLOBEX), ("ops", OPERATOR))
             for acct in ("acme", "globex")}
    report_status = get(daemon.api("/v1/accounts/globex/reports/2026-11"), token=ACME)
    unauthenticated_read = get(daemon.api("/v1/accounts/acme/usage"))
    daemon.stop()
    assert (207, {"accepted": 2, "duplicates": 0, "rejected": [
        {"line": 2, "reason": "tenant_mismatch",
         "detail": "payload account 'globex' differs from topic account 'acme'"}]}) == mixed
    unauthorized = {"error": "unauthorized",
                    "detail": "missing or unknown bearer token (Authorization: Bearer TOKEN)"}
    assert (401, unauthorized) == anonymous
    assert (401, unauthorized) == wrong
    assert (401, unauthorized) == unauthenticated_read
    assert (200, {"accepted": 1, "duplicates": 0, "rejected": []}) == own_globex
    assert (200, {"accepted": 2, "duplicates": 0, "rejected": []}) == ops
    assert {("acme", "acme"): 200, ("acme", "globex"): 403, ("globex", "acme"): 403,
            ("globex", "globex"): 200, ("ops", "acme"): 200, ("ops", "globex"): 200} == reads
    assert (403, {"error": "forbidden",
                  "detail": "this token may not read account 'globex'"}) == report_status
    assert {("acme", "h1"), ("acme", "h3"), ("globex", "h6"), ("globex", "h7"),
            ("acme", "h8")} == set(stored_ids(daemon.db))
    assert [("acme", "tenant_mismatch", f"{topic_prefix}/acme/events")] == _rejected(daemon.db)
    log = daemon.log_text()
    assert [] == [t for t in (ACME, GLOBEX, OPERATOR) if t in log]
    assert "3 bearer tokens" in log


def test_without_tokens_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    """`--http-addr 0.0.0.0:PORT` with no tokens file: one line on stderr, exit 2, before any
    connection is tried."""
    out = subprocess.run([sys.executable, "-m", "meter", "serve", "--broker", "mqtt://127.0.0.1:1",
                          "--db", str(tmp_path / "m.db"), "--http-addr", "0.0.0.0:8080"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert 2 == out.returncode
    assert ("meter serve: --http-addr 0.0.0.0:8080: without --http-tokens HTTP ingest binds only "
            "a loopback address (127.0.0.1, ::1, localhost): give a tokens file to listen on "
            "another\n") == out.stderr
    assert not (tmp_path / "m.db").exists()
