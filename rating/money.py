"""Money: Decimal amounts rounded half-up to a currency's minor unit, and their text form.

Every bill line is computed exactly and rounded once, here; amounts are written as plain strings
with the minor unit's digits ("1490.00", "-12.50", "1490" for JPY), never as floats.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

__all__ = ["format_money", "format_price", "round_money"]


def _unit(exponent: int) -> Decimal:
    if exponent < 0:
        raise ValueError(f"a currency's minor-unit exponent is >= 0, got {exponent}")
    return Decimal(1).scaleb(-exponent)


def round_money(amount: Decimal, exponent: int) -> Decimal:
    """`amount` rounded half-up (away from zero on a tie) to `exponent` decimal places.

    Half-up is symmetric for credits: -0.005 rounds to -0.01, so a credit and the charge it
    reverses round to the same magnitude.
    """
    rounded = amount.quantize(_unit(exponent), rounding=ROUND_HALF_UP)
    # A credit that rounds to nothing is 0.00, not -0.00.
    return rounded.copy_abs() if rounded.is_zero() else rounded


def format_money(amount: Decimal, exponent: int) -> str:
    """`amount` rounded half-up and written with exactly `exponent` decimals: "1490.00"."""
    return f"{round_money(amount, exponent):f}"


def format_price(price: Decimal, exponent: int) -> str:
    """A unit price as written in a line's description.

    Prices are shown at the minor unit ("149.00") unless that would hide digits the line was
    computed with (a monthly share of an annual price, 149.00 / 12), which are then shown as they are
    (up to 6 decimals, trailing zeros dropped), so the description reproduces the amount.
    """
    at_unit = round_money(price, exponent)
    if at_unit == price:
        return f"{at_unit:f}"
    shown = price.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP).normalize()
    return f"{shown:f}"
