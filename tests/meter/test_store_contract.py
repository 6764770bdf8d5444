"""The `Store` contract: what every implementation must do, run against each of them.

Only the interface of `meter.store.base.Store` is used here (no SQL), so a new implementation
joins by adding itself to `IMPLEMENTATIONS`. The SQLite file specifics (migrations, WAL, locks)
are in test_store.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meter.errors import StoreError
from meter.events import Event
from meter.store import FinalizedReport, RatingRows, RejectedMessage, Store, StoredEvent, open_store

T0 = datetime(2026, 11, 12, 15, 0, tzinfo=UTC)
T0_US = 1_794_495_600_000_000
MIN_US = 60_000_000
IMPLEMENTATIONS = ["sqlite", "postgres"]


def event(id: str, *, account: str = "acme", type: str = "login", user: str = "u1",
          minutes: int = 0, pool: str | None = "agents", session: str | None = None) -> Event:
    raw = f'{{"id":"{id}"}}'.encode()
    return Event(id=id, type=type, account=account, user=user,  # type: ignore[arg-type]
                 ts=T0 + timedelta(minutes=minutes), pool=pool, session=session, raw=raw)


def finalized(account: str = "acme", start_us: int = T0_US, report: str = '{"total":"1.00"}',
              cutoff: int = 3) -> FinalizedReport:
    return FinalizedReport(account=account, period_start_us=start_us,
                           period_end_us=start_us + 30 * 24 * 60 * MIN_US, report=report,
                           charts="{}", input_hash="h1", cutoff_seq=cutoff, finalized_us=T0_US)


@pytest.fixture(params=IMPLEMENTATIONS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new, empty store of each implementation is: a SQLite path, a PostgreSQL URL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "meter.db")


@pytest.fixture
async def store(location: str) -> AsyncIterator[Store]:
    s = await open_store(location)
    yield s
    await s.close()


async def test_a_new_store_is_empty(store: Store) -> None:
    """Nothing stored: zero counts, no events, seq 0, nothing finalized."""
    assert {"events": 0, "rejected": 0} == await store.counts()
    assert [] == await store.events()
    assert 0 == await store.last_seq()
    assert {} == await store.latest_event_times()
    assert None is await store.finalized("acme", T0_US)
    assert None is await store.load_checkpoint()
    assert [] == await store.events_after(0)
    assert RatingRows(rows=(), last_seq=0) == await store.rating_rows(
        "acme", 0, 2**62, through_seq=10, seats_before=True)


async def test_events_are_unique_on_account_and_id(store: Store) -> None:
    """A redelivered (account, id) is a duplicate, in a batch and across batches; the same id in
    another account is a different event; the first copy is kept."""
    first = await store.add([event("e1"), event("e2"), event("e1", user="other")],
                            received_us=T0_US)
    assert (2, 1, (0, 1)) == (first.new, first.duplicates, first.fresh)
    second = await store.add([event("e2"), event("e1", account="globex")], received_us=T0_US)
    assert (1, 1, (1,)) == (second.new, second.duplicates, second.fresh)
    assert [("acme", "e1", "u1"), ("acme", "e2", "u1"), ("globex", "e1", "u1")] == [
        (e.account, e.id, e.user) for e in await store.events()]
    assert 3 == await store.last_seq()


async def test_meanwhile_is_called_once_per_batch_before_it_returns(store: Store) -> None:
    """`add(meanwhile=f)` calls f exactly once, before the batch's result comes back; a batch
    that fails still calls it (the daemon's tracker must apply the last commit either way) and
    stores nothing."""
    calls: list[int] = []
    result = await store.add([event("e1")], received_us=T0_US,
                             meanwhile=lambda: calls.append(len(calls)))
    assert ([0], 1) == (calls, result.new)
    with pytest.raises(StoreError):
        await store.add([event("e2"), event("e3", account=None)],  # type: ignore[arg-type]
                        received_us=T0_US, meanwhile=lambda: calls.append(len(calls)))
    assert ([0, 1], ["e1"]) == (calls, [e.id for e in await store.events()])


async def test_rejected_messages_are_kept_and_counted(store: Store) -> None:
    """Rejected messages are stored with their reason beside accepted events of the batch."""
    bad = [RejectedMessage(T0_US, "meter/acme/events", "acme", reason, "detail", b"x")
           for reason in ("schema", "not_json", "schema")]
    result = await store.add([event("e1")], bad, received_us=T0_US)
    assert (1, 3) == (result.new, result.rejected)
    assert {"events": 1, "rejected": 3} == await store.counts()
    assert {"not_json": 1, "schema": 2} == await store.rejected_by_reason()


async def test_events_filter_by_account_and_half_open_window(store: Store) -> None:
    """`events` is in event-time order, ties by arrival, and `[start, end)` is half-open."""
    await store.add([event("b", minutes=10), event("a", minutes=0), event("c", minutes=10),
                     event("d", account="globex", minutes=5)], received_us=T0_US)
    assert ["a", "d", "b", "c"] == [e.id for e in await store.events()]
    assert ["a", "b", "c"] == [e.id for e in await store.events(account="acme")]
    assert ["a", "d"] == [e.id for e in await store.events(start_us=T0_US,
                                                           end_us=T0_US + 10 * MIN_US)]
    assert [StoredEvent(seq=4, account="globex", id="d", type="login", user="u1", pool="agents",
                        session=None, ts_us=T0_US + 5 * MIN_US, received_us=T0_US)] == (
        await store.events(account="globex"))


async def test_rating_rows_are_the_window_in_time_then_id_order(store: Store) -> None:
    """`rating_rows` gives (id, type, user, pool, session, ts_us) of the account's window, ordered
    by time then id by code point (not arrival), arrivals after `through_seq` left out, and the
    newest arrival among the rows."""
    await store.add([event("z", minutes=5), event("B", minutes=5, session="s"),
                     event("\u00e9", minutes=5), event("early", minutes=-1),
                     event("x", account="globex", minutes=5), event("late", minutes=20)],
                    received_us=T0_US)
    got = await store.rating_rows("acme", T0_US, T0_US + 20 * MIN_US, through_seq=6)
    assert RatingRows(rows=(
        ("B", "login", "u1", "agents", "s", T0_US + 5 * MIN_US),
        ("z", "login", "u1", "agents", None, T0_US + 5 * MIN_US),
        ("\u00e9", "login", "u1", "agents", None, T0_US + 5 * MIN_US),
    ), last_seq=3) == got
    older = await store.rating_rows("acme", T0_US, T0_US + 20 * MIN_US, through_seq=2)
    assert (("B", "z"), 2) == (tuple(r[0] for r in older.rows), older.last_seq)


async def test_rating_rows_put_earlier_seat_events_first(store: Store) -> None:
    """With `seats_before`, every assign/unassign before the window comes first (a roster needs
    them all), then the window; session events before the window stay out."""
    await store.add([event("s1", type="assign", minutes=-600, pool="named"),
                     event("l0", minutes=-5), event("s2", type="unassign", minutes=-3, pool=None),
                     event("w1", minutes=1)], received_us=T0_US)
    got = await store.rating_rows("acme", T0_US, T0_US + MIN_US * 60, through_seq=9,
                                  seats_before=True)
    assert (["s1", "s2", "w1"], 4) == ([r[0] for r in got.rows], got.last_seq)
    without = await store.rating_rows("acme", T0_US, T0_US + MIN_US * 60, through_seq=9)
    assert (["w1"], 4) == ([r[0] for r in without.rows], without.last_seq)


async def test_rating_columns_are_the_rating_rows_as_arrays(store: Store) -> None:
    """`rating_columns` gives the same rows in the same order as arrays (kind codes, texts coded
    in order of first appearance, -1 for no pool or session) with the same newest arrival."""
    await store.add([event("s1", type="assign", minutes=-600, pool="named", user="u2"),
                     event("z", minutes=5), event("B", minutes=5, session="s", user="u2"),
                     event("h", type="heartbeat", minutes=7, pool=None),
                     event("x", account="globex", minutes=5), event("late", minutes=20)],
                    received_us=T0_US)
    got = await store.rating_columns("acme", T0_US, T0_US + 20 * MIN_US, through_seq=6,
                                     seats_before=True)
    cols = got.columns
    assert (4, ("s1", "B", "z", "h"), [3, 2, 2, 0], ("u2", "u1"), [0, 0, 1, 1],
            ("named", "agents"), [0, 1, 1, -1], ("s",), [-1, 0, -1, -1]) == (
        got.last_seq, cols.ids, cols.kind.tolist(), cols.users, cols.user.tolist(), cols.pools,
        cols.pool.tolist(), cols.sessions, cols.session.tolist())
    rows = await store.rating_rows("acme", T0_US, T0_US + 20 * MIN_US, through_seq=6,
                                   seats_before=True)
    assert (list(rows.rows), rows.last_seq) == (cols.rows(), got.last_seq)
    empty = await store.rating_columns("nobody", T0_US, T0_US + MIN_US, through_seq=6)
    assert (0, 0) == (len(empty.columns), empty.last_seq)


async def test_seat_events_before_and_latest_times(store: Store) -> None:
    """The rebuild's reads: every account's seat events before a time, and each account's newest
    event time."""
    await store.add([event("a1", type="assign", minutes=-10, pool="named"),
                     event("a2", type="assign", account="globex", minutes=-20, pool="named"),
                     event("l1", minutes=-15), event("a3", type="unassign", minutes=30),
                     event("l2", account="globex", minutes=7)], received_us=T0_US)
    assert ["a2", "a1"] == [e.id for e in await store.seat_events_before(T0_US)]
    assert {"acme": T0_US + 30 * MIN_US, "globex": T0_US + 7 * MIN_US} == (
        await store.latest_event_times())


async def test_has_events_before_and_count_arrived(store: Store) -> None:
    """`has_events_before` is strict (`ts < end`); `count_arrived` counts the window's events
    with `after < seq <= through`."""
    await store.add([event("e1"), event("e2", minutes=1), event("e3", minutes=2),
                     event("g1", account="globex")], received_us=T0_US)
    assert (False, True) == (await store.has_events_before("acme", T0_US),
                             await store.has_events_before("acme", T0_US + 1))
    assert False is await store.has_events_before("initech", T0_US + 10 * MIN_US)
    window = (T0_US, T0_US + 2 * MIN_US)
    assert 2 == await store.count_arrived("acme", *window, after_seq=0, through_seq=9)
    assert 1 == await store.count_arrived("acme", *window, after_seq=1, through_seq=9)
    assert 0 == await store.count_arrived("acme", *window, after_seq=2, through_seq=9)
    assert 1 == await store.count_arrived("acme", T0_US, T0_US + 3 * MIN_US, after_seq=1,
                                          through_seq=2)


async def test_events_resent_from_the_first_and_last_hour_of_a_month_add_nothing(
        store: Store) -> None:
    """Dedupe is exact at any age: a month of events (three accounts, one every 20 minutes, in
    batches of 500) re-sent from its first and its last hour adds nothing, copied whole or
    under the same (account, id) at another time and user; the first copy is what stays."""
    month = [event(f"{a}-{m}", account=a, minutes=m, user=f"u{m % 7}")
             for m in range(0, 30 * 24 * 60, 20) for a in ("acme", "globex", "initech")]
    for i in range(0, len(month), 500):
        assert len(month[i:i + 500]) == (await store.add(month[i:i + 500],
                                                         received_us=T0_US)).new
    before = await store.events()
    edges = [e for e in month if e.ts_us < month[0].ts_us + 60 * MIN_US
             or e.ts_us >= month[-1].ts_us - 59 * MIN_US]
    assert 18 == len(edges)  # 3 events per account in each of the two hours
    moved = [event(e.id, account=e.account, minutes=m, user="someone else")
             for e, m in zip(edges, (-9999, 77_777) * 9, strict=True)]
    again = await store.add(edges + moved, received_us=T0_US + 1)
    assert (0, 36, ()) == (again.new, again.duplicates, again.fresh)
    assert before == await store.events()
    assert len(month) == len(before) == (await store.counts())["events"]
    rows = await store.rating_rows("globex", month[0].ts_us, month[-1].ts_us + 1,
                                   through_seq=10**9)
    assert [(e.id, e.user, e.ts_us) for e in month if e.account == "globex"] == [
        (r[0], r[2], r[5]) for r in rows.rows]
    assert len(month) - 1 == rows.last_seq  # globex has the month's second-last event


async def test_windows_reach_late_and_early_events_in_any_hour(store: Store) -> None:
    """A late event written into an old hour, and one before everything stored, are in the
    windows, counts, spans and newest times like any other."""
    await store.add([event("e1", minutes=600), event("e2", minutes=601)], received_us=T0_US)
    await store.add([event("late", minutes=5), event("early", minutes=-3000)],
                    received_us=T0_US + 1)
    assert ["early", "late", "e1", "e2"] == [e.id for e in await store.events(account="acme")]
    assert ["late", "e1"] == [e.id for e in await store.events(
        account="acme", start_us=T0_US, end_us=T0_US + 601 * MIN_US)]
    assert ["e1", "e2"] == [e.id for e in await store.events(start_us=T0_US + 6 * MIN_US)]
    assert 2 == await store.count_arrived("acme", T0_US - 3000 * MIN_US, T0_US + 10 * MIN_US,
                                          after_seq=2, through_seq=4)
    assert (True, False) == (await store.has_events_before("acme", T0_US - 2999 * MIN_US),
                             await store.has_events_before("acme", T0_US - 3000 * MIN_US))
    assert {"acme": T0_US + 601 * MIN_US} == await store.latest_event_times()
    rows = await store.rating_rows("acme", T0_US - 3000 * MIN_US, T0_US + 600 * MIN_US,
                                   through_seq=3)
    assert (("late", T0_US + 5 * MIN_US),) == tuple((r[0], r[5]) for r in rows.rows)
    assert 3 == rows.last_seq


async def test_a_finalized_report_is_stored_once_and_never_replaced(store: Store) -> None:
    """The first finalization of an account's period wins; a second one changes nothing and
    says so; other accounts and periods are separate."""
    first = finalized()
    assert True is await store.add_finalized(first)
    assert False is await store.add_finalized(finalized(report='{"total":"2.00"}', cutoff=9))
    assert first == await store.finalized("acme", T0_US)
    assert True is await store.add_finalized(finalized(account="globex"))
    assert True is await store.add_finalized(finalized(start_us=T0_US + 1))
    assert None is await store.finalized("acme", T0_US - 1)


async def test_events_after_a_seq_come_in_arrival_order(store: Store) -> None:
    """`events_after(seq)` is every event with a larger seq, in arrival order even where event
    times run backwards, `limit` pages through them, and `account` keeps one account's."""
    await store.add([event("e1", minutes=5), event("e2", minutes=-5)], received_us=T0_US)
    await store.add([event("g1", account="globex", minutes=1), event("e3", minutes=-9)],
                    received_us=T0_US + 1)
    assert [(1, "e1"), (2, "e2"), (3, "g1"), (4, "e3")] == [
        (e.seq, e.id) for e in await store.events_after(0)]
    assert [StoredEvent(3, "globex", "g1", "login", "u1", "agents", None, T0_US + MIN_US,
                        T0_US + 1),
            StoredEvent(4, "acme", "e3", "login", "u1", "agents", None, T0_US - 9 * MIN_US,
                        T0_US + 1)] == await store.events_after(2)
    assert ["e2", "g1"] == [e.id for e in await store.events_after(1, limit=2)]
    assert [] == await store.events_after(4)
    assert (["e2", "e3"], ["g1"], ["e2"]) == (
        [e.id for e in await store.events_after(1, account="acme")],
        [e.id for e in await store.events_after(0, account="globex")],
        [e.id for e in await store.events_after(1, account="acme", limit=1)])


async def test_one_checkpoint_replaced_by_each_save(store: Store) -> None:
    """A saved checkpoint comes back byte for byte with its seq; the next save replaces it; it
    survives a reopen."""
    await store.save_checkpoint(7, b"\x00first\xff")
    assert (7, b"\x00first\xff") == await store.load_checkpoint()
    await store.save_checkpoint(9, b"second")
    assert (9, b"second") == await store.load_checkpoint()
    async with await open_store(store.location) as again:
        assert (9, b"second") == await again.load_checkpoint()


async def test_a_checkpoint_saved_during_batches_waits_for_them(store: Store) -> None:
    """Batches and checkpoint saves started together on one store all commit (one transaction
    at a time, never one begun inside another)."""
    await asyncio.gather(*(store.add([event(f"e{i}")], received_us=T0_US) for i in range(20)),
                         *(store.save_checkpoint(i, b"cp") for i in range(20)))
    assert 20 == await store.last_seq()
    assert b"cp" == (await store.load_checkpoint() or (0, b""))[1]


async def test_the_store_reopens_with_what_was_committed(store: Store) -> None:
    """A second store opened at the same location sees every committed event and report."""
    await store.add([event("e1")], received_us=T0_US)
    await store.add_finalized(finalized())
    async with await open_store(store.location) as again:
        assert (["e1"], finalized()) == ([e.id for e in await again.events()],
                                         await again.finalized("acme", T0_US))


# --- rejected messages: bounded, listed, reprocessed, pruned -----------------------------------

def bad(raw: bytes, *, reason: str = "unknown_account", account: str | None = "initech",
        topic: str | None = "meter/initech/events", at: int = T0_US) -> RejectedMessage:
    return RejectedMessage(at, topic, account, reason, "detail", raw)


async def test_a_rejected_payload_over_the_cap_keeps_its_size_digest_and_first_bytes(
        store: Store) -> None:
    """Up to `rejected_keep_bytes` a payload is kept whole; beyond, only its first bytes, with
    the size and sha256 of all of it."""
    store.rejected_keep_bytes = 16
    big = b"x" * 15 + b"y" * 1000
    await store.add([], [bad(b"a" * 16), bad(big, reason="oversized")], received_us=T0_US)
    whole, cut = await store.rejected()
    assert (b"a" * 16, 16, False) == (whole.raw, whole.size, whole.truncated)
    assert (b"x" * 15 + b"y", 1015, True) == (cut.raw, cut.size, cut.truncated)
    assert hashlib.sha256(big).hexdigest() == cut.sha256


async def test_rejected_rows_filter_by_account_reason_time_and_seq(store: Store) -> None:
    """The account is the payload's or the topic's; `since_us` is inclusive."""
    await store.add([], [bad(b"1"), bad(b"2", account=None, reason="not_json"),
                         bad(b"3", account="acme", topic="meter/acme/events", at=T0_US + 5)],
                    received_us=T0_US)
    assert [b"1", b"2"] == [r.raw for r in await store.rejected(account="initech")]
    assert [b"2"] == [r.raw for r in await store.rejected(reason="not_json")]
    assert [b"3"] == [r.raw for r in await store.rejected(since_us=T0_US + 5)]
    first = (await store.rejected())[0]
    assert [first] == await store.rejected(seq=first.seq)


async def test_reprocessed_rows_move_into_the_log_once(store: Store) -> None:
    """Moved rows leave `rejected` and their events join the log with the row's receive time
    (a stored id counts as a duplicate); a second call moves nothing."""
    await store.add([event("e1", account="initech")], received_us=T0_US)
    await store.add([], [bad(b"1", at=T0_US + 1), bad(b"2", at=T0_US + 2), bad(b"3")],
                    received_us=T0_US)
    rows = await store.rejected()
    moves = [rows[0].seq, rows[1].seq]
    events = [event("e1", account="initech"), event("e2", account="initech")]
    assert (2, 1) == await store.reprocess_rejected(moves, events)
    assert (0, 0) == await store.reprocess_rejected(moves, events)
    assert [b"3"] == [r.raw for r in await store.rejected()]
    assert [("e1", T0_US), ("e2", T0_US + 2)] == [
        (e.id, e.received_us) for e in await store.events(account="initech")]


async def test_prune_drops_old_rows_then_the_oldest_beyond_the_byte_bound(store: Store) -> None:
    """Rows received before the cutoff go; then the oldest until the payloads fit `max_bytes`."""
    await store.add([], [bad(b"a" * 10, at=T0_US - 1), bad(b"b" * 10), bad(b"c" * 10),
                         bad(b"d" * 10)], received_us=T0_US)
    assert 2 == await store.prune_rejected(T0_US, 25)
    assert [b"c" * 10, b"d" * 10] == [r.raw for r in await store.rejected()]
    assert 0 == await store.prune_rejected(T0_US, 25)


async def test_a_file_line_rejected_again_is_stored_once(store: Store) -> None:
    """A line of a file (`file:PATH:LINE`, `stdin:LINE`) rejected again, in the same batch or a
    later one, is stored once; a broker message keeps every copy."""
    line = bad(b"{oops", reason="not_json", topic="file:month.jsonl:7")
    other_line = bad(b"{oops", reason="not_json", topic="file:month.jsonl:8")
    stdin = bad(b"{oops", reason="not_json", topic="stdin:7")
    broker = bad(b"{oops", reason="not_json")
    result = await store.add([], [line, line, other_line, stdin, broker, broker],
                             received_us=T0_US)
    assert 6 == result.rejected
    await store.add([], [line, stdin, broker], received_us=T0_US)
    assert [("file:month.jsonl:7", b"{oops"), ("file:month.jsonl:8", b"{oops"),
            ("stdin:7", b"{oops"), ("meter/initech/events", b"{oops"),
            ("meter/initech/events", b"{oops"), ("meter/initech/events", b"{oops")] == [
        (r.topic, r.raw) for r in await store.rejected()]


# --- copying a store (meter migrate) -----------------------------------------------------------

@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda p: f"to-{p}")
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A second, empty store of each implementation: the copy's target."""
    if request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        location = server.create_database()
    else:
        location = str(tmp_path / "target.db")
    s = await open_store(location)
    yield s
    await s.close()
    if request.param == "postgres":
        server.drop_database(location)


async def filled(store: Store) -> None:
    """A store with a history worth copying: duplicates absorbed, rejected rows pruned (gaps in
    their seq), a truncated payload, a raw payload with unknown fields, two finalized reports."""
    store.rejected_keep_bytes = 8
    odd = Event(id="u", type="logout", account="globex", user="\u00fc", ts=T0, pool=None,
                session="s\u00e9", raw=b'{"id":"u","extra":[1,2]}\xff')
    await store.add([event("e1"), event("e2", minutes=-3), event("e1")],
                    [bad(b"gone", at=T0_US - 10), bad(b"0123456789abcdef", reason="oversized"),
                     bad(b"{x", reason="not_json", topic="file:f.jsonl:1")], received_us=T0_US)
    await store.add([odd, event("e3", type="assign", pool="named")], [bad(b"kept")],
                    received_us=T0_US + 7)
    assert 1 == await store.prune_rejected(T0_US - 1, 10**9)
    await store.add_finalized(finalized())
    await store.add_finalized(finalized(account="globex", cutoff=4))


async def test_a_copy_keeps_every_seq_payload_and_report(store: Store, target: Store) -> None:
    """export -> import, page by page, into another store (of either implementation) gives the
    same events with their seq and raw payloads, the same rejected rows as stored, the same
    finalized reports; the next arrival in the copy continues after the largest seq."""
    await filled(store)
    for rows in [rows async for rows in store.export_events(page=2)]:
        assert len(rows) == await target.import_events(rows)
    for rejected in [rows async for rows in store.export_rejected(page=1)]:
        assert len(rejected) == await target.import_rejected(rejected)
    for report in await store.finalized_reports():
        assert True is await target.add_finalized(report)
    assert await store.event_records(0, limit=100) == await target.event_records(0, limit=100)
    assert [1, 2, 3, 4] == [e.seq for e, _ in await target.event_records(0, limit=100)]
    assert b'{"id":"u","extra":[1,2]}\xff' == (await target.event_records(2, limit=1))[0][1]
    assert await store.rejected() == await target.rejected()
    assert [2, 3, 4] == [r.seq for r in await target.rejected()]
    assert [("acme", 3), ("globex", 4)] == [
        (r.account, r.cutoff_seq) for r in await target.finalized_reports()]
    assert await store.finalized_reports() == await target.finalized_reports()
    assert await store.counts() == await target.counts()
    late = await target.add([event("e9")], [bad(b"new")], received_us=T0_US + 9)
    assert ((0,), 5) == (late.fresh, await target.last_seq())
    assert 5 == (await target.rejected())[-1].seq


async def test_an_import_never_merges(store: Store) -> None:
    """Importing a seq or an (account, id) the store holds already fails whole, not retriable,
    and stores nothing of that call."""
    await store.add([event("e1"), event("e2")], [bad(b"r")], received_us=T0_US)
    (_, raw1), (e2, raw2) = await store.event_records(0, limit=10)
    fresh = StoredEvent(seq=7, account="acme", id="e7", type="login", user="u1", pool=None,
                        session=None, ts_us=T0_US, received_us=T0_US)
    for rows in ([(fresh, b"{}"), (e2, raw2)],
                 [(fresh, b"{}"), (StoredEvent(8, "acme", "e1", "login", "u1", None, None, 0, 0),
                                   raw1)]):
        with pytest.raises(StoreError) as caught:
            await store.import_events(rows)
        assert False is caught.value.retriable
    (r,) = await store.rejected()
    with pytest.raises(StoreError) as caught:
        await store.import_rejected([r])
    assert False is caught.value.retriable
    assert ({"events": 2, "rejected": 1}, 2) == (await store.counts(), await store.last_seq())


async def test_an_empty_store_exports_nothing(store: Store) -> None:
    """No pages from an empty store, and no finalized reports."""
    assert ([], [], []) == ([rows async for rows in store.export_events()],
                            [rows async for rows in store.export_rejected()],
                            await store.finalized_reports())
