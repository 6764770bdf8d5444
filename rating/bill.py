"""The account's bill for one period: pools, named seats, add-ons, seat changes, overage, total.

It owns the assembly of the other rating modules into one `AccountBill` (their results carried
as they are: `NamedUsage`, `Coverage`, `Episode`, `RightSizing`). Late-event adjustments of a
finalized period are `rating.late`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray

from rating.columns import Row, StoredColumns, first_appearance, held_pools, resolve_pools
from rating.contracts import Account, Pool
from rating.coverage import Coverage, cover
from rating.grace import format_hms
from rating.money import format_price, round_money
from rating.named import NamedUsage, build_rosters, rate_named
from rating.people import UserUsage
from rating.periods import Period
from rating.pool import Episode, PoolJob, PoolRating, rate_pools
from rating.rightsizing import RightSizing, right_size_pools
from rating.seatchanges import QuantitySteps, SeatLedger, apply_orders, format_seats
from rating.timeline import Timeline
from rating.usage import ASSIGN, UNASSIGN, EventColumns, UsageEvent, from_us, iso, to_us

__all__ = [
    "RATING_VERSION",
    "AccountBill",
    "Line",
    "PoolUse",
    "RefusedOrder",
    "Row",
    "rate_account",
    "rate_columns",
    "rate_rows",
]

#: Bumped whenever a rule change can change a bill: it is part of every report's input hash,
#: so a report made under other rules never verifies as reproducible.
RATING_VERSION = "2"


@dataclass(frozen=True, slots=True)
class PoolUse:
    """One pool in one period.

    `licensed` is the highest quantity in force in the period. `concurrency` is c(t) on the
    period (arrays, not objects: a busy month has thousands of steps per pool) and
    `licensed_steps` E(t) as (from, value) steps clipped to the period. Named pools carry their
    raw concurrency (peak) but never overage: they are billed by quantity.
    """

    pool: Pool
    licensed: int
    peak: int
    peak_at: datetime | None
    billable_peak: int | None
    overage_seats: int
    overage_amount: Decimal
    episodes: tuple[Episode, ...]  # concurrent pools only
    users: int
    concurrency: Timeline | None
    licensed_steps: QuantitySteps
    people: tuple[UserUsage, ...] = ()  # who was counted (`rating.people`)


@dataclass(frozen=True, slots=True)
class Line:
    """One bill line: `recurring`, `seat_add`, `switch_credit`, `overage` or `adjustment`.

    `amount` is already rounded to the currency's minor unit (negative for a credit).
    `for_period` is the finalized period an `adjustment` corrects.
    """

    kind: str
    target: str
    quantity: int
    amount: Decimal
    description: str
    at: datetime | None = None
    unit_price: Decimal | None = None
    for_period: Period | None = None


@dataclass(frozen=True, slots=True)
class RefusedOrder:
    """A seat order (or an assign) refused, with its reason."""

    kind: str  # "order" or "assign"
    target: str
    at: datetime
    quantity: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class AccountBill:
    """Everything an account owes or used in one period. `total` is the sum of `charges`:
    recurring + seat changes + switch lines + overage + adjustments."""

    account: Account
    period: Period
    pools: tuple[PoolUse, ...]
    named: tuple[NamedUsage, ...]
    addons: tuple[Coverage, ...]
    charges: tuple[Line, ...]
    refused: tuple[RefusedOrder, ...]
    right_sizing: tuple[RightSizing, ...]
    total: Decimal
    unresolved_events: int = 0


# --- assembly -------------------------------------------------------------------------------------


def _pool_use(account: Account, rating: PoolRating) -> PoolUse:
    pool = rating.pool
    licensed_steps = rating.licensed.points()
    concurrent = pool.model == "concurrent"
    overage_seats = rating.overage_seats if concurrent else 0
    overage = round_money(rating.overage_amount, account.exponent) if concurrent else Decimal(0)
    return PoolUse(
        pool=pool, licensed=max(q for _, q in licensed_steps), peak=rating.peak,
        peak_at=rating.peak_at, billable_peak=rating.billable_peak if concurrent else None,
        overage_seats=overage_seats, overage_amount=overage,
        episodes=rating.episodes if concurrent else (),
        users=rating.users, concurrency=rating.concurrency,
        licensed_steps=licensed_steps, people=rating.people,
    )


def _overage_line(account: Account, use: PoolUse, period: Period) -> Line:
    pool = use.pool
    price = pool.overage_price or Decimal(0)
    billed = [e for e in use.episodes if not e.within_grace]
    worst = max(billed, key=lambda e: (e.sustained_level, e.duration), default=None)
    if pool.grace_mode == "cumulative":
        where = f"; {len(billed)} billed episodes, cumulative grace {format_hms(pool.grace)}"
    elif worst is not None:
        where = f"; sustained {format_hms(worst.duration)} from {iso(worst.start)}"
    else:
        where = ""
    return Line(
        kind="overage", target=pool.id, quantity=use.overage_seats, amount=use.overage_amount,
        unit_price=price, at=period.end,
        description=(f"{format_seats(use.overage_seats)} over the licensed quantity x "
                     f"{format_price(price, account.exponent)} (billable peak "
                     f"{use.billable_peak} against {use.licensed} licensed{where})"),
    )


def _rows(events: Iterable[UsageEvent], account: str) -> list[Row]:
    return [(e.id, e.type, e.user, e.pool, e.session, to_us(e.ts))
            for e in events if e.account == account]


def _event(account: str, row: Row, pool: str | None) -> UsageEvent:
    return UsageEvent(id=row[0], type=row[1], account=account,  # type: ignore[arg-type]
                      user=row[2], ts=from_us(row[5]), pool=pool, session=row[4])


def _resolve(account: Account, cols: StoredColumns, steps: Mapping[str, QuantitySteps]
             ) -> tuple[NDArray[np.int64], NDArray[np.int32], tuple[str, ...], list[UsageEvent],
                        int]:
    """The session rows that have a pool, each with its pool (`Account.pool_for`, with the seat
    the user holds at the row's time, where the row names none): their indexes, pool codes and
    the pool ids the codes index; the events named seats need (seat events, and use of named
    pools); and how many session rows stayed without a pool."""
    named = account.named_pools
    seat = (cols.kind == ASSIGN) | (cols.kind == UNASSIGN)
    seat_rows = [cols.row(i) for i in np.flatnonzero(seat).tolist()] if named else []
    seat_events = [_event(account.id, r, r[3]) for r in seat_rows]
    session = np.flatnonzero(~seat)
    pool = cols.pool[session]
    missing = np.flatnonzero(pool < 0)
    held = np.full(missing.shape[0], -1, np.int32)
    if named and missing.shape[0]:
        rosters = build_rosters(account, seat_events, steps)
        rows = session[missing]
        held = held_pools(account, rosters, cols.user[rows], cols.users, cols.ts[rows])
    found, names = resolve_pools(account, cols.kind[session[missing]], held)
    # One vocabulary for stored and resolved pools (each id once): the stored ones, then the
    # account's that were not stored.
    vocab = (*cols.pools, *(n for n in names if n not in cols.pools))
    at = np.array([vocab.index(n) for n in names] + [-1], np.int32)  # found -1 reads the last
    codes = pool.astype(np.int32)
    codes[missing] = at[found]
    keep = codes >= 0
    unresolved = int(np.count_nonzero(~keep))
    index, codes = session[keep], codes[keep]
    use = np.isin(codes, [i for i, p in enumerate(vocab) if p in named])
    named_use = [_event(account.id, cols.row(i), vocab[c]) for i, c in
                 zip(index[use].tolist(), codes[use].tolist(), strict=True)]
    return index, codes, vocab, seat_events + named_use, unresolved


def _columns(account: str, cols: StoredColumns, index: NDArray[np.int64],
             pool_codes: NDArray[np.int32], pool_vocab: Sequence[str]) -> EventColumns:
    """One account's session rows `index` of `cols` (every one with a pool, `pool_codes` into
    `pool_vocab`) as `EventColumns`.

    The same coding as `EventColumns.from_rows` (users, pools, members, sessions per member, in
    order of first appearance among these rows), built with numpy, since the report codes
    millions of rows; members and sessions are numbered in sorted order of their codes.
    """
    n = index.shape[0]
    user, user_old = first_appearance(cols.user[index])
    pool, pool_old = first_appearance(pool_codes)
    text = cols.session[index].astype(np.int64)
    named = text >= 0
    text_new, text_old = first_appearance(text[named])
    text[named] = text_new
    width = max(user_old.shape[0], 1)
    pairs, member = np.unique(pool.astype(np.int64) * width + user, return_inverse=True)
    member = member.reshape(-1)
    spread = max(text_old.shape[0], 1)
    keys, code = np.unique(member[named] * spread + text[named], return_inverse=True)
    session = np.full(n, -1, np.int32)
    session[named] = code.reshape(-1)
    by_code = [cols.sessions[k] for k in text_old.tolist()]
    ids = np.array(cols.ids, dtype=object)[index].tolist() if n else []
    return EventColumns(
        ts=cols.ts[index], kind=cols.kind[index], pool=pool, user=user,
        member=member.astype(np.int32), session=session,
        pools=tuple((account, str(pool_vocab[p])) for p in pool_old.tolist()),
        users=tuple((account, cols.users[u]) for u in user_old.tolist()),
        member_pool=(pairs // width).astype(np.int32), member_user=(pairs % width).astype(np.int32),
        sessions=tuple(by_code[k % spread] for k in keys.tolist()),
        ids=tuple(ids),
    )


def rate_account(account: Account, events: Sequence[UsageEvent], period: Period, *,
                 ledger: SeatLedger | None = None,
                 adjustment_lines: Iterable[Line] = ()) -> AccountBill:
    """Rate `account` for `period` from its `events`.

    `events` must cover the period's input window `[start - session_timeout, end +
    session_timeout)` (and, for named pools, every assign/unassign since the anchor) so sessions
    straddling the start and timeouts near the end come out right. `adjustment_lines` are the
    late-event corrections of earlier finalized periods (see `adjustments`), billed here.
    """
    return rate_rows(account, _rows(events, account.id), period, ledger=ledger,
                     adjustment_lines=adjustment_lines)


def rate_rows(account: Account, rows: Sequence[Row], period: Period, *,
              ledger: SeatLedger | None = None, adjustment_lines: Iterable[Line] = (),
              until: datetime | None = None) -> AccountBill:
    """`rate_account` from the account's stored rows (id, type, user, pool, session, ts_us):
    `rate_columns` of their columns."""
    return rate_columns(account, StoredColumns.from_rows(rows), period, ledger=ledger,
                        adjustment_lines=adjustment_lines, until=until)


def rate_columns(account: Account, stored: StoredColumns, period: Period, *,
                 ledger: SeatLedger | None = None, adjustment_lines: Iterable[Line] = (),
                 until: datetime | None = None) -> AccountBill:
    """`rate_account` from the account's stored events as column arrays.

    `until` is the horizon of what is known (default `period.end + session_timeout`): a period
    still running is rated as of now, so a session open then counts as open up to it, as the
    live view counts it, instead of as closed at its last event.

    The report's path: the rows go into one `EventColumns` and every pool of the account is
    rated in one vectorised `rate_pools` call; only seat events and named-pool use become
    `UsageEvent` objects.
    """
    ledger = ledger or apply_orders(account)
    steps = {p.id: ledger.licensed_steps(p.id) for p in account.pools}
    index, pool_codes, pool_vocab, named_events, unresolved = _resolve(account, stored, steps)
    cols = _columns(account.id, stored, index, pool_codes, pool_vocab)
    jobs = [PoolJob(account.id, pool, period, steps[pool.id], account.session_timeout, until)
            for pool in account.pools]
    pools = tuple(_pool_use(account, rating) for rating in rate_pools(cols, jobs))
    named = rate_named(account, named_events, period, steps) if account.named_pools else ()
    addons = cover(account, {u.pool.id: u.users for u in pools},
                   licensed={u.pool.id: u.licensed for u in pools},
                   purchased={a.id: ledger.licensed_max(a.id, period) for a in account.addons})

    charges: list[Line] = [
        Line(kind=c.kind, target=c.target, quantity=c.quantity, amount=c.amount,
             description=c.description, at=c.at, unit_price=c.unit_price)
        for c in ledger.lines_in(period)
    ]
    charges += [_overage_line(account, u, period) for u in pools if u.overage_seats]
    charges += list(adjustment_lines)

    refused = [
        RefusedOrder(kind="order", target=r.target, at=r.order.at, quantity=r.order.quantity,
                     reason=r.reason)
        for r in ledger.refused_in(period)
    ]
    refused += [
        RefusedOrder(kind="assign", target=r.pool, at=r.at, quantity=None,
                     reason=f"assign of {r.user!r} (event {r.event_id}): {r.reason}")
        for n in named for r in n.refused
    ]

    seat_adds: dict[str, Decimal] = {}
    for c in charges:
        if c.kind == "seat_add":
            seat_adds[c.target] = seat_adds.get(c.target, Decimal(0)) + c.amount
    sizing = right_size_pools(account, pools, period, seat_adds)

    total = sum((c.amount for c in charges), Decimal(0))
    return AccountBill(
        account=account, period=period, pools=pools, named=named, addons=addons,
        charges=tuple(charges), refused=tuple(sorted(refused, key=lambda r: (r.at, r.target))),
        right_sizing=sizing, total=round_money(total, account.exponent),
        unresolved_events=unresolved,
    )
