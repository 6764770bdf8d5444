"""`meter report --format pdf`: a PDF per account on Letter paper, the invoice on page 1, the
usage on the next two and the appendix after; without WeasyPrint, one line naming the extra."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

weasyprint = pytest.importorskip("weasyprint", reason="the 'pdf' extra (in 'test' too) is not installed")
from weasyprint.formatting_structure import boxes  # noqa: E402 - after the skip

from meter.cli import main  # noqa: E402
from meter.report.render_html import APPENDIX_ID, money  # noqa: E402
from meter.report.render_pdf import MISSING, render_document  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_sessions"
CONTRACTS = SAMPLES / "contracts.toml"
LETTER = (8.5 * 96, 11 * 96)  # CSS pixels


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample month as JSON, HTML and PDF from one rating."""
    tmp = tmp_path_factory.mktemp("pdf")
    db = tmp / "meter.db"
    code, _ = run_cli("ingest", str(SAMPLES / "events-2026-11.jsonl"), "--db", str(db),
                      "--contracts", str(CONTRACTS), "--as-of", "2026-12-02T00:00:00Z")
    assert 0 == code
    code, out = run_cli("report", "--db", str(db), "--contracts", str(CONTRACTS), "--period",
                        "2026-11", "--format", "json,html,pdf", "--out", str(tmp / "out"))
    assert 0 == code
    doc = json.loads((tmp / "out" / "report-2026-11.json").read_text(encoding="utf-8"))
    return {"db": db, "out": tmp / "out", "printed": out.split(),
            "doc": {a["account"]: a for a in doc["accounts"]}}


def _text(page: Any) -> list[str]:
    """The text laid out on one WeasyPrint page (its text boxes, in order)."""
    return [b.text for b in page._page_box.descendants() if isinstance(b, boxes.TextBox)]


@pytest.mark.parametrize(("account", "pages"), [("acme", 7), ("globex", 5), ("initech", 5)])
def test_each_account_prints_invoice_usage_then_appendix(report: dict[str, Any], account: str,
                                                         pages: int) -> None:
    """Letter pages; the appendix starts on page 4 (at most 3 pages before it: acme's two
    concurrent pools with four charts and a 30-day table included); page 1 holds the total."""
    html = (report["out"] / f"report-2026-11-{account}.html").read_text(encoding="utf-8")
    document = render_document(html)
    assert pages == len(document.pages)
    assert {(round(p.width), round(p.height)) for p in document.pages} == {LETTER}
    assert [4] == [i + 1 for i, p in enumerate(document.pages) if APPENDIX_ID in p.anchors]
    doc = report["doc"][account]
    first = _text(document.pages[0])
    assert "Total due" in first
    assert money(doc["total"], doc["currency"]) == first[first.index("Total due") + 1]
    # Every charge line is on page 1: the invoice is one page.
    shown = [t for t in first if t.startswith(("$", "€", "¥", "-"))]
    for charge in doc["charges"]:
        assert money(charge["amount"], doc["currency"]) in shown


def test_the_pdf_files_are_written_per_account(report: dict[str, Any]) -> None:
    """One PDF per account beside the HTML pages, each a PDF file; their paths are printed."""
    out: Path = report["out"]
    pdfs = sorted(p.name for p in out.glob("*.pdf"))
    assert ["report-2026-11-acme.pdf", "report-2026-11-globex.pdf",
            "report-2026-11-initech.pdf"] == pdfs
    for name in pdfs:
        data = (out / name).read_bytes()
        assert b"%PDF-" == data[:5]
        assert data.rstrip().endswith(b"%%EOF")
        assert str(out / name) in report["printed"]


def test_acme_total_on_page_one_adds_up(report: dict[str, Any]) -> None:
    """acme's page 1 in the PDF shows the subtotals that add up to the total."""
    doc = report["doc"]["acme"]
    html = (report["out"] / "report-2026-11-acme.html").read_text(encoding="utf-8")
    first = _text(render_document(html).pages[0])
    # The group headings come first; the subtotal rows are the last of each name.
    last = {text: i for i, text in enumerate(first)}
    subtotals = [first[last[name] + 1] for name in ("Subscription", "Seat changes", "Overage")]
    assert ["$2,934.00", "$228.31", "$605.00"] == subtotals
    total = sum((Decimal(s[1:].replace(",", "")) for s in subtotals), Decimal(0))
    assert Decimal(doc["total"]) == total


def test_without_weasyprint_pdf_is_one_line_and_exit_2(report: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """With WeasyPrint not importable (shadowed on PYTHONPATH, so the printer processes see it
    too), `--format json,pdf` says which extra to install (exit 2) and writes no file: not the
    PDF, nor the JSON asked before it."""
    hide = tmp_path / "hide" / "weasyprint"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{hide.parent}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-m", "meter", "report", "--db", str(report["db"]), "--contracts",
         str(CONTRACTS), "--period", "2026-11", "--account", "acme", "--format", "json,pdf",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL, check=False, env=env)
    assert 2 == proc.returncode
    assert f"meter report: {MISSING}\n" == proc.stderr
    assert "pip install 'license-meter[pdf]'" in MISSING
    assert not (tmp_path / "out").exists()
