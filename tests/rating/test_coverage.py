"""Add-on coverage: Elite concurrent licenses cover wfm and qm only up to their count (seed 003)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.contracts import Account, parse_contracts
from rating.coverage import Coverage, cover
from tests.contracts_toml import account as toml_account
from tests.contracts_toml import addon as toml_addon
from tests.contracts_toml import pool as toml_pool


def account(pools: str, addons: dict[str, int]) -> Account:
    text = toml_account("acme", pools=[pools], addons=[
        toml_addon(addon_id, quantity=quantity, price="25.00")
        for addon_id, quantity in addons.items()])
    return parse_contracts(text, "test.toml").accounts[0]


def pool(pool_id: str, tier: str, model: str, quantity: int, roster: int | None = None) -> str:
    return toml_pool(pool_id, tier=tier, model=model, quantity=quantity, price="149.00",
                     overage_price="149.00" if model == "concurrent" else None, roster=roster)


def by_addon(result: tuple[Coverage, ...]) -> dict[str, tuple[int, int, int]]:
    return {c.addon: (c.required, c.purchased, c.shortfall) for c in result}


@pytest.mark.parametrize(
    ("seen", "roster", "licenses", "wfm", "expected_wfm"),
    [
        # Seed 003: "100 call center agents, and 25 Elite concurrent licenses ... 75 add-on
        # licenses for Zoom Workforce Management and Zoom Quality Management".
        (100, None, 25, 75, (75, 75, 0)),
        (100, None, 25, 0, (75, 0, 75)),
        (100, None, 25, 60, (75, 60, 15)),
        (100, None, 25, 90, (75, 90, 0)),  # buying more than needed is no shortfall
        (40, 100, 25, 0, (75, 0, 75)),  # the declared roster counts when larger
        (120, 100, 25, 75, (95, 75, 20)),  # users seen count when more than the roster
        (20, None, 25, 0, None),  # fewer users than licenses: nothing needed
        (25, None, 25, 0, None),
    ],
)
def test_elite_concurrent_needs_wfm_and_qm_beyond_its_licenses(
        seen: int, roster: int | None, licenses: int, wfm: int,
        expected_wfm: tuple[int, int, int] | None) -> None:
    """required = users of the Elite concurrent pool - its licenses; shortfall = required - bought."""
    acc = account(pool("agents", "elite", "concurrent", licenses, roster), {"wfm": wfm, "aea": 0})
    result = by_addon(cover(acc, {"agents": seen}))
    if expected_wfm is None:
        assert {"wfm": (0, wfm, 0), "aea": (0, 0, 0)} == result
    else:
        assert expected_wfm == result["wfm"]
        assert (expected_wfm[0], 0, expected_wfm[0]) == result["qm"]  # qm was never bought
        assert (0, 0, 0) == result["aea"]  # aea needs nothing more on Elite concurrent


def test_named_elite_covers_its_users() -> None:
    """With named Elite every assigned user is covered: nothing required."""
    acc = account(pool("desk", "elite", "named", 25), {"wfm": 0})
    assert {"wfm": (0, 0, 0)} == by_addon(cover(acc, {"desk": 100}))


def test_non_elite_pools_need_only_what_is_declared() -> None:
    """Premium users need add-ons only as provisioned, which the caller declares."""
    acc = account(pool("floor", "premium", "concurrent", 25), {"wfm": 10, "toll_free_numbers": 4})
    result = cover(acc, {"floor": 100}, demand={"wfm": 12, "toll_free_numbers": 4})
    assert {"wfm": (12, 10, 2), "toll_free_numbers": (4, 4, 0)} == by_addon(result)
    assert "12 declared" == result[0].basis


def test_two_elite_concurrent_pools_add_up() -> None:
    """Each Elite concurrent pool's users beyond its own licenses need wfm and qm."""
    acc = account(pool("a", "elite", "concurrent", 10) + pool("b", "elite", "concurrent", 5)
                  + pool("c", "premium", "concurrent", 1), {"qm": 3})
    result = cover(acc, {"a": 30, "b": 8, "c": 50})
    assert {"qm": (23, 3, 20), "wfm": (23, 0, 23)} == by_addon(result)
    assert ("Elite concurrent users beyond licenses: a: 30 users (seen) - 10 Elite concurrent "
            "licenses = 20; b: 8 users (seen) - 5 Elite concurrent licenses = 3") == result[0].basis


def test_quantities_in_force_override_the_contract() -> None:
    """Licenses and add-ons bought during the period count as the caller passes them."""
    acc = account(pool("agents", "elite", "concurrent", 25), {"wfm": 75, "qm": 75})
    result = cover(acc, {"agents": 100}, licensed={"agents": 30}, purchased={"wfm": 60})
    assert {"wfm": (70, 60, 10), "qm": (70, 75, 0)} == by_addon(result)


def test_account_wide_and_counted_addons_are_listed() -> None:
    """Every add-on bought is reported, in contract order, even with nothing required."""
    acc = account(pool("agents", "elite", "named", 5), {"virtual_agent": 1, "cloud_storage": 2})
    result = cover(acc, {})
    assert ["virtual_agent", "cloud_storage"] == [c.addon for c in result]
    assert "nothing required by the metered users" == result[0].basis


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 500), st.integers(0, 500))
def test_shortfall_is_what_is_missing(seen: int, roster: int, licenses: int, bought: int) -> None:
    """For one Elite concurrent pool the shortfall is exactly the users neither licensed nor
    bought for, and buying the required number always closes it."""
    acc = account(pool("agents", "elite", "concurrent", licenses, roster), {"wfm": bought})
    [wfm, *_] = cover(acc, {"agents": seen})
    users = max(seen, roster)
    assert max(0, users - licenses - bought) == wfm.shortfall
    assert 0 == by_addon(cover(acc, {"agents": seen},
                               purchased={"wfm": wfm.required}))["wfm"][2]
