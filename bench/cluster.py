"""A cluster of `meter serve --slots N` members end to end: events/s with 1, 2 and 3 members (each
holding its own ingest slot) on one Mosquitto and one PostgreSQL started here, the same publisher
load each time, and where the machine's CPU went.

Each round: a fresh database, N members started (`--slots N`, client ids CLIENT_ID-k on the shared
subscription), one QoS 1 publisher (bench/ingest.py's raw-socket role: 150-byte heartbeats over
`--accounts` topics, as fast as the broker takes them with 2,000 unacknowledged); the rate is the
events over the time from the first publish to the commit of the last (polled as the events
table's max seq). Meanwhile the CPU seconds of every PostgreSQL process (the server's children), the
broker, the publisher and the members are read from /proc, as shares of the wall time times the
cores; the members' batch commits (count, summed seconds) from their /metrics; the server's WAL
flushes (`pg_stat_wal`, with `track_wal_io_timing` on) and how many batches wait for the store's
write lock (`pg_stat_activity`, sampled every 50 ms). Writes
bench/results/cluster.json with the machine and its load average.

    python bench/cluster.py                        # 60,000 events, 1, 2 and 3 members
    python bench/cluster.py --events 5000 --members 1,2      # a smoke size
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ingest  # the bench's own broker and publisher
from _common import PYTHON, ROOT, Run, free_port, results_arg, table

PREFIX = "bench"  # bench/ingest.py's publisher role publishes to bench/<account>/events
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def server_cpu_s(pid: int) -> float:
    """CPU seconds of the PostgreSQL server `pid` and its live children (backends, WAL writer,
    checkpointer...: each calls setsid(), so they are found by parent, not process group). A
    backend that ended meanwhile is missed; the members keep theirs for the whole round."""
    total = cpu_s(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


class Member:
    """One `meter serve --slots N` process on the bench broker and database."""

    def __init__(self, workdir: Path, broker: ingest.Broker, url: str, contracts: Path, *, slots: int,
                 partitions: int, client_id: str, name: str) -> None:
        self.metrics_port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("METER_")},
               "METER_TOPIC_PREFIX": PREFIX, "METER_CLIENT_ID": client_id}
        with (workdir / f"{name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "meter", "serve", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                 "--db", url, "--contracts", str(contracts), "--slots", str(slots),
                 "--partitions", str(partitions),
                 "--metrics-addr", f"127.0.0.1:{self.metrics_port}"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.log = workdir / f"{name}.log"

    def metrics(self) -> dict[str, float]:
        """Sample name -> value summed over its labels ({} when not answering)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def wait_slot(self, timeout: float = 90.0) -> int:
        """Wait until it holds a slot and is connected; returns the slot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meter serve exited {self.proc.returncode}; see {self.log}")
            m = self.metrics()
            if m.get("meter_mqtt_connected") == 1.0 and m.get("meter_cluster_slot", -1) >= 0:
                return int(m["meter_cluster_slot"])
            time.sleep(0.1)
        raise RuntimeError(f"no slot within {timeout} s; see {self.log}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_WAL = "SELECT wal_sync, wal_sync_time FROM pg_stat_wal"
# Backends waiting for an advisory lock now: the members' batches queued behind the store's
# write lock (held from a batch's first statement to its commit, WAL flush included).
_LOCK_WAITERS = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                 "AND wait_event = 'advisory'")


def wal(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    """(WAL flushes, their milliseconds) so far (`track_wal_io_timing` is on in the bench)."""
    row = conn.execute(_WAL).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def stored(conn: psycopg.Connection[Any]) -> int:
    """The newest seq (gapless here: duplicates draw none), an index read, cheap to poll."""
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    return int(row[0]) if row else 0


def one_round(server: Any, broker: ingest.Broker, workdir: Path, contracts: Path, *, members: int,
              events: int, partitions: int, tag: str) -> dict[str, Any]:
    """N members take `events` from one publisher: the rate and where the CPU went."""
    import ingest  # bench/ingest.py: its publisher role and mqtt_connect

    url = server.create_database()
    client_id = f"bench-cluster-{tag}"
    started = [Member(workdir, broker, url, contracts, slots=members, partitions=partitions,
                      client_id=client_id, name=f"{tag}-m{k}") for k in range(members)]
    try:
        slots = sorted(m.wait_slot() for m in started)
        assert slots == list(range(members)), slots
        time.sleep(2.0)  # the tracking partitions balanced, the first checkpoints saved
        before = [m.metrics() for m in started]
        poll = psycopg.connect(url, autocommit=True)
        cpu0 = {"postgresql": server_cpu_s(server.proc.pid), "broker": cpu_s(broker.proc.pid),
                "members": sum(cpu_s(m.proc.pid) for m in started)}
        wal0 = wal(poll)
        t0 = time.time()
        pub = subprocess.Popen([PYTHON, str(Path(ingest.__file__)), "--role", "publish",
                                str(broker.port), str(events), "0", tag, "2000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "BENCH_INGEST_ACCOUNTS": str(ingest.ACCOUNTS)})
        usage: dict[str, Any] = {}

        def reap() -> None:  # the publisher's own CPU, from its rusage when it exits
            _, status, rusage = os.wait4(pub.pid, 0)
            usage.update(status=status, cpu=rusage.ru_utime + rusage.ru_stime, end=time.time())

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        deadline = time.monotonic() + 900
        last = 0.0
        waiters: list[int] = []
        while time.monotonic() < deadline:
            if stored(poll) >= events:
                last = time.time()
                break
            row = poll.execute(_LOCK_WAITERS).fetchone()
            waiters.append(int(row[0]) if row else 0)
            time.sleep(0.05)
        wall = last - t0
        wal1 = wal(poll)
        cpu1 = {"postgresql": server_cpu_s(server.proc.pid), "broker": cpu_s(broker.proc.pid),
                "members": sum(cpu_s(m.proc.pid) for m in started)}
        reaper.join(60)
        count = int(poll.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]
        poll.close()
        time.sleep(0.5)
        after = [m.metrics() for m in started]
    finally:
        for m in started:
            m.stop()
        for k in range(members):  # drop the slot sessions (they never expire)
            ingest.mqtt_connect(broker.port, f"{client_id}-{k}", clean=True).close()
        server.drop_database(url)
    if not last:
        raise RuntimeError(f"{members} members: {count} of {events} stored after 900 s")
    cores = os.cpu_count() or 1
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
    cpu["publisher"] = float(usage.get("cpu", 0.0))
    commits = sum(a.get("meter_batch_commit_seconds_count", 0) - b.get(
        "meter_batch_commit_seconds_count", 0) for a, b in zip(after, before, strict=True))
    commit_s = sum(a.get("meter_batch_commit_seconds_sum", 0) - b.get(
        "meter_batch_commit_seconds_sum", 0) for a, b in zip(after, before, strict=True))
    received = [a.get("meter_events_received_total", 0) - b.get("meter_events_received_total", 0)
                for a, b in zip(after, before, strict=True)]
    return {
        "members": members, "events": events, "stored": count, "seconds": round(wall, 2),
        "per_s": round(events / wall), "received_by_member": [int(r) for r in received],
        "publisher_seconds": round(float(usage.get("end", last)) - t0, 2),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_share": {k: round(v / (wall * cores), 3) for k, v in cpu.items()},
        "cpu_busy_share": round(sum(cpu.values()) / (wall * cores), 3),
        "postgresql_cpu_us_per_event": round(cpu["postgresql"] / events * 1e6),
        "commits": int(commits), "events_per_commit": round(events / max(commits, 1)),
        "commit_seconds_summed_of_wall": round(commit_s / wall, 2),
        "wal_flushes": wal1[0] - wal0[0],
        "wal_flush_ms_mean": round((wal1[1] - wal0[1]) / max(wal1[0] - wal0[0], 1), 1),
        "wal_flush_seconds_of_wall": round((wal1[1] - wal0[1]) / 1000 / wall, 2),
        "write_lock_waiters_mean": round(sum(waiters) / max(len(waiters), 1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--members", default="1,2,3", help="comma list of cluster sizes")
    ap.add_argument("--accounts", type=int, default=100, help="accounts (topics) of the events")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--inflight", type=int, default=4000, help="broker max_inflight_messages")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (member logs)")
    ap.add_argument("--out", help="results JSON (default bench/results/cluster.json)")
    args = ap.parse_args(argv)
    os.environ["BENCH_INGEST_ACCOUNTS"] = str(args.accounts)  # read by bench/ingest.py on import
    import ingest  # after its environment is set

    from tests.pgserver import PgServer

    sizes = [int(n) for n in args.members.split(",") if n]
    run = Run("cluster", {k: v for k, v in vars(args).items() if k not in ("out", "keep")})
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    os.chmod(workdir, 0o777)  # noqa: S103 - mosquitto may drop to its own user
    contracts = workdir / "contracts.toml"
    contracts.write_text(ingest.contracts_text())
    server = PgServer.create()
    broker = None
    rounds: list[dict[str, Any]] = []
    try:
        server.start()
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_wal_io_timing = on")
            conn.execute("SELECT pg_reload_conf()")
        broker = ingest.Broker(workdir, args.inflight)
        for n in sizes:
            print(f"{n} member(s): {args.events:,} events", file=sys.stderr)
            rounds.append(one_round(server, broker, workdir, contracts, members=n,
                                    events=args.events, partitions=args.partitions,
                                    tag=f"n{n}-{int(time.time()) % 100000}"))
            print(f"  {rounds[-1]['per_s']:,} events/s", file=sys.stderr)
    finally:
        if broker is not None:
            broker.stop()
        server.destroy()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}", file=sys.stderr)
    one = rounds[0]["per_s"] if rounds and rounds[0]["members"] == 1 else None
    for r in rounds:
        r["of_one_member"] = round(r["per_s"] / one, 2) if one else None
    print(table(["members", "events/s", "x 1 member", "PG CPU", "members CPU", "broker CPU",
                 "publisher CPU", "busy", "events/commit", "commit s / wall", "WAL flush ms",
                 "flush s / wall", "lock waiters", "per member"],
                [(r["members"], r["per_s"], r["of_one_member"] or "-",
                  f"{r['cpu_share']['postgresql']:.0%}", f"{r['cpu_share']['members']:.0%}",
                  f"{r['cpu_share']['broker']:.0%}", f"{r['cpu_share']['publisher']:.0%}",
                  f"{r['cpu_busy_share']:.0%}", r["events_per_commit"],
                  r["commit_seconds_summed_of_wall"], r["wal_flush_ms_mean"],
                  r["wal_flush_seconds_of_wall"], r["write_lock_waiters_mean"],
                  "/".join(str(x) for x in r["received_by_member"])) for r in rounds]))
    print("CPU: shares of wall time x cores; busy: their sum (the rest: other work on the "
          "machine, or idle). commit s / wall: the members' Store.add seconds summed (lock wait "
          "included); flush s / wall: the server's WAL fsync time; lock waiters: batches queued "
          "behind the store's write lock, on average")
    run.save({"rounds": rounds, "loadavg_end": list(os.getloadavg())},
             results_arg(args.out, "cluster"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
