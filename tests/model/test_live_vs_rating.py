"""A stateful model: hypothesis drives the live tracker and the rating core with the same stream.

Rules: logins, logouts and heartbeats (arriving out of order within the daemon's reorder window),
late events, duplicates (absorbed by the store before the tracker, as in the daemon), clock
advances, jumps to a period rollover, a restart that rebuilds the tracker from a real store with
`meter.serve.rebuild`, and a settle (the daemon idle: dirty accounts replayed from the store, as
its re-rater does). After every step: gauges are never negative, the high-water mark and billable
overage never fall between settles, and whenever the tracker marks no account dirty (always after
a settle) the live view (users signed in, excess, peak and its time, billable overage, grace
remaining) equals `rating.pool.rate_pool` over the same stored events up to the watermark, late
events and timed-out sessions included: no exemption.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from prometheus_client import CollectorRegistry

from meter.config import load_settings
from meter.events import Event
from meter.metrics import Metrics
from meter.serve import rebuild
from meter.store import open_store
from meter.tracker import PoolView, Tracker
from rating.contracts import parse_contracts
from rating.periods import monthly_period
from rating.pool import PoolRating, rate_pool

CONTRACTS = parse_contracts("""
[[account]]
id = "acme"
timezone = "America/New_York"
currency = "USD"
billing = "monthly"
anchor = "2026-01-15"
policy = "prorate"
session_timeout = "12h"
  [[account.pool]]
  id = "agents"
  tier = "premium"
  model = "concurrent"
  quantity = 2
  price = "149.00"
  overage_price = "149.00"
  grace = "10m"
  [[account.pool]]
  id = "leads"
  tier = "premium"
  model = "concurrent"
  quantity = 1
  price = "99.00"
  overage_price = "99.00"
  grace = "10m"
  grace_mode = "cumulative"
""")
ACCOUNT = CONTRACTS.accounts[0]
POOLS = {p.id: p for p in ACCOUNT.pools}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The daemon applies events up to now minus this window, in event-time order.
WINDOW = timedelta(minutes=2)
#: Two hours before the rollover of the period that starts 2026-11-15 00:00 New York time.
START = datetime(2026, 11, 15, 3, 0, tzinfo=UTC)
SETTINGS = load_settings({"broker": "mqtt://127.0.0.1:1", "tracker_clock": "events",
                          "reorder_window": "120s"})


def us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Ev:
    """An event as both the tracker (ts_us) and the rating (ts) read it."""

    id: str
    type: str
    user: str
    pool: str
    session: str | None
    ts: datetime
    account: str = "acme"

    @property
    def ts_us(self) -> int:
        return us(self.ts)

    def stored(self) -> Event:
        return Event(id=self.id, type=self.type, account=self.account,  # type: ignore[arg-type]
                     user=self.user, ts=self.ts, pool=self.pool, session=self.session, raw=b"{}")


def grace_remaining(rating: PoolRating, at: datetime) -> float:
    """The oracle of `meter_grace_remaining_seconds`, from the bill's x(t): the grace left to the
    excess level held just before `at` (the unbroken stretch, or the period's total time, at or
    above it), 0 once that level is billable, the whole grace with no excess."""
    at_us = us(at)
    steps = [(t, v) for t, v in zip(rating.excess.times.tolist(), rating.excess.values.tolist(),
                                    strict=True) if t < at_us]
    level = steps[-1][1] if steps else 0
    grace_us = rating.grace // timedelta(microseconds=1)
    if level == 0:
        return grace_us / 1e6
    if level <= rating.overage_seats:
        return 0.0
    ends = [t for t, _ in steps[1:]] + [at_us]
    if rating.grace_mode == "continuous":
        start = at_us
        for (t, v) in reversed(steps):
            if v < level:
                break
            start = t
        held = at_us - start
    else:
        held = sum(end - t for (t, v), end in zip(steps, ends, strict=True) if v >= level)
    return max(0, grace_us - held) / 1e6  # in whole microseconds, as the gauge is computed


async def _rebuilt(path: Path, events: list[Ev]) -> Tracker:
    async with await open_store(path) as store:
        await store.add([e.stored() for e in events])
        return await rebuild(store, CONTRACTS, SETTINGS, Metrics(CONTRACTS, CollectorRegistry()))


users = st.sampled_from(["u0", "u1", "u2", "u3", "u4"])
sessions = st.sampled_from([None, "a", "b"])
pools = st.sampled_from(sorted(POOLS))
kinds = st.sampled_from(["login", "login", "logout", "heartbeat"])


class LiveVersusRating(RuleBasedStateMachine):
    """The daemon's pipeline in miniature: store (dedupe) -> tracker, and the rating beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.tracker = Tracker(CONTRACTS, us(START - timedelta(days=40)))
        self.tracker.advance(us(self.watermark))
        self.store: dict[str, Ev] = {}
        self.ids = itertools.count()
        self.micro = itertools.count(1)
        self.high: dict[str, tuple[int, int, int]] = {}  # pool -> (period start, peak, billable)
        self.duplicates = 0
        self.restarts = 0
        self.settles = 0
        self.exact_checks = 0

    @property
    def watermark(self) -> datetime:
        return self.now - WINDOW

    def _stamp(self, back: timedelta) -> datetime:
        # Unique microseconds: no two events share an instant, so same-time ordering rules
        # (tested elsewhere) do not blur the comparison.
        return self.now - back + timedelta(microseconds=next(self.micro) % 1_000_000)

    def _deliver(self, event: Ev) -> None:
        """As the daemon does: store first; only an event new to the store reaches the tracker."""
        if event.id in self.store:
            self.duplicates += 1
            return
        self.store[event.id] = event
        self.tracker.apply(event)

    @initialize()
    def begin(self) -> None:
        self.tracker.advance(us(self.watermark))

    @rule(kind=kinds, pool=pools, user=users, session=sessions,
          back=st.integers(min_value=1, max_value=110))
    def event_in_window(self, kind: str, pool: str, user: str, session: str | None,
                        back: int) -> None:
        """An event up to 110 s old: within the reorder window, so it applies in order."""
        self._deliver(Ev(f"e{next(self.ids)}", kind, user, pool, session,
                         self._stamp(timedelta(seconds=back))))

    @rule(kind=kinds, pool=pools, user=users, session=sessions,
          back=st.integers(min_value=3, max_value=90))
    def late_event(self, kind: str, pool: str, user: str, session: str | None, back: int) -> None:
        """An event older than the watermark: the live view applies it at its clock and marks
        the account dirty until a settle replays it from the store."""
        ts = self._stamp(timedelta(minutes=back))
        self._deliver(Ev(f"e{next(self.ids)}", kind, user, pool, session, ts))
        assert ["acme"] == self.tracker.dirty_accounts()

    @precondition(lambda self: bool(self.store))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """The broker redelivers an event the store already holds: absorbed, nothing changes."""
        before = self.views()
        event = data.draw(st.sampled_from(sorted(self.store)))
        self._deliver(self.store[event])
        assert before == self.views()

    @rule(minutes=st.integers(min_value=1, max_value=180))
    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        self.tracker.advance(us(self.watermark))

    @rule(before=st.integers(min_value=0, max_value=5))
    def jump_to_rollover(self, before: int) -> None:
        """Jump to just before the current period's end (sessions may straddle it)."""
        end = monthly_period(ACCOUNT, self.now).end
        target = end - timedelta(minutes=before) + WINDOW
        if target > self.now:
            self.now = target
            self.tracker.advance(us(self.watermark))

    @rule()
    def settle(self) -> None:
        """The daemon idle for a moment: each account the tracker marks dirty (a late event, a
        timed-out session) is replayed from the store, as `meter serve`'s re-rater does."""
        for account in self.tracker.dirty_accounts():
            start = self.tracker.replay_start(account)
            mine = [e for e in self.store.values() if e.account == account]
            self.tracker.install(self.tracker.replay(account, [e for e in mine if e.ts_us >= start]))
        assert [] == self.tracker.dirty_accounts()
        self.settles += 1
        # Exact again: the high-water mark may have come down to the bill's.
        self.high.clear()

    @rule()
    def restart(self) -> None:
        """The daemon restarts: the live state is rebuilt from the store, as `meter serve` does."""
        self.restarts += 1
        # The real Store and rebuild; in memory, since a file adds only time to a thousand restarts.
        tracker = asyncio.run(_rebuilt(Path(":memory:"), list(self.store.values())))
        tracker.advance(us(self.watermark))
        self.tracker = tracker
        # Rebuilt from the log in order: exact, except sessions that timed out in the replay
        # (dirty until the next settle); earlier periods are never checked again.
        self.high.clear()

    def views(self) -> dict[str, PoolView]:
        return {v.pool: v for v in self.tracker.views()}

    @invariant()
    def gauges_are_never_negative(self) -> None:
        for v in self.tracker.views():
            assert 0 <= v.active_users
            assert 0 <= v.excess
            assert 0 <= v.peak_users
            assert v.active_users <= v.peak_users
            assert v.billable_overage is not None
            assert 0 <= v.billable_overage <= v.peak_users
            assert v.grace_remaining_s is not None
            assert 0.0 <= v.grace_remaining_s <= 600.0

    @invariant()
    def high_water_mark_never_falls_between_settles(self) -> None:
        """Incrementally the peak and billable overage only rise within a period; only a settle
        (or a restart) may bring them down to the bill's."""
        for v in self.tracker.views():
            start, peak, billable = self.high.get(v.pool, (v.period_start_us, 0, 0))
            if start == v.period_start_us:
                assert peak <= v.peak_users
                assert billable <= (v.billable_overage or 0)
            self.high[v.pool] = (v.period_start_us, v.peak_users, v.billable_overage or 0)

    @invariant()
    def live_view_equals_the_bill_unless_marked_dirty(self) -> None:
        """Whenever the tracker marks no account dirty (always right after a settle), users
        signed in, the excess, the peak and its time and the billable overage equal
        `rate_pool` over the stored events up to the watermark: late events and timed-out
        sessions included."""
        watermark = self.watermark
        period = monthly_period(ACCOUNT, watermark)
        if self.tracker.dirty_accounts() or watermark <= period.start:
            return
        timeout = ACCOUNT.session_timeout
        for pool_id, v in self.views().items():
            assert us(period.start) == v.period_start_us
            events = [e for e in self.store.values() if e.pool == pool_id
                      and period.start - timeout <= e.ts < watermark]
            rating = rate_pool(POOLS[pool_id], events, period, session_timeout=timeout,
                               account="acme", until=watermark)
            self.exact_checks += 1
            now_value = rating.concurrency.value_at(watermark - timedelta(microseconds=1))
            licensed = POOLS[pool_id].quantity
            peak_at = None if rating.peak_at is None or not rating.peak else us(rating.peak_at)
            assert (now_value, max(0, now_value - licensed), rating.peak, peak_at,
                    rating.overage_seats, grace_remaining(rating, watermark)) == (
                v.active_users, v.excess, v.peak_users, v.peak_at_us if v.peak_users else None,
                v.billable_overage, v.grace_remaining_s)

    def teardown(self) -> None:
        STATS["runs"] += 1
        STATS["duplicates"] += self.duplicates
        STATS["restarts"] += self.restarts
        STATS["settles"] += self.settles
        STATS["exact_checks"] += self.exact_checks


STATS = {"runs": 0, "duplicates": 0, "restarts": 0, "settles": 0, "exact_checks": 0}

LiveVersusRating.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


TestLiveVersusRating = LiveVersusRating.TestCase


def test_late_login_and_logout_never_lower_the_shown_peak() -> None:
    """The period peak shown on /metrics never falls within a period, late events included."""
    tracker = Tracker(CONTRACTS, us(START - timedelta(days=40)))
    tracker.advance(us(START))
    login = Ev("l", "login", "u0", "agents", None, START - timedelta(minutes=3))
    logout = Ev("o", "logout", "u0", "agents", None, START - timedelta(minutes=3, microseconds=-1))
    tracker.apply(login)
    shown = next(v for v in tracker.views() if v.pool == "agents").peak_users
    tracker.apply(logout)
    assert (1, 1) == (shown, next(v for v in tracker.views() if v.pool == "agents").peak_users)


# --- the timeout boundary: only a silence longer than session_timeout closes a session --------

SHORT = parse_contracts(
    """
[[account]]
id = "acme"
timezone = "UTC"
currency = "USD"
billing = "monthly"
anchor = "2026-11-01"
policy = "prorate"
session_timeout = "10m"
  [[account.pool]]
  id = "agents"
  tier = "premium"
  model = "concurrent"
  quantity = 13
  price = "149.00"
  overage_price = "149.00"
""")
SHIFT = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)


def _agents(tracker: Tracker) -> PoolView:
    return next(v for v in tracker.views() if v.pool == "agents")


def _live_and_billed(events: list[Ev], watermark: datetime) -> tuple[int, int, int, int]:
    """(users signed in now, period peak) from the tracker and then from `rate_pool` over the
    same events, at `watermark`, after settling any dirty account as the daemon does."""
    tracker = Tracker(SHORT, us(SHIFT - timedelta(days=1)))
    tracker.apply_all(sorted(events, key=lambda e: e.ts_us))
    tracker.advance(us(watermark))
    for account in tracker.dirty_accounts():
        start = tracker.replay_start(account)
        tracker.install(tracker.replay(account, [e for e in events if e.ts_us >= start]))
    view = _agents(tracker)
    account = SHORT.accounts[0]
    period = monthly_period(account, watermark)
    rating = rate_pool(account.pools[0], events, period, session_timeout=account.session_timeout,
                       account="acme", until=watermark)
    now = rating.concurrency.value_at(watermark - timedelta(microseconds=1))
    return view.active_users, view.peak_users, now, rating.peak


def test_agents_heartbeating_every_timeout_stay_signed_in_live_and_billed() -> None:
    """Issue 16: 13 agents heartbeating every 10 minutes with a 10-minute timeout stay signed in,
    on the live view (no timer fires, nothing is dirty) and in the bill alike."""
    events = [Ev(f"{i}-{m}", "heartbeat" if m else "login", f"agent{i}", "agents", "s",
                 SHIFT + timedelta(minutes=m))
              for i in range(13) for m in range(0, 480, 10)]
    tracker = Tracker(SHORT, us(SHIFT - timedelta(days=1)))
    tracker.apply_all(events)
    tracker.advance(us(SHIFT + timedelta(minutes=480)))  # exactly 10 min after the last beat
    assert (13, []) == (_agents(tracker).active_users, tracker.dirty_accounts())
    assert (13, 13, 13, 13) == _live_and_billed(events, SHIFT + timedelta(minutes=480))


@pytest.mark.parametrize(("silence", "expected"), [
    # (silence after the last heartbeat at the watermark, (live now, live peak, billed now, peak))
    (timedelta(minutes=10), (1, 1, 1, 1)),                              # exactly: still open
    (timedelta(minutes=10, microseconds=1), (0, 1, 0, 1)),              # longer: closed
    (timedelta(minutes=25), (0, 1, 0, 1)),
])
def test_heartbeat_exactly_at_the_timeout_keeps_the_session(silence: timedelta,
                                                             expected: tuple[int, ...]) -> None:
    """A heartbeat exactly `session_timeout` after the login keeps the session; the live view
    drops it only once the silence after that heartbeat is longer than the timeout, and then
    (replayed) equals the bill, which closes it at the heartbeat."""
    events = [Ev("l", "login", "ann", "agents", "s", SHIFT),
              Ev("h", "heartbeat", "ann", "agents", "s", SHIFT + timedelta(minutes=10))]
    assert expected == _live_and_billed(events, SHIFT + timedelta(minutes=10) + silence)


def test_a_late_heartbeat_exactly_the_timeout_old_still_opens() -> None:
    """A late heartbeat exactly `session_timeout` older than the clock still shows its session
    (its silence is not longer than the timeout); one a microsecond older opens nothing."""
    for age, expected in ((timedelta(minutes=10), 1), (timedelta(minutes=10, microseconds=1), 0)):
        tracker = Tracker(SHORT, us(SHIFT - timedelta(days=1)))
        tracker.advance(us(SHIFT))
        tracker.apply(Ev("h", "heartbeat", "ann", "agents", "s", SHIFT - age))
        assert expected == _agents(tracker).active_users
