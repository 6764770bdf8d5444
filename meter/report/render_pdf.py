"""The PDF report for finance: each account's HTML page printed on Letter paper by WeasyPrint.

WeasyPrint is an optional extra (`pip install -e '.[pdf]'`); without it `--format pdf` is one
line saying so (exit 2), and nothing else of `meter` needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meter.errors import UsageError
from meter.report.document import Report
from meter.report.render_html import render_account
from rating.bill import RATING_VERSION

__all__ = ["MISSING", "render_document", "write_pdf"]

#: What `--format pdf` says when WeasyPrint is not installed.
MISSING = ("--format pdf needs WeasyPrint, the optional extra 'pdf': "
           "pip install 'license-meter[pdf]' (or pip install -e '.[pdf]' in a checkout)")


def _weasyprint() -> Any:
    try:
        import weasyprint  # noqa: PLC0415 - lazy: an optional extra, and slow to import
    except ImportError:
        raise UsageError(MISSING) from None
    return weasyprint


def render_document(page: str) -> Any:
    """One HTML page laid out for print: a WeasyPrint document (its `pages`, `write_pdf`)."""
    return _weasyprint().HTML(string=page).render()


def write_pdf(report: Report, out: Path | None) -> list[Path]:
    """Write `report-<month>-<account>.pdf` per account into `out`; returns the paths."""
    if out is None:
        raise UsageError("--format pdf writes one file per account: give --out DIR")
    _weasyprint()  # before the first file: a missing extra is one line, not a half-written set
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in report.accounts:
        page = render_account(part.doc, part.charts, report.month, RATING_VERSION)
        path = out / f"report-{report.month}-{part.account}.pdf"
        render_document(page).write_pdf(path)
        paths.append(path)
    return paths
