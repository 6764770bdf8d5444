"""`meter report` of a month of 1,000 accounts: JSON, CSV and HTML, timed as whole commands,
beside the load ceiling measured on the same store in the same run.

    python bench/report.py                               # 1,000 accounts, the whole month
    python bench/report.py --accounts 200 --formats json,html   # HTML against JSON (issue 16)
    python bench/report.py --accounts 30 --days 5        # a quick size
    python bench/report.py --work /tmp/rep1000           # keep (and reuse) the database
    python bench/report.py --work /tmp/rep100 --stages   # also seconds per stage, in-process

The month comes from sample_sessions/generate.py (the three sample accounts cloned round-robin)
and is loaded with `meter ingest`; those steps are timed but are not the report. Each format is
rendered `--repeat` times by `python -m meter report ... --out DIR` (a fresh process, as an
operator runs it); the figure is the best wall time. Targets: under a minute per format, and
HTML (a page with four charts per account) within 2x the JSON time: `html_vs_json` is the ratio.

The load ceiling (issue 22) is a plain read of the six columns the report rates (`sqlite3`, the
store's own query, every account's input window) in as many processes as the report rates in;
`json_vs_ceiling` and, for one run writing json,csv,html (rated once, written three times),
`all_vs_ceiling` (target <= 1.5) are the ratios. `--pdf` also times one account's PDF invoice
(`meter report --format pdf --account A`, the first account, a whole process; target <= 2 s).
`--stages` adds each stage's seconds for all
accounts in one process: fetch (rows as tuples), columns (tuples to arrays), hash, rate
(resolve pools, rate, compose the document). Writes bench/results/report.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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


def render_all(work: Path, formats: list[str]) -> float:
    """Wall seconds of one `meter report --format json,csv,html --out DIR` process."""
    out = work / "out-all"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([PYTHON, "-m", "meter", "report", "--db", str(work / "meter.db"), "--contracts",
                    str(work / "contracts.toml"), "--period", "2026-11", "--format",
                    ",".join(formats), "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t


def render_pdf(work: Path, account: str) -> tuple[float, int]:
    """Wall seconds of one `meter report --format pdf --account A --out DIR` process, and the
    PDF's bytes."""
    out = work / "out-pdf"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([PYTHON, "-m", "meter", "report", "--db", str(work / "meter.db"), "--contracts",
                    str(work / "contracts.toml"), "--period", "2026-11", "--format", "pdf",
                    "--account", account, "--out", str(out)], check=True, capture_output=True,
                   cwd=ROOT)
    seconds = time.perf_counter() - t
    return seconds, sum(p.stat().st_size for p in out.glob("*.pdf"))


def _windows(work: Path) -> list[tuple[str, int, int]]:
    """Each account's input window of 2026-11 as the report reads it."""
    sys.path.insert(0, str(ROOT))
    from meter.report.inputs import window
    from rating.contracts import parse_contracts
    from rating.periods import period_of_month

    contracts = parse_contracts((work / "contracts.toml").read_text())
    return [(a.id, *window(a, period_of_month(a, 2026, 11))) for a in contracts.accounts]


def _read_share(db: str, share: list[tuple[str, int, int]]) -> int:
    """A ceiling worker: the six columns of its accounts' windows, as the store reads them."""
    sys.path.insert(0, str(ROOT))
    from meter.store.sqlite import _WINDOW_ROWS, _hours  # the store's own query, not a copy

    rows = 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA mmap_size = 4294967296")  # as the report opens it
        for account, lo, hi in share:
            rows += len(conn.execute(_WINDOW_ROWS, (_hours(lo, hi), account, 2**62, lo,
                                                    hi)).fetchall())
    return rows


def ceiling(work: Path, workers: int) -> tuple[float, int]:
    """Wall seconds of the plain read of every account's window in `workers` processes (the
    processes are started before the clock, as a bound on the report's own read)."""
    windows = _windows(work)
    shares = [windows[i::workers] for i in range(workers)]
    db = str(work / "meter.db")
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_read_share, [db] * workers, [[]] * workers))  # spawned and imported
        t = time.perf_counter()
        rows = sum(pool.map(_read_share, [db] * workers, shares))
        return time.perf_counter() - t, rows


def stages(work: Path) -> dict[str, float]:
    """Seconds per stage for every account in this process (no workers): fetch, columns, hash,
    rate (pools resolved, rated and composed into the document)."""
    sys.path.insert(0, str(ROOT))
    from meter.report.compose import bill_doc
    from meter.report.inputs import Inputs, account_contracts, columns_hash, window
    from meter.store import open_store
    from rating.bill import rate_columns
    from rating.columns import StoredColumns
    from rating.contracts import parse_contracts
    from rating.periods import period_of_month

    text = (work / "contracts.toml").read_text()
    contracts, canonical = parse_contracts(text), account_contracts(text)
    spent = dict.fromkeys(("fetch_s", "columns_s", "hash_s", "rate_s"), 0.0)

    async def run() -> None:
        async with await open_store(work / "meter.db", mmap=True) as store:
            cutoff = await store.last_seq()
            for account in contracts.accounts:
                period = period_of_month(account, 2026, 11)
                lo, hi = window(account, period)
                t0 = time.perf_counter()
                got = await store.rating_rows(account.id, lo, hi, through_seq=cutoff,
                                              seats_before=bool(account.named_pools))
                t1 = time.perf_counter()
                cols = StoredColumns.from_rows(got.rows)
                t2 = time.perf_counter()
                digest = columns_hash(canonical[account.id], cols)
                t3 = time.perf_counter()
                bill = rate_columns(account, cols, period)
                bill_doc(bill, Inputs(cols, len(cols), got.last_seq, digest))
                t4 = time.perf_counter()
                for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    spent[key] += seconds

    asyncio.run(run())
    return {k: round(v, 2) for k, v in spent.items()}


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
    parser.add_argument("--pdf", action="store_true",
                        help="also time one account's PDF invoice (needs the `pdf` extra)")
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage for all accounts in one process")
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
        results: dict[str, object] = {"events_stored": events, **prep,
                                      "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
        sys.path.insert(0, str(ROOT))
        from meter.report.rate import workers_for

        workers = workers_for(args.accounts)
        reads = [ceiling(work, workers) for _ in range(args.repeat)]
        results["workers"] = workers
        results["ceiling_rows"] = reads[0][1]
        results["ceiling_s"] = [round(r[0], 2) for r in reads]
        results["ceiling_best_s"] = round(min(r[0] for r in reads), 2)
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
        floor = max(min(r[0] for r in reads), 1e-6)  # unrounded: tiny sizes read in ~0 s
        results["json_vs_ceiling"] = round(best["json"] / floor, 2)
        if len(formats) > 1:
            together = [round(render_all(work, formats), 2) for _ in range(args.repeat)]
            results["all_formats"] = ",".join(formats)
            results["all_formats_s"] = together
            results["all_vs_ceiling"] = round(min(together) / floor, 2)
            results["all_within_1_5x_ceiling"] = min(together) <= 1.5 * floor
        results["under_a_minute"] = max(best.values()) < 60
        if "html" in dirs:
            pages = list(dirs["html"].glob("report-2026-11-*.html"))
            results["html_pages"] = len(pages)
            results["html_bytes"] = sum(p.stat().st_size for p in pages)
            results["html_vs_json"] = round(best["html"] / best["json"], 2)
            results["html_within_2x_json"] = best["html"] <= 2 * best["json"]
        if args.pdf:
            account = _windows(work)[0][0]
            pdfs = [render_pdf(work, account) for _ in range(args.repeat)]
            pdf_s = [round(r[0], 2) for r in pdfs]
            results["pdf_account"] = account
            results["pdf_s"] = pdf_s
            results["pdf_best_s"] = min(pdf_s)
            results["pdf_bytes"] = pdfs[0][1]
            results["pdf_within_2s"] = min(r[0] for r in pdfs) <= 2.0
        if args.stages:
            results |= {f"stage_{k}": v for k, v in stages(work).items()}
        results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(table(["", "value"], [(k, str(v)) for k, v in results.items()]))
        run.save(results, results_arg(args.out, "report"))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
