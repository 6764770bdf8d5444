"""`meter quote`: what one seat order would charge or credit now, and why, without changing anything.

The shell part only: it reads the contracts file and the clock, and prints; the pricing is
`rating.seatchanges.quote`. A refused order prints its reason on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from meter.errors import UsageError
from meter.instants import parse_instant
from rating.contracts import Order, parse_contracts
from rating.errors import ContractError
from rating.money import format_money
from rating.seatchanges import Quote, describe_total, quote
from rating.usage import iso

__all__ = ["format_quote", "run", "run_cli"]

_PROG = "meter quote"


def format_quote(q: Quote) -> list[str]:
    """The lines `meter quote` prints for an accepted order."""
    kind = "pool" if q.order.pool is not None else "addon"
    lines = []
    if q.change is not None:
        c = q.change
        lines.append(f"account {q.account} {kind} {c.target}: {c.before} -> {q.order.quantity} "
                     f"seats at {iso(c.at)}")
        lines.append(f"  {c.description}")
    for line in q.charges:
        lines.append(f"  {line.kind} {line.target} {format_money(line.amount, q.exponent)} "
                     f"{q.currency}: {line.description}")
    lines.append(describe_total(q))
    return lines


def _quote(contracts_path: str, account: str, *, pool: str | None, addon: str | None,
           quantity: int, at: str | None) -> Quote:
    if (pool is None) == (addon is None):
        raise UsageError("name exactly one of --pool or --addon")
    if quantity < 0:
        raise UsageError(f"--quantity: the new total must be >= 0, got {quantity}")
    instant = parse_instant(at, "--at")
    path = Path(contracts_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{contracts_path}: cannot read: {reason}") from None
    try:
        contracts = parse_contracts(text, contracts_path)
    except ContractError as exc:
        # A TOML error can span lines (the offending line quoted): keep the first, it names it.
        raise UsageError(str(exc).splitlines()[0]) from None
    acc = contracts.get(account)
    if acc is None:
        known = ", ".join(a.id for a in contracts.accounts)
        raise UsageError(f"{contracts_path}: no account {account!r} (accounts: {known})")
    if pool is not None and acc.pool(pool) is None:
        known = ", ".join(p.id for p in acc.pools) or "none"
        raise UsageError(f"{contracts_path}: account {account!r} has no pool {pool!r} (pools: {known})")
    if addon is not None and acc.addon(addon) is None:
        known = ", ".join(a.id for a in acc.addons) or "none"
        raise UsageError(f"{contracts_path}: account {account!r} has no add-on {addon!r} "
                   f"(add-ons: {known})")
    return quote(acc, Order(at=instant, pool=pool, addon=addon, quantity=quantity))


def run(  # noqa: PLR0917 - positional as the command's flags, the signature callers use
        contracts_path: str, account: str, pool: str | None, addon: str | None, quantity: int,
        at: str | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print what the order would charge or credit and why; 0 if accepted, 2 if refused or bad.

    `at` is an RFC 3339 time (default: now).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        q = _quote(contracts_path, account, pool=pool, addon=addon, quantity=quantity, at=at)
    except UsageError as exc:
        print(f"{_PROG}: {exc}", file=err)
        return 2
    if q.reason is not None:
        print(f"{_PROG}: refused: {q.reason}", file=err)
        return 2
    print("\n".join(format_quote(q)), file=out)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """Entry point from `meter.cli` (the parsed `quote` subcommand)."""
    return run(args.contracts, args.account, args.pool, args.addon, args.quantity, args.at)
