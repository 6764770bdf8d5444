"""HTTP ingest against MQTT ingest, in one run on one machine: `meter serve --http-addr` takes N
events as NDJSON requests of 100 events from an aiohttp load client (its own process, C
requests in flight), and the same daemon build takes N events over MQTT from bench/ingest.py's
raw QoS 1 publisher. Both rates count committed events: an HTTP request is answered after its
commit, MQTT events are counted in the store. Prints events/s, requests/s, answer latency
p50/p99 and the ratio http/mqtt per round.

    python bench/http_ingest.py                               # 100,000 events, 2 rounds
    python bench/http_ingest.py --events 5000 --rounds 1      # the smoke size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest
from _common import PYTHON, Run, free_port, results_arg, table, wait_port

HERE = Path(__file__).resolve()
BATCH = 100  # events per request, as the issue asks


def role_client(port: int, n: int, concurrency: int, tag: str, batch: int) -> None:
    """POST n events in requests of `batch` with `concurrency` in flight; print JSON."""
    import aiohttp

    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    bodies = [b"\n".join(ingest.event_payload(i, tag, ts)[1]
                         for i in range(start, min(start + batch, n))) + b"\n"
              for start in range(0, n, batch)]
    url = f"http://127.0.0.1:{port}/v1/events"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted = 0

    async def worker(queue: asyncio.Queue[bytes], session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            sent = time.perf_counter()
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/x-ndjson"}) as r:
                answer = await r.json()
            latencies.append(time.perf_counter() - sent)
            statuses[r.status] = statuses.get(r.status, 0) + 1
            accepted += int(answer.get("accepted", 0))

    async def main() -> dict[str, object]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            start = time.time()
            await asyncio.gather(*(worker(queue, session) for _ in range(concurrency)))
            end = time.time()
        latencies.sort()
        return {"start": start, "end": end, "requests": len(bodies), "accepted": accepted,
                "statuses": statuses,
                "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}

    print(json.dumps(asyncio.run(main())))


def http_round(workdir: Path, broker_port: int, n: int, tag: str, *, concurrency: int,
               batch: int, extra: list[str]) -> dict[str, float]:
    """`meter serve` with --http-addr takes n events from the load client."""
    port = free_port()
    daemon = ingest.Daemon(workdir, broker_port, [*extra, "--http-addr", f"127.0.0.1:{port}"])
    try:
        wait_port(port, 30)
        before = daemon.committed()
        out = subprocess.run([PYTHON, str(HERE), "--role", "client", str(port), str(n),
                              str(concurrency), tag, str(batch)],
                             check=True, capture_output=True, text=True).stdout
        got = json.loads(out)
        committed = daemon.committed() - before
    finally:
        rss = daemon.stop()
    seconds = float(got["end"]) - float(got["start"])
    if committed != n or got["accepted"] != n:
        raise RuntimeError(f"HTTP round stored {committed} and accepted {got['accepted']} of {n}")
    return {"received": committed, "seconds": seconds, "per_s": committed / seconds,
            "requests_per_s": got["requests"] / seconds, "p50_ms": got["p50_ms"],
            "p99_ms": got["p99_ms"], "peak_rss_mb": rss / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight")
    ap.add_argument("--batch", type=int, default=BATCH, help="events per HTTP request")
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=4000, help="broker max_inflight_messages")
    ap.add_argument("--serve-arg", action="append", default=[])
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    ap.add_argument("--out", help="results JSON (default bench/results/http_ingest.json)")
    args = ap.parse_args(argv)
    ingest.ACCOUNTS = args.accounts
    os.environ["BENCH_INGEST_ACCOUNTS"] = str(args.accounts)
    run = Run("http_ingest", {k: v for k, v in vars(args).items() if k not in ("out", "keep")})
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    os.chmod(workdir, 0o777)  # noqa: S103 - mosquitto may drop to its own user
    broker = ingest.Broker(workdir, args.inflight)
    rounds = []
    try:
        for r in range(args.rounds):
            tag = f"h{r}{int(time.time()) % 100000}"
            res = {"round": r + 1,
                   "http": http_round(workdir, broker.port, args.events, tag + "h",
                                      concurrency=args.concurrency, batch=args.batch,
                                      extra=args.serve_arg),
                   "mqtt": ingest.meter_round(workdir, broker.port, args.events, tag + "m",
                                              extra=args.serve_arg)}
            res["http_of_mqtt"] = round(res["http"]["per_s"] / res["mqtt"]["per_s"], 3)
            rounds.append(res)
            print(f"  round {r + 1}: http {res['http']['per_s']:,.0f}/s, mqtt "
                  f"{res['mqtt']['per_s']:,.0f}/s, http/mqtt {res['http_of_mqtt']}", flush=True)
    finally:
        broker.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.events:,} events of {ingest.EVENT_BYTES} bytes; HTTP: requests of "
          f"{args.batch} (NDJSON), {args.concurrency} in flight; MQTT: QoS 1, raw publisher")
    print(table(["round", "http events/s", "http req/s", "p50 ms", "p99 ms", "mqtt events/s",
                 "http/mqtt"],
                [(res["round"], res["http"]["per_s"], res["http"]["requests_per_s"],
                  res["http"]["p50_ms"], res["http"]["p99_ms"], res["mqtt"]["per_s"],
                  res["http_of_mqtt"]) for res in rounds]))
    run.save({"rounds": rounds, "http_of_mqtt": [res["http_of_mqtt"] for res in rounds]},
             results_arg(args.out, "http_ingest"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        rest = sys.argv[3:]
        role_client(int(rest[0]), int(rest[1]), int(rest[2]), rest[3], int(rest[4]))
        raise SystemExit(0)
    raise SystemExit(main())
