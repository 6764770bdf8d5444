"""Contracts TOML for tests, built from keyword arguments.

Tests used to write the same `[[account]]` header and `[[account.pool]]` tables inline; these
functions write that text instead, so a test names only what matters to it (quantities, prices,
grace) at the call site. The output is the plain TOML an operator would write, meant for
`rating.contracts.parse_contracts` or a contracts file handed to the CLI or the daemon.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["account", "addon", "contracts", "order", "pool"]


def _lines(indent: str, pairs: Iterable[tuple[str, str | int | None]]) -> str:
    """`key = value` lines (strings quoted, ints bare), skipping None values."""
    out = []
    for key, value in pairs:
        if value is None:
            continue
        text = str(value) if isinstance(value, int) else f'"{value}"'
        out.append(f"{indent}{key} = {text}\n")
    return "".join(out)


def pool(id: str, *, tier: str, model: str, quantity: int, price: str,
         overage_price: str | None = None, grace: str | None = None,
         grace_mode: str | None = None, roster: int | None = None) -> str:
    """One `[[account.pool]]` table; keys left as None are left out (the parser's defaults)."""
    return "\n  [[account.pool]]\n" + _lines("  ", [
        ("id", id), ("tier", tier), ("model", model), ("quantity", quantity), ("price", price),
        ("overage_price", overage_price), ("grace", grace), ("grace_mode", grace_mode),
        ("roster", roster)])


def addon(id: str, *, quantity: int, price: str) -> str:
    """One `[[account.addon]]` table."""
    return "\n  [[account.addon]]\n" + _lines(
        "  ", [("id", id), ("quantity", quantity), ("price", price)])


def order(at: str, *, pool: str | None = None, addon: str | None = None,
          quantity: int | None = None, billing: str | None = None,
          prices: dict[str, str] | None = None) -> str:
    """One `[[account.order]]` table: a pool's or add-on's new total, or a billing switch
    (which states the new term's `prices`, an inline table of id -> price)."""
    text = "\n  [[account.order]]\n" + _lines("  ", [
        ("at", at), ("pool", pool), ("addon", addon), ("quantity", quantity),
        ("billing", billing)])
    if prices is not None:
        text += "  prices = { " + ", ".join(f'{k} = "{v}"' for k, v in prices.items()) + " }\n"
    return text


def account(id: str, *, timezone: str = "UTC", currency: str = "USD", billing: str = "monthly",
            anchor: str = "2026-01-01", policy: str = "prorate",
            session_timeout: str | None = None, pools: Iterable[str] = (),
            addons: Iterable[str] = (), orders: Iterable[str] = ()) -> str:
    """One `[[account]]` table followed by its pool, add-on and order tables (from the functions
    above, in that order)."""
    header = "\n[[account]]\n" + _lines("", [
        ("id", id), ("timezone", timezone), ("currency", currency), ("billing", billing),
        ("anchor", anchor), ("policy", policy), ("session_timeout", session_timeout)])
    return header + "".join(pools) + "".join(addons) + "".join(orders)


def contracts(*accounts: str) -> str:
    """A whole contracts file: the accounts' tables one after the other."""
    return "".join(accounts)
