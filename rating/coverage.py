"""Add-on coverage: how many of each add-on an account needs for its users, has bought, and lacks.

It owns DESIGN section 2 "Add-ons and coverage" (seed 003): Elite includes wfm, qm and aea; on
concurrent Elite, wfm and qm cover only as many users as there are Elite concurrent licenses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rating.contracts import ADDONS, Account

__all__ = ["LIMITED_BY_CONCURRENT_ELITE", "Coverage", "cover"]

#: Seed 003: "the account must purchase additional add-on licenses for Zoom Workforce Management
#: and Zoom Quality Management"; "AI Expert Assist doesn't require additional licenses".
LIMITED_BY_CONCURRENT_ELITE: tuple[str, ...] = ("wfm", "qm")


@dataclass(frozen=True, slots=True)
class Coverage:
    """One add-on in one period: `shortfall` = max(0, required - purchased); `basis` says why."""

    addon: str
    required: int
    purchased: int
    shortfall: int
    basis: str


def cover(account: Account, users_seen: Mapping[str, int], *,
          licensed: Mapping[str, int] | None = None,
          purchased: Mapping[str, int] | None = None,
          demand: Mapping[str, int] | None = None) -> tuple[Coverage, ...]:
    """Coverage of each add-on the account buys or needs, in contract order then DESIGN order.

    `users_seen[pool]` is the number of distinct users of a concurrent pool in the period (from
    the concurrency core); a pool's declared `roster` counts instead where it is larger.
    `licensed[pool]` and `purchased[addon]` are the quantities in force (default: the contract's;
    pass the period's highest from the seat ledger). `demand[addon]` adds needs the events cannot
    show (users provisioned on Essentials or Premium, numbers, storage); it defaults to none.

    Named Elite covers its assigned users, and concurrent Elite covers aea for everyone, so
    neither adds a requirement; concurrent Elite needs wfm and qm for its users beyond its
    licenses: seed 003's 100 agents on 25 Elite concurrent licenses need 75 of each.
    """
    licensed = licensed or {}
    purchased = purchased or {}
    demand = demand or {}
    beyond = 0
    parts = []
    for pool in account.pools:
        if pool.tier != "elite" or pool.model != "concurrent":
            continue
        seen = users_seen.get(pool.id, 0)
        users = max(seen, pool.roster or 0)
        source = "roster" if (pool.roster or 0) > seen else "seen"
        licenses = licensed.get(pool.id, pool.quantity)
        extra = max(0, users - licenses)
        beyond += extra
        parts.append(f"{pool.id}: {users} users ({source}) - {licenses} Elite concurrent "
                     f"licenses = {extra}")
    ids = [a.id for a in account.addons]
    needed = set(LIMITED_BY_CONCURRENT_ELITE) if beyond else set()
    needed |= {a for a, n in demand.items() if n > 0}
    ids += [a for a in ADDONS if a in needed and a not in ids]
    ids += sorted(a for a in needed if a not in ids)  # demand for an id DESIGN does not list
    result = []
    for addon_id in ids:
        addon = account.addon(addon_id)
        bought = purchased.get(addon_id, addon.quantity if addon else 0)
        why = []
        required = demand.get(addon_id, 0)
        if required:
            why.append(f"{required} declared")
        if addon_id in LIMITED_BY_CONCURRENT_ELITE and parts:
            required += beyond
            why.append("Elite concurrent users beyond licenses: " + "; ".join(parts))
        if not why:
            why.append("nothing required by the metered users")
        result.append(Coverage(
            addon=addon_id, required=required, purchased=bought,
            shortfall=max(0, required - bought), basis="; ".join(why),
        ))
    return tuple(result)
