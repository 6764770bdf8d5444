"""The report as JSON for machines: deterministic text, so a finalized period renders the same
bytes every time."""

from __future__ import annotations

import json

from meter.report.document import Report

__all__ = ["render_json"]


def render_json(report: Report) -> str:
    """The report as deterministic JSON text: sorted keys, two-space indent, a final newline."""
    return json.dumps(report.doc(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
