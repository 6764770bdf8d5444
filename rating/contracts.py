"""Contracts: the accounts, pools, add-ons and seat orders, parsed from TOML into frozen values.

Parsing is pure (`tomllib.loads` on text the caller read). Every error names the account, the
table and the key, so an operator can find the line to fix. Durations are strings like "30m",
money is a string parsed to `Decimal`, times are aware and converted to UTC.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rating.durations import parse_duration
from rating.errors import ContractError

__all__ = [
    "CURRENCY_EXPONENTS",
    "Account",
    "Addon",
    "BillTo",
    "Contracts",
    "Order",
    "Pool",
    "parse_contracts",
    "parse_duration",
]

Tier = Literal["essentials", "premium", "elite"]
Model = Literal["named", "concurrent"]
GraceMode = Literal["continuous", "cumulative"]
Billing = Literal["monthly", "annual"]
Policy = Literal["prorate", "packs"]

TIERS: tuple[str, ...] = ("essentials", "premium", "elite")
MODELS: tuple[str, ...] = ("named", "concurrent")
GRACE_MODES: tuple[str, ...] = ("continuous", "cumulative")
BILLINGS: tuple[str, ...] = ("monthly", "annual")
POLICIES: tuple[str, ...] = ("prorate", "packs")
PER_SEAT_ADDONS: tuple[str, ...] = ("wfm", "qm", "aea")
ACCOUNT_ADDONS: tuple[str, ...] = ("virtual_agent",)
COUNTED_ADDONS: tuple[str, ...] = ("toll_free_numbers", "global_numbers", "cloud_storage")
ADDONS: tuple[str, ...] = PER_SEAT_ADDONS + ACCOUNT_ADDONS + COUNTED_ADDONS
#: Event types (DESIGN section 3); seat events assign and unassign named seats.
EVENT_KINDS: tuple[str, ...] = ("login", "logout", "heartbeat", "assign", "unassign")
SEAT_KINDS: frozenset[str] = frozenset({"assign", "unassign"})

#: ISO 4217 minor-unit exponents of the currencies we bill in. Money is rounded to these.
CURRENCY_EXPONENTS: Mapping[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CAD": 2, "AUD": 2, "NZD": 2, "CHF": 2, "SEK": 2, "NOK": 2,
    "DKK": 2, "PLN": 2, "CZK": 2, "MXN": 2, "BRL": 2, "INR": 2, "SGD": 2, "HKD": 2, "ZAR": 2,
    "CNY": 2, "ILS": 2, "AED": 2, "JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3,
    "OMR": 3, "JOD": 3, "TND": 3,
}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Pool:
    """One license product an account buys. `quantity` is in force from the anchor."""

    id: str
    tier: Tier
    model: Model
    quantity: int
    price: Decimal
    overage_price: Decimal | None = None
    grace: timedelta = timedelta(minutes=30)
    grace_mode: GraceMode = "continuous"
    #: Declared number of users of the pool (the roster), used for add-on coverage when larger
    #: than the distinct users seen in a period.
    roster: int | None = None


@dataclass(frozen=True, slots=True)
class Addon:
    """A per-seat, account-wide or counted add-on, bought in `quantity` at `price` each."""

    id: str
    quantity: int
    price: Decimal


@dataclass(frozen=True, slots=True)
class Order:
    """A dated change: a pool's or add-on's new TOTAL quantity, or a switch of billing frequency.

    Exactly one of `pool`, `addon` or `billing` is set. A switch states `prices`: the new term's
    price per seat per billing period of every pool and add-on, as (id, price) pairs.
    """

    at: datetime
    pool: str | None = None
    addon: str | None = None
    quantity: int | None = None
    billing: Billing | None = None
    prices: tuple[tuple[str, Decimal], ...] = ()

    @property
    def target(self) -> str:
        """The pool or add-on id the order changes, or "billing" for a frequency switch."""
        return self.pool or self.addon or "billing"

    def price_of(self, target_id: str) -> Decimal | None:
        """The price a switch states for pool or add-on `target_id`, or None."""
        return next((price for key, price in self.prices if key == target_id), None)


@dataclass(frozen=True, slots=True)
class BillTo:
    """Who the invoice is addressed to; every part is optional."""

    name: str | None = None
    address: tuple[str, ...] = ()
    email: str | None = None
    tax_id: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """A tenant: its billing rules, pools, add-ons and dated seat orders (sorted by time).

    It owns the one rule for events that name no pool (`pool_for`); `named_pools` are the ids
    of its named pools in contract order.
    """

    id: str
    timezone: str
    currency: str
    billing: Billing
    anchor: date
    policy: Policy
    session_timeout: timedelta = timedelta(hours=12)
    pools: tuple[Pool, ...] = ()
    addons: tuple[Addon, ...] = ()
    orders: tuple[Order, ...] = ()
    #: The customer's name on the invoice (the id where the contract gives none).
    name: str = ""
    bill_to: BillTo | None = None
    tz: ZoneInfo = field(default=ZoneInfo("UTC"), compare=False, repr=False)
    # Derived from `pools` once: the tracker and the report resolve pools per event.
    named_pools: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _only_named: str | None = field(init=False, repr=False, compare=False)
    _unheld_use: str | None = field(init=False, repr=False, compare=False)
    _fixed: dict[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.id)
        named = tuple(p.id for p in self.pools if p.model == "named")
        concurrent = tuple(p.id for p in self.pools if p.model == "concurrent")
        only_named = named[0] if len(named) == 1 else None
        if len(concurrent) == 1:
            unheld = concurrent[0]
        elif concurrent:
            unheld = None  # several concurrent pools: the event must say which
        else:
            # Unlicensed use of the only named pool: counted and reported (DESIGN section 2).
            unheld = only_named
        for name, value in (("named_pools", named), ("_only_named", only_named),
                            ("_unheld_use", unheld)):
            object.__setattr__(self, name, value)
        # Derived from `pool_for` itself, so the two can never disagree.
        fixed = {}
        for kind in EVENT_KINDS:
            answers = {self.pool_for(kind, held) for held in (None, *named)}
            fixed[kind] = answers.pop() if len(answers) == 1 else None
        object.__setattr__(self, "_fixed", fixed)

    def pool_for(self, kind: str, held: str | None) -> str | None:
        """The pool of an event of type `kind` that names none, or None where nothing tells.

        `held` is the named pool whose seat the event's user holds at the event's time (the
        first in contract order), or None. A seat event (assign, unassign) goes to the account's
        only named pool; an unassign goes to the pool whose seat the user holds. A session event
        (login, logout, heartbeat) goes to the named pool the user holds a seat of, else to the
        account's single concurrent pool, else, where there is no concurrent pool and exactly
        one named pool, to that pool as unlicensed use. Callers count the events left at None.
        """
        if kind in SEAT_KINDS:
            return held if kind == "unassign" and held is not None else self._only_named
        return held if held is not None else self._unheld_use

    def fixed_pool(self, kind: str) -> str | None:
        """`pool_for(kind, held)` where it is the same whatever seat the user holds, else None.

        What can be told of an event without a pool before any seat is known (at ingest):
        the account's only pool for a session event, its only named pool for a seat event.
        """
        return self._fixed.get(kind)

    @property
    def exponent(self) -> int:
        """Minor-unit exponent of the account's currency (2 for USD: cents)."""
        return CURRENCY_EXPONENTS[self.currency]

    def pool(self, pool_id: str) -> Pool | None:
        """The pool with this id, or None."""
        return next((p for p in self.pools if p.id == pool_id), None)

    def addon(self, addon_id: str) -> Addon | None:
        """The add-on with this id, or None."""
        return next((a for a in self.addons if a.id == addon_id), None)


@dataclass(frozen=True, slots=True)
class Contracts:
    """All accounts of one contracts file, in file order."""

    accounts: tuple[Account, ...]
    # An index by id: `get` runs once per event, and a scan of 1,000 accounts dominated ingest.
    _by_id: dict[str, Account] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {a.id: a for a in self.accounts})

    def get(self, account_id: str) -> Account | None:
        """The account with this id, or None."""
        return self._by_id.get(account_id)

    def __contains__(self, account_id: object) -> bool:
        return isinstance(account_id, str) and account_id in self._by_id


# --- parsing -------------------------------------------------------------------------------------

_ACCOUNT_KEYS = {
    "id", "timezone", "currency", "billing", "anchor", "policy", "session_timeout",
    "pool", "addon", "order", "name", "bill_to",
}
_POOL_KEYS = {
    "id", "tier", "model", "quantity", "price", "overage_price", "grace", "grace_mode", "roster",
}
_ADDON_KEYS = {"id", "quantity", "price"}
_ORDER_KEYS = {"at", "pool", "addon", "quantity", "billing", "prices"}
_BILL_TO_KEYS = {"name", "address", "email", "tax_id"}


class _Where:
    """Builds error messages that name the source, account, table and key."""

    def __init__(self, source: str, account: str, table: str) -> None:
        self.source, self.account, self.table = source, account, table

    def error(self, key: str, problem: str) -> ContractError:
        return ContractError(
            f"{self.source}: account {self.account!r}, table [{self.table}], key {key!r}: {problem}"
        )

    def take(self, raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
             default: Any = ..., what: str = "") -> Any:
        if key not in raw:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = raw[key]
        # bool is an int in Python; a quantity of `true` is a type error, not 1.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"expected {what or _kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {what or _kind_name(kind)}, got {value!r}")
        return value

    def choice(self, raw: Mapping[str, Any], key: str, allowed: tuple[str, ...],
               default: Any = ...) -> Any:
        value = self.take(raw, key, str, default)
        if value is not default and value not in allowed:
            raise self.error(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def count(self, raw: Mapping[str, Any], key: str, default: Any = ...) -> Any:
        value = self.take(raw, key, int, default, "a whole number")
        if value is not default and value is not None and value < 0:
            raise self.error(key, f"must not be negative, got {value}")
        return value

    def money(self, raw: Mapping[str, Any], key: str, default: Any = ...) -> Any:
        text = self.take(raw, key, str, default, 'money as a string like "149.00"')
        if text is default:
            return default
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise self.error(key, f'expected money as a string like "149.00", got {text!r}') from None
        if not value.is_finite() or value < 0:
            raise self.error(key, f"must be a finite amount >= 0, got {text!r}")
        return value

    def duration(self, raw: Mapping[str, Any], key: str, default: timedelta) -> timedelta:
        text = self.take(raw, key, str, None, 'a duration string like "30m"')
        if text is None:
            return default
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def ident(self, raw: Mapping[str, Any], key: str = "id") -> str:
        value: str = self.take(raw, key, str)
        if not _ID.match(value):
            raise self.error(key, "must be 1-64 letters, digits, '_', '.' or '-', "
                                  f"starting with a letter or digit; got {value!r}")
        return value

    def unknown(self, raw: Mapping[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(raw) - allowed)
        if extra:
            raise self.error(extra[0], f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "a whole number", list: "a list of tables", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _tables(where: _Where, raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise where.error(key, f"expected [[account.{key}]] tables, got {value!r}")
    return value


def _parse_pool(source: str, account: str, raw: Mapping[str, Any], index: int) -> Pool:
    where = _Where(source, account, f"account.pool #{index + 1}")
    pool_id = where.ident(raw)
    where = _Where(source, account, f"account.pool {pool_id!r}")
    where.unknown(raw, _POOL_KEYS)
    model = where.choice(raw, "model", MODELS)
    overage = where.money(raw, "overage_price", None)
    if model == "named" and overage is not None:
        raise where.error("overage_price", "only concurrent pools have an overage price")
    if model == "concurrent" and overage is None:
        raise where.error("overage_price", "is required for a concurrent pool")
    grace = where.duration(raw, "grace", timedelta(minutes=30))
    if model == "named" and ("grace" in raw or "grace_mode" in raw):
        key = "grace" if "grace" in raw else "grace_mode"
        raise where.error(key, "only concurrent pools have a grace rule")
    return Pool(
        id=pool_id,
        tier=where.choice(raw, "tier", TIERS),
        model=model,
        quantity=where.count(raw, "quantity"),
        price=where.money(raw, "price"),
        overage_price=overage,
        grace=grace,
        grace_mode=where.choice(raw, "grace_mode", GRACE_MODES, "continuous"),
        roster=where.count(raw, "roster", None),
    )


def _parse_addon(source: str, account: str, raw: Mapping[str, Any], index: int) -> Addon:
    where = _Where(source, account, f"account.addon #{index + 1}")
    addon_id = where.choice(raw, "id", ADDONS)
    where = _Where(source, account, f"account.addon {addon_id!r}")
    where.unknown(raw, _ADDON_KEYS)
    return Addon(id=addon_id, quantity=where.count(raw, "quantity"), price=where.money(raw, "price"))


def _parse_time(where: _Where, raw: Mapping[str, Any], key: str) -> datetime:
    value = raw.get(key)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise where.error(key, f"expected an RFC 3339 time with offset, got {value!r}") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise where.error(key, f"expected an RFC 3339 time with offset, got {value!r}")
    return value.astimezone(UTC)


def _parse_order(source: str, account: Mapping[str, Any], raw: Mapping[str, Any],
                 index: int) -> Order:
    acc_id = str(account["id"])
    where = _Where(source, acc_id, f"account.order #{index + 1}")
    where.unknown(raw, _ORDER_KEYS)
    at = _parse_time(where, raw, "at")
    targets = [k for k in ("pool", "addon", "billing") if k in raw]
    if len(targets) != 1:
        raise where.error("pool", "an order names exactly one of 'pool', 'addon' or 'billing'")
    if targets[0] == "billing":
        if "quantity" in raw:
            raise where.error("quantity", "a billing switch has no quantity")
        billing = where.choice(raw, "billing", BILLINGS)
        return Order(at=at, billing=billing, prices=_parse_prices(where, account, raw))
    if "prices" in raw:
        raise where.error("prices", "only a billing switch states prices")
    target = where.take(raw, targets[0], str)
    known = {str(t.get("id")) for t in account.get(targets[0], []) if isinstance(t, dict)}
    if target not in known:
        raise where.error(targets[0], f"no {targets[0]} {target!r} in this account")
    quantity = where.count(raw, "quantity")
    return Order(at=at, quantity=quantity, **{targets[0]: target})


def _parse_prices(where: _Where, account: Mapping[str, Any],
                  raw: Mapping[str, Any]) -> tuple[tuple[str, Decimal], ...]:
    """A switch's `prices`: the new term's price of every pool and add-on, in contract order.

    The new frequency's price cannot be derived from the old one (an annual price is seldom 12
    monthly ones), so a switch must state each; a missing or unknown id is an error.
    """
    ids = [str(t.get("id")) for kind in ("pool", "addon") for t in account.get(kind, [])
           if isinstance(t, dict)]
    if "prices" not in raw:
        raise where.error("prices", "is required: a billing switch states the new term's price "
                                    f"of every pool and add-on ({', '.join(ids)})")
    table = where.take(raw, "prices", dict, what='a table like { agents = "1800.00" }')
    unknown = sorted(set(table) - set(ids))
    if unknown:
        raise where.error(f"prices.{unknown[0]}",
                          f"no pool or add-on {unknown[0]!r} in this account")
    out = []
    for target in ids:
        if target not in table:
            raise where.error(f"prices.{target}", "is required: a billing switch states the new "
                                                  "term's price of every pool and add-on")
        key = f"prices.{target}"
        out.append((target, where.money({key: table[target]}, key)))
    return tuple(out)


def _parse_bill_to(where: _Where, raw: Mapping[str, Any]) -> BillTo | None:
    if "bill_to" not in raw:
        return None
    table = where.take(raw, "bill_to", dict, what="a table")
    inner = _Where(where.source, where.account, "account.bill_to")
    inner.unknown(table, _BILL_TO_KEYS)
    address = inner.take(table, "address", list, [], "a list of strings")
    if not all(isinstance(line, str) for line in address):
        raise inner.error("address", f"expected a list of strings, got {address!r}")
    return BillTo(
        name=inner.take(table, "name", str, None),
        address=tuple(address),
        email=inner.take(table, "email", str, None),
        tax_id=inner.take(table, "tax_id", str, None),
    )


def _parse_account(source: str, raw: Mapping[str, Any], index: int) -> Account:
    where = _Where(source, f"#{index + 1}", "account")
    acc_id = where.ident(raw)
    where = _Where(source, acc_id, "account")
    where.unknown(raw, _ACCOUNT_KEYS)
    tz_name = where.take(raw, "timezone", str)
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise where.error("timezone", f"unknown IANA timezone {tz_name!r}") from None
    currency = where.take(raw, "currency", str)
    if currency not in CURRENCY_EXPONENTS:
        raise where.error("currency", f"unknown currency {currency!r} "
                                      f"(known: {', '.join(sorted(CURRENCY_EXPONENTS))})")
    anchor = raw.get("anchor")
    if isinstance(anchor, str):
        try:
            anchor = date.fromisoformat(anchor)
        except ValueError:
            raise where.error("anchor", f"expected a date YYYY-MM-DD, got {anchor!r}") from None
    if not isinstance(anchor, date) or isinstance(anchor, datetime):
        raise where.error("anchor", f"expected a date YYYY-MM-DD, got {anchor!r}")

    pools = tuple(_parse_pool(source, acc_id, p, i)
                  for i, p in enumerate(_tables(where, raw, "pool")))
    addons = tuple(_parse_addon(source, acc_id, a, i)
                   for i, a in enumerate(_tables(where, raw, "addon")))
    for kind, items in (("pool", pools), ("addon", addons)):
        ids = [item.id for item in items]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise _Where(source, acc_id, f"account.{kind} {dupes[0]!r}").error(
                "id", "is defined twice in this account")
    orders = tuple(sorted(
        (_parse_order(source, raw, o, i) for i, o in enumerate(_tables(where, raw, "order"))),
        key=lambda o: o.at,
    ))
    timeout = where.duration(raw, "session_timeout", timedelta(hours=12))
    if timeout <= timedelta(0):
        raise where.error("session_timeout", "must be longer than 0s")
    return Account(
        id=acc_id,
        timezone=tz_name,
        currency=currency,
        billing=where.choice(raw, "billing", BILLINGS),
        anchor=anchor,
        policy=where.choice(raw, "policy", POLICIES),
        session_timeout=timeout,
        pools=pools,
        addons=addons,
        orders=orders,
        name=where.take(raw, "name", str, acc_id),
        bill_to=_parse_bill_to(where, raw),
        tz=tz,
    )


def parse_contracts(text: str, source: str = "contracts") -> Contracts:
    """Parse a contracts TOML document (DESIGN section 3). `source` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ContractError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"account"})
    if extra:
        raise ContractError(f"{source}: top level, key {extra[0]!r}: unknown key (allowed: account)")
    raw_accounts = doc.get("account", [])
    if not isinstance(raw_accounts, list) or not all(isinstance(a, dict) for a in raw_accounts):
        raise ContractError(f"{source}: top level, key 'account': expected [[account]] tables")
    if not raw_accounts:
        raise ContractError(f"{source}: top level, key 'account': no [[account]] is defined")
    accounts = tuple(_parse_account(source, a, i) for i, a in enumerate(raw_accounts))
    ids = [a.id for a in accounts]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ContractError(f"{source}: account {dupes[0]!r}, table [account], key 'id': "
                            "is defined twice")
    return Contracts(accounts=accounts)
