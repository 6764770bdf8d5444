"""Finalizing a month of `--accounts` accounts on PostgreSQL through the job table
(`meter.cluster.jobs`): `meter report --finalize` as 1 and as 2 processes sharing the table,
beside the same month's draft (`meter report` without `--finalize`: the rating of every account
in `workers_for` processes, what finalization cost before the job table, less the inserts).

Each run starts from a copy of one ingested database (CREATE DATABASE ... TEMPLATE), so every
run finalizes all accounts from scratch; best of `--repeat`. The server is a private cluster
(tests/pgserver.py). The machine's load average is printed beside the figures: the box is
shared, so read the ratios more than the seconds. Writes bench/results/finalize_jobs.json.

    python bench/finalize_jobs.py --accounts 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.contracts_toml import account, contracts, pool
from tests.pgserver import PgServer

ROOT = Path(__file__).resolve().parent.parent
MONTH = "2026-01"


def _files(folder: Path, n: int) -> tuple[Path, Path]:
    """A contracts file of `n` accounts and a month of sessions for them (1-4 users each)."""
    c = folder / "contracts.toml"
    c.write_text(contracts(*(
        account(f"acct{i:03d}", pools=[pool("agents", tier="premium", model="concurrent",
                                            quantity=2, price="100.00", overage_price="150.00")])
        for i in range(n))))
    lines = []
    for i in range(n):
        for u in range(i % 4 + 1):
            for day in range(2, 28, 3):
                for kind, hour in (("login", 9 + u), ("logout", 13 + u)):
                    at = f"2026-01-{day:02d}T{hour:02d}:00:00Z"
                    lines.append(json.dumps({"id": f"{i}-{u}-{kind}-{at}", "type": kind,
                                             "account": f"acct{i:03d}", "user": f"u{u}",
                                             "pool": "agents", "session": f"s{u}", "ts": at}))
    e = folder / "events.jsonl"
    e.write_text("\n".join(lines) + "\n")
    return c, e


def _copy(server: PgServer, template: str, name: str) -> str:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return server.url(name)


def _timed(commands: list[list[str]]) -> float:
    """Seconds until every command (started together) has exited 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                              cwd=ROOT, stdin=subprocess.DEVNULL) for c in commands]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err.decode()
    return time.perf_counter() - t


def _report(url: str, c: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "meter", "report", "--period", MONTH, "--db", url,
            "--contracts", str(c), *extra]


def _finalized(url: str) -> tuple[int, int, dict[str, int]]:
    with psycopg.connect(url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM finalized").fetchone() or (0,)
        (jobs,) = conn.execute("SELECT count(*) FROM finalize_job WHERE state = 'done'"
                               ).fetchone() or (0,)
        workers = dict(conn.execute("SELECT worker, count(*) FROM finalize_job GROUP BY worker"
                                    ).fetchall())
    return int(count), int(jobs), {str(k): int(v) for k, v in workers.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    server = PgServer.create()
    server.start()
    results: dict[str, Any] = {"accounts": args.accounts, "load_before": os.getloadavg()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c, e = _files(Path(tmp), args.accounts)
            base = server.create_database("base")
            subprocess.run([sys.executable, "-m", "meter", "ingest", str(e), "--db", base,
                            "--contracts", str(c), "--as-of", "2026-02-01T06:00:00Z"],
                           check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            results["events"] = sum(1 for _ in e.open())
            runs: dict[str, list[float]] = {"draft": [], "jobs_1": [], "jobs_2": []}
            for r in range(args.repeat):
                url = _copy(server, "base", f"run{r}")
                runs["draft"].append(_timed([_report(url, c)]))
                url = _copy(server, "base", f"one{r}")
                runs["jobs_1"].append(_timed([_report(url, c, "--finalize")]))
                assert _finalized(url)[:2] == (args.accounts, args.accounts)
                url = _copy(server, "base", f"two{r}")
                runs["jobs_2"].append(_timed([_report(url, c, "--finalize")] * 2))
                count, done, workers = _finalized(url)
                assert (count, done, len(workers)) == (args.accounts, args.accounts, 2), workers
                results.setdefault("jobs_2_split", []).append(sorted(workers.values()))
                print(f"run {r}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in runs.items()),
                      file=sys.stderr)
    finally:
        server.destroy()
    best = {k: round(min(v), 2) for k, v in runs.items()}
    results |= {"seconds": best, "runs": runs, "load_after": os.getloadavg(),
                "cores": os.cpu_count(),
                "accounts_per_s": {k: round(args.accounts / v, 1) for k, v in best.items()},
                "jobs_2_over_jobs_1": round(best["jobs_1"] / best["jobs_2"], 2),
                "jobs_1_over_draft": round(best["jobs_1"] / best["draft"], 2)}
    out = ROOT / "bench" / "results" / "finalize_jobs.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
