"""Money: half-up rounding to the currency's minor unit, once, and the text form of amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.money import format_money, format_price, round_money


@pytest.mark.parametrize(
    ("amount", "exponent", "expected"),
    [
        ("0.3333333333", 2, "0.33"),  # a third of a dollar
        ("0.003333333333", 2, "0.00"),  # a third of a cent rounds away
        ("0.006666666667", 2, "0.01"),  # two thirds of a cent round up
        ("0.005", 2, "0.01"),  # a tie rounds up, not to even
        ("0.015", 2, "0.02"),
        ("0.025", 2, "0.03"),  # banker's rounding would give 0.02
        ("2.675", 2, "2.68"),  # float(2.675) is 2.67499..., Decimal is exact
        ("-0.005", 2, "-0.01"),  # credits round away from zero too
        ("-0.004", 2, "0.00"),  # never "-0.00"
        ("1490", 2, "1490.00"),
        ("1490.5", 0, "1491"),  # JPY has no minor unit
        ("1.2345", 3, "1.235"),  # KWD has three decimals
    ],
)
def test_round_half_up_to_minor_unit(amount: str, exponent: int, expected: str) -> None:
    """Amounts are rounded half-up to the minor unit and written with exactly its digits."""
    assert expected == format_money(Decimal(amount), exponent)
    assert Decimal(expected) == round_money(Decimal(amount), exponent)


@pytest.mark.parametrize(
    ("price", "exponent", "expected"),
    [
        ("149", 2, "149.00"),
        ("149.00", 2, "149.00"),
        ("1788.00", 2, "1788.00"),
        (str(Decimal("149.00") / 12), 2, "12.416667"),  # digits the amount was computed with
        ("5", 0, "5"),
    ],
)
def test_format_price(price: str, exponent: int, expected: str) -> None:
    """Unit prices show the minor unit, or more digits where the line used more."""
    assert expected == format_price(Decimal(price), exponent)


def test_negative_exponent_is_refused() -> None:
    """A minor-unit exponent below zero is a programming error, said clearly."""
    with pytest.raises(ValueError, match="exponent"):
        round_money(Decimal(1), -1)


@given(st.decimals(min_value=-10**9, max_value=10**9, allow_nan=False, allow_infinity=False,
                   places=6))
def test_rounding_is_within_half_a_cent(amount: Decimal) -> None:
    """A rounded amount is never more than half a minor unit from the exact one."""
    rounded = round_money(amount, 2)
    assert abs(rounded - amount) <= Decimal("0.005")
    assert rounded == rounded.quantize(Decimal("0.01"))
