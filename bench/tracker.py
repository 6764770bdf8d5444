"""Memory and time of the live tracker holding many open sessions (default 1,000,000 over 1,000
accounts): bytes per open session (tracemalloc), and time per event as the tracker fills, so
a cost that grows with the number of open sessions shows.

    python bench/tracker.py                                  # 1M sessions, 1,000 accounts
    python bench/tracker.py --sessions 10000 --accounts 10   # the smoke size
    python bench/tracker.py --before old.json                # also print an earlier run beside
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import Run, results_arg, table

from meter.tracker import Tracker
from rating.contracts import Contracts, parse_contracts

_START_US = 1_793_491_200_000_000  # 2026-11-01T00:00:00Z
_REORDER_US = 2_000_000  # the daemon's reorder window: the watermark trails the newest event


@dataclass(frozen=True, slots=True)
class Ev:
    """A tracked event, as small as `meter.events.Event` would be once parsed."""

    account: str
    type: str
    user: str
    pool: str | None
    session: str | None
    ts_us: int


def contracts(accounts: int, quantity: int) -> Contracts:
    """`accounts` accounts with one concurrent pool each, licensed for `quantity` seats."""
    parts = []
    for a in range(accounts):
        parts.append(
            f'[[account]]\nid = "acct{a:04d}"\ntimezone = "America/New_York"\ncurrency = "USD"\n'
            f'billing = "monthly"\nanchor = "2026-01-01"\npolicy = "prorate"\n'
            f'session_timeout = "12h"\n'
            f'[[account.pool]]\nid = "agents"\ntier = "premium"\nmodel = "concurrent"\n'
            f'quantity = {quantity}\nprice = "99.00"\noverage_price = "99.00"\ngrace = "30m"\n')
    return parse_contracts("\n".join(parts), source="bench")


def events(kind: str, sessions: int, accounts: int, t0_us: int, step_us: int) -> Iterator[Ev]:
    """One event of `kind` per session, round-robin over accounts, times `step_us` apart.

    Every string is built fresh, as the decoder would hand it over, so the tracker's memory
    includes the user and session ids it keeps.
    """
    for i in range(sessions):
        a = i % accounts
        n = i // accounts
        yield Ev(f"acct{a:04d}", kind, f"agent-{n:06d}", None, f"sess-{a:04d}-{n:06d}",
                 t0_us + i * step_us)


def feed(tracker: Tracker, stream: Iterator[Ev], batch: int, slices: int,
         total: int) -> list[float]:
    """Apply events in batches, advancing the watermark after each as the daemon does;
    returns microseconds per event for each of `slices` equal parts of the stream."""
    per_slice = max(total // slices, 1)
    out: list[float] = []
    t_slice = time.perf_counter()
    last_ts = 0
    pending = 0
    for done, ev in enumerate(stream, 1):
        tracker.apply(ev)
        last_ts = ev.ts_us
        pending += 1
        if pending >= batch:
            tracker.advance(last_ts - _REORDER_US)
            pending = 0
        if done % per_slice == 0:
            now = time.perf_counter()
            out.append((now - t_slice) * 1e6 / per_slice)
            t_slice = now
    tracker.advance(last_ts)
    return out


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def top_sites(n: int, limit: int = 8) -> list[tuple[str, float]]:
    """The allocation sites holding the most memory now, as bytes per open session."""
    gc.collect()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    out = []
    for stat in stats[:limit]:
        frame = stat.traceback[0]
        line = linecache.getline(frame.filename, frame.lineno).strip()
        out.append((f"{Path(frame.filename).name}:{frame.lineno} {line[:60]}", round(stat.size / n, 1)))
    return out


def phase(tracker: Tracker, kind: str, n: int, *, accounts: int, t0: int, step: int,
          batch: int) -> tuple[float, list[float], int]:
    """Apply one round of `kind` events; (us per event, per-slice us, open sessions after)."""
    t = time.perf_counter()
    slices = feed(tracker, events(kind, n, accounts, t0, step), batch, 10, n)
    us = (time.perf_counter() - t) * 1e6 / n
    open_now = sum(v.active_users for v in tracker.views())
    return us, slices, open_now


#: Figures printed beside an earlier run's (`--before`); lists are averaged.
_COMPARED = ("bytes_per_session", "bytes_per_session_after_heartbeats", "peak_traced_bytes",
             "login_us_per_event", "heartbeat_us_per_event", "logout_us_per_event")


def _mean(v: float | list[float]) -> float:
    return sum(v) / len(v) if isinstance(v, list) else float(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000, help="events between watermark advances")
    ap.add_argument("--heartbeat-rounds", type=int, default=3,
                    help="heartbeats per session after the logins (each refreshes the session)")
    ap.add_argument("--out", help="results JSON (default bench/results/tracker.json)")
    ap.add_argument("--before", type=Path,
                    help="an earlier results JSON (another commit): its figures are printed "
                         "beside these and kept in the results as `before`")
    args = ap.parse_args(argv)
    # The sources as they are now: a run takes minutes, and its sites must name these lines.
    for module in (sys.modules[__name__], sys.modules[Tracker.__module__]):
        linecache.getlines(module.__file__ or "")
    run = Run("tracker", {k: v for k, v in vars(args).items() if k not in ("out", "before")})
    n, accounts = args.sessions, args.accounts
    per_account = -(-n // accounts)
    c = contracts(accounts, per_account)
    step = 1_000  # 1 ms of event time between events: 1M logins within 17 minutes
    rows: list[tuple[object, ...]] = []

    # Time: no tracemalloc (it slows allocation several-fold).
    tracker = Tracker(c, _START_US)
    t0 = _START_US + 1
    login_us, login_slices, open_after = phase(tracker, "login", n, accounts=accounts, t0=t0, step=step,
                                                 batch=args.batch)
    rows.append(("login", n, login_us, min(login_slices), max(login_slices), open_after))
    hb_us: list[float] = []
    hb_slices: list[float] = []
    for r in range(args.heartbeat_rounds):
        t0 += n * step + 60_000_000
        us, slices, open_after = phase(tracker, "heartbeat", n, accounts=accounts, t0=t0, step=step,
                                        batch=args.batch)
        hb_us.append(us)
        hb_slices += slices
        rows.append((f"heartbeat round {r + 1}", n, us, min(slices), max(slices), open_after))
    t0 += n * step + 60_000_000
    logout_us, logout_slices, open_end = phase(tracker, "logout", n, accounts=accounts, t0=t0, step=step,
                                             batch=args.batch)
    rows.append(("logout", n, logout_us, min(logout_slices), max(logout_slices), open_end))
    del tracker
    gc.collect()

    # Memory: the same feed under tracemalloc; the contracts are built before the baseline.
    tracemalloc.start()
    base = traced_bytes()
    tracker = Tracker(c, _START_US)
    empty = traced_bytes() - base
    t0 = _START_US + 1
    feed(tracker, events("login", n, accounts, t0, step), args.batch, 1, n)
    after_logins = traced_bytes() - base
    sites = top_sites(n)
    mem_rows = [("empty tracker", 0, empty, 0.0), ("after logins", n, after_logins,
                                                    (after_logins - empty) / n)]
    for r in range(args.heartbeat_rounds):
        t0 += n * step + 60_000_000
        feed(tracker, events("heartbeat", n, accounts, t0, step), args.batch, 1, n)
        b = traced_bytes() - base
        mem_rows.append((f"after heartbeat round {r + 1}", n, b, (b - empty) / n))
    peak = tracemalloc.get_traced_memory()[1] - base
    sites_hb = top_sites(n)
    tracemalloc.stop()
    bytes_per_session = (after_logins - empty) / n
    worst_per_session = max(r[3] for r in mem_rows)

    print(table(["phase", "events", "us/event", "fastest 10%", "slowest 10%", "open after"], rows))
    print()
    print(table(["memory", "open sessions", "bytes", "bytes/session"], mem_rows))
    print("\nwhere it goes after the logins (allocation sites, bytes per open session)")
    print(table(["site", "bytes/session"], [(k, v) for k, v in sites]))
    if args.heartbeat_rounds:
        print("\nafter the heartbeats")
        print(table(["site", "bytes/session"], [(k, v) for k, v in sites_hb]))
    print(f"\nbytes per open session: {bytes_per_session:.0f} after logins, "
          f"{worst_per_session:.0f} after heartbeats (target < 200)")
    results = {
        "sessions": n, "accounts": accounts,
        "bytes_per_session": round(bytes_per_session, 1),
        "bytes_per_session_after_heartbeats": round(worst_per_session, 1),
        "peak_traced_bytes": peak,
        "sites_after_logins": sites,
        "sites_after_heartbeats": sites_hb,
        "memory": [{"phase": r[0], "bytes": r[2], "bytes_per_session": round(r[3], 1)}
                   for r in mem_rows],
        "login_us_per_event": round(login_us, 2),
        "heartbeat_us_per_event": [round(u, 2) for u in hb_us],
        "logout_us_per_event": round(logout_us, 2),
        "login_us_per_event_by_tenth": [round(u, 2) for u in login_slices],
        "heartbeat_us_per_event_by_tenth": [round(u, 2) for u in hb_slices],
        "open_sessions_after_logins": rows[0][5],
        "open_sessions_at_end": open_end,
        "target_bytes_per_session": 200,
    }
    extra = {}
    if args.before:
        before = json.loads(args.before.read_text())
        extra["before"] = {"machine": before["machine"], "params": before["params"],
                           "results": {k: before["results"][k] for k in _COMPARED}}
        print("\nbefore (" + before["machine"]["git_commit"] + ", load "
              + f"{before['machine']['loadavg'][0]:.2f}) and now ("
              + f"{run.machine['git_commit']}, load {run.machine['loadavg'][0]:.2f})")
        print(table(["figure", "before", "now", "now/before"], [
            (k, _mean(before["results"][k]), _mean(results[k]),
             _mean(results[k]) / _mean(before["results"][k])) for k in _COMPARED]))
    run.save(results, results_arg(args.out, "tracker"), **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
