"""What a restart of `meter serve` costs: seconds from process start to its first acknowledged
message, and peak RSS, with N events of the current period stored, without a checkpoint (a full
rebuild) and with one (the first start's, saved on SIGTERM, then `--tail` more events stored as a
crash between checkpoints leaves them: the second start replays those).

The database is generated in bulk by one SQL statement (logins and logouts of U users per
account, spread from the period start to a minute ago on the real clock, so the rebuild window
holds them all). Mosquitto and the daemon are processes of their own. Once the daemon is
started, a publisher sends a probe event every 20 ms; the first ack is the receive time the
store gives the first probe (the daemon commits, then acknowledges). Peak RSS is VmHWM.

    python bench/restart.py                            # 100,000 and 1,000,000 events
    python bench/restart.py --events 10000000          # the issue's 10M target (generating takes a while)
    python bench/restart.py --events 2000 --accounts 5 # the smoke size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import PYTHON, Run, free_port, peak_rss_kb, results_arg, table  # noqa: E402

# bench/rating.py would shadow the rating package that meter imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from meter.store import open_store  # noqa: E402
from tests.conftest import Broker  # noqa: E402

PROBE_EVERY = 0.02  # seconds between probes: the bias of the first-ack time is below this

# Event i of the whole log belongs to account i % A, as its j-th event (j = i / A): user j % U,
# rounds of logins then logouts of every user; event times rise with i (arrival order = time
# order, as in a live month), so seq and ts_us increase together.
_GENERATE = """
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :n - 1)
INSERT INTO events (account, id, type, user, pool, session, ts_us, received_us, raw)
SELECT printf('a%04d', i % :a),
       printf('e%010d', i / :a),
       CASE WHEN (i / :a / :u) % 2 = 0 THEN 'login' ELSE 'logout' END,
       printf('u%03d', (i / :a) % :u),
       'agents', NULL,
       :start + (i * :span) / :n,
       :start + (i * :span) / :n,
       CAST('{}' AS BLOB)
FROM c
"""


def contracts_text(accounts: int, quantity: int) -> str:
    return "".join(f"""
[[account]]
id = "a{k:04d}"
timezone = "UTC"
currency = "USD"
billing = "monthly"
anchor = "2026-01-01"
policy = "prorate"

  [[account.pool]]
  id = "agents"
  tier = "premium"
  model = "concurrent"
  quantity = {quantity}
  price = "10.00"
  overage_price = "10.00"
""" for k in range(accounts))


def generate(db: Path, n: int, accounts: int, users: int) -> tuple[float, int]:
    """N events of the current period (UTC month) into a new store; (seconds, file bytes)."""
    async def create() -> None:
        store = await open_store(db)
        await store.close()

    asyncio.run(create())
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = now - timedelta(minutes=1)
    start_us, span_us = int(start.timestamp() * 1e6), int((end - start).total_seconds() * 1e6)
    t0 = time.perf_counter()
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        conn.execute("BEGIN")
        conn.execute(_GENERATE, {"n": n, "a": accounts, "u": users, "start": start_us,
                                 "span": span_us})
        conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - t0, db.stat().st_size


def add_tail(db: Path, n: int, accounts: int, users: int) -> None:
    """N more events of the last minute, stored while the daemon is down: what a restart from
    the checkpoint replays (as a crash between checkpoints leaves it)."""
    now_us = int(time.time() * 1e6)
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("BEGIN")
        conn.execute(_GENERATE.replace("'e%010d'", "'t%010d'"), {
            "n": n, "a": accounts, "u": users, "start": now_us - 60_000_000, "span": 59_000_000})
        conn.execute("COMMIT")
    conn.close()


def start_once(workdir: Path, broker: Broker, contracts: Path, tag: str) -> dict[str, Any]:
    """Start the daemon, probe until it acknowledges, read its peak RSS, SIGTERM it."""
    db = workdir / "meter.db"
    log = workdir / f"serve-{tag}.log"
    with log.open("wb") as out:
        t0_wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [PYTHON, "-m", "meter", "serve", "--broker", broker.url, "--db", str(db),
             "--contracts", str(contracts), "--metrics-addr", f"127.0.0.1:{free_port()}",
             "--client-id", "bench-restart", "--checkpoint-every", "0s", "--finalize-after", "0s"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    pub = subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                            "-t", "meter/a0000/events", "-l"], stdin=subprocess.PIPE, text=True)
    assert pub.stdin is not None
    first_us = None
    probes = 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        while first_us is None:
            if proc.poll() is not None:
                raise RuntimeError(f"meter serve exited {proc.returncode}:\n{log.read_text()}")
            probes += 1
            pub.stdin.write(json.dumps({
                "id": f"probe-{tag}-{probes}", "type": "heartbeat", "account": "a0000",
                "user": "probe", "ts": datetime.now(UTC).isoformat()}) + "\n")
            pub.stdin.flush()
            time.sleep(PROBE_EVERY)
            try:
                row = conn.execute("SELECT min(received_us) FROM events WHERE account = 'a0000' "
                                   "AND id LIKE 'probe-' || ? || '-%'", (tag,)).fetchone()
            except sqlite3.OperationalError:
                row = None  # the daemon is migrating or checkpointing the file
            first_us = row[0] if row else None
    conn.close()
    waited = time.perf_counter() - t0
    rss_kb = peak_rss_kb(proc.pid)
    pub.stdin.close()
    pub.wait(10)
    t_stop = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    stopped = time.perf_counter() - t_stop
    text = log.read_text()
    if code != 0:
        raise RuntimeError(f"meter serve exited {code} on SIGTERM:\n{text}")
    how = re.search(r"(restored the checkpoint at seq \d+ and replayed \d+ events|"
                    r"rebuilt live state from \d+ stored events|checkpoint ignored[^\n]*)", text)
    with sqlite3.connect(db) as conn:
        (cp_bytes,) = conn.execute("SELECT coalesce(max(length(blob)), 0) FROM checkpoint").fetchone()
    conn.close()
    return {
        "first_ack_s": round(first_us / 1e6 - t0_wall, 3),
        "probe_seen_s": round(waited, 3),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "stop_s": round(stopped, 3),
        "checkpoint_bytes": int(cp_bytes),
        "how": how.group(1) if how else "?",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="100000,1000000",
                    help="comma-separated sizes (stored events of the current period)")
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--users", type=int, default=20, help="users per account")
    ap.add_argument("--quantity", type=int, default=15, help="licensed seats per account")
    ap.add_argument("--tail", type=int, default=10_000,
                    help="events stored after the checkpoint, which the second start replays")
    ap.add_argument("--keep", metavar="DIR", help="keep the databases and logs under DIR")
    ap.add_argument("--out", help="results JSON (default bench/results/restart.json)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.events.split(",") if s.strip()]
    run = Run("restart", {"events": sizes, "accounts": args.accounts, "users": args.users,
                          "quantity": args.quantity, "tail": args.tail})
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="meter-restart-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"sizes": []}
    rows = []
    try:
        for n in sizes:
            workdir = base / f"n{n}"
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            contracts = workdir / "contracts.toml"
            contracts.write_text(contracts_text(args.accounts, args.quantity))
            gen_s, size = generate(workdir / "meter.db", n, args.accounts, args.users)
            print(f"{n:,} events generated in {gen_s:.1f}s ({size / 1e6:,.0f} MB)", flush=True)
            broker = Broker(port=free_port(), workdir=workdir)
            broker.start()
            try:
                full = start_once(workdir, broker, contracts, "full")
                if args.tail:
                    add_tail(workdir / "meter.db", args.tail, args.accounts, args.users)
                restored = start_once(workdir, broker, contracts, "checkpoint")
            finally:
                broker.stop()
            results["sizes"].append({"events": n, "generate_s": round(gen_s, 1),
                                     "db_mb": round(size / 1e6, 1), "full": full,
                                     "checkpoint": restored})
            for label, r in (("full rebuild", full), ("checkpoint", restored)):
                rows.append((n, label, r["first_ack_s"], r["peak_rss_mb"], r["checkpoint_bytes"],
                             r["how"]))
                print(f"  {label}: first ack {r['first_ack_s']:.2f}s, peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB ({r['how']})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(("events", "start", "first ack s", "peak RSS MB", "saved checkpoint B", "log"), rows))
    results["loadavg_end"] = list(os.getloadavg())
    run.save(results, results_arg(args.out, "restart"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
