"""Contracts: the TOML format of DESIGN section 3; every error names the account, table and key."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rating.contracts import Addon, BillTo, Order, Pool, parse_contracts, parse_duration
from rating.errors import ContractError

ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "account": [{
        "id": "acme",
        "timezone": "America/New_York",
        "currency": "USD",
        "billing": "monthly",
        "anchor": "2026-01-01",
        "policy": "prorate",
        "session_timeout": "12h",
        "pool": [
            {"id": "agents", "tier": "elite", "model": "concurrent", "quantity": 100,
             "price": "149.00", "overage_price": "149.00", "grace": "30m",
             "grace_mode": "continuous", "roster": 120},
            {"id": "leads", "tier": "premium", "model": "named", "quantity": 5, "price": "99.00"},
        ],
        "addon": [{"id": "wfm", "quantity": 75, "price": "25.00"}],
        "order": [
            {"at": "2026-11-16T00:00:00Z", "pool": "agents", "quantity": 110},
            {"at": "2026-11-20T09:00:00+01:00", "addon": "wfm", "quantity": 80},
            {"at": "2026-11-25T00:00:00Z", "billing": "annual",
             "prices": {"agents": "1490.00", "leads": "990.00", "wfm": "250.00"}},
        ],
    }],
}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def dump(doc: dict[str, Any]) -> str:
    """TOML text of a contracts document: [[account]] with [[account.pool/addon/order]] tables.

    A table-valued key given as something else than a list of dicts is written inline, so tests
    can put wrong types anywhere."""
    out: list[str] = [f"{k} = {_value(v)}" for k, v in doc.items() if k != "account"]
    accounts = doc.get("account", [])
    if not isinstance(accounts, list) or not all(isinstance(a, dict) for a in accounts):
        return "\n".join([*out, f"account = {_value(accounts)}"]) + "\n"
    for account in accounts:
        out.append("[[account]]")
        tables = []
        for key, value in account.items():
            if key in ("pool", "addon", "order") and isinstance(value, list) \
                    and all(isinstance(t, dict) for t in value):
                tables.append((key, value))
            else:
                out.append(f"{key} = {_value(value)}")
        for key, items in tables:
            for item in items:
                out.append(f"[[account.{key}]]")
                out += [f"{k} = {_value(v)}" for k, v in item.items()]
    return "\n".join(out) + "\n"


def edited(path: tuple[str | int, ...], value: Any = ..., *, delete: bool = False) -> str:
    """The BASE document with the value at `path` replaced (or deleted), as TOML."""
    doc = copy.deepcopy(BASE)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return dump(doc)


def error_of(text: str) -> str:
    with pytest.raises(ContractError) as info:
        parse_contracts(text, source="c.toml")
    return str(info.value)


def test_the_base_document_parses_to_exact_values() -> None:
    """Every key of DESIGN section 3 is read, converted and kept."""
    contracts = parse_contracts(dump(BASE), source="c.toml")
    (acme,) = contracts.accounts
    assert ("acme", "America/New_York", "USD", "monthly", date(2026, 1, 1), "prorate") == (
        acme.id, acme.timezone, acme.currency, acme.billing, acme.anchor, acme.policy)
    assert timedelta(hours=12) == acme.session_timeout
    assert Pool(id="agents", tier="elite", model="concurrent", quantity=100,
                price=Decimal("149.00"), overage_price=Decimal("149.00"),
                grace=timedelta(minutes=30), grace_mode="continuous", roster=120) == acme.pools[0]
    assert Pool(id="leads", tier="premium", model="named", quantity=5,
                price=Decimal("99.00")) == acme.pools[1]
    assert (Addon(id="wfm", quantity=75, price=Decimal("25.00")),) == acme.addons
    assert (
        Order(at=datetime(2026, 11, 16, tzinfo=UTC), pool="agents", quantity=110),
        Order(at=datetime(2026, 11, 20, 8, tzinfo=UTC), addon="wfm", quantity=80),
        Order(at=datetime(2026, 11, 25, tzinfo=UTC), billing="annual",
              prices=(("agents", Decimal("1490.00")), ("leads", Decimal("990.00")),
                      ("wfm", Decimal("250.00")))),
    ) == acme.orders
    assert Decimal("990.00") == acme.orders[2].price_of("leads")
    assert acme.orders[2].price_of("qm") is None
    assert ("acme", None) == (acme.name, acme.bill_to)
    assert acme is contracts.get("acme")
    assert contracts.get("globex") is None
    assert "acme" in contracts
    assert "globex" not in contracts


def test_defaults_apply_when_optional_keys_are_left_out() -> None:
    """session_timeout 12h, grace 30m continuous, no roster, no add-ons or orders."""
    doc = copy.deepcopy(BASE)
    account = doc["account"][0]
    for key in ("session_timeout", "addon", "order"):
        del account[key]
    for key in ("grace", "grace_mode", "roster"):
        del account["pool"][0][key]
    (acme,) = parse_contracts(dump(doc)).accounts
    assert timedelta(hours=12) == acme.session_timeout
    assert (timedelta(minutes=30), "continuous", None) == (
        acme.pools[0].grace, acme.pools[0].grace_mode, acme.pools[0].roster)
    assert ((), ()) == (acme.addons, acme.orders)


def test_orders_are_sorted_by_time() -> None:
    """Orders come back in time order whatever the file order."""
    doc = copy.deepcopy(BASE)
    doc["account"][0]["order"].reverse()
    (acme,) = parse_contracts(dump(doc)).accounts
    assert [o.at for o in acme.orders] == sorted(o.at for o in acme.orders)


ACC = "c.toml: account 'acme', table [account]"
POOL = "c.toml: account 'acme', table [account.pool 'agents']"
ADDON = "c.toml: account 'acme', table [account.addon 'wfm']"
ORDER = "c.toml: account 'acme', table [account.order #1]"

WRONG_TYPES = [
    # (path, wrong value, the message's start: source, account, table and key)
    (("account", 0, "id"), 42, "c.toml: account '#1', table [account], key 'id'"),
    (("account", 0, "timezone"), 1, f"{ACC}, key 'timezone'"),
    (("account", 0, "currency"), 1, f"{ACC}, key 'currency'"),
    (("account", 0, "billing"), True, f"{ACC}, key 'billing'"),
    (("account", 0, "anchor"), 20260101, f"{ACC}, key 'anchor'"),
    (("account", 0, "policy"), ["prorate"], f"{ACC}, key 'policy'"),
    (("account", 0, "session_timeout"), 12, f"{ACC}, key 'session_timeout'"),
    (("account", 0, "pool"), "agents", f"{ACC}, key 'pool'"),
    (("account", 0, "addon"), 3, f"{ACC}, key 'addon'"),
    (("account", 0, "order"), {"at": 1}, f"{ACC}, key 'order'"),
    (("account", 0, "pool", 0, "id"), 7, "c.toml: account 'acme', table [account.pool #1], key 'id'"),
    (("account", 0, "pool", 0, "tier"), 3, f"{POOL}, key 'tier'"),
    (("account", 0, "pool", 0, "model"), False, f"{POOL}, key 'model'"),
    (("account", 0, "pool", 0, "quantity"), "100", f"{POOL}, key 'quantity'"),
    (("account", 0, "pool", 0, "quantity"), True, f"{POOL}, key 'quantity'"),
    (("account", 0, "pool", 0, "quantity"), 100.0, f"{POOL}, key 'quantity'"),
    (("account", 0, "pool", 0, "price"), 149.0, f"{POOL}, key 'price'"),
    (("account", 0, "pool", 0, "overage_price"), 149, f"{POOL}, key 'overage_price'"),
    (("account", 0, "pool", 0, "grace"), 30, f"{POOL}, key 'grace'"),
    (("account", 0, "pool", 0, "grace_mode"), 1, f"{POOL}, key 'grace_mode'"),
    (("account", 0, "pool", 0, "roster"), "120", f"{POOL}, key 'roster'"),
    (("account", 0, "addon", 0, "id"), 1, "c.toml: account 'acme', table [account.addon #1], key 'id'"),
    (("account", 0, "addon", 0, "quantity"), "75", f"{ADDON}, key 'quantity'"),
    (("account", 0, "addon", 0, "price"), 25, f"{ADDON}, key 'price'"),
    (("account", 0, "order", 0, "at"), 5, f"{ORDER}, key 'at'"),
    (("account", 0, "order", 0, "pool"), 1, f"{ORDER}, key 'pool'"),
    (("account", 0, "order", 0, "quantity"), "110", f"{ORDER}, key 'quantity'"),
    (("account", 0, "order", 2, "billing"), 12, "c.toml: account 'acme', table [account.order #3], "
                                                "key 'billing'"),
]


@pytest.mark.parametrize(("path", "value", "where"), WRONG_TYPES,
                         ids=[f"{'.'.join(map(str, p[2:]))}={v!r}" for p, v, _ in WRONG_TYPES])
def test_every_key_of_the_wrong_type_is_an_error_naming_it(path: tuple[str | int, ...], value: Any,
                                                           where: str) -> None:
    """A wrong type names the file, account, table and key, and shows the value it got."""
    message = error_of(edited(path, value))
    assert message.startswith(where + ":"), message
    assert f"got {value!r}" in message


BAD_VALUES = [
    (("account", 0, "id"), "has space", "c.toml: account '#1', table [account], key 'id'",
     "letters, digits"),
    (("account", 0, "timezone"), "Mars/Olympus", f"{ACC}, key 'timezone'", "unknown IANA timezone"),
    (("account", 0, "currency"), "XXX", f"{ACC}, key 'currency'", "unknown currency 'XXX'"),
    (("account", 0, "billing"), "weekly", f"{ACC}, key 'billing'", "monthly, annual"),
    (("account", 0, "anchor"), "2026-13-01", f"{ACC}, key 'anchor'", "YYYY-MM-DD"),
    (("account", 0, "policy"), "free", f"{ACC}, key 'policy'", "prorate, packs"),
    (("account", 0, "session_timeout"), "soon", f"{ACC}, key 'session_timeout'", "'30m'"),
    (("account", 0, "pool", 0, "tier"), "gold", f"{POOL}, key 'tier'", "essentials, premium, elite"),
    (("account", 0, "pool", 0, "model"), "floating", f"{POOL}, key 'model'", "named, concurrent"),
    (("account", 0, "pool", 0, "quantity"), -1, f"{POOL}, key 'quantity'", "negative"),
    (("account", 0, "pool", 0, "price"), "cheap", f"{POOL}, key 'price'", "'cheap'"),
    (("account", 0, "pool", 0, "price"), "-1.00", f"{POOL}, key 'price'", ">= 0"),
    (("account", 0, "pool", 0, "price"), "NaN", f"{POOL}, key 'price'", "finite"),
    (("account", 0, "pool", 0, "grace"), "30 minutes", f"{POOL}, key 'grace'", "duration"),
    (("account", 0, "pool", 0, "grace_mode"), "sliding", f"{POOL}, key 'grace_mode'",
     "continuous, cumulative"),
    (("account", 0, "addon", 0, "id"), "fax", "c.toml: account 'acme', table [account.addon #1], "
                                              "key 'id'", "wfm, qm, aea"),
    (("account", 0, "order", 0, "at"), "2026-11-16T00:00:00", f"{ORDER}, key 'at'", "with offset"),
    (("account", 0, "order", 0, "at"), "tomorrow", f"{ORDER}, key 'at'", "'tomorrow'"),
    (("account", 0, "order", 0, "pool"), "nope", f"{ORDER}, key 'pool'", "no pool 'nope'"),
    (("account", 0, "order", 1, "addon"), "qm", "c.toml: account 'acme', table [account.order #2], "
                                                "key 'addon'", "no addon 'qm'"),
    (("account", 0, "order", 2, "billing"), "weekly", "c.toml: account 'acme', "
                                                      "table [account.order #3], key 'billing'",
     "monthly, annual"),
]


@pytest.mark.parametrize(("path", "value", "where", "words"), BAD_VALUES,
                         ids=[f"{'.'.join(map(str, p[2:]))}={v!r}" for p, v, _, _ in BAD_VALUES])
def test_values_outside_the_allowed_set_are_errors(path: tuple[str | int, ...], value: Any,
                                                   where: str, words: str) -> None:
    """A value of the right type but not allowed names where it is and what is allowed."""
    message = error_of(edited(path, value))
    assert message.startswith(where + ":"), message
    assert words in message


@pytest.mark.parametrize(("path", "where"), [
    (("account", 0, "colour"), f"{ACC}, key 'colour'"),
    (("account", 0, "pool", 0, "colour"), f"{POOL}, key 'colour'"),
    (("account", 0, "addon", 0, "colour"), f"{ADDON}, key 'colour'"),
    (("account", 0, "order", 0, "colour"), f"{ORDER}, key 'colour'"),
    (("colour",), "c.toml: top level, key 'colour'"),
])
def test_unknown_keys_are_errors_naming_them(path: tuple[str | int, ...], where: str) -> None:
    """A key the format does not have (a typo) is an error, never silently ignored."""
    message = error_of(edited(path, "blue"))
    assert message.startswith(where + ": unknown key"), message


@pytest.mark.parametrize(("path", "where"), [
    (("account", 0, "id"), "c.toml: account '#1', table [account], key 'id'"),
    (("account", 0, "timezone"), f"{ACC}, key 'timezone'"),
    (("account", 0, "currency"), f"{ACC}, key 'currency'"),
    (("account", 0, "billing"), f"{ACC}, key 'billing'"),
    (("account", 0, "anchor"), f"{ACC}, key 'anchor'"),
    (("account", 0, "policy"), f"{ACC}, key 'policy'"),
    (("account", 0, "pool", 0, "tier"), f"{POOL}, key 'tier'"),
    (("account", 0, "pool", 0, "model"), f"{POOL}, key 'model'"),
    (("account", 0, "pool", 0, "quantity"), f"{POOL}, key 'quantity'"),
    (("account", 0, "pool", 0, "price"), f"{POOL}, key 'price'"),
    (("account", 0, "pool", 0, "overage_price"), f"{POOL}, key 'overage_price'"),
    (("account", 0, "addon", 0, "quantity"), f"{ADDON}, key 'quantity'"),
    (("account", 0, "addon", 0, "price"), f"{ADDON}, key 'price'"),
    (("account", 0, "order", 0, "at"), f"{ORDER}, key 'at'"),
    (("account", 0, "order", 0, "quantity"), f"{ORDER}, key 'quantity'"),
])
def test_missing_required_keys_are_errors_naming_them(path: tuple[str | int, ...], where: str) -> None:
    """Leaving out a required key says which one, and where."""
    message = error_of(edited(path, delete=True))
    assert message.startswith(where + ":"), message


@pytest.mark.parametrize(("doc_edit", "where", "words"), [
    (lambda a: a["pool"][1].update(overage_price="1.00"),
     "c.toml: account 'acme', table [account.pool 'leads'], key 'overage_price'", "only concurrent"),
    (lambda a: a["pool"][1].update(grace="10m"),
     "c.toml: account 'acme', table [account.pool 'leads'], key 'grace'", "only concurrent"),
    (lambda a: a["pool"][1].update(id="agents"),
     "c.toml: account 'acme', table [account.pool 'agents'], key 'id'", "defined twice"),
    (lambda a: a["order"][0].update(addon="wfm"), ORDER + ", key 'pool'", "exactly one of"),
    (lambda a: a["order"][2].update(quantity=3),
     "c.toml: account 'acme', table [account.order #3], key 'quantity'", "no quantity"),
])
def test_rules_between_keys(doc_edit: Any, where: str, words: str) -> None:
    """Keys that contradict each other are errors naming the key at fault."""
    doc = copy.deepcopy(BASE)
    doc_edit(doc["account"][0])
    message = error_of(dump(doc))
    assert message.startswith(where + ":"), message
    assert words in message


def test_a_concurrent_pool_without_an_overage_price_is_an_error() -> None:
    """A concurrent pool must say what an overage seat costs."""
    message = error_of(edited(("account", 0, "pool", 0, "overage_price"), delete=True))
    assert f"{POOL}, key 'overage_price': is required for a concurrent pool" == message


def test_document_level_errors() -> None:
    """Bad TOML, no accounts, and an account defined twice are errors naming the file."""
    assert error_of("[[account]\n").startswith("c.toml: not valid TOML:")
    assert "c.toml: top level, key 'account': no [[account]] is defined" == error_of("")
    assert error_of("account = 3\n").startswith("c.toml: top level, key 'account':")
    doc = copy.deepcopy(BASE)
    doc["account"].append(copy.deepcopy(doc["account"][0]))
    assert "c.toml: account 'acme', table [account], key 'id': is defined twice" == error_of(dump(doc))


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", timedelta(minutes=30)),
    ("12h", timedelta(hours=12)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("45s", timedelta(seconds=45)),
    ("2d", timedelta(days=2)),
    ("0m", timedelta(0)),
])
def test_durations(text: str, expected: timedelta) -> None:
    """Durations are strings of days, hours, minutes and seconds."""
    assert expected == parse_duration(text)


@pytest.mark.parametrize("text", ["", "30", "m", "30 m", "1.5h", "-5m", "30min"])
def test_bad_durations(text: str) -> None:
    """Anything else is a ValueError (the contracts parser turns it into a ContractError)."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_sample_contracts_parse() -> None:
    """sample_sessions/contracts.toml is valid and has the three sample accounts."""
    text = (ROOT / "sample_sessions" / "contracts.toml").read_text(encoding="utf-8")
    contracts = parse_contracts(text, source="contracts.toml")
    assert ["acme", "globex", "initech"] == [a.id for a in contracts.accounts]
    assert {"prorate", "packs"} == {a.policy for a in contracts.accounts}
    assert {"essentials", "premium", "elite"} == {p.tier for a in contracts.accounts for p in a.pools}
    assert {"continuous", "cumulative"} == {p.grace_mode for a in contracts.accounts
                                            for p in a.pools if p.model == "concurrent"}


# --- the invoice's customer, and a switch's prices ------------------------------------------------

def test_name_and_bill_to_are_read() -> None:
    """An account's `name` and `bill_to` (name, address lines, email, tax_id) are kept as given."""
    doc = copy.deepcopy(BASE)
    doc["account"][0]["name"] = "Acme Contact Centers, Inc."
    doc["account"][0]["bill_to"] = {"name": "Acme AP", "address": ["1 Main St", "NYC"],
                                    "email": "ap@acme.example", "tax_id": "US 12-3456789"}
    (acme,) = parse_contracts(dump(doc)).accounts
    assert "Acme Contact Centers, Inc." == acme.name
    assert BillTo(name="Acme AP", address=("1 Main St", "NYC"), email="ap@acme.example",
                  tax_id="US 12-3456789") == acme.bill_to


def test_every_part_of_bill_to_is_optional() -> None:
    """An empty bill_to table is a BillTo with nothing in it; the name defaults to the id."""
    (acme,) = parse_contracts(edited(("account", 0, "bill_to"), {})).accounts
    assert (BillTo(), "acme") == (acme.bill_to, acme.name)


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("account", 0, "name"), 3, f"{ACC}, key 'name': expected a string, got 3"),
    (("account", 0, "bill_to"), "Acme", f"{ACC}, key 'bill_to': expected a table, got 'Acme'"),
    (("account", 0, "bill_to"), {"phone": "1"},
     "c.toml: account 'acme', table [account.bill_to], key 'phone': unknown key (allowed: "
     "address, email, name, tax_id)"),
    (("account", 0, "bill_to"), {"address": "1 Main St"},
     "c.toml: account 'acme', table [account.bill_to], key 'address': expected a list of "
     "strings, got '1 Main St'"),
    (("account", 0, "bill_to"), {"address": ["1 Main St", 2]},
     "c.toml: account 'acme', table [account.bill_to], key 'address': expected a list of "
     "strings, got ['1 Main St', 2]"),
    (("account", 0, "bill_to"), {"tax_id": 123},
     "c.toml: account 'acme', table [account.bill_to], key 'tax_id': expected a string, got 123"),
])
def test_bad_name_and_bill_to_are_errors_naming_the_key(path: tuple[str | int, ...], value: Any,
                                                        expected: str) -> None:
    """A wrong type or an unknown key in name or bill_to names the account, table and key."""
    assert expected == error_of(edited(path, value))


SWITCH = "c.toml: account 'acme', table [account.order #3]"


@pytest.mark.parametrize(("prices", "expected"), [
    (None, f"{SWITCH}, key 'prices': is required: a billing switch states the new term's price "
           "of every pool and add-on (agents, leads, wfm)"),
    ({"agents": "1490.00", "wfm": "250.00"},
     f"{SWITCH}, key 'prices.leads': is required: a billing switch states the new term's price "
     "of every pool and add-on"),
    ({"agents": "1490.00", "leads": "990.00", "wfm": "250.00", "qm": "1.00"},
     f"{SWITCH}, key 'prices.qm': no pool or add-on 'qm' in this account"),
    ({"agents": "1490", "leads": 990, "wfm": "250.00"},
     f"{SWITCH}, key 'prices.leads': expected money as a string like \"149.00\", got 990"),
    ({"agents": "-1", "leads": "990.00", "wfm": "250.00"},
     f"{SWITCH}, key 'prices.agents': must be a finite amount >= 0, got '-1'"),
    ("1490.00", f"{SWITCH}, key 'prices': expected a table like {{ agents = \"1800.00\" }}, "
                "got '1490.00'"),
])
def test_a_switch_states_the_price_of_every_pool_and_addon(prices: Any, expected: str) -> None:
    """A switch without prices, missing one, naming an unknown id or a bad amount is an error
    naming the account, the order and the key."""
    path = ("account", 0, "order", 2, "prices")
    text = edited(path, delete=True) if prices is None else edited(path, prices)
    assert expected == error_of(text)


def test_only_a_switch_states_prices() -> None:
    """`prices` on a seat order is an error (a seat order is priced by the term)."""
    text = edited(("account", 0, "order", 0, "prices"), {"agents": "1.00"})
    assert ("c.toml: account 'acme', table [account.order #1], key 'prices': only a billing "
            "switch states prices") == error_of(text)


def test_the_sample_contracts_parse_with_names_and_bill_to() -> None:
    """The three sample accounts have names, bill_to tables, and initech's switch its prices."""
    contracts = parse_contracts((ROOT / "sample_sessions" / "contracts.toml").read_text())
    assert ["Acme Contact Centers, Inc.", "Globex GmbH", "Initech K.K."] == [
        a.name for a in contracts.accounts]
    assert all(a.bill_to is not None and a.bill_to.email for a in contracts.accounts)
    initech = contracts.get("initech")
    assert initech is not None
    assert (("desk", Decimal("45000")), ("cloud_storage", Decimal("10000"))) == \
        initech.orders[-1].prices
