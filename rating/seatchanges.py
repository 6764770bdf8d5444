"""Seat changes: an account's dated orders walked under its policy into charges, credits and refusals.

It owns the seat-change rules of DESIGN section 2 (seeds 000-002): `prorate`, `packs` and billing
switches, the recurring charge of every term (each pool's and add-on's price x quantity, billed
at the term's start), and the licensed quantity in force over time that concurrency and named
seats rate against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from rating.contracts import PER_SEAT_ADDONS, Account, Order
from rating.errors import PolicyViolation
from rating.money import format_money, format_price, round_money
from rating.periods import Period, local_midnight, term
from rating.usage import iso

__all__ = [
    "PACK_SIZE",
    "RENEWAL_WINDOW_DAYS",
    "Change",
    "Charge",
    "QuantitySteps",
    "Quote",
    "Refusal",
    "SeatLedger",
    "apply_orders",
    "describe_total",
    "format_seats",
    "format_span",
    "licensed_at",
    "quote",
]

#: Seed 002: "Additional licenses can be purchased in groups of 5 licenses".
PACK_SIZE = 5
#: Seed 002: "Your renewal period begins 30 days before your subscription's expiration date".
RENEWAL_WINDOW_DAYS = 30

ChargeKind = Literal["recurring", "seat_add", "switch_credit"]
#: Lines at the same instant: the old term's credit, then the new term's charge, then seats added.
_SAME_INSTANT = {"switch_credit": 0, "recurring": 1, "seat_add": 2}
TargetKind = Literal["pool", "addon"]
#: The licensed quantity as a step function: (from, quantity) pairs, times ascending; each
#: quantity holds from its time until the next pair's.
QuantitySteps = tuple[tuple[datetime, int], ...]


@dataclass(frozen=True, slots=True)
class Charge:
    """One bill line of the seat ledger: a charge (amount > 0) or a credit (amount < 0).

    `recurring` is a term's price x quantity at the term's start; `seat_add` and `switch_credit`
    are made by orders.

    `amount` is exact-then-rounded half-up to the currency's minor unit, once for this line.
    """

    kind: ChargeKind
    account: str
    target: str
    target_kind: TargetKind
    at: datetime
    quantity: int
    unit_price: Decimal
    amount: Decimal
    currency: str
    description: str

    @property
    def pool(self) -> str | None:
        """The pool the line is for, if it is for a pool."""
        return self.target if self.target_kind == "pool" else None

    @property
    def addon(self) -> str | None:
        """The add-on the line is for, if it is for an add-on."""
        return self.target if self.target_kind == "addon" else None


@dataclass(frozen=True, slots=True)
class Change:
    """An accepted order and what it did.

    `before` and `after` are the quantities in force just before and just after `at`; `renews` is
    the quantity the next term starts with. `added` seats were bought (and charged),
    `restored` seats were taken back from a scheduled removal (free), `removing` seats leave at
    `removal_at` (the end of the term).
    """

    order: Order
    account: str
    target: str
    at: datetime
    before: int
    after: int
    renews: int
    added: int = 0
    restored: int = 0
    removing: int = 0
    removal_at: datetime | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """An order its policy refuses; nothing of it was applied."""

    order: Order
    account: str
    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Renewal:
    """What the terms after the walk's last one renew with (no order changes them any more)."""

    account: Account
    anchor: date
    billing: str
    term: Period
    #: (kind, id, quantity the next term starts with, price per seat per term) per seat.
    seats: tuple[tuple[TargetKind, str, int, Decimal], ...]


@dataclass(frozen=True, slots=True)
class SeatLedger:
    """What an account's orders did: accepted changes, refusals, bill lines, quantities in force.

    `charges` are the lines orders made (`seat_add`, `switch_credit`); `recurring` the terms'
    charges up to the term of the last order walked (`recurring_in` also gives later terms').
    """

    account: str
    currency: str
    exponent: int
    changes: tuple[Change, ...]
    refused: tuple[Refusal, ...]
    charges: tuple[Charge, ...]
    #: (target id, steps) per pool and add-on, pools first, in contract order.
    steps: tuple[tuple[str, QuantitySteps], ...]
    recurring: tuple[Charge, ...] = ()
    renewal: _Renewal | None = field(default=None, repr=False, compare=False)

    def licensed_steps(self, target_id: str) -> QuantitySteps:
        """The quantity of pool (or add-on) `target_id` in force over time, from the anchor.

        Additions count from purchase, removals from the end of their term; refused orders change
        nothing. Raises KeyError for an id the account does not have.
        """
        for target, steps in self.steps:
            if target == target_id:
                return steps
        raise KeyError(f"account {self.account!r} has no pool or add-on {target_id!r}")

    def licensed_at(self, target_id: str, instant: datetime) -> int:
        """The quantity of `target_id` in force at `instant` (0 before the anchor)."""
        return licensed_at(self.licensed_steps(target_id), instant)

    def licensed_max(self, target_id: str, period: Period) -> int:
        """The highest quantity of `target_id` in force at any instant of `period`."""
        steps = self.licensed_steps(target_id)
        inside = [q for t, q in steps if period.start < t < period.end]
        return max([licensed_at(steps, period.start), *inside])

    def charges_in(self, period: Period) -> tuple[Charge, ...]:
        """The bill lines of orders placed within `period` (half-open), in time order."""
        return tuple(c for c in self.charges if c.at in period)

    def recurring_in(self, period: Period) -> tuple[Charge, ...]:
        """The recurring lines of the terms that start within `period` (half-open).

        A monthly account has a term starting in every monthly period; an annual one only in
        the period holding the term's first day. Terms after the last order renew with the
        quantities scheduled then, at the price of the last term.
        """
        lines = [c for c in self.recurring if c.at in period]
        tail = self.renewal
        if tail is None:
            return tuple(lines)
        start = tail.term.end
        while start < period.end:
            current = term(tail.account, start, anchor=tail.anchor, billing=tail.billing)
            if start >= period.start:
                lines += _recurring_lines(tail.account, current, tail.billing, current.start,
                                          seats=tail.seats)
            start = current.end
        return tuple(lines)

    def lines_in(self, period: Period) -> tuple[Charge, ...]:
        """Every ledger line of `period`: recurring and order lines, in time order (at one
        instant: a switch's credit, then the new term's charge, then seat additions)."""
        lines = self.recurring_in(period) + self.charges_in(period)
        return tuple(sorted(lines, key=lambda c: (c.at, _SAME_INSTANT[c.kind])))

    def refused_in(self, period: Period) -> tuple[Refusal, ...]:
        """The orders placed within `period` that were refused."""
        return tuple(r for r in self.refused if r.order.at in period)


@dataclass(frozen=True, slots=True)
class Quote:
    """What one order would do now, without doing it: its bill lines, or why it is refused."""

    account: str
    order: Order
    currency: str
    exponent: int
    change: Change | None
    charges: tuple[Charge, ...]
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the policy accepts the order."""
        return self.reason is None

    @property
    def total(self) -> Decimal:
        """The sum of the order's lines (each already rounded): > 0 is owed, < 0 is credited."""
        return sum((c.amount for c in self.charges), Decimal(0))


def licensed_at(steps: QuantitySteps, instant: datetime) -> int:
    """The quantity a step function gives at `instant` (0 before its first step)."""
    quantity = 0
    for start, value in steps:
        if start > instant:
            break
        quantity = value
    return quantity


def format_span(span: timedelta, *, compact: bool = False) -> str:
    """A duration to the second as "14d 0h 0m 0s", or compact ("30d", "30d 23h") for a period."""
    seconds = span // timedelta(seconds=1)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    if compact:
        text = " ".join(f"{n}{unit}" for n, unit in parts if n)
        return text or "0s"
    return " ".join(f"{n}{unit}" for n, unit in parts)


def format_seats(n: int) -> str:
    """"1 seat", "3 seats": how bill lines count seats."""
    return f"{n} seat" if n == 1 else f"{n} seats"


def _count(target_kind: TargetKind, target: str, n: int) -> str:
    """How a line counts what it bills: seats of a pool or per-seat add-on ("12 seats"), a bare
    number of an account-wide or counted add-on ("1" virtual agent, "3" toll-free numbers)."""
    return format_seats(n) if target_kind == "pool" or target in PER_SEAT_ADDONS else str(n)


def _recurring_lines(account: Account, span: Period, billing: str, at: datetime, *,
                     seats: Iterable[tuple[TargetKind, str, int, Decimal]],
                     lead: str = "") -> list[Charge]:
    """A term's recurring lines: each seat's price x quantity, billed at `at` (its start, or
    the switch that started it). Seats with quantity 0 make no line."""
    exp = account.exponent
    tz = account.tz
    first = span.start.astimezone(tz).date()
    last = (span.end.astimezone(tz) - timedelta(microseconds=1)).date()
    kind = "monthly" if billing == "monthly" else "annual"
    return [
        Charge(
            kind="recurring", account=account.id, target=target, target_kind=target_kind,
            at=at, quantity=quantity, unit_price=price, amount=round_money(price * quantity, exp),
            currency=account.currency,
            description=(f"{lead}{_count(target_kind, target, quantity)} x "
                         f"{format_price(price, exp)} for the "
                         f"{kind} term {first.isoformat()} through {last.isoformat()}"),
        )
        for target_kind, target, quantity, price in seats if quantity
    ]



@dataclass(slots=True)
class _Seat:
    """Working state of one pool or add-on while the orders are walked (private, mutable)."""

    kind: TargetKind
    id: str
    #: Per seat per term of the current billing frequency: the contract's, then a switch's.
    price: Decimal
    #: Usable now. Under both policies this is also the highest quantity paid for in the term,
    #: because removals wait for the term's end.
    in_force: int
    #: What the next term starts with: the last accepted total, never above `in_force`.
    renews: int
    steps: list[tuple[datetime, int]] = field(default_factory=list)

    def set_in_force(self, instant: datetime, quantity: int) -> None:
        if quantity == self.in_force:
            return
        self.in_force = quantity
        if self.steps and self.steps[-1][0] == instant:
            self.steps[-1] = (instant, quantity)
        else:
            self.steps.append((instant, quantity))


@dataclass(frozen=True, slots=True)
class _Outcome:
    change: Change | None
    charges: tuple[Charge, ...]
    refusal: Refusal | None


class _Walk:
    """Applies orders one at a time, in time order, rolling terms over as time passes."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.start = local_midnight(account.anchor, account.tz)
        self.billing: str = account.billing
        self.term_anchor: date = account.anchor
        self.term: Period = term(account, self.start)
        self.seats: dict[tuple[TargetKind, str], _Seat] = {}
        for pool in account.pools:
            self.seats["pool", pool.id] = _Seat("pool", pool.id, pool.price, pool.quantity,
                                                pool.quantity, [(self.start, pool.quantity)])
        for addon in account.addons:
            self.seats["addon", addon.id] = _Seat("addon", addon.id, addon.price, addon.quantity,
                                                  addon.quantity, [(self.start, addon.quantity)])
        self.changes: list[Change] = []
        self.refused: list[Refusal] = []
        self.charges: list[Charge] = []
        self.recurring: list[Charge] = []
        self._bill_term(self.term.start)

    # --- time ---------------------------------------------------------------------------------

    def roll(self, instant: datetime) -> None:
        """Advance through every term that ends at or before `instant`; removals take effect."""
        while instant >= self.term.end:
            end = self.term.end
            self._end_term(end)
            self.term = term(self.account, end, anchor=self.term_anchor, billing=self.billing)
            self._bill_term(self.term.start)

    def _end_term(self, end: datetime) -> None:
        for seat in self.seats.values():
            seat.set_in_force(end, seat.renews)

    def _bill_term(self, at: datetime, lead: str = "") -> list[Charge]:
        """Bill the current term's price x quantity in force at its start, at `at`."""
        lines = _recurring_lines(self.account, self.term, self.billing, at,
                                 seats=((s.kind, s.id, s.in_force, s.price)
                                        for s in self.seats.values()), lead=lead)
        self.recurring.extend(lines)
        return lines

    def renewal_window(self) -> datetime:
        """Start of the current term's renewal window: 30 local days before its end."""
        end_day = self.term.end.astimezone(self.account.tz).date()
        return local_midnight(end_day - timedelta(days=RENEWAL_WINDOW_DAYS), self.account.tz)

    def price(self, seat: _Seat) -> Decimal:
        """Price per seat per current term: the contract's, or the last switch's for its seat."""
        return seat.price

    # --- orders -------------------------------------------------------------------------------

    def apply(self, order: Order) -> _Outcome:
        self.roll(order.at)
        try:
            if order.at < self.start:
                raise PolicyViolation(
                    f"order at {iso(order.at)} is before the contract starts "
                    f"({iso(self.start)}, anchor {self.account.anchor.isoformat()})")
            if order.billing is not None:
                charges = self._switch(order)
                return _Outcome(None, charges, None)
            return self._seat_order(order)
        except PolicyViolation as exc:
            refusal = Refusal(order, self.account.id, order.target, exc.reason)
            self.refused.append(refusal)
            return _Outcome(None, (), refusal)

    def _seat_order(self, order: Order) -> _Outcome:
        kind: TargetKind = "pool" if order.pool is not None else "addon"
        seat = self.seats.get((kind, order.target))
        if seat is None:
            raise PolicyViolation(f"account {self.account.id!r} has no {kind} {order.target!r}")
        if order.quantity is None or order.quantity < 0:
            raise PolicyViolation(f"an order states the new total quantity (>= 0), "
                                  f"got {order.quantity!r}")
        total = order.quantity
        added = max(0, total - seat.in_force)
        restored = max(0, min(total, seat.in_force) - seat.renews)
        removing = max(0, seat.in_force - total)
        packs = self.account.policy == "packs"
        if packs:
            window = self.renewal_window()
            if added and added % PACK_SIZE:
                raise PolicyViolation(
                    f"packs policy: seats are sold in whole packs of {PACK_SIZE}; "
                    f"{seat.in_force} -> {total} adds {added}")
            if added and order.at >= window:
                raise PolicyViolation(
                    f"packs policy: no purchases in the last {RENEWAL_WINDOW_DAYS} days of the term "
                    f"(renewal window from {iso(window)} to {iso(self.term.end)}); renew first")
            if total < seat.renews and order.at < window:
                raise PolicyViolation(
                    f"packs policy: seats cannot be removed during the term "
                    f"({seat.renews} -> {total}); removals are taken in the renewal window "
                    f"from {iso(window)}")

        charges: tuple[Charge, ...] = ()
        if added:
            charges = (self._add_charge(order, seat, added, packs=packs),)
        before = seat.in_force
        seat.set_in_force(order.at, max(seat.in_force, total))
        seat.renews = total
        parts = []
        if added and packs:
            parts.append(f"{format_seats(added)} added, charged the full price of the term ending"
                         f"{iso(self.term.end)}")
        elif added:
            parts.append(f"{format_seats(added)} added, charged for the rest of the billing period "
                         f"ending {iso(self.term.end)}")
        if restored:
            parts.append(f"{format_seats(restored)} restored from a scheduled removal at no charge")
        if removing:
            parts.append(f"{format_seats(removing)} to be removed at the end of the term "
                         f"{iso(self.term.end)}, usable until then, no refund")
        change = Change(
            order=order, account=self.account.id, target=seat.id, at=order.at, before=before,
            after=seat.in_force, renews=total, added=added, restored=restored, removing=removing,
            removal_at=self.term.end if removing else None,
            description="; ".join(parts) or f"no change: {format_seats(total)} already in force",
        )
        self.changes.append(change)
        self.charges.extend(charges)
        return _Outcome(change, charges, None)

    def _add_charge(self, order: Order, seat: _Seat, added: int, *, packs: bool) -> Charge:
        price = self.price(seat)
        exp = self.account.exponent
        if packs:
            # Seed 002: the price of the term's package, the same whatever time is left.
            exact = price * added
            how = (f"{format_seats(added)} x {format_price(price, exp)} "
                   f"({added // PACK_SIZE} x pack of {PACK_SIZE}, full term price, not prorated)")
        else:
            left = self.term.end - order.at
            # To the second (DESIGN): sub-second parts of a timestamp are not billed.
            left_s = left // timedelta(seconds=1)
            whole_s = self.term.duration // timedelta(seconds=1)
            exact = price * added * left_s / whole_s
            how = (f"{format_seats(added)} x {format_price(price, exp)} x "
                   f"{format_span(left)} / {format_span(self.term.duration, compact=True)}")
        return Charge(
            kind="seat_add", account=self.account.id, target=seat.id, target_kind=seat.kind,
            at=order.at, quantity=added, unit_price=price, amount=round_money(exact, exp),
            currency=self.account.currency, description=how,
        )

    def _switch(self, order: Order) -> tuple[Charge, ...]:
        new = order.billing
        assert new is not None
        if new == self.billing:
            raise PolicyViolation(f"the account is already billed {new}; nothing to switch")
        if self.account.policy == "packs" and order.at < self.renewal_window():
            raise PolicyViolation(
                "packs policy: the billing frequency can change only in the renewal window "
                f"from {iso(self.renewal_window())} to {iso(self.term.end)}")
        missing = [seat.id for seat in self.seats.values() if order.price_of(seat.id) is None]
        if missing:
            # The contracts parser requires them; an order built in code may still lack one.
            raise PolicyViolation(f"the switch to {new} billing states no price for "
                                  f"{', '.join(repr(m) for m in missing)}")
        exp = self.account.exponent
        left = self.term.end - order.at
        left_s = left // timedelta(seconds=1)
        whole_s = self.term.duration // timedelta(seconds=1)
        old_name = "month" if self.billing == "monthly" else "year"
        # Seed 000: credited "towards the annual pricing"; annual -> monthly "a credit to your
        # account to be used for the monthly plan", which can exceed the new month's charge.
        toward = ("credited toward the annual price" if new == "annual"
                  else "credit to the account balance for the monthly plan")
        credits: list[Charge] = []
        for seat in self.seats.values():
            price = self.price(seat)
            if not seat.in_force or not price:
                continue
            exact = price * seat.in_force * left_s / whole_s
            credits.append(Charge(
                kind="switch_credit", account=self.account.id, target=seat.id,
                target_kind=seat.kind, at=order.at, quantity=seat.in_force, unit_price=price,
                amount=-round_money(exact, exp), currency=self.account.currency,
                description=(f"unused part of the {old_name}, {toward}: "
                             f"{_count(seat.kind, seat.id, seat.in_force)} x "
                             f"{format_price(price, exp)} x "
                             f"{format_span(left)} / "
                             f"{format_span(self.term.duration, compact=True)}"),
            ))
        # The switch ends the term: scheduled removals take effect now, and a new term of the
        # new frequency starts on the switch's local day, billed at the switch at its prices.
        self._end_term(order.at)
        self.billing = new
        self.term_anchor = order.at.astimezone(self.account.tz).date()
        self.term = term(self.account, order.at, anchor=self.term_anchor, billing=new)
        for seat in self.seats.values():
            stated = order.price_of(seat.id)
            assert stated is not None  # checked above
            seat.price = stated
        self.charges.extend(credits)
        started = self._bill_term(order.at, lead=f"switch to {new} billing: ")
        return (*credits, *started)

    # --- results ------------------------------------------------------------------------------

    def ledger(self) -> SeatLedger:
        """The results so far; removals already scheduled appear as steps at their term's end."""
        steps: list[tuple[str, QuantitySteps]] = []
        for seat in self.seats.values():
            pairs = list(seat.steps)
            if seat.renews != seat.in_force:
                pairs.append((self.term.end, seat.renews))
            steps.append((seat.id, tuple(pairs)))
        renewal = _Renewal(
            account=self.account, anchor=self.term_anchor, billing=self.billing, term=self.term,
            seats=tuple((s.kind, s.id, s.renews, s.price) for s in self.seats.values()))
        return SeatLedger(
            account=self.account.id, currency=self.account.currency,
            exponent=self.account.exponent, changes=tuple(self.changes),
            refused=tuple(self.refused), charges=tuple(self.charges), steps=tuple(steps),
            recurring=tuple(self.recurring), renewal=renewal,
        )


def apply_orders(account: Account, until: datetime | None = None) -> SeatLedger:
    """Walk the account's orders placed before `until` (all when None) under its policy.

    Orders are taken in time order (orders at the same instant in file order). Each is accepted
    whole or refused whole with a reason. The policy applies alike to pools and add-ons.
    """
    walk = _Walk(account)
    for order in sorted(account.orders, key=lambda o: o.at):
        if until is not None and order.at >= until:
            break
        walk.apply(order)
    return walk.ledger()


def quote(account: Account, order: Order) -> Quote:
    """What `order` would charge or credit, after the account's orders placed up to its time.

    Nothing is changed: the account's own orders are replayed and the new one is tried last.
    """
    walk = _Walk(account)
    for existing in sorted(account.orders, key=lambda o: o.at):
        if existing.at > order.at:
            break
        walk.apply(existing)
    outcome = walk.apply(order)
    return Quote(
        account=account.id, order=order, currency=account.currency, exponent=account.exponent,
        change=outcome.change, charges=outcome.charges,
        reason=outcome.refusal.reason if outcome.refusal else None,
    )


def describe_total(q: Quote) -> str:
    """One line: what the order costs or credits in total, with the currency."""
    amount = format_money(q.total, q.exponent)
    if q.total > 0:
        return f"charge {amount} {q.currency}"
    if q.total < 0:
        return f"credit {format_money(-q.total, q.exponent)} {q.currency}"
    return f"no charge ({amount} {q.currency})"

