"""The PromQL tokenizer the dashboard test relies on finds metric names and nothing else."""

from __future__ import annotations

import pytest

from tests.deploy.tools import metric_names


@pytest.mark.parametrize(("expr", "expected"), [
    ("meter_active_users", {"meter_active_users"}),
    ('meter_active_users{account=~"$account",pool="a b"}', {"meter_active_users"}),
    ("sum by (account, reason) (rate(meter_events_rejected_total[5m]))", {"meter_events_rejected_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(meter_ingest_latency_seconds_bucket[1m])))",
     {"meter_ingest_latency_seconds_bucket"}),
    ("time() - max(meter_last_event_timestamp_seconds)", {"meter_last_event_timestamp_seconds"}),
    ("a > 0 and on (job, account) b offset 1w unless bool c", {"a", "b", "c"}),
    ("(x < y or y) + z", {"x", "y", "z"}),
    ("increase(up[1h] offset 1w) > 1e3", {"up"}),
    ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
])
def test_metric_names_finds_selected_metrics_only(expr: str, expected: set[str]) -> None:
    """Functions, keywords, label names, strings and durations are not metric names."""
    assert expected == metric_names(expr)
