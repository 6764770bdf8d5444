"""`meter ingest` of a large generated JSONL file against its ceiling: a plain `sqlite3`
`executemany` of the same rows, already built in memory, into the same schema with the same
pragmas and batch size. Target: meter at least 50% of the ceiling (rows stored per second).

    python bench/ingest_file.py                                   # 1,000 accounts, 3 days
    python bench/ingest_file.py --accounts 5 --agents 2 --days 1  # the smoke size
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import PYTHON, ROOT, Run, results_arg, table

from meter.store.sqlite import MIGRATIONS

_COLS = "account, id, type, user, pool, session, ts_us, received_us, raw"
_AS_OF = "2026-12-01T00:00:00Z"


def generate(workdir: Path, accounts: int, agents: int, days: int) -> tuple[Path, Path]:
    """The JSONL and contracts of sample_sessions/generate.py at this size."""
    events, contracts = workdir / "events.jsonl", workdir / "contracts.toml"
    subprocess.run([PYTHON, str(ROOT / "sample_sessions" / "generate.py"), "--accounts", str(accounts),
                    "--agents", str(agents), "--days", str(days), "--out", str(events),
                    "--contracts-out", str(contracts)], check=True, capture_output=True)
    return events, contracts


def meter_ingest(events: Path, contracts: Path, db: Path) -> tuple[float, dict[str, int]]:
    """Wall seconds of `meter ingest` (the whole command) and its summary counts."""
    t = time.perf_counter()
    done = subprocess.run([PYTHON, "-m", "meter", "ingest", str(events), "--db", str(db),
                           "--contracts", str(contracts), "--as-of", _AS_OF],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t
    summary = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            summary[parts[0]] = int(parts[1])
    return seconds, summary


def stored_rows(db: Path) -> list[tuple[object, ...]]:
    """The rows meter stored, in arrival order: exactly what the ceiling inserts."""
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {_COLS} FROM events ORDER BY seq").fetchall()  # noqa: S608 - constant columns  # noqa: S608


def ceiling(rows: list[tuple[object, ...]], db: Path, batch: int) -> float:
    """Seconds for plain executemany of `rows` into a fresh database with the store's schema."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for step in MIGRATIONS:
        conn.executescript(step)
    insert = f"INSERT INTO events ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant columns
    t = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows[i:i + batch])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - t
    conn.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=10, help="agents per shift per pool")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--batch", type=int, default=5000, help="ceiling rows per transaction "
                    "(meter ingest's BATCH_LINES)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side (figures are noisy)")
    ap.add_argument("--out", help="results JSON (default bench/results/ingest_file.json)")
    args = ap.parse_args(argv)
    run = Run("ingest_file", {k: v for k, v in vars(args).items() if k != "out"})
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-file-"))
    try:
        events, contracts = generate(workdir, args.accounts, args.agents, args.days)
        lines = sum(1 for _ in events.open("rb"))
        size_mb = events.stat().st_size / 1e6
        runs = []
        for r in range(args.repeat):
            db = workdir / f"meter{r}.db"
            m_s, summary = meter_ingest(events, contracts, db)
            rows = stored_rows(db)
            c_db = workdir / f"ceiling{r}.db"
            c_s = ceiling(rows, c_db, args.batch)
            for f in workdir.glob("*.db*"):
                f.unlink()
            n = len(rows)
            runs.append({"run": r + 1, "rows": n, "meter_s": round(m_s, 3), "ceiling_s": round(c_s, 3),
                         "meter_rows_per_s": round(n / m_s), "meter_lines_per_s": round(lines / m_s),
                         "ceiling_rows_per_s": round(n / c_s), "ratio": round(c_s / m_s, 3),
                         "summary": summary})
            print(f"  run {r + 1}: meter {n / m_s:,.0f} rows/s, ceiling {n / c_s:,.0f} rows/s, "
                  f"ratio {c_s / m_s:.2f}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{lines:,} lines ({size_mb:.0f} MB), {args.accounts} accounts; meter = `meter ingest` "
          "wall time (process start to exit)")
    print(table(["run", "rows", "meter rows/s", "meter lines/s", "ceiling rows/s", "meter/ceiling"],
                [(r["run"], r["rows"], r["meter_rows_per_s"], r["meter_lines_per_s"],
                  r["ceiling_rows_per_s"], f"{r['ratio']:.0%}") for r in runs]))
    best = max(runs, key=lambda r: r["ratio"])  # type: ignore[arg-type, return-value]
    run.save({"lines": lines, "file_mb": round(size_mb, 1), "runs": runs,
              "ratio_best": best["ratio"], "ratio_runs": [r["ratio"] for r in runs],
              "target_ratio": 0.5}, results_arg(args.out, "ingest_file"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
