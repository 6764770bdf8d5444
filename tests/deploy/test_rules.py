"""The Prometheus configuration, alert rules and Alertmanager configuration in deploy/ are valid,
each alert is proven by `promtool test rules` to fire where it should and stay silent where it
should not, carries the routing labels and links a runbook that exists in the README, and
Alertmanager routes it to its team."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import ALERTMANAGER_PACKAGE, DEPLOY, ROOT, promtool, readme_anchors, require

ALERTS = ("MeterGraceAboutToExpire", "MeterOverageBilled", "MeterDown", "MeterBrokerDisconnected",
          "MeterClusterSlotUnheld", "MeterSessionTakenOver", "MeterStoreFailing",
          "MeterRejectsRising", "MeterAccountSilent", "MeterAddonShortfall",
          "MeterBrokerDroppingMessages")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` finds all eleven rules and no problem."""
    result = promtool("check", "rules", "alerts.yml")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_accepts_the_prometheus_config() -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it names."""
    result = promtool("check", "config", "prometheus.yml")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in result.stdout


#: The unit test files of alerts.yml (the weekly one evaluates every 5 minutes, to stay fast).
TEST_FILES = ("alerts_test.yml", "alerts_test_weekly.yml")


def test_alert_unit_tests_pass() -> None:
    """`promtool test rules` on both test files: every case (firing and silent) holds."""
    result = promtool("test", "rules", *TEST_FILES)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_fail_when_an_expectation_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: an alert expected silent where it fires is reported."""
    doc = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())
    doc["rule_files"] = [str(DEPLOY / "alerts.yml")]
    doc["tests"] = doc["tests"][:1]
    firing = next(case for case in doc["tests"][0]["alert_rule_test"] if case["exp_alerts"])
    firing["exp_alerts"] = []
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc))
    result = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert 1 == result.returncode
    assert "FAILED" in result.stdout + result.stderr


def test_the_rule_file_has_exactly_the_alerts_an_operator_needs() -> None:
    """One rule per alert named in the issue, plus a failing store and a cluster slot nobody
    holds, in that order."""
    assert list(ALERTS) == [rule["alert"] for rule in _rules()]


#: Alert -> (severity, team): the routing labels Alertmanager uses.
ROUTING = {
    "MeterGraceAboutToExpire": ("warning", "billing"),
    "MeterOverageBilled": ("warning", "billing"),
    "MeterDown": ("critical", "operations"),
    "MeterBrokerDisconnected": ("critical", "operations"),
    "MeterSessionTakenOver": ("critical", "operations"),
    "MeterStoreFailing": ("critical", "operations"),
    "MeterRejectsRising": ("warning", "integrations"),
    "MeterAccountSilent": ("warning", "integrations"),
    "MeterAddonShortfall": ("info", "billing"),
    "MeterBrokerDroppingMessages": ("critical", "operations"),
    "MeterClusterSlotUnheld": ("critical", "operations"),
}


def test_each_alert_has_the_routing_labels_severity_and_team() -> None:
    """Every rule carries exactly `severity` and `team`, with these values."""
    assert ROUTING == {r["alert"]: (r["labels"]["severity"], r["labels"]["team"]) for r in _rules()}
    assert [{"severity", "team"}] * len(ALERTS) == [set(r["labels"]) for r in _rules()]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_each_alert_has_a_summary_a_description_and_a_runbook_url(rule: dict[str, Any]) -> None:
    """Every alert says what it means in a short description and links its runbook: the README
    section named after the alert, which exists."""
    assert {"summary", "description", "runbook_url"} == set(rule["annotations"])
    assert 100 < len(rule["annotations"]["description"]) < 400
    assert f"README.md#{rule['alert'].lower()}" == rule["annotations"]["runbook_url"]
    anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
    assert anchor in readme_anchors((ROOT / "README.md").read_text())


def test_readme_anchors_follow_githubs_rules() -> None:
    """Headings become GitHub's anchors: code marks and punctuation dropped, spaces as dashes."""
    text = "## Watching it\n#### `MeterDown`\nnot # a heading\n### What a broker crash can lose, and how\n"
    assert {"watching-it", "meterdown", "what-a-broker-crash-can-lose-and-how"} == readme_anchors(text)


# --- Alertmanager -------------------------------------------------------------------------------

def test_amtool_accepts_the_alertmanager_config() -> None:
    """`amtool check-config` accepts deploy/alertmanager.yml: its route, 2 inhibit rules and the
    4 receivers."""
    result = subprocess.run([require("amtool", ALERTMANAGER_PACKAGE), "check-config",
                             str(DEPLOY / "alertmanager.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert " - 2 inhibit rules\n - 4 receivers\n" in result.stdout


def test_alertmanager_routes_each_alert_by_severity_and_team() -> None:
    """`amtool config routes test` with each rule's labels: critical alerts page operations,
    the others reach their team's receiver."""
    amtool = require("amtool", ALERTMANAGER_PACKAGE)
    routed = {}
    for rule in _rules():
        labels = [f"{k}={v}" for k, v in {"alertname": rule["alert"], **rule["labels"]}.items()]
        result = subprocess.run([amtool, "config", "routes", "test", "--config.file",
                                 str(DEPLOY / "alertmanager.yml"), *labels],
                                capture_output=True, text=True, timeout=60, check=False)
        assert 0 == result.returncode, result.stdout + result.stderr
        routed[rule["alert"]] = result.stdout.strip()
    assert {
        "MeterGraceAboutToExpire": "billing", "MeterOverageBilled": "billing",
        "MeterDown": "operations-page", "MeterBrokerDisconnected": "operations-page",
        "MeterSessionTakenOver": "operations-page", "MeterStoreFailing": "operations-page",
        "MeterRejectsRising": "integrations", "MeterAccountSilent": "integrations",
        "MeterAddonShortfall": "billing", "MeterBrokerDroppingMessages": "operations-page",
        "MeterClusterSlotUnheld": "operations-page",
    } == routed


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_is_tested_firing_and_silent(alert: str) -> None:
    """The test files have, for every alert, a case where it fires and one where it stays silent."""
    docs = [yaml.safe_load((DEPLOY / name).read_text()) for name in TEST_FILES]
    cases = [case for doc in docs for group in doc["tests"] for case in group["alert_rule_test"]
             if case["alertname"] == alert]
    assert [] != [c for c in cases if c["exp_alerts"]], f"{alert} is never shown firing"
    assert [] != [c for c in cases if not c["exp_alerts"]], f"{alert} is never shown silent"
