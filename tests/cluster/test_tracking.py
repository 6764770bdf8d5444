"""Live tracking on a cluster, as processes on one Mosquitto and one PostgreSQL started by the
tests: the accounts' partitions split between two members, moved to the survivor of a SIGKILL
and back to the restarted member, and every gauge of every account equal to `meter report` of
the current period; a row committed after a row of higher seq is applied, not skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from meter.cluster.tracking import partition_of
from tests.conftest import ROOT, Broker
from tests.contracts_toml import account, contracts, pool
from tests.faults.harness import Daemon, Publisher, stored_ids, wait_for

pytestmark = [pytest.mark.broker]

PARTITIONS = 8
ACCOUNTS = tuple(f"acct{i:02d}" for i in range(12))
#: acct00..acct11 fall into every one of the 8 partitions (CRC-32 mod 8), 6 accounts below 4.
GRACE_S = 1800  # the default grace: 30 minutes
#: The gauges compared, per (account, pool "agents").
GAUGES = ("meter_active_users", "meter_excess_users", "meter_licensed_seats",
          "meter_period_peak_users", "meter_period_peak_timestamp_seconds",
          "meter_period_start_timestamp_seconds", "meter_period_billable_overage_seats",
          "meter_grace_remaining_seconds")

Gauges = dict[str, dict[str, float]]  # account -> gauge name -> value


def licensed(i: int) -> int:
    return 2 + i % 3


def contracts_toml(quantities: Mapping[str, int]) -> str:
    return contracts(*(account(a, pools=[pool("agents", tier="premium", model="concurrent",
                                               quantity=q, price="10.00", overage_price="12.00")])
                       for a, q in quantities.items()))


def member(broker: Broker, workdir: Path, prefix: str, url: str, toml: str, *, slots: int = 2,
           partitions: int = PARTITIONS) -> Daemon:
    """One `meter serve --slots N --partitions P` process (not started) on `toml`'s accounts."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "contracts.toml").write_text(toml)
    return Daemon(broker, workdir, prefix, url=url,
                  settings={"METER_SLOTS": str(slots), "METER_PARTITIONS": str(partitions)})


def ev(account_id: str, eid: str, kind: str, user: str, ts: datetime) -> dict[str, str]:
    """One event; each user has one session of its own per test phase (`eid` names it)."""
    return {"id": eid, "type": kind, "account": account_id, "user": user,
            "session": f"s-{user}", "pool": "agents", "ts": ts.isoformat()}


def session(account_id: str, tag: str, user: str, start: datetime,
            end: datetime | None) -> list[dict[str, str]]:
    """A login at `start` and, unless `end` is None (still signed in), a logout at `end`."""
    out = [ev(account_id, f"{tag}-in-{user}", "login", user, start)]
    if end is not None:
        out.append(ev(account_id, f"{tag}-out-{user}", "logout", user, end))
    return out


def before_kill(base: datetime, now: datetime) -> list[dict[str, str]]:
    """Per account i (licensed 2 + i % 3): q + 1 + i % 2 users for 40 minutes (over the 30-minute
    grace: billable), 1 + i % 4 users for 5 minutes later on (a second, shorter crowd), and i % 3
    users signed in now and staying so."""
    out: list[dict[str, str]] = []
    for i, a in enumerate(ACCOUNTS):
        start = base + timedelta(minutes=i)
        for j in range(licensed(i) + 1 + i % 2):
            at = start + timedelta(seconds=10 * j)
            out += session(a, "p1a", f"a{j}", at, at + timedelta(minutes=40))
        for j in range(1 + i % 4):
            at = base + timedelta(minutes=50, seconds=7 * j)
            out += session(a, "p1b", f"b{j}", at, at + timedelta(minutes=5))
        for j in range(i % 3):
            out += session(a, "p1c", f"c{j}", now - timedelta(seconds=30 - j), None)
    return out


def after_kill(base: datetime, now: datetime) -> list[dict[str, str]]:
    """Late sessions (an hour old: the accounts are re-rated), the first user signed in since
    before the kill signs out, and new users sign in now: licensed + 1 of them on every fourth
    account (excess now, within its grace), one elsewhere."""
    out: list[dict[str, str]] = []
    for i, a in enumerate(ACCOUNTS):
        for j in range(2):
            at = base + timedelta(minutes=20 + i, seconds=3 * j)
            out += session(a, "p2a", f"d{j}", at, at + timedelta(minutes=6))
        if i % 3:
            out.append(ev(a, "p2-out-c0", "logout", "c0", now - timedelta(seconds=5)))
        for j in range(licensed(i) + 1 if i % 4 == 0 else 1):
            out += session(a, "p2b", f"n{j}", now - timedelta(seconds=3), None)
    return out


def billable_before_kill() -> Gauges:
    """What the sessions before the kill make of each account i, by construction: 1 + i % 2
    users over the licence for 40 minutes (billable), i % 3 signed in now (within it)."""
    return {a: {"meter_active_users": i % 3, "meter_excess_users": 0,
                "meter_period_billable_overage_seats": 1 + i % 2}
            for i, a in enumerate(ACCOUNTS)}


def final() -> Gauges:
    """The same once every event since is stored: one user fewer signed in where i % 3, and
    licensed + 1 more (excess 1 + i % 3) or 1 more; the late sessions stay within the grace."""
    out: Gauges = {}
    for i, a in enumerate(ACCOUNTS):
        active = i % 3 - (1 if i % 3 else 0) + (licensed(i) + 1 if i % 4 == 0 else 1)
        out[a] = {"meter_active_users": active,
                  "meter_excess_users": max(0, active - licensed(i)),
                  "meter_period_billable_overage_seats": 1 + i % 2}
    return out


def figures(g: Gauges) -> dict[str, tuple[float, float, float]]:
    """(users signed in, excess, billable overage) per account."""
    return {a: (v["meter_active_users"], v["meter_excess_users"],
                v["meter_period_billable_overage_seats"]) for a, v in g.items()}


# --- what the store and the bill say -------------------------------------------------------------

def signed_in(url: str) -> dict[str, int]:
    """Each account's users with an open session now, from the stored rows in event-time order
    (every session here is one user's, closed by its logout)."""
    open_: dict[str, dict[str, str]] = defaultdict(dict)
    with psycopg.connect(url) as conn:
        rows = conn.execute('SELECT account, type, "user", session FROM events '
                            "ORDER BY ts_us, seq").fetchall()
    for acc, kind, user, sess in rows:
        if kind == "login":
            open_[acc][sess] = user
        elif kind == "logout":
            open_[acc].pop(sess, None)
    return {a: len(set(users.values())) for a, users in open_.items()}


def bill(d: Daemon, url: str) -> Gauges:
    """Every account's gauges as `meter report --as-of now` of the current period gives them
    (peak, its time, billable overage, licensed quantity, period start, grace), with the users
    signed in now counted from the stored rows (the report has no "now" column) and the excess
    and grace that follow from them."""
    month = f"{datetime.now(UTC):%Y-%m}"
    active = signed_in(url)
    out = subprocess.run([sys.executable, "-m", "meter", "report", "--db", url,
                          "--contracts", str(d.contracts), "--period", month, "--as-of", "now"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    expected: Gauges = {}
    for doc in json.loads(out.stdout)["accounts"]:
        p = doc["pools"][0]
        users = active.get(doc["account"], 0)
        excess = max(0, users - p["licensed"])
        expected[doc["account"]] = {
            "meter_active_users": users,
            "meter_excess_users": excess,
            "meter_licensed_seats": p["licensed"],
            "meter_period_peak_users": p["peak"],
            "meter_period_peak_timestamp_seconds":
                datetime.fromisoformat(p["peak_at"]).timestamp() if p["peak_at"] else 0.0,
            "meter_period_start_timestamp_seconds":
                datetime.fromisoformat(doc["period"]["start"]).timestamp(),
            "meter_period_billable_overage_seats": p["overage_seats"],
            # Counts down while there is excess (not the same at scrape and report): only the
            # full grace of an account without excess is compared.
            **({"meter_grace_remaining_seconds": p["grace"]["seconds"]} if not excess else {}),
        }
    return expected


def exported(d: Daemon) -> Gauges:
    """The gauges `d` exports, per account (only the accounts of the partitions it holds)."""
    got: Gauges = defaultdict(dict)
    for (name, labels), value in d.metrics().items():
        if name in GAUGES:
            got[dict(labels)["account"]][name] = value
    return dict(got)


def comparable(got: Gauges, expected: Gauges) -> Gauges:
    """`got` with the grace left out where the bill leaves it out (an account with excess)."""
    return {a: {k: v for k, v in g.items() if k in expected.get(a, {})} for a, g in got.items()}


def settle(members: Iterable[Daemon], url: str, what: str, timeout: float = 180.0) -> Gauges:
    """Wait until every account's gauges are exported by exactly one of `members` and equal the
    bill; returns them. Fails with the last difference."""
    members = list(members)
    deadline = time.monotonic() + timeout
    diff = "nothing compared yet"
    while time.monotonic() < deadline:
        scrapes = [exported(d) for d in members]
        twice = sorted(a for a in ACCOUNTS if sum(a in s for s in scrapes) > 1)
        merged = {a: g for s in scrapes for a, g in s.items()}
        expected = bill(members[0], url)
        got = comparable(merged, expected)
        if not twice and got == expected:
            return got
        wrong = {a: (got.get(a), e) for a, e in expected.items() if got.get(a) != e}
        diff = f"exported twice: {twice}; (gauges, bill) that differ: {wrong}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {diff}")


def tracked(d: Daemon) -> float | None:
    return d.value("meter_cluster_tracked_accounts")


def publish(publisher: Publisher, docs: list[dict[str, str]]) -> None:
    for doc in docs:
        publisher.publish(doc)
    publisher.wait_all_acked()


def keys(docs: Iterable[Mapping[str, str]]) -> set[tuple[str, str]]:
    return {(d["account"], d["id"]) for d in docs}


def test_a_killed_members_partitions_move_and_every_gauge_equals_the_bill(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str) -> None:
    """Two members, 2 slots, 8 partitions, 12 accounts (every partition holds one or two). Each
    account's gauges are exported by exactly one member and equal the bill; SIGKILL the member
    holding partitions 4-7: the survivor takes them from their checkpoints and exports all 12
    accounts, and after late and current events published since, all equal the bill again. The
    killed member's slot session keeps its share of those events until it is restarted: then
    every event is stored once, the partitions split again, and every gauge equals the bill."""
    now = datetime.now(UTC).replace(microsecond=0)
    month_start = now.replace(day=1, hour=0, minute=0, second=0)
    base = now - timedelta(minutes=100)
    if base < month_start:
        pytest.skip("the current month is less than 100 minutes old: no room for its sessions")
    assert set(range(PARTITIONS)) == {partition_of(a, PARTITIONS) for a in ACCOUNTS}
    low = {a for a in ACCOUNTS if partition_of(a, PARTITIONS) < 4}
    assert 6 == len(low)
    toml = contracts_toml({a: licensed(i) for i, a in enumerate(ACCOUNTS)})
    broker = broker_factory.new()  # type: ignore[attr-defined]
    a = member(broker, tmp_path / "a", topic_prefix, pg_url, toml)
    b = member(broker, tmp_path / "b", topic_prefix, pg_url, toml)
    publisher = Publisher(broker, topic_prefix)
    try:
        a.start()
        wait_for(lambda: tracked(a) == 12, 60, "the first member to track all 12 accounts")
        b.start()
        wait_for(lambda: (tracked(a), tracked(b)) == (6, 6), 60, "6 accounts on each member")
        first = before_kill(base, now)
        publish(publisher, first)
        wait_for(lambda: set(stored_ids(pg_url)) == keys(first), 60, "the first events stored")
        got = settle([a, b], pg_url, "both members' gauges to equal the bill")
        assert figures(billable_before_kill()) == figures(got)
        assert low == set(exported(a))
        assert set(ACCOUNTS) - low == set(exported(b))

        survivor_log = len(a.log_text())
        b.kill()
        wait_for(lambda: tracked(a) == 12, 60, "the survivor to track all 12 accounts")
        taken = a.log_text()[survivor_log:]
        for p in range(4, PARTITIONS):
            n = sum(partition_of(x, PARTITIONS) == p for x in ACCOUNTS)
            assert f"tracking partition {p} ({n} accounts) taken, from its checkpoint" in taken
        second = after_kill(base, datetime.now(UTC).replace(microsecond=0))
        publish(publisher, second)
        settle([a], pg_url, "the survivor's gauges of all 12 accounts to equal the bill")
        assert set(ACCOUNTS) == set(exported(a))
        assert set(stored_ids(pg_url)) < keys(first) | keys(second)  # slot 1's share waits

        b.start()
        wait_for(lambda: set(stored_ids(pg_url)) == keys(first) | keys(second), 60,
                 "the restarted member to drain its slot's session")
        assert {1} == set(stored_ids(pg_url).values())
        wait_for(lambda: (tracked(a), tracked(b)) == (6, 6), 60, "6 accounts on each again")
        got = settle([a, b], pg_url, "both members' gauges to equal the bill after the restart")
        assert figures(final()) == figures(got)
        assert low == set(exported(a))
        assert set(ACCOUNTS) - low == set(exported(b))
    finally:
        publisher.close()
        a.stop()
        b.stop()


# --- a row committed out of seq order ------------------------------------------------------------

_INSERT = ('INSERT INTO events (account, id, type, "user", pool, session, ts_us, received_us, '
           "raw) VALUES (%s, %s, 'login', %s, 'agents', %s, %s, %s, %s) RETURNING seq, xid::text")


def insert_login(conn: psycopg.Connection[tuple[object, ...]], user: str,
                 ts: datetime) -> tuple[int, int]:
    """A login of `user` by plain SQL in `conn`'s open transaction (not through the store,
    whose write lock would serialize it); returns its (seq, xid)."""
    ts_us = int(ts.timestamp() * 1_000_000)
    doc = ev("acme", f"in-{user}", "login", user, ts)
    row = conn.execute(_INSERT, ("acme", doc["id"], user, doc["session"], ts_us, ts_us,
                                 json.dumps(doc).encode())).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1]))


def one_account(d: Daemon, url: str) -> tuple[dict[str, float] | None, dict[str, float]]:
    """acme's (gauges, bill)."""
    expected = bill(d, url)["acme"]
    return comparable(exported(d), {"acme": expected}).get("acme"), expected


def shows(d: Daemon, url: str, users: int) -> bool:
    """Whether acme's gauges equal the bill and the bill has `users` signed in."""
    got, expected = one_account(d, url)
    return got == expected and expected["meter_active_users"] == users


@pytest.mark.parametrize("first_xid", ["later", "earlier"])
def test_a_row_committed_after_a_higher_seq_is_applied(
        broker_factory: type[Broker], tmp_path: Path, topic_prefix: str, pg_url: str,
        first_xid: str) -> None:
    """Two writer transactions: A inserts a login (seq s) and stays open; B inserts one (seq
    s + 1) and commits first. A seq cursor would have passed s for good; the member's gauges
    show B's login and, once A commits, A's too, each equal to the bill then. With `later`, B
    took its transaction id before A, so B's row is below the horizon at once; with `earlier`,
    A's open transaction holds the horizon back and B shows with A (the gauges lag, nothing is
    skipped). While A is open, `meter_cluster_feed_held_seconds` says how long it has held the
    feed back; 0 once it ends."""
    now = datetime.now(UTC).replace(microsecond=0)
    if now - timedelta(minutes=5) < now.replace(day=1, hour=0, minute=0, second=0):
        pytest.skip("the current month is less than 5 minutes old")
    broker = broker_factory.new()  # type: ignore[attr-defined]
    d = member(broker, tmp_path / "m", topic_prefix, pg_url,
               contracts_toml({"acme": 1}), slots=1, partitions=2)
    try:
        d.start()
        wait_for(lambda: tracked(d) == 1, 60, "the member to track acme")
        with psycopg.connect(pg_url) as tx_a, psycopg.connect(pg_url) as tx_b:
            if first_xid == "later":
                tx_b.execute("SELECT pg_current_xact_id()")  # B's transaction id, before A's
            seq_a, xid_a = insert_login(tx_a, "ann", now - timedelta(minutes=2))
            seq_b, xid_b = insert_login(tx_b, "bob", now - timedelta(minutes=1))
            assert seq_a < seq_b
            assert (xid_b < xid_a) == (first_xid == "later")
            tx_b.commit()
            if first_xid == "later":
                wait_for(lambda: shows(d, pg_url, 1), 60,
                         "bob's login in the gauges, equal to the bill", every=0.5)
                _, expected = one_account(d, pg_url)
                assert (1, 1, 0) == (expected["meter_active_users"],
                                     expected["meter_period_peak_users"],
                                     expected["meter_excess_users"])
            # A, still open, holds the horizon where it is: the member says for how long.
            wait_for(lambda: (d.value("meter_cluster_feed_held_seconds") or 0.0) >= 1.0, 30,
                     "the feed held back by A's open transaction")
            tx_a.commit()
        wait_for(lambda: shows(d, pg_url, 2), 60, "ann's login in the gauges, equal to the bill",
                 every=0.5)
        wait_for(lambda: d.value("meter_cluster_feed_held_seconds") == 0.0, 30,
                 "the feed no longer held back")
        got, expected = one_account(d, pg_url)
        assert (2, 2, 1, (now - timedelta(minutes=1)).timestamp()) == (
            expected["meter_active_users"], expected["meter_period_peak_users"],
            expected["meter_excess_users"], expected["meter_period_peak_timestamp_seconds"])
        assert expected == got
    finally:
        d.stop()
