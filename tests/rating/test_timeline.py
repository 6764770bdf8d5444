"""Exact step functions: c(t) from sessions, E(t) from the licensed steps, x(t), clipped to the
period, in DST months and clamped anchor months."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from rating.contracts import Account, Order, Pool
from rating.errors import RatingError
from rating.periods import Period, period_of_month
from rating.pool import PoolJob, rate_pool, rate_pools
from rating.seatchanges import apply_orders
from rating.usage import EventColumns, UsageEvent

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = Period(T0, T0 + timedelta(days=1))
H12 = timedelta(hours=12)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def pool(quantity: int = 10, grace: timedelta = timedelta(minutes=30),
         mode: str = "continuous") -> Pool:
    return Pool("agents", "elite", "concurrent", quantity, Decimal("149.00"), Decimal("149.00"),
                grace, mode)  # type: ignore[arg-type]


_n = iter(range(10**9))


def ev(typ: str, user: str, when: datetime, session: str | None = None) -> UsageEvent:
    return UsageEvent(f"e{next(_n)}", typ, "acme", user, when, "agents", session)  # type: ignore[arg-type]


def test_two_devices_count_once() -> None:
    """A user on two devices at once counts once, from the first login to the last logout."""
    events = [ev("login", "a", at(0), "phone"), ev("login", "a", at(10), "desk"),
              ev("logout", "a", at(30), "phone"), ev("logout", "a", at(60), "desk")]
    rating = rate_pool(pool(), events, DAY)
    assert ((T0, 1), (at(60), 0)) == rating.concurrency.points()
    assert 1 == rating.peak
    assert 1 == rating.users
    assert 2 == rating.sessions


def test_instant_handover_is_not_double_use() -> None:
    """A logout and a login at the same instant never count both users."""
    events = [ev("login", "b", at(30), "s2"), ev("logout", "a", at(30), "s1"),
              ev("login", "a", at(0), "s1"), ev("logout", "b", at(90), "s2")]
    rating = rate_pool(pool(), events, DAY)
    assert ((T0, 1), (at(90), 0)) == rating.concurrency.points()
    assert 1 == rating.peak
    assert T0 == rating.peak_at


def test_session_straddling_the_period_start() -> None:
    """A session open before the period counts from the period start; its earlier part does not."""
    events = [ev("login", "a", at(-120), "s1"), ev("logout", "a", at(45), "s1"),
              ev("login", "b", at(-200), "s2"), ev("logout", "b", at(-100), "s2")]
    rating = rate_pool(pool(quantity=0), events, DAY)
    assert ((T0, 1), (at(45), 0)) == rating.concurrency.points()
    assert T0 == rating.peak_at
    assert frozenset({"a"}) == rating.user_ids
    assert 1 == rating.overage_seats  # 45 minutes of excess inside the period
    assert timedelta(minutes=45) == rating.episodes[0].duration


def test_session_straddling_the_period_end_is_cut() -> None:
    """A session past the period end counts up to the end only."""
    end = DAY.end
    events = [ev("login", "a", end - timedelta(minutes=20), "s1"),
              ev("logout", "a", end + timedelta(hours=2), "s1")]
    rating = rate_pool(pool(quantity=0), events, DAY)
    assert ((T0, 0), (end - timedelta(minutes=20), 1)) == rating.concurrency.points()
    assert 0 == rating.overage_seats  # only 20 minutes of it lie in this period
    assert (end - timedelta(minutes=20), end) == (rating.episodes[0].start, rating.episodes[0].end)


def test_heartbeats_from_before_the_window_keep_the_session() -> None:
    """A session whose login predates the events given is opened by its first heartbeat."""
    events = [ev("heartbeat", "a", at(-600), "s1"), ev("heartbeat", "a", at(-60), "s1"),
              ev("logout", "a", at(30), "s1")]
    rating = rate_pool(pool(), events, DAY, session_timeout=H12)
    assert ((T0, 1), (at(30), 0)) == rating.concurrency.points()


def account(billing: str, anchor: date, orders: tuple[Order, ...]) -> Account:
    return Account(id="acme", timezone="UTC", currency="USD", billing=billing,  # type: ignore[arg-type]
                   anchor=anchor, policy="prorate", pools=(pool(quantity=2),), orders=orders,
                   tz=ZoneInfo("UTC"))


def test_purchase_mid_period_raises_licensed_from_its_time() -> None:
    """Seats bought mid-period count from the purchase: E(t) steps up there, x(t) falls."""
    buy = datetime(2026, 3, 10, tzinfo=UTC)
    acc = account("monthly", date(2026, 1, 1), (Order(at=buy, pool="agents", quantity=5),))
    period = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    steps = apply_orders(acc).licensed_steps("agents")
    users = "abcd"
    events = [ev("login", u, buy - timedelta(hours=2), u) for u in users]
    events += [ev("logout", u, buy + timedelta(hours=1), u) for u in users]
    rating = rate_pool(acc.pools[0], events, period, steps, H12)
    assert ((period.start, 2), (buy, 5)) == rating.licensed.points()
    assert ((period.start, 0), (buy - timedelta(hours=2), 2), (buy, 0)) == rating.excess.points()
    assert 2 == rating.overage_seats
    assert Decimal("298.00") == rating.overage_amount


def test_removal_waits_for_the_end_of_the_term() -> None:
    """A removal on an annual term keeps the seats in force until the term ends."""
    cut = datetime(2026, 3, 10, tzinfo=UTC)
    acc = account("annual", date(2026, 1, 1), (Order(at=cut, pool="agents", quantity=1),))
    period = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    steps = apply_orders(acc).licensed_steps("agents")
    events = [ev("login", u, cut, u) for u in "ab"] + [
        ev("logout", u, cut + timedelta(hours=3), u) for u in "ab"]
    rating = rate_pool(acc.pools[0], events, period, steps, H12)
    assert ((period.start, 2),) == rating.licensed.points()
    assert 0 == rating.overage_seats
    assert () == rating.episodes


def test_licensed_before_the_first_step_is_the_pool_quantity() -> None:
    """With no step at or before the period start, the pool's quantity is in force."""
    rating = rate_pool(pool(quantity=7), [], DAY, [(at(60), 9), (at(-5), 8), (at(120), 8)])
    assert ((T0, 8), (at(60), 9), (at(120), 8)) == rating.licensed.points()
    assert 8 == rating.licensed.value_at(at(59))
    assert 9 == rating.licensed.value_at(at(60))
    assert ((T0, 7),) == rate_pool(pool(quantity=7), [], DAY).licensed.points()


def test_steps_at_the_same_instant_leave_the_last_one() -> None:
    """Two quantities stated for one instant: the later-listed one is in force, shown once, and
    a step back to the value before it is no change at all."""
    rating = rate_pool(pool(quantity=7), [], DAY, [(at(60), 9), (at(60), 12), (at(90), 7),
                                                   (at(120), 5), (at(120), 7)])
    assert ((T0, 7), (at(60), 12), (at(90), 7)) == rating.licensed.points()


def test_a_dst_month_in_new_york() -> None:
    """Across the spring-forward night an hour of local clock time is 1 hour, not 2."""
    ny = Account(id="acme", timezone="America/New_York", currency="USD", billing="monthly",
                 anchor=date(2026, 1, 1), policy="prorate", tz=ZoneInfo("America/New_York"))
    period = period_of_month(ny, 2026, 3)
    tz = ZoneInfo("America/New_York")
    login = datetime(2026, 3, 8, 1, 30, tzinfo=tz)   # EST
    logout = datetime(2026, 3, 8, 3, 30, tzinfo=tz)  # EDT: one hour later
    events = [ev("login", "a", login.astimezone(UTC), "s"),
              ev("logout", "a", logout.astimezone(UTC), "s"),
              ev("login", "b", period.end - timedelta(minutes=31), "t"),
              ev("heartbeat", "b", period.end + timedelta(minutes=1), "t")]
    rating = rate_pool(pool(quantity=0), events, period, (), H12)
    assert datetime(2026, 3, 1, 5, tzinfo=UTC) == period.start
    assert datetime(2026, 4, 1, 4, tzinfo=UTC) == period.end
    first, last = rating.episodes
    assert timedelta(hours=1) == first.duration
    assert datetime(2026, 3, 8, 6, 30, tzinfo=UTC) == first.start
    assert (timedelta(minutes=31), False) == (last.duration, last.within_grace)
    assert 1 == rating.overage_seats


def test_anchor_31st_in_february_bounds_the_usage() -> None:
    """With an anchor of the 31st the February period is [Feb 28, Mar 31): use outside is not in."""
    acc = Account(id="acme", timezone="UTC", currency="USD", billing="monthly",
                  anchor=date(2026, 1, 31), policy="prorate", tz=ZoneInfo("UTC"))
    period = period_of_month(acc, 2026, 2)
    feb27 = datetime(2026, 2, 27, 10, tzinfo=UTC)
    mar30 = datetime(2026, 3, 30, 10, tzinfo=UTC)
    events = [ev("login", "a", feb27, "s"), ev("logout", "a", feb27 + timedelta(hours=2), "s"),
              ev("login", "b", mar30, "t"), ev("logout", "b", mar30 + timedelta(hours=2), "t")]
    rating = rate_pool(pool(quantity=0), events, period, (), H12)
    assert Period(datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)) == period
    assert ((period.start, 0), (mar30, 1), (mar30 + timedelta(hours=2), 0)) == tuple(
        rating.concurrency)
    assert frozenset({"b"}) == rating.user_ids


def test_inferred_and_ignored_counts_are_of_the_period() -> None:
    """Inferred sessions and ignored logouts count only where they touch the period."""
    events = [ev("login", "a", at(10), "s1"),                       # never logged out: inferred
              ev("logout", "b", at(20), "zz"),                      # unknown: ignored
              ev("logout", "b", at(-30), "zz"),                     # before the period
              ev("login", "c", at(-700), "s3")]                     # inferred before the period
    rating = rate_pool(pool(), events, DAY, (), H12)
    assert (1, 1, 1) == (rating.inferred_sessions, rating.ignored_logouts, rating.sessions)
    assert ((T0, 0),) == rating.concurrency.points()  # a session closed at its only event is empty
    assert frozenset({"a"}) == rating.user_ids


def test_rate_pool_refuses_another_pools_events() -> None:
    """Events of another pool are an error, not silently dropped."""
    other = UsageEvent("x", "login", "acme", "a", at(0), "other", None)
    with pytest.raises(RatingError, match="not of pool 'agents'"):
        rate_pool(pool(), [other], DAY)


def test_events_without_pool_belong_to_the_pool_rated() -> None:
    """An event whose pool was left out is rated as the pool's (the caller resolved it)."""
    events = [UsageEvent("1", "login", "acme", "a", at(0)),
              UsageEvent("2", "logout", "acme", "a", at(5))]
    assert ((T0, 1), (at(5), 0)) == rate_pool(pool(), events, DAY).concurrency.points()


def test_a_batch_without_any_pooled_event_rates_zero() -> None:
    """Events that name no pool (seat events, unresolved logins) make an empty c(t)."""
    cols = EventColumns.from_events([UsageEvent("1", "login", "acme", "a", at(0))])
    (rating,) = rate_pools(cols, [PoolJob("acme", pool(), DAY)])
    assert ((T0, 0),) == rating.concurrency.points()
    assert (0, None, 0, 0) == (rating.peak, rating.peak_at, rating.sessions, rating.users)
