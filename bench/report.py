"""`meter report` of a month of 1,000 accounts: JSON, CSV and HTML, timed as whole commands.

    python bench/report.py                               # 1,000 accounts, the whole month
    python bench/report.py --accounts 200 --formats json,html   # HTML against JSON (issue 16)
    python bench/report.py --accounts 30 --days 5        # a quick size
    python bench/report.py --work /tmp/rep1000           # keep (and reuse) the database

The month comes from sample_sessions/generate.py (the three sample accounts cloned round-robin)
and is loaded with `meter ingest`; those steps are timed but are not the report. Each format is
rendered `--repeat` times by `python -m meter report ... --out DIR` (a fresh process, as an
operator runs it); the figure is the best wall time. Targets: under a minute per format, and
HTML (a page with four charts per account) within 2x the JSON time: `html_vs_json` is the ratio.
Writes bench/results/report.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, ROOT, Run, results_arg, table

AS_OF = "2026-12-02T00:00:00Z"


def prepare(work: Path, accounts: int, agents: int | None, days: int) -> dict[str, float]:
    """Generate and ingest the month into `work/meter.db` unless it is there already."""
    db, events, contracts = work / "meter.db", work / "events.jsonl", work / "contracts.toml"
    if db.exists() and contracts.exists():
        return {}
    work.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, str(ROOT / "sample_sessions" / "generate.py"), "--accounts", str(accounts),
           "--days", str(days), "--out", str(events), "--contracts-out", str(contracts)]
    if agents is not None:
        cmd += ["--agents", str(agents)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    generate_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([PYTHON, "-m", "meter", "ingest", str(events), "--db", str(db), "--contracts",
                    str(contracts), "--as-of", AS_OF], check=True, capture_output=True, cwd=ROOT)
    ingest_s = time.perf_counter() - t
    events.unlink()  # the database holds them; the file is large
    return {"generate_s": round(generate_s, 1), "ingest_s": round(ingest_s, 1)}


def render(work: Path, fmt: str) -> tuple[float, Path]:
    """Wall seconds of one `meter report --format FMT --out DIR` process."""
    out = work / f"out-{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([PYTHON, "-m", "meter", "report", "--db", str(work / "meter.db"), "--contracts",
                    str(work / "contracts.toml"), "--period", "2026-11", "--format", fmt,
                    "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t, out


def check_totals(json_dir: Path, csv_dir: Path) -> int:
    """CSV charges summed per account equal the JSON totals; returns the accounts checked."""
    doc = json.loads((json_dir / "report-2026-11.json").read_text())
    sums: dict[str, Decimal] = {}
    with (csv_dir / "charges-2026-11.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            sums[row["account"]] = sums.get(row["account"], Decimal(0)) + Decimal(row["amount"])
    for account in doc["accounts"]:
        if Decimal(account["total"]) != sums.get(account["account"], Decimal(0)):
            raise SystemExit(f"{account['account']}: CSV total differs from JSON total")
    return len(doc["accounts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=None,
                        help="agents per shift (default: each pool's licensed quantity)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--formats", default="json,csv,html",
                        help="comma list of the formats to time (json is always timed)")
    parser.add_argument("--work", help="work directory to keep and reuse (default: a temp dir)")
    parser.add_argument("--out", help="results file (default bench/results/report.json)")
    args = parser.parse_args()
    formats = list(dict.fromkeys(["json", *args.formats.split(",")]))
    params = {"accounts": args.accounts, "agents": args.agents, "days": args.days,
              "repeat": args.repeat, "period": "2026-11", "formats": formats}
    run = Run("report", params)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        prep = prepare(work, args.accounts, args.agents, args.days)
        with closing(sqlite3.connect(work / "meter.db")) as conn:
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        results: dict[str, object] = {"events_stored": events, **prep}
        dirs = {}
        for fmt in formats:
            times = []
            for _ in range(args.repeat):
                seconds, dirs[fmt] = render(work, fmt)
                times.append(round(seconds, 2))
            results[f"{fmt}_s"] = times
            results[f"{fmt}_best_s"] = min(times)
        if "csv" in dirs:
            results["accounts_checked"] = check_totals(dirs["json"], dirs["csv"])
        results["json_bytes"] = (dirs["json"] / "report-2026-11.json").stat().st_size
        best = {fmt: float(results[f"{fmt}_best_s"]) for fmt in formats}  # type: ignore[arg-type]
        results["under_a_minute"] = max(best.values()) < 60
        if "html" in dirs:
            pages = list(dirs["html"].glob("report-2026-11-*.html"))
            results["html_pages"] = len(pages)
            results["html_bytes"] = sum(p.stat().st_size for p in pages)
            results["html_vs_json"] = round(best["html"] / best["json"], 2)
            results["html_within_2x_json"] = best["html"] <= 2 * best["json"]
        print(table(["", "value"], [(k, str(v)) for k, v in results.items()]))
        run.save(results, results_arg(args.out, "report"))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
