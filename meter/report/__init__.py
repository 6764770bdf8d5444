"""`meter report`: the month-end bill, built from the store and rendered for people and machines.

    inputs      the events a period needs, the canonical contract, the input hash
    late        adjustment lines for finalized periods that received late events
    rate        one account from the store, or many in worker processes
    compose     the rating's AccountBill -> the report document
    document    the document's types and `Report` (renderers import only this)
    build       make_report, finalize_due, verify
    render_*    JSON, CSV, HTML, the demo's text
    command     the CLI (`meter report`, `meter verify`)
"""

from __future__ import annotations

from meter.report.build import finalize_due, make_report, parse_month, verify
from meter.report.command import run, run_verify, write_outputs
from meter.report.document import AccountReport, Report
from meter.report.inputs import Inputs, account_contract, account_contracts, input_hash, load_inputs
from meter.report.render_json import render_json
from meter.report.render_text import summary

__all__ = [
    "AccountReport",
    "Inputs",
    "Report",
    "account_contract",
    "account_contracts",
    "finalize_due",
    "input_hash",
    "load_inputs",
    "make_report",
    "parse_month",
    "render_json",
    "run",
    "run_verify",
    "summary",
    "verify",
    "write_outputs",
]
