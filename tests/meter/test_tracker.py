"""The live tracker: session rules, grace clocks, period rollover, licences in force, add-ons."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.tracker import KIND_ORDER, PoolView, Tracker, licensed_schedule, quantity_at
from rating.contracts import Contracts, parse_contracts
from rating.seatchanges import apply_orders
from rating.sessions import build_sessions
from rating.usage import UsageEvent
from tests.contracts_toml import account, addon, order, pool
from tests.contracts_toml import contracts as contracts_toml


def _contracts(*, session_timeout: str = "12h", agents_grace: str = "30m") -> str:
    """acme's pools, add-on and orders; the oracle tests widen the timeout and shorten a grace."""
    return contracts_toml(account(
        "acme", timezone="America/New_York", session_timeout=session_timeout, pools=[
            pool("agents", tier="elite", model="concurrent", quantity=2, price="149.00",
                 overage_price="149.00", grace=agents_grace),
            pool("leads", tier="premium", model="concurrent", quantity=1, price="99.00",
                 overage_price="99.00", grace="30m", grace_mode="cumulative"),
        ], addons=[addon("wfm", quantity=1, price="25.00")], orders=[
            order("2026-11-10T00:00:00Z", pool="agents", quantity=4),
            order("2026-11-20T00:00:00Z", pool="agents", quantity=3)]))


CONTRACTS = _contracts()

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)
MIN = 60_000_000


def us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Ev:
    type: str
    user: str
    ts_us: int
    session: str | None = None
    pool: str | None = "agents"
    account: str = "acme"


@pytest.fixture
def contracts() -> Contracts:
    return parse_contracts(CONTRACTS)


def view(tracker: Tracker, pool: str = "agents") -> PoolView:
    tracker.flush()
    return next(v for v in tracker.views() if v.pool == pool)


def at(minutes: float) -> int:
    return us(T0) + int(minutes * MIN)


def test_user_on_two_devices_counts_once(contracts: Contracts) -> None:
    """Two open sessions of one user count one user; closing one leaves the user counted."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "ann", at(0), "phone"))
    t.apply(Ev("login", "ann", at(1), "desk"))
    assert 1 == view(t).active_users
    t.apply(Ev("logout", "ann", at(2), "phone"))
    assert 1 == view(t).active_users
    t.apply(Ev("logout", "ann", at(3), "desk"))
    assert 0 == view(t).active_users


@pytest.mark.parametrize(("events", "expected_active", "expected_unknown"), [
    # a logout without a session id closes all of the user's sessions
    ([("login", "a", 0, "s1"), ("login", "a", 1, "s2"), ("logout", "a", 2, None)], 0, 0),
    # a repeated login of an open session changes nothing
    ([("login", "a", 0, "s1"), ("login", "a", 1, "s1"), ("logout", "a", 2, "s1")], 0, 0),
    # a heartbeat without a login opens a session (a lost login)
    ([("heartbeat", "a", 0, None)], 1, 0),
    # a heartbeat naming a session opens that session; its logout closes it
    ([("heartbeat", "a", 0, "s9"), ("logout", "a", 1, "s9")], 0, 0),
    # a logout of an unknown session is counted and ignored
    ([("login", "a", 0, "s1"), ("logout", "a", 1, "zz")], 1, 1),
    # a logout of a user with nothing open is counted; the count never goes negative
    ([("logout", "a", 0, None), ("logout", "b", 1, "s1")], 0, 2),
])
def test_session_rules(contracts: Contracts, events: list[tuple[str, str, int, str | None]],
                       expected_active: int, expected_unknown: int) -> None:
    """DESIGN section 2 session rules, event by event."""
    t = Tracker(contracts, at(0))
    for kind, user, minute, session in events:
        t.apply(Ev(kind, user, at(minute), session))
    v = view(t)
    assert expected_active == v.active_users
    assert expected_unknown == v.unknown_logouts


def test_session_times_out_after_session_timeout_without_events(contracts: Contracts) -> None:
    """A session with no event for longer than 12 h closes (at exactly 12 h it is still open);
    a heartbeat before that keeps it open."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "ann", at(0), "s"))
    t.apply(Ev("login", "bob", at(0), "s"))
    t.apply(Ev("heartbeat", "bob", at(600), "s"))
    t.advance(at(720))
    assert 2 == view(t).active_users
    t.advance(at(720) + 1)
    assert 1 == view(t).active_users  # ann timed out; bob's heartbeat moved his timeout
    t.advance(at(600 + 720) + 1)
    assert 0 == view(t).active_users


def test_continuous_grace_clock_and_billable_overage(contracts: Contracts) -> None:
    """Three users on two licences: the grace clock runs down from 30 min; exactly 30:00 is
    free, 30:01 makes one overage seat billable; once billable, that level shows 0 for the rest
    of the period (it is already on the bill)."""
    t = Tracker(contracts, at(0))
    for user in ("a", "b", "c"):
        t.apply(Ev("login", user, at(0), "s"))
    v = view(t)
    assert (3, 2, 1) == (v.active_users, v.licensed, v.excess)
    assert 1800.0 == v.grace_remaining_s
    t.advance(at(10))
    assert 1200.0 == view(t).grace_remaining_s
    t.advance(at(30))
    v = view(t)
    assert (0.0, 0) == (v.grace_remaining_s, v.billable_overage)
    t.advance(at(30) + 1_000_000)
    assert 1 == view(t).billable_overage
    t.apply(Ev("logout", "c", at(40), "s"))
    v = view(t)
    assert (0, 1800.0, 1) == (v.excess, v.grace_remaining_s, v.billable_overage)
    t.apply(Ev("login", "c", at(50), "s"))
    t.advance(at(55))
    assert (1, 0.0) == (view(t).excess, view(t).grace_remaining_s)


def test_continuous_grace_counts_each_level(contracts: Contracts) -> None:
    """Level 2 billable needs x >= 2 unbroken for longer than grace; level 1 may be older."""
    t = Tracker(contracts, at(0))
    for user in ("a", "b", "c"):
        t.apply(Ev("login", user, at(0), "s"))
    t.apply(Ev("login", "d", at(20), "s"))
    t.advance(at(40))
    v = view(t)
    assert (2, 1, 600.0) == (v.excess, v.billable_overage, v.grace_remaining_s)
    t.advance(at(51))
    assert (2, 0.0) == (view(t).billable_overage, view(t).grace_remaining_s)


def test_continuous_grace_bills_every_level_held_past_it_among_many(
        contracts: Contracts) -> None:
    """Forty users over two licences, one more each minute, and a dip in the middle: at each
    instant the billable overage is the number of levels held unbroken longer than the grace,
    and the grace left is the top level's."""
    t = Tracker(contracts, at(0))
    for i in range(40):  # user i signs in at minute i: excess level k is reached at minute k+1
        t.apply(Ev("login", f"u{i:02d}", at(i), "s"))
    # At minute 39 (the newest event): levels 1..38 held, those reached before minute 9 for
    # longer than 30 min.
    assert (38, 7) == (view(t).excess, view(t).billable_overage)
    t.advance(at(50) + 1_000_000)  # levels 1..19 (reached by minute 20) past 30 min
    assert 19 == view(t).billable_overage
    for i in range(30, 40):  # ten sign out at minute 51: levels 29..38 end
        t.apply(Ev("logout", f"u{i:02d}", at(51), "s"))
    t.apply(Ev("login", "u30", at(52), "s"))  # level 29 again, a new stretch from minute 52
    t.advance(at(59) + 1_000_000)  # levels 1..28 past 30 min; 29 held 7 min 1 s
    v = view(t)
    assert (29, 28, 1379.0) == (v.excess, v.billable_overage, v.grace_remaining_s)
    t.advance(at(82) + 1_000_000)
    assert (29, 0.0) == (view(t).billable_overage, view(t).grace_remaining_s)


def test_cumulative_grace_adds_up_separate_stretches(contracts: Contracts) -> None:
    """Cumulative grace: 10-minute excesses add up; at 30 min in total the level is billable."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "a", at(0), "s", pool="leads"))
    for start in (0, 20):
        t.apply(Ev("login", "b", at(start), "s", pool="leads"))
        t.apply(Ev("logout", "b", at(start + 10), "s", pool="leads"))
    t.apply(Ev("login", "b", at(40), "s", pool="leads"))
    t.advance(at(45))
    v = view(t, "leads")
    assert (1, 0, 300.0) == (v.excess, v.billable_overage, v.grace_remaining_s)
    t.advance(at(50))
    v = view(t, "leads")
    assert (1, 0.0) == (v.billable_overage, v.grace_remaining_s)


def test_same_instant_handover_is_not_a_peak(contracts: Contracts) -> None:
    """A logout and a login at the same time count as a handover, in either arrival order."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "a", at(0), "s"))
    t.apply(Ev("login", "b", at(0), "s"))
    t.apply(Ev("login", "c", at(5), "s"))  # arrives before the logout at the same instant
    t.apply(Ev("logout", "a", at(5), "s"))
    t.advance(at(10))
    v = view(t)
    assert (2, 2, 0) == (v.peak_users, v.active_users, v.excess)


def test_same_instant_handover_keeps_the_grace_stretch(contracts: Contracts) -> None:
    """An excess that dips and returns at the same instant (one user out, another in) is one
    unbroken stretch: it becomes billable 30 min after it began, not after the handover."""
    t = Tracker(contracts, at(0))
    for user in ("a", "b", "c"):
        t.apply(Ev("login", user, at(0), "s"))
    t.apply(Ev("logout", "c", at(5), "s"))
    t.apply(Ev("login", "d", at(5), "s"))
    t.advance(at(20))
    assert 600.0 == view(t).grace_remaining_s
    t.advance(at(30) + 1)
    assert 1 == view(t).billable_overage


def test_period_rolls_over_at_local_midnight_on_anchor_day(contracts: Contracts) -> None:
    """November's peak is kept until 1 Dec 00:00 New York (05:00 UTC); then the new period's
    peak starts from the users still signed in."""
    start = us(datetime(2026, 11, 30, 20, 0, tzinfo=UTC))
    t = Tracker(contracts, start)
    for user in ("a", "b", "c"):
        t.apply(Ev("login", user, start, "s"))
    t.apply(Ev("logout", "c", start + 5 * MIN, "s"))
    t.advance(us(datetime(2026, 12, 1, 4, 59, tzinfo=UTC)))
    v = view(t)
    assert (3, us(datetime(2026, 11, 1, 4, 0, tzinfo=UTC))) == (v.peak_users, v.period_start_us)
    t.advance(us(datetime(2026, 12, 1, 5, 0, tzinfo=UTC)))
    v = view(t)
    assert (2, us(datetime(2026, 12, 1, 5, 0, tzinfo=UTC))) == (v.peak_users, v.period_start_us)
    assert 0 == v.billable_overage


def test_licences_in_force_follow_orders(contracts: Contracts) -> None:
    """A raise counts from its time; a lowering from the end of the term (here the month)."""
    acme = contracts.accounts[0]
    schedule = licensed_schedule(apply_orders(acme), "agents")
    assert 2 == quantity_at(schedule, us(datetime(2026, 11, 9, 23, 59, tzinfo=UTC)))
    assert 4 == quantity_at(schedule, us(datetime(2026, 11, 10, tzinfo=UTC)))
    assert 4 == quantity_at(schedule, us(datetime(2026, 11, 30, tzinfo=UTC)))
    assert 3 == quantity_at(schedule, us(datetime(2026, 12, 1, 5, 0, tzinfo=UTC)))
    t = Tracker(contracts, us(datetime(2026, 11, 9, 23, 0, tzinfo=UTC)))
    for user in "abc":
        t.apply(Ev("login", user, us(datetime(2026, 11, 9, 23, 0, tzinfo=UTC)), "s"))
    assert 1 == view(t).excess
    t.advance(us(datetime(2026, 11, 10, tzinfo=UTC)))
    v = view(t)
    assert (4, 0) == (v.licensed, v.excess)


def test_late_events_never_rewrite_the_past(contracts: Contracts) -> None:
    """A late logout older than the session's last event closes nothing; a late login that is
    already a session timeout old opens nothing."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "a", at(10), "s"))
    t.apply(Ev("logout", "a", at(5), "s"))
    assert 1 == view(t).active_users
    t.advance(at(800))
    t.apply(Ev("login", "b", at(10), "s"))
    assert 0 == view(t).active_users


def test_addon_shortfall_for_elite_concurrent(contracts: Contracts) -> None:
    """Five users seen on two Elite concurrent licences need three wfm and three qm add-ons;
    one wfm is bought, so wfm is short two and qm three."""
    t = Tracker(contracts, at(0))
    for i, user in enumerate("abcde"):
        t.apply(Ev("login", user, at(i), "s"))
        t.apply(Ev("logout", user, at(i) + 1, "s"))
    t.flush()
    shortfall = {(a.addon, a.required, a.purchased, a.shortfall) for a in t.addon_views()}
    assert {("wfm", 3, 1, 2), ("qm", 3, 0, 3)} == shortfall


def test_pool_resolution_without_pool(contracts: Contracts) -> None:
    """An event without a pool in an account with two concurrent pools cannot be placed: counted
    as unresolved, never guessed."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "a", at(0), "s", pool=None))
    t.flush()
    assert 1 == t.unresolved
    assert [0, 0] == [v.active_users for v in t.views()]


def test_events_within_the_watermark_apply_in_event_time_order(contracts: Contracts) -> None:
    """Buffered events are applied by event time whatever their arrival order: a short session
    that arrives logout-first still makes the peak; a late one (behind the watermark) cannot."""
    t = Tracker(contracts, at(0))
    t.apply(Ev("login", "a", at(1), "s"))
    t.apply(Ev("logout", "b", at(3), "s"))
    t.apply(Ev("login", "b", at(2), "s"))
    t.advance(at(5))
    assert (2, 1, 0) == (view(t).peak_users, view(t).active_users, t.pending)
    t.apply(Ev("login", "c", at(6), "s"))
    assert 1 == t.pending
    t.apply(Ev("login", "d", at(4), "s"))  # behind the watermark: applied now
    t.apply(Ev("logout", "d", at(4) + 1, "s"))
    t.advance(at(7))
    v = view(t)
    assert (2, 2) == (v.active_users, v.peak_users)


def test_heartbeats_keep_one_timer_per_session(contracts: Contracts) -> None:
    """A session refreshed every minute for a day keeps a single slot in the expiry order
    (bounded memory) and still times out 12 h after its last heartbeat."""
    t = Tracker(contracts, at(0))
    for minute in range(0, 24 * 60, 1):
        t.apply(Ev("heartbeat", "ann", at(minute), "s"))
        t.advance(at(minute))
    state = t._pools["acme", "agents"]
    assert (1, 1, state.oldest) == (len(state.key), state.count, state.newest)
    t.advance(at(24 * 60 - 1 + 720))
    assert 1 == view(t).active_users
    t.advance(at(24 * 60 - 1 + 720) + 1)
    assert 0 == view(t).active_users


# --- against the rating's session rules ---------------------------------------------------------

ORACLE_CONTRACTS = _contracts(session_timeout="1000h", agents_grace="10m")


def _oracle(events: list[UsageEvent], until: datetime, licensed: int,
            grace: timedelta, mode: str = "continuous") -> tuple[int, int, int]:
    """(users signed in at `until`, peak c(t), highest billable level: held unbroken longer than
    grace, or held at least grace in total), from the rating's sessions by brute force over
    every stretch between event times."""
    log = build_sessions(events, timedelta(hours=1000), until)
    spans = [(s.user, s.start, s.end or until) for s in log.sessions]
    times = sorted({e.ts for e in events} | {until})
    counts = []  # (start, end, c) of each stretch with c constant
    for start, end in itertools.pairwise(times):
        users = {u for u, s, e in spans if s <= start < e}
        counts.append((start, end, len(users)))
    peak = max((c for _, _, c in counts), default=0)
    billable = 0
    for level in range(1, peak + 1):
        run_start, total = None, timedelta(0)
        for start, end, c in counts:
            if c - licensed >= level:
                run_start = start if run_start is None else run_start
                total += end - start
                if (end - run_start > grace) if mode == "continuous" else (total >= grace):
                    billable = level
            else:
                run_start = None
    active = len({u for u, s, e in spans if e == until and s < until})
    return active, peak, billable


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["login", "logout", "heartbeat"]),
                          st.sampled_from(["u0", "u1", "u2", "u3", "u4"]),
                          st.sampled_from([None, "s1", "s2"])), max_size=40))
def test_tracker_agrees_with_the_rating_sessions(
        raw: list[tuple[int, str, str, str | None]]) -> None:
    """Events in any arrival order, applied up to a watermark past them all, give the same users
    signed in, peak and billable overage (continuous and cumulative grace) as a brute force over
    the rating's sessions (timeouts out of reach, since the live view closes timed-out sessions later)."""
    oracle_contracts = parse_contracts(ORACLE_CONTRACTS)
    events = [UsageEvent(f"{i:03d}", kind, "acme", user,  # type: ignore[arg-type]
                         T0 + timedelta(minutes=m), "agents", session)
              for i, (m, kind, user, session) in enumerate(raw)]
    until = T0 + timedelta(minutes=40)
    tracker = Tracker(oracle_contracts, us(T0))
    # Arrival newest first. The watermark orders by (time, kind, arrival) and the rating by
    # (time, kind, id), so same-time same-kind events arrive in id order.
    arrival = sorted(events, key=lambda e: (-us(e.ts), -KIND_ORDER[e.type], e.id))
    for e in arrival:
        tracker.apply(Ev(e.type, e.user, us(e.ts), e.session))
    for e in arrival:  # the same stream on the cumulative-grace pool
        tracker.apply(Ev(e.type, e.user, us(e.ts), e.session, pool="leads"))
    tracker.advance(us(until))
    views = {v.pool: v for v in tracker.views()}
    v = views["agents"]
    expected = _oracle(events, until, licensed=2, grace=timedelta(minutes=10))
    assert expected == (v.active_users, v.peak_users, v.billable_overage)
    v = views["leads"]
    expected = _oracle(events, until, licensed=1, grace=timedelta(minutes=30), mode="cumulative")
    assert expected == (v.active_users, v.peak_users, v.billable_overage)


PACKS_AND_NAMED = contracts_toml(account(
    "packs", billing="annual", policy="packs", pools=[
        pool("agents", tier="premium", model="concurrent", quantity=10, price="149.00",
             overage_price="149.00"),
        pool("desk", tier="essentials", model="named", quantity=1, price="49.00"),
    ], orders=[order("2026-11-10T00:00:00Z", pool="agents", quantity=13)]))


def test_refused_order_changes_no_live_licence() -> None:
    """The tracker takes E(t) from the seat ledger: 10 -> 13 under packs is not a whole pack,
    so the bill refuses it and the live gauge keeps 10, as the report does."""
    contracts = parse_contracts(PACKS_AND_NAMED)
    ledger = apply_orders(contracts.accounts[0])
    assert ["agents"] == [r.target for r in ledger.refused]
    t = Tracker(contracts, us(datetime(2026, 11, 10, 1, tzinfo=UTC)))
    t.advance(us(datetime(2026, 11, 10, 2, tzinfo=UTC)))
    agents = next(v for v in t.views() if v.pool == "agents")
    assert 10 == agents.licensed


def test_same_instant_seat_handover_then_login_is_licensed() -> None:
    """Unassign a, assign b and b's login at one instant: the seat is handed over first (the
    rating's order), so nothing is refused and b is assigned and active."""
    contracts = parse_contracts(PACKS_AND_NAMED)
    t0 = us(datetime(2026, 11, 12, 9, tzinfo=UTC))
    t = Tracker(contracts, t0 - MIN)
    t.apply(Ev("assign", "a", t0 - MIN, pool="desk", account="packs"))
    t.advance(t0)
    for ev in (Ev("login", "b", t0, "s", pool="desk", account="packs"),
               Ev("assign", "b", t0, pool="desk", account="packs"),
               Ev("unassign", "a", t0, pool="desk", account="packs")):
        t.apply(ev)
    t.advance(t0 + MIN)
    desk = next(v for v in t.views() if v.pool == "desk")
    assert (0, 1, 1) == (desk.refused_assigns, desk.assigned, desk.active_users)


def test_seat_events_without_pool_go_to_the_only_named_pool() -> None:
    """`Account.pool_for`: an assign and unassign without a pool are the only named pool's (the
    tracker once dropped them as unresolved); the user's logins then go to `desk`, others' to the
    single concurrent pool."""
    contracts = parse_contracts(PACKS_AND_NAMED)
    t0 = us(datetime(2026, 11, 12, 9, tzinfo=UTC))
    t = Tracker(contracts, t0 - MIN)
    for ev in (Ev("assign", "a", t0, pool=None, account="packs"),
               Ev("login", "a", t0 + MIN, "s", pool=None, account="packs"),
               Ev("login", "b", t0 + MIN, "s", pool=None, account="packs")):
        t.apply(ev)
    t.advance(t0 + 2 * MIN)
    counts = {v.pool: (v.assigned, v.active_users) for v in t.views()}
    assert ({"agents": (0, 1), "desk": (1, 1)}, 0) == (counts, t.unresolved)
    t.apply(Ev("unassign", "a", t0 + 3 * MIN, pool=None, account="packs"))
    t.apply(Ev("login", "a", t0 + 4 * MIN, "t", pool=None, account="packs"))
    t.advance(t0 + 5 * MIN)
    counts = {v.pool: (v.assigned, v.active_users) for v in t.views()}
    assert ({"agents": (0, 2), "desk": (0, 1)}, 0) == (counts, t.unresolved)


ONLY_NAMED = contracts_toml(
    account("solo", pools=[pool("desk", tier="essentials", model="named", quantity=1, price="49.00")]),
    account("twin", pools=[pool(p, tier="essentials", model="named", quantity=1, price="49.00")
                           for p in ("n1", "n2")]),
)


def test_login_without_seat_in_the_only_named_pool_is_unlicensed_use_there() -> None:
    """With no concurrent pool and one named pool, a pool-less login by a user without a seat is
    that pool's (unlicensed use, as the bill counts it); with two named pools it is unresolved
    unless the user holds a seat, and an assign without a pool is unresolved."""
    t0 = us(datetime(2026, 11, 12, 9, tzinfo=UTC))
    t = Tracker(parse_contracts(ONLY_NAMED), t0 - MIN)
    for ev in (Ev("login", "x", t0, "s", pool=None, account="solo"),
               Ev("login", "y", t0, "s", pool=None, account="twin"),
               Ev("assign", "z", t0, pool=None, account="twin"),
               Ev("assign", "w", t0, pool="n2", account="twin"),
               Ev("login", "w", t0 + MIN, "s", pool=None, account="twin")):
        t.apply(ev)
    t.advance(t0 + 2 * MIN)
    counts = {v.pool: (v.assigned, v.active_users) for v in t.views()}
    assert ({"desk": (0, 1), "n1": (0, 0), "n2": (1, 1)}, 2) == (counts, t.unresolved)


TWO_TENANTS = contracts_toml(*(
    account(a, pools=[pool("desk", tier="premium", model="concurrent", quantity=1, price="99.00",
                           overage_price="99.00", grace="30m")])
    for a in ("a", "b")))
WINDOW = 2_000_000  # the daemon's default reorder window


def _b_gauges(t: Tracker) -> tuple[object, ...]:
    v = next(v for v in t.views() if v.account == "b")
    return (v.active_users, v.peak_users, v.peak_at_us, v.excess, v.grace_remaining_s,
            v.billable_overage)


def _tenant_b_day(*, skewed_a: bool, clock: str = "wall") -> list[tuple[object, ...]]:
    """Account b's on-time logins and logout, advanced as the daemon does after each step
    (`advance_each` with the wall clock, or with tracker_clock=events none); optionally
    account a first sends an event 4 minutes ahead of the wall clock."""
    t = Tracker(parse_contracts(TWO_TENANTS), at(0))
    if skewed_a:
        t.apply(Ev("login", "x", at(1) + 4 * MIN, "s", pool="desk", account="a"))
    gauges = []
    for minute, event in ((1, Ev("login", "b1", at(1), "s", pool="desk", account="b")),
                          (2, Ev("login", "b2", at(2), "s", pool="desk", account="b")),
                          (5, None),
                          (6, Ev("logout", "b1", at(6), "s", pool="desk", account="b")),
                          (8, None)):
        if event is not None:
            t.apply(event)
        t.advance_each(at(minute) if clock == "wall" else None, WINDOW)
        gauges.append(_b_gauges(t))
    return gauges


def test_one_accounts_future_event_does_not_move_another_accounts_clock() -> None:
    """Account a's event 4 minutes ahead of the wall clock (within max_future) moves a's
    watermark only: b's on-time sequence gives exactly the gauges it gives without it (active
    users, period peak and its time, excess, grace remaining, billable overage)."""
    expected = [
        (0, 0, at(0), 0, 1800.0, 0),  # b1's login waits for the reorder window
        (1, 1, at(1), 0, 1800.0, 0),
        (2, 2, at(2), 1, 1800.0 - (3 * 60 - 2), 0),  # excess since at(2): 178 s of grace used
        (2, 2, at(2), 1, 1800.0 - (4 * 60 - 2), 0),  # the logout at at(6) not yet applied
        (1, 2, at(2), 0, 1800.0, 0),
    ]
    assert expected == _tenant_b_day(skewed_a=False)
    assert expected == _tenant_b_day(skewed_a=True)


def test_each_account_has_its_own_watermark() -> None:
    """With the wall clock an account's watermark is max(wall, its newest event) minus the
    window; with the events clock its newest event minus the window; `advance` moves all, and
    `accounts` limits `advance_each` to those."""
    t = Tracker(parse_contracts(TWO_TENANTS), at(0))
    t.apply(Ev("login", "x", at(5), "s", pool="desk", account="a"))
    t.apply(Ev("login", "y", at(1), "s", pool="desk", account="b"))
    t.advance_each(None, WINDOW)
    assert (at(5) - WINDOW, at(1) - WINDOW, 2) == (t.watermark_of("a"), t.watermark_of("b"),
                                                    t.pending)
    t.advance_each(at(3), WINDOW)
    assert (at(5) - WINDOW, at(3) - WINDOW, 1) == (t.watermark_of("a"), t.watermark_of("b"),
                                                    t.pending)
    t.advance_each(at(2), WINDOW)  # never backwards
    assert (at(5) - WINDOW, at(3) - WINDOW) == (t.watermark_of("a"), t.watermark_of("b"))
    t.advance(at(6))
    assert (at(6), at(6), 0) == (t.watermark_of("a"), t.watermark_of("b"), t.pending)
    assert {"a": at(6), "b": at(6)} == {v.account: v.at_us for v in t.views()}
    t.advance_each(at(9), WINDOW, accounts=["b", "not-an-account"])  # b alone; unknown skipped
    assert (at(6), at(9) - WINDOW) == (t.watermark_of("a"), t.watermark_of("b"))


def test_events_clock_is_per_account_too() -> None:
    """With tracker_clock=events, a's future event does not move b: b's gauges are the same,
    the reorder window trailing b's own newest event."""
    expected = [
        (0, 0, at(0), 0, 1800.0, 0),
        (1, 1, at(1), 0, 1800.0, 0),
        (1, 1, at(1), 0, 1800.0, 0),  # no b event: b's clock stays at at(2) - 2 s
        (2, 2, at(2), 1, 1800.0 - (4 * 60 - 2), 0),
        (2, 2, at(2), 1, 1800.0 - (4 * 60 - 2), 0),
    ]
    assert expected == _tenant_b_day(skewed_a=False, clock="events")
    assert expected == _tenant_b_day(skewed_a=True, clock="events")


def test_a_late_event_marks_the_account_dirty_and_a_replay_makes_it_exact(
        contracts: Contracts) -> None:
    """Three users on two licences for 40 minutes, the logins arriving late: applied at the
    clock they overlap for no time (peak 0, nothing billable) and mark acme dirty; the replay
    from the stored events shows what the bill shows: peak 3 from the third login, billable 1.
    An event stored after the replay read its own is applied with `install(since=...)`."""
    t = Tracker(contracts, at(0))
    t.advance(at(120))
    stored = [Ev("login", u, at(10 + i), "s") for i, u in enumerate("abc")]
    stored += [Ev("logout", u, at(55), "s") for u in "abc"]
    for e in stored:
        t.apply(e)
    assert (0, 0, ["acme"]) == (view(t).peak_users, view(t).billable_overage,
                                t.dirty_accounts())
    replay = t.replay("acme", stored)
    later = Ev("login", "d", at(121), "s")
    t.apply(later)  # the live tracker took it while the replay ran
    t.install(replay, [later])
    t.advance(at(122))
    v = view(t)
    assert (3, at(12), 1, 1, []) == (v.peak_users, v.peak_at_us, v.billable_overage,
                                     v.active_users, t.dirty_accounts())


def test_a_timed_out_session_is_closed_at_its_last_event_by_the_replay(
        contracts: Contracts) -> None:
    """A login with a heartbeat 30 minutes later and then silence: live, the user counts until the
    12-hour timeout passes and the account turns dirty; the replay closes the session at its
    last event, as the bill does, so three users overlap only until then."""
    t = Tracker(contracts, at(0))
    stored = [Ev("login", "a", at(0), "s"), Ev("heartbeat", "a", at(30), "s"),
              Ev("login", "b", at(10), "s"), Ev("login", "c", at(20), "s"),
              Ev("logout", "b", at(100), "s"), Ev("logout", "c", at(100), "s")]
    for e in stored:
        t.apply(e)
    t.advance(at(12 * 60 + 31))
    assert (3, 1, ["acme"]) == (view(t).peak_users, view(t).billable_overage, t.dirty_accounts())
    t.install(t.replay("acme", stored))
    v = view(t)
    # c = 3 over [20, 30) only: 10 minutes over the licence, within the 30-minute grace.
    assert (3, at(20), 0, 0, []) == (v.peak_users, v.peak_at_us, v.billable_overage,
                                     v.active_users, t.dirty_accounts())


# --- the slot arrays against a dict of sessions -------------------------------------------------

SLOT_CONTRACTS = _contracts(session_timeout="1h")
HOUR = 60 * MIN
#: Two hours before acme's month end (America/New_York), so streams cross a period rollover.
SLOT_START = us(datetime(2026, 12, 1, 3, 0, tzinfo=UTC))


class _DictPool:
    """The session rules kept the obvious way: {(user, key): last event}, timeouts applied by
    scanning every session, the rollover before the timeouts due at the same instant."""

    def __init__(self, clock: int, period_end: int) -> None:
        self.open: dict[tuple[str, str], int] = {}
        self.seen: set[str] = set()
        self.clock, self.period_start, self.period_end = clock, 0, period_end
        self.unknown = 0

    def _to(self, until: int) -> None:
        while True:
            due = min((last + HOUR + 1 for last in self.open.values()), default=None)
            if self.period_end <= until and (due is None or self.period_end <= due):
                self.period_start, self.period_end = self.period_end, self.period_end + 31 * 24 * HOUR
                self.seen = {u for u, _ in self.open}
            elif due is not None and due <= until:
                self.open = {k: v for k, v in self.open.items() if v + HOUR + 1 > due}
            else:
                break
        self.clock = max(self.clock, until)

    def apply(self, kind: str, user: str, session: str | None, ts: int) -> None:
        self._to(ts)
        if kind == "logout":
            keys = [k for k, last in self.open.items() if k[0] == user and last <= ts
                    and (session is None or k[1] == session)]
            self.unknown += not keys
            for k in keys:
                del self.open[k]
            return
        if self.clock - ts > HOUR:
            return
        keys = [k for k in self.open if k[0] == user] if kind == "heartbeat" and session is None \
            else []
        for k in keys or [(user, session or "")]:
            self.open[k] = max(self.open.get(k, ts), ts)
        if ts >= self.period_start:
            self.seen.add(user)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-90, 50), st.sampled_from(["login", "logout", "heartbeat"]),
                          st.sampled_from("abcd"), st.sampled_from([None, "", "s1", "s2", "\ud800"])),
                max_size=60))
def test_slot_arrays_keep_the_sessions_a_dict_would(
        steps: list[tuple[int, str, str, str | None]]) -> None:
    """Events mostly in order, some up to 90 minutes late (behind the clock: filed back into
    the expiry order), across a month end: after every event the pool's open sessions, users
    counted and seen, and unknown logouts equal a dict of sessions, its sessions are listed
    oldest last event first, and a released user or session slot holds nothing."""
    contracts = parse_contracts(SLOT_CONTRACTS)
    state = Tracker(contracts, SLOT_START)._pools["acme", "agents"]
    oracle = _DictPool(SLOT_START, state.period_end)
    at_ = SLOT_START
    for minutes, kind, user, session in steps:
        at_ += max(minutes, 0) * MIN
        ts = at_ + min(minutes, 0) * MIN
        state.apply(kind, user, session, ts)
        oracle.apply(kind, user, session, ts)
        listed = state.sessions()
        assert sorted((u, k.decode("utf-8", "surrogatepass"), t) for u, k, t in listed) == \
            sorted((u, k, t) for (u, k), t in oracle.open.items())
        assert [t for _, _, t in listed] == sorted(t for _, _, t in listed)
        assert (len({u for u, _ in oracle.open}), len(oracle.seen), oracle.unknown) == (
            state.count, state.users_seen, state.unknown_logouts)
        assert sorted(oracle.seen) == state.seen_users()
        assert set(state.uid) == {u for u, _ in oracle.open} | oracle.seen
        assert len(state.key) - len(listed) == sum(1 for k in state.key if k == b"") - sum(
            1 for _, k, _ in listed if k == b"")  # freed session slots drop their key
