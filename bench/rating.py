"""Benchmark: rate a generated month of usage for many accounts, beside a numpy argsort.

    python bench/rating.py                           # 10,000,000 events over 1,000 accounts
    python bench/rating.py --events 20000 --accounts 10

The events are generated straight into `EventColumns` (shuffled, so nothing arrives sorted) and
rated with `rating.rate_pools`; the same run times `np.argsort` of the same timestamps, so the
ratio is about this machine, not a number from elsewhere. Writes bench/results/rating.json
(the shared layout of bench/_common.py, with `ratio_best` also at the top level).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import overload
from zoneinfo import ZoneInfo

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import Run, results_arg, table  # noqa: E402 - bench/ is on the path as the script's

from rating.contracts import Account, Pool  # noqa: E402 - after the path fix above
from rating.periods import period_of_month  # noqa: E402
from rating.pool import PoolJob, rate_pools  # noqa: E402
from rating.usage import HEARTBEAT, LOGIN, LOGOUT, EventColumns, to_us  # noqa: E402

TIMEZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles")
HOUR = 3_600_000_000
TIMEOUT = timedelta(hours=12)


class Names(Sequence[str]):
    """Session names made on demand: the rating only needs how many there are."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [f"s{j}" for j in range(*i.indices(self.n))]
        return f"s{i}"


def generate(n_events: int, n_accounts: int, seed: int, blanket_share: float
             ) -> tuple[EventColumns, list[PoolJob], dict[str, int]]:
    """A month (March 2026) of shifts: login, a heartbeat every 2 h, logout; with faults."""
    rng = np.random.default_rng(seed)
    accounts = [Account(id=f"acc{a:04}", timezone=TIMEZONES[a % len(TIMEZONES)], currency="USD",
                        billing="monthly", anchor=date(2026, 1, 1), policy="prorate",
                        tz=ZoneInfo(TIMEZONES[a % len(TIMEZONES)]))
                for a in range(n_accounts)]
    periods = [period_of_month(acc, 2026, 3) for acc in accounts]
    users_per_account = max(4, n_events // n_accounts // 100)
    n_users = n_accounts * users_per_account
    # ~4 events per shift: draw more than enough shifts, then cut to exactly n_events.
    n_shifts = n_events // 2 + 16
    account = rng.integers(0, n_accounts, n_shifts)
    user = account * users_per_account + rng.integers(0, users_per_account, n_shifts)
    p_start = np.array([to_us(p.start) for p in periods], np.int64)
    p_end = np.array([to_us(p.end) for p in periods], np.int64)
    window = p_end - p_start + 2 * 12 * HOUR
    start = p_start[account] - 12 * HOUR + (rng.random(n_shifts) * window[account]).astype(
        np.int64)
    length = rng.integers(HOUR // 2, 9 * HOUR, n_shifts)
    beats = length // (2 * HOUR)
    missing_logout = rng.random(n_shifts) < 0.05
    lost_login = rng.random(n_shifts) < 0.01
    repeat_login = rng.random(n_shifts) < 0.02
    per_shift = (1 - lost_login) + repeat_login + beats + (1 - missing_logout)
    total = np.cumsum(per_shift)
    n_shifts = min(int(np.searchsorted(total, n_events)) + 1, total.size)
    account, user, start, length, beats = (a[:n_shifts] for a in
                                           (account, user, start, length, beats))
    missing_logout, lost_login, repeat_login = (a[:n_shifts] for a in
                                                (missing_logout, lost_login, repeat_login))
    shift = np.arange(n_shifts)
    parts_ts: list[np.ndarray] = []
    parts_kind: list[np.ndarray] = []
    parts_shift: list[np.ndarray] = []
    login = shift[~lost_login]
    parts_ts.append(start[login])
    parts_kind.append(np.full(login.size, LOGIN, np.int8))
    parts_shift.append(login)
    again = shift[repeat_login]
    parts_ts.append(start[again] + rng.integers(1, HOUR // 4, again.size))
    parts_kind.append(np.full(again.size, LOGIN, np.int8))
    parts_shift.append(again)
    hb_shift = np.repeat(shift, beats)
    hb_index = np.arange(hb_shift.size) - np.repeat(np.cumsum(beats) - beats, beats) + 1
    parts_ts.append(start[hb_shift] + hb_index * 2 * HOUR)
    parts_kind.append(np.full(hb_shift.size, HEARTBEAT, np.int8))
    parts_shift.append(hb_shift)
    logout = shift[~missing_logout]
    parts_ts.append(start[logout] + length[logout])
    parts_kind.append(np.full(logout.size, LOGOUT, np.int8))
    parts_shift.append(logout)
    ts = np.concatenate(parts_ts)[:n_events]
    kind = np.concatenate(parts_kind)[:n_events]
    ev_shift = np.concatenate(parts_shift)[:n_events]
    # Legacy clients send no session ids at all (1% of users); a few logouts name no session
    # (they close every session of the user: those users take the event-by-event path).
    legacy = rng.random(n_users) < 0.01
    session = np.where(legacy[user[ev_shift]], -1, ev_shift).astype(np.int32)
    blanket = (kind == LOGOUT) & (rng.random(ts.size) < blanket_share)
    session[blanket] = -1
    perm = rng.permutation(ts.size)
    ev_user = user[ev_shift][perm].astype(np.int32)
    cols = EventColumns(
        ts=ts[perm], kind=kind[perm], pool=account[ev_shift][perm].astype(np.int32),
        user=ev_user, member=ev_user, session=session[perm],
        pools=tuple((acc.id, "agents") for acc in accounts),
        users=tuple((accounts[u // users_per_account].id, f"u{u}") for u in range(n_users)),
        member_pool=(np.arange(n_users) // users_per_account).astype(np.int32),
        member_user=np.arange(n_users, dtype=np.int32),
        sessions=Names(n_shifts),
        # As EventColumns.from_rows gives it: the member of each session code.
        session_member=user.astype(np.int32),
    )
    jobs = []
    for a, (acc, period) in enumerate(zip(accounts, periods, strict=True)):
        # Licensed near the usual peak (mean use + 2 sd), so overage is occasional, as in life.
        duty = 0.166
        quantity = round(users_per_account * duty
                         + 2 * (users_per_account * duty * (1 - duty)) ** 0.5)
        mode = "cumulative" if a % 5 == 4 else "continuous"
        pool = Pool("agents", "elite", "concurrent", quantity, Decimal("149.00"),
                    Decimal("149.00"), timedelta(minutes=30), mode)  # type: ignore[arg-type]
        steps = [(period.start + timedelta(days=10), quantity + 2)] if a % 10 == 0 else []
        jobs.append(PoolJob(acc.id, pool, period, steps, TIMEOUT))
    ev_user_all = user[ev_shift]
    mixed_users = np.unique(ev_user_all[blanket & ~legacy[ev_user_all]]).size
    info = {"events": int(ts.size), "accounts": n_accounts, "users": n_users,
            "sessions": n_shifts, "legacy_users": int(legacy.sum()),
            "blanket_logouts": int(blanket.sum()), "users_on_event_path": int(mixed_users)}
    return cols, jobs, info


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--blanket-share", type=float, default=0.0002,
                        help="share of logouts that name no session (slow path for their user)")
    parser.add_argument("--out", default=None, help="results file (default bench/results/)")
    args = parser.parse_args(argv)
    run = Run("rating", {k: v for k, v in vars(args).items() if k != "out"})

    t0 = time.perf_counter()
    cols, jobs, info = generate(args.events, args.accounts, args.seed, args.blanket_share)
    generate_s = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    ratings: list[object] = []
    sort_s = timed(lambda: np.argsort(cols.ts), args.repeat)
    rate_s = timed(lambda: ratings.append(rate_pools(cols, jobs)), args.repeat)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    rate_pools(cols, jobs)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    result = ratings[-1]
    billed = sum(1 for r in result if r.overage_seats)  # type: ignore[attr-defined]
    ratio = min(rate_s) / min(sort_s)
    print(f"{info['events']:,} events, {info['accounts']:,} accounts, {info['users']:,} users, "
          f"{info['sessions']:,} sessions ({info['users_on_event_path']:,} users on the "
          f"event-by-event path); generated in {generate_s:.1f} s\n")
    print(table(
        ["measure", "best (s)", "runs (s)"],
        [["np.argsort of the same timestamps", min(sort_s), " ".join(f"{t:.3f}" for t in sort_s)],
         ["rate_pools, every account", min(rate_s), " ".join(f"{t:.3f}" for t in rate_s)],
         ["ratio rating / argsort", f"{ratio:.2f}x", ""]],
    ))
    print(f"\nmemory: {traced_peak / 2**20:.0f} MB traced at peak inside the rating; process max "
          f"RSS {rss_before / 1024:.0f} MB before rating, {rss_after / 1024:.0f} MB after")
    print(f"pools billed overage: {billed} of {len(jobs)}")
    run.save({
        "data": info,
        "generate_s": generate_s,
        "argsort_s": sort_s,
        "rate_pools_s": rate_s,
        "ratio_best": ratio,
        "rating_traced_peak_mb": traced_peak / 2**20,
        "max_rss_before_rating_mb": rss_before / 1024,
        "max_rss_after_rating_mb": rss_after / 1024,
        "pools_billed": billed,
        "numpy": np.__version__,
    }, results_arg(args.out, "rating"), ratio_best=ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
