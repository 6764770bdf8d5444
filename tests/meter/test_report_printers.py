"""`meter report --format pdf` prints in printer processes (`meter.printer`): started before the
report rates, one per core for many accounts, gone with the report even when it is SIGKILLed;
a failure in one is one line from the report. (A missing WeasyPrint: `test_report_pdf.py`.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("weasyprint", reason="the 'pdf' extra (in 'test' too) is not installed")

from meter.printer import Printers, printers_for
from meter.workers import cores
from tests.meter.test_report_workers import kill_report_and_wait

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_sessions"
CONTRACTS = SAMPLES / "contracts.toml"
ACCOUNTS = ("acme", "globex", "initech")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("printers") / "meter.db"
    done = subprocess.run([sys.executable, "-m", "meter", "ingest", str(SAMPLES / "events-2026-11.jsonl"),
                           "--db", str(path), "--contracts", str(CONTRACTS), "--as-of",
                           "2026-12-02T00:00:00Z"], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert 0 == done.returncode, done.stderr
    return path


def _report(db: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "meter", "report", "--db", str(db), "--contracts",
            str(CONTRACTS), "--period", "2026-11", "--format", "pdf", "--out", str(out)]


@pytest.mark.parametrize(("accounts", "expected"), [
    (0, 1), (1, 1), (2, min(cores(), 2)), (3, min(cores(), 3)), (1000, min(cores(), 4))])
def test_one_printer_per_account_up_to_the_cores_and_four(accounts: int, expected: int) -> None:
    assert expected == printers_for(accounts)


def test_printers_write_each_page_in_the_order_given(tmp_path: Path) -> None:
    """Two printers, three pages: each file a PDF of its own page, the paths in the order given."""
    pages = [f"<html><body><h1>{name}</h1><p>{'x ' * n}</p></body></html>"
             for n, name in ((10, "one"), (20_000, "two"), (10, "three"))]
    paths = [tmp_path / f"{i}.pdf" for i in range(3)]
    with Printers(2) as printers:
        printers.ready()
        assert paths == printers.print_all(zip(pages, paths, strict=True))
    for path in paths:
        data = path.read_bytes()
        assert b"%PDF-" == data[:5]
        assert data.rstrip().endswith(b"%%EOF")
    # Two thousand words fill pages: its file is the largest.
    assert max(paths, key=lambda p: p.stat().st_size) == paths[1]


def test_a_printer_failure_is_one_line_and_exit_1(db: Path, tmp_path: Path) -> None:
    """A PDF that cannot be written (its path is a directory) fails in the printer; the report
    says so in one line naming the file (exit 1), the other accounts' PDFs written or not."""
    out = tmp_path / "out"
    blocked = out / "report-2026-11-globex.pdf"
    blocked.mkdir(parents=True)
    done = subprocess.run(_report(db, out), capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert 1 == done.returncode
    assert f"meter report: {blocked}: Is a directory\n" == done.stderr


def _printing(pid: int) -> bool:
    """Whether process `pid` has WeasyPrint's Pango loaded (a printer past its import)."""
    try:
        return b"libpango" in Path(f"/proc/{pid}/maps").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_sigkill_of_report_leaves_no_printer(db: Path, tmp_path: Path) -> None:
    """Printers seen at work are all gone within 5 s of the report's SIGKILL."""
    with subprocess.Popen(_report(db, tmp_path / "out"), cwd=ROOT, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as report:
        printers, survivors = kill_report_and_wait(report, _printing)
    assert printers
    assert set() == survivors
