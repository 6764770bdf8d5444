"""The deployment against the real thing: `meter serve` as a subprocess on a real Mosquitto,
scraped by the real Prometheus server (Debian's package) with deploy/prometheus.yml and
deploy/alerts.yml, which sends its alerts to a real Alertmanager (Debian's
prometheus-alertmanager) with deploy/alertmanager.yml, whose receivers point at a webhook server
the test runs; events are published with mosquitto_pub. The Prometheus HTTP API must report the
exact live values, the alert rules must evaluate on the daemon's real series, the grace alert must
arrive at the billing receiver (firing, then resolved), and every Grafana panel query must run and
use only metrics the daemon exports.

One daemon and one Prometheus serve the whole module; the tests read what the fixture did.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Broker, free_port, wait_port
from tests.contracts_toml import account, contracts, pool
from tests.deploy.tools import ALERTMANAGER_PACKAGE, DEPLOY, metric_names, promtool, require

pytestmark = pytest.mark.broker

#: acme/agents has 2 licenses and a 5-minute grace, so a third user is an excess whose grace
#: clock is under the 10 minutes at which MeterGraceAboutToExpire fires.
CONTRACTS = contracts(
    account("acme", pools=[
        pool("agents", tier="elite", model="concurrent", quantity=2, price="149.00",
             overage_price="149.00", grace="5m")]),
    account("globex", timezone="Europe/Berlin", currency="EUR", anchor="2026-01-15", pools=[
        pool("desk", tier="premium", model="concurrent", quantity=10, price="89.00",
             overage_price="99.00", grace="30m")]),
)

_DEADLINE = 20.0  # seconds any one condition may take to show up (a 1 s scrape interval)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
        body: bytes = response.read()
        return body


def _wait_for(what: str, check: Callable[[], Any]) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after the deadline."""
    deadline = time.monotonic() + _DEADLINE
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Stack:
    """What the module fixture started and saw."""

    metrics_url: str
    prometheus_url: str
    webhook: Webhook | None = None
    scrape: str = ""
    seen: dict[str, Any] = field(default_factory=dict)

    def query(self, expr: str) -> dict[str, Any]:
        """Prometheus's JSON answer to an instant query (errors included, not raised)."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = _get(url)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            body = exc.read()
        answer: dict[str, Any] = json.loads(body)
        return answer

    def value(self, expr: str) -> float | None:
        """The single sample of `expr` now, or None when it selects nothing."""
        result = self.query(expr)["data"]["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, expected: float) -> float | None:
        """Wait until Prometheus holds `expected` for `expr`; return what it holds at the end."""
        _wait_for(f"{expr} == {expected}", lambda: self.value(expr) == expected)
        return self.value(expr)

    def firing(self) -> list[dict[str, Any]]:
        """Alerts Prometheus has firing now."""
        alerts = json.loads(_get(f"{self.prometheus_url}/api/v1/alerts"))["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


class Webhook:
    """A real HTTP server standing in for every Alertmanager receiver: it records each POST as
    (path, JSON body); the path names the receiver."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        lock = threading.Lock()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self.thread.start()

    def alerts(self, path: str, alertname: str, status: str) -> list[dict[str, Any]]:
        """The alerts named `alertname` with `status` in notifications that reached `path`."""
        return [alert for p, body in list(self.received) if p == path
                for alert in body["alerts"]
                if alert["labels"]["alertname"] == alertname and alert["status"] == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _event(kind: str, user: str, ts: datetime, eid: str, session: str = "s1") -> str:
    return json.dumps({"id": eid, "type": kind, "account": "acme", "user": user,
                       "ts": ts.isoformat(), "pool": "agents", "session": session})


def _publish(broker: Broker, topic: str, lines: list[str]) -> None:
    """Publish one message per line at QoS 1 (mosquitto_pub waits for every PUBACK)."""
    subprocess.run(
        [require("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port), "-t", topic,
         "-q", "1", "-l"],
        input="\n".join(lines) + "\n", text=True, check=True, timeout=30,
    )


#: Rules whose `for:` the live test shortens (promtool's unit tests prove the real durations).
_SHORT_FOR = {"MeterGraceAboutToExpire": "2s"}


def _prometheus_config(tmp: Path, metrics_port: int, alertmanager_port: int) -> Path:
    """deploy/prometheus.yml with the target moved to the test daemon, alerts sent to the test
    Alertmanager and a 1 s interval; deploy/alerts.yml as it is but for `_SHORT_FOR`."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    rules = []
    for name in config["rule_files"]:
        doc = yaml.safe_load((DEPLOY / name).read_text())
        for rule in (r for g in doc["groups"] for r in g["rules"]):
            if rule["alert"] in _SHORT_FOR:
                rule["for"] = _SHORT_FOR[rule["alert"]]
        (tmp / name).write_text(yaml.safe_dump(doc))
        rules.append(str(tmp / name))
    config["rule_files"] = rules
    (manager,) = config["alerting"]["alertmanagers"]
    manager["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    (job,) = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _alertmanager_config(tmp: Path, webhook: Webhook) -> Path:
    """deploy/alertmanager.yml with each receiver's webhook at the test server (the path names
    the receiver) and notifications sent after 1 s instead of 30 s and 5 min."""
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    config["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    for receiver in config["receivers"]:
        (hook,) = receiver["webhook_configs"]
        hook["url"] = f"{webhook.url}/{receiver['name']}"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Daemon + Prometheus + Alertmanager + webhook; publishes three logins (one over the
    licenses), a redelivery and a garbage message, then a logout, recording what Prometheus
    showed and the webhook received after each step."""
    prometheus_bin = require("prometheus")
    alertmanager_bin = require("prometheus-alertmanager", ALERTMANAGER_PACKAGE)
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "contracts.toml").write_text(CONTRACTS)
    prefix = f"t{uuid.uuid4().hex[:10]}/meter"
    metrics_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    webhook = Webhook()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env |= {"METER_TOPIC_PREFIX": prefix, "METER_CLIENT_ID": f"meter-{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": str(ROOT)}
    daemon_log = (tmp / "meter.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "meter", "serve", "--broker", mosquitto.url,
         "--db", str(tmp / "meter.db"), "--contracts", str(tmp / "contracts.toml"),
         "--metrics-addr", f"127.0.0.1:{metrics_port}"],
        stdout=daemon_log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
    )
    am_log = (tmp / "alertmanager.log").open("wb")
    alertmanager = subprocess.Popen(
        [alertmanager_bin, f"--config.file={_alertmanager_config(tmp, webhook)}",
         f"--storage.path={tmp / 'alertmanager'}",
         f"--web.listen-address=127.0.0.1:{alertmanager_port}", "--cluster.listen-address="],
        stdout=am_log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    prom_log = (tmp / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [prometheus_bin, f"--config.file={_prometheus_config(tmp, metrics_port, alertmanager_port)}",
         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    daemon_log.close()
    am_log.close()
    prom_log.close()
    stack = Stack(f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{prometheus_port}",
                  webhook=webhook)
    try:
        wait_port(metrics_port, timeout=_DEADLINE)
        wait_port(alertmanager_port, timeout=_DEADLINE)
        wait_port(prometheus_port, timeout=_DEADLINE)
        _wait_for("the meter to connect to the broker",
                  lambda: b"\nmeter_mqtt_connected 1.0\n" in _get(stack.metrics_url))
        _wait_for("Prometheus to see the meter up", lambda: 1.0 == stack.value('up{job="meter"}'))

        topic = f"{prefix}/acme/events"
        now = datetime.now(UTC)
        start = now - timedelta(minutes=1)
        logins = [_event("login", f"u{i}", start, f"e{i}") for i in (1, 2, 3)]
        _publish(mosquitto, topic, [*logins, logins[0], "not json at all"])
        active = 'meter_active_users{account="acme",pool="agents"}'
        stack.seen["active_after_logins"] = stack.wait_value(active, 3.0)
        stack.seen["firing_after_logins"] = _wait_for(
            "MeterGraceAboutToExpire to fire",
            lambda: [a for a in stack.firing() if a["labels"]["alertname"] == "MeterGraceAboutToExpire"])
        stack.seen["excess_table"] = stack.query(_excess_table_grace_query())["data"]["result"]
        stack.seen["delivered_firing"] = _wait_for(
            "the grace alert to reach the billing webhook",
            lambda: webhook.alerts("/billing", "MeterGraceAboutToExpire", "firing"))

        _publish(mosquitto, topic, [_event("logout", "u2", now - timedelta(seconds=30), "e4")])
        stack.seen["active_after_logout"] = stack.wait_value(active, 2.0)
        stack.seen["excess_after_logout"] = stack.wait_value(
            'meter_excess_users{account="acme",pool="agents"}', 0.0)
        stack.seen["delivered_resolved"] = _wait_for(
            "the grace alert's resolution to reach the billing webhook",
            lambda: webhook.alerts("/billing", "MeterGraceAboutToExpire", "resolved"))
        # Mosquitto publishes $SYS every sys_interval (10 s by default), retained.
        _wait_for("the broker's $SYS counters in the meter's metrics",
                  lambda: b"\nmeter_broker_dropped_messages_total " in _get(stack.metrics_url))
        stack.scrape = _get(stack.metrics_url).decode()
        yield stack
    finally:
        _stop(prometheus)
        _stop(alertmanager)
        _stop(daemon)
        webhook.close()
        for name in ("meter.log", "prometheus.log", "alertmanager.log"):
            sys.stderr.write(f"--- {name} (tail)\n{(tmp / name).read_text()[-3000:]}\n")


def _exported(scrape: str) -> set[str]:
    """Every sample name in a scrape (a histogram gives _bucket, _count, _sum)."""
    return {s.name for family in text_string_to_metric_families(scrape) for s in family.samples}


def test_prometheus_reports_the_exact_active_users(stack: Stack) -> None:
    """Three logins make 3 active users; a logout makes 2, as read from Prometheus's HTTP API."""
    assert 3.0 == stack.seen["active_after_logins"]
    assert 2.0 == stack.seen["active_after_logout"]
    assert 2.0 == stack.value('meter_active_users{account="acme",pool="agents"}')
    assert 0.0 == stack.value('meter_active_users{account="globex",pool="desk"}')


def test_prometheus_reports_the_exact_event_counters(stack: Stack) -> None:
    """4 events stored, 1 redelivery absorbed, 1 garbage message rejected as not_json."""
    assert 4.0 == stack.wait_value('meter_events_received_total{account="acme"}', 4.0)
    assert 1.0 == stack.value('meter_events_duplicate_total{account="acme"}')
    assert 1.0 == stack.value('sum(meter_events_rejected_total{reason="not_json"})')
    assert 2.0 == stack.value('meter_licensed_seats{account="acme",pool="agents"}')


def test_grace_alert_fires_on_the_daemons_real_series(stack: Stack) -> None:
    """A third user on two licenses with a 5-minute grace fires MeterGraceAboutToExpire for
    acme/agents, with the grace left (under 5 minutes, over 0) as its value."""
    (alert,) = stack.seen["firing_after_logins"]
    assert ("acme", "agents", "warning") == (
        alert["labels"]["account"], alert["labels"]["pool"], alert["labels"]["severity"])
    assert 0 < float(alert["value"]) < 300


def _delivered(alert: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    return alert["labels"], alert["annotations"]


def test_grace_alert_is_delivered_to_the_billing_receiver(stack: Stack) -> None:
    """Prometheus sent the firing grace alert to Alertmanager, which routed it by its team label
    to the billing receiver's webhook with its routing labels, the external label and the
    runbook link; no other receiver got it."""
    labels, annotations = _delivered(stack.seen["delivered_firing"][0])
    assert {"alertname": "MeterGraceAboutToExpire", "account": "acme", "pool": "agents",
            "severity": "warning", "team": "billing", "job": "meter",
            "instance": urllib.parse.urlsplit(stack.metrics_url).netloc,
            "service": "license-meter"} == labels
    assert "README.md#metergraceabouttoexpire" == annotations["runbook_url"]
    assert annotations["summary"].startswith("acme/agents: excess over licensed seats becomes billable in ")
    assert webhook_paths(stack, "MeterGraceAboutToExpire") == {"/billing"}


def test_grace_alert_resolution_is_delivered_after_the_logout(stack: Stack) -> None:
    """Once the logout ends the excess, the billing webhook receives the same alert resolved."""
    firing, resolved = stack.seen["delivered_firing"][0], stack.seen["delivered_resolved"][0]
    assert firing["labels"] == resolved["labels"]
    assert ("firing", "resolved") == (firing["status"], resolved["status"])
    assert firing["startsAt"] == resolved["startsAt"]


def webhook_paths(stack: Stack, alertname: str) -> set[str]:
    """The receivers (webhook paths) that got a notification holding `alertname`."""
    assert stack.webhook is not None
    return {path for path, body in list(stack.webhook.received)
            if any(a["labels"]["alertname"] == alertname for a in body["alerts"])}


def test_every_alert_rule_evaluates_cleanly(stack: Stack) -> None:
    """Prometheus loaded all eleven rules from deploy/alerts.yml and none has an evaluation
    error."""
    groups = json.loads(_get(f"{stack.prometheus_url}/api/v1/rules"))["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert 11 == len(rules)
    assert {"ok"} == {rule["health"] for rule in rules}


def test_alert_rules_use_only_metrics_the_daemon_exports(stack: Stack) -> None:
    """Every metric an alert selects is in the daemon's scrape (or is Prometheus's own `up`, or
    one that only a cluster member exports, `meter_cluster_*` as meter/metrics.py names them)."""
    source = (ROOT / "meter" / "metrics.py").read_text(encoding="utf-8")
    cluster = set(re.findall(r'"(meter_cluster_[a-z_]+)"', source))
    assert {"meter_cluster_slot", "meter_cluster_slots"} <= cluster
    exported = _exported(stack.scrape) | {"up"} | cluster
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        assert set() == metric_names(rule["expr"]) - exported, rule["alert"]


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/license-meter.json").read_text())
    return doc


def _panel_queries() -> list[tuple[str, str]]:
    """(name, PromQL) of every panel query, annotation query and variable of the dashboard."""
    dash = _dashboard()
    queries = [(f"{p['type']} {p['title']} {t['refId']}", t["expr"])
               for p in dash["panels"] for t in p.get("targets", [])]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in dash["annotations"]["list"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(SELECTOR, label) is Grafana's; the selector inside is PromQL.
            inner = var["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]
            queries.append((f"variable {var['name']}", inner))
    return queries


def _as_promql(expr: str) -> str:
    """A Grafana query with its variables replaced the way Grafana would for "All"."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
            .replace("$account", ".*").replace("$pool", ".*"))


def _excess_table_grace_query() -> str:
    (table,) = [p for p in _dashboard()["panels"] if p["title"] == "Pools in excess now"
                and p["type"] == "table"]
    expr: str = table["targets"][0]["expr"]
    return _as_promql(expr)


@pytest.mark.parametrize(("title", "expr"), _panel_queries(), ids=[t for t, _ in _panel_queries()])
def test_every_dashboard_query_runs_on_daemon_metrics(stack: Stack, title: str, expr: str) -> None:
    """Each panel query parses and runs in Prometheus, and selects only metrics the daemon exports."""
    answer = stack.query(_as_promql(expr))
    assert "success" == answer["status"], (title, answer)
    assert set() == metric_names(expr) - _exported(stack.scrape), title


def test_excess_table_lists_the_pool_in_excess_with_its_grace_left(stack: Stack) -> None:
    """With three users on acme/agents' two licenses, the dashboard's "Pools in excess now" query
    (with "All" accounts) returns that pool alone, with its grace left (under its 5 minutes), and
    nothing once the logout ends the excess."""
    (row,) = stack.seen["excess_table"]
    assert ("acme", "agents") == (row["metric"]["account"], row["metric"]["pool"])
    assert 0 < float(row["value"][1]) < 300
    assert [] == stack.query(_excess_table_grace_query())["data"]["result"]


def test_promtool_accepts_the_daemons_metrics(stack: Stack) -> None:
    """`promtool check metrics` on a real scrape finds no naming or format problem."""
    result = promtool("check", "metrics", stdin=stack.scrape.encode())
    assert (0, "") == (result.returncode, (result.stdout + result.stderr).strip())


def test_the_daemon_exports_every_metric_of_the_design(stack: Stack) -> None:
    """The DESIGN section 3 set and the issue's additions are all in the scrape."""
    expected = {
        "meter_active_users", "meter_licensed_seats", "meter_period_peak_users",
        "meter_excess_users", "meter_grace_remaining_seconds", "meter_events_received_total",
        "meter_events_rejected_total", "meter_events_duplicate_total", "meter_mqtt_connected",
        "meter_build_info", "meter_ingest_latency_seconds_bucket", "meter_batch_commit_seconds_bucket",
        "meter_store_size_bytes", "meter_reconnects_total", "meter_period_billable_overage_seats",
        "meter_addon_shortfall", "meter_last_event_timestamp_seconds",
        "meter_broker_dropped_messages_total", "meter_broker_queued_messages",
    }
    assert set() == expected - _exported(stack.scrape)
