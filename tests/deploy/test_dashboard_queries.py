"""The dashboard's own queries, evaluated by `promtool test rules` (promql_expr_test) on series
made for each case, with "All" accounts and pools selected: exact results, not just that they
parse (test_live runs every query on the daemon's real series)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import DEPLOY, promtool

LABELS = 'job="meter",instance="meter:9464"'


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/license-meter.json").read_text())
    return doc


def _all(expr: str) -> str:
    """A query as Grafana sends it with "All" selected."""
    return expr.replace("$account", ".*").replace("$pool", ".*")


def _panel_expr(kind: str, title: str, ref: str = "A") -> str:
    (panel,) = [p for p in _dashboard()["panels"] if (p["type"], p["title"]) == (kind, title)]
    (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref]
    return _all(expr)


def _annotation_expr(name: str) -> str:
    (expr,) = [a["expr"] for a in _dashboard()["annotations"]["list"] if a["name"] == name]
    return _all(expr)


def _run(tmp_path: Path, series: dict[str, str], cases: list[dict[str, Any]]) -> None:
    """One promtool test group at 1-minute steps; fails with promtool's report."""
    doc = {"tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": cases,
    }]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr


def test_excess_table_holds_only_pools_in_excess_with_their_grace_left(tmp_path: Path) -> None:
    """acme/agents (excess 2, 5 minutes left) and globex/desk (excess 1, 1 minute left) are in
    the table; beta/desk, with a full grace clock and no excess, is not. Beside the grace, the
    other columns give the same pools' excess and licensed seats."""
    series = {
        f'meter_excess_users{{{LABELS},account="acme",pool="agents"}}': "2x3",
        f'meter_grace_remaining_seconds{{{LABELS},account="acme",pool="agents"}}': "300x3",
        f'meter_licensed_seats{{{LABELS},account="acme",pool="agents"}}': "10x3",
        f'meter_excess_users{{{LABELS},account="globex",pool="desk"}}': "1x3",
        f'meter_grace_remaining_seconds{{{LABELS},account="globex",pool="desk"}}': "60x3",
        f'meter_licensed_seats{{{LABELS},account="globex",pool="desk"}}': "5x3",
        f'meter_excess_users{{{LABELS},account="beta",pool="desk"}}': "0x3",
        f'meter_grace_remaining_seconds{{{LABELS},account="beta",pool="desk"}}': "1800x3",
        f'meter_licensed_seats{{{LABELS},account="beta",pool="desk"}}': "5x3",
    }

    def rows(values: dict[str, float], name: str = "") -> list[dict[str, Any]]:
        prefix = f"{name}{{" if name else "{"
        return [{"labels": f'{prefix}{LABELS},account="{a}",pool="{p}"}}', "value": v}
                for (a, p), v in values.items()]

    grace = _panel_expr("table", "Pools in excess now", "A")
    excess = _panel_expr("table", "Pools in excess now", "B")
    licensed = _panel_expr("table", "Pools in excess now", "D")
    _run(tmp_path, series, [
        {"expr": grace, "eval_time": "2m",
         "exp_samples": rows({("acme", "agents"): 300, ("globex", "desk"): 60},
                             "meter_grace_remaining_seconds")},
        {"expr": excess, "eval_time": "2m",
         "exp_samples": rows({("acme", "agents"): 2, ("globex", "desk"): 1}, "meter_excess_users")},
        {"expr": licensed, "eval_time": "2m",
         "exp_samples": rows({("acme", "agents"): 10, ("globex", "desk"): 5}, "meter_licensed_seats")},
    ])


def test_utilization_bars_are_active_over_licensed_and_skip_unlicensed_pools(tmp_path: Path) -> None:
    """3 users on 2 licenses is 150%, 5 on 10 is 50%; a pool with 0 licensed seats has no share
    (not +Inf)."""
    series = {
        f'meter_active_users{{{LABELS},account="acme",pool="agents"}}': "3x3",
        f'meter_licensed_seats{{{LABELS},account="acme",pool="agents"}}': "2x3",
        f'meter_active_users{{{LABELS},account="globex",pool="desk"}}': "5x3",
        f'meter_licensed_seats{{{LABELS},account="globex",pool="desk"}}': "10x3",
        f'meter_active_users{{{LABELS},account="beta",pool="trial"}}': "4x3",
        f'meter_licensed_seats{{{LABELS},account="beta",pool="trial"}}': "0x3",
    }
    _run(tmp_path, series, [
        {"expr": _panel_expr("bargauge", "Utilization now (top 20)"), "eval_time": "2m",
         "exp_samples": [
             {"labels": f'{{{LABELS},account="acme",pool="agents"}}', "value": 150},
             {"labels": f'{{{LABELS},account="globex",pool="desk"}}', "value": 50},
         ]},
        {"expr": _panel_expr("stat", "Utilization"), "eval_time": "2m",
         "exp_samples": [{"labels": "{}", "value": 100 * 12 / 12}]},
    ])


def test_rollover_annotation_marks_a_new_period_and_not_a_restart(tmp_path: Path) -> None:
    """acme's period start is 1000 until minute 19; a restart exports 0 at minutes 20-21 and then
    1000 again; the next period starts (2000) at minute 40. Only minute 40 is annotated."""
    series = {
        f'meter_period_start_timestamp_seconds{{{LABELS},account="acme",pool="agents"}}':
            "1000x19 0x1 1000x17 2000x19",
        f'meter_period_start_timestamp_seconds{{{LABELS},account="acme",pool="desk"}}':
            "1000x19 0x1 1000x17 2000x19",
    }
    expr = _annotation_expr("Period rollover")
    _run(tmp_path, series, [
        {"expr": expr, "eval_time": "21m", "exp_samples": []},
        {"expr": expr, "eval_time": "23m", "exp_samples": []},
        {"expr": expr, "eval_time": "40m", "exp_samples": [{"labels": '{account="acme"}', "value": 2}]},
        {"expr": expr, "eval_time": "42m", "exp_samples": []},
    ])


def test_finalization_annotation_spans_the_wait_by_reason(tmp_path: Path) -> None:
    """acme's ended period waits for lateness from minute 2 to 5, then is finalized; the
    annotation holds while it waits, with the reason, and not after."""
    series = {
        f'meter_finalization_waiting{{{LABELS},account="acme",reason="lateness"}}': "0x1 1x3 0x4",
        f'meter_finalization_waiting{{{LABELS},account="acme",reason="draining"}}': "0x8",
    }
    expr = _annotation_expr("Finalization")
    _run(tmp_path, series, [
        {"expr": expr, "eval_time": "1m", "exp_samples": []},
        {"expr": expr, "eval_time": "3m",
         "exp_samples": [{"labels": '{account="acme",reason="lateness"}', "value": 1}]},
        {"expr": expr, "eval_time": "7m", "exp_samples": []},
    ])
