"""The PDF report for finance: each account's HTML page printed on Letter paper by WeasyPrint.

WeasyPrint is an optional extra (`pip install -e '.[pdf]'`); without it `--format pdf` is one
line saying so (exit 2), and nothing else of `meter` needs it. The pages print in printer
processes (`meter.printer`), one per core: `meter report` starts them before it rates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meter.errors import UsageError
from meter.printer import MISSING, Printers, load, printers_for
from meter.report.document import Report
from meter.report.render_html import render_account
from rating.bill import RATING_VERSION

__all__ = ["MISSING", "ready", "render_document", "write_pdf"]


def render_document(page: str) -> Any:
    """One HTML page laid out for print, in this process: a WeasyPrint document (its `pages`,
    `write_pdf`)."""
    try:
        weasyprint = load()
    except ImportError:
        raise UsageError(MISSING) from None
    return weasyprint.HTML(string=page).render()


def ready(printers: Printers) -> None:
    """Wait for the printers' WeasyPrint: a `UsageError` naming the extra where it is missing."""
    try:
        printers.ready()
    except ImportError:
        raise UsageError(MISSING) from None


def write_pdf(report: Report, out: Path | None, printers: Printers | None = None) -> list[Path]:
    """Write `report-<month>-<account>.pdf` per account into `out`, printed by `printers` (or
    by printers of its own); returns the paths."""
    if out is None:
        raise UsageError("--format pdf writes one file per account: give --out DIR")
    if printers is None:
        with Printers(printers_for(len(report.accounts))) as own:
            return write_pdf(report, out, own)
    ready(printers)  # before the first file: a missing extra is one line, not a half-written set
    out.mkdir(parents=True, exist_ok=True)

    def jobs() -> Iterator[tuple[str, Path]]:
        for part in report.accounts:
            yield (render_account(part.doc, part.charts, report.month, RATING_VERSION),
                   out / f"report-{report.month}-{part.account}.pdf")

    return printers.print_all(jobs())
