"""The Prometheus configuration and alert rules in deploy/ are valid, and each alert is proven by
`promtool test rules` to fire where it should and stay silent where it should not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import DEPLOY, promtool

ALERTS = ("MeterGraceAboutToExpire", "MeterOverageBilled", "MeterDown", "MeterBrokerDisconnected",
          "MeterSessionTakenOver", "MeterStoreFailing", "MeterRejectsRising", "MeterAccountSilent",
          "MeterAddonShortfall")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` finds all nine rules and no problem."""
    result = promtool("check", "rules", "alerts.yml")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


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
    firing = doc["tests"][0]["alert_rule_test"][1]
    firing["exp_alerts"] = []
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc))
    result = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert 1 == result.returncode
    assert "FAILED" in result.stdout + result.stderr


def test_the_rule_file_has_exactly_the_alerts_an_operator_needs() -> None:
    """One rule per alert named in the issue, plus a failing store, in that order."""
    assert list(ALERTS) == [rule["alert"] for rule in _rules()]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_each_alert_has_a_severity_a_summary_and_a_runbook(rule: dict[str, Any]) -> None:
    """Every alert routes by severity and says what it means and what to do."""
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert {"summary", "description"} == set(rule["annotations"])
    assert len(rule["annotations"]["description"]) > 200


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_is_tested_firing_and_silent(alert: str) -> None:
    """The test files have, for every alert, a case where it fires and one where it stays silent."""
    docs = [yaml.safe_load((DEPLOY / name).read_text()) for name in TEST_FILES]
    cases = [case for doc in docs for group in doc["tests"] for case in group["alert_rule_test"]
             if case["alertname"] == alert]
    assert [] != [c for c in cases if c["exp_alerts"]], f"{alert} is never shown firing"
    assert [] != [c for c in cases if not c["exp_alerts"]], f"{alert} is never shown silent"
