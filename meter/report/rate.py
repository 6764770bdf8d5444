"""Rating accounts for a report: one account from the store, or many in worker processes.

Many accounts are spread over worker processes (`meter.workers`), each with a store connection
of its own; the result is the same as rating them one by one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from meter.report.compose import bill_charts, bill_doc
from meter.report.document import AccountDoc, Charts
from meter.report.inputs import account_contracts, load_inputs
from meter.report.late import late_adjustments
from meter.store import Store, open_store
from meter.workers import cores, spawn_pool
from rating.bill import rate_columns
from rating.contracts import Account, parse_contracts
from rating.periods import Period, period_of_month

__all__ = ["PARALLEL_MIN", "Rated", "rate_one", "rate_parallel", "workers_for"]

#: One account's document and chart series.
Rated = tuple[AccountDoc, Charts]

#: Reports of at least this many accounts to rate are spread over worker processes.
PARALLEL_MIN = 48


async def rate_one(store: Store, account: Account, period: Period, contract: str, cutoff: int,
                   *, charts: bool, as_of: datetime | None = None) -> Rated:
    """One account's document and chart series (empty without `charts`), rated from the store
    with the arrivals up to `cutoff`. With `as_of` before the period's end plus the session
    timeout (a period still running), it is rated as of then: the usage so far."""
    inputs = await load_inputs(store, account, contract, period, cutoff)
    late = await late_adjustments(store, account, contract, period, cutoff)
    until = as_of if as_of is not None and as_of < period.end + account.session_timeout else None
    bill = rate_columns(account, inputs.columns, period, adjustment_lines=late, until=until)
    return bill_doc(bill, inputs, as_of=until), (bill_charts(bill) if charts else {})


@dataclass(frozen=True, slots=True)
class _Shard:
    """What a worker process needs to rate its share of the accounts (picklable)."""

    db: str
    contracts_text: str
    year: int
    month: int
    ids: tuple[str, ...]
    cutoff: int
    charts: bool
    as_of: datetime | None


def _rate_shard(shard: _Shard) -> list[tuple[str, Rated]]:
    """A worker process: rate the shard's accounts (none finalized) on a store of its own."""
    contracts = parse_contracts(shard.contracts_text)
    canonical = account_contracts(shard.contracts_text)

    async def rate() -> list[tuple[str, Rated]]:
        out = []
        async with await open_store(shard.db, mmap=True) as store:
            for account_id in shard.ids:
                account = contracts.get(account_id)
                assert account is not None
                period = period_of_month(account, shard.year, shard.month)
                out.append((account_id, await rate_one(store, account, period,
                                                       canonical[account_id], shard.cutoff,
                                                       charts=shard.charts, as_of=shard.as_of)))
        return out

    return asyncio.run(rate())


def workers_for(todo: int) -> int:
    """How many processes rate `todo` accounts: one per core, up to 4, from `PARALLEL_MIN`."""
    return min(cores(), 4) if todo >= PARALLEL_MIN else 1


def _tick(progress: Callable[[int], None], count: int, _: object) -> None:
    progress(count)


async def rate_parallel(store: Store, contracts_text: str, year: int, month: int,
                        ids: Sequence[str], *, cutoff: int, charts: bool, workers: int,
                        as_of: datetime | None = None,
                        progress: Callable[[int], None] | None = None) -> dict[str, Rated]:
    """Rate the accounts `ids` for their period of `year`-`month` in `workers` processes;
    `progress` is called with each shard's account count as it finishes."""
    loop = asyncio.get_running_loop()
    shards = [_Shard(store.location, contracts_text, year, month, tuple(ids[i::workers]), cutoff,
                     charts, as_of) for i in range(workers)]
    with spawn_pool(workers) as pool:
        futures = [loop.run_in_executor(pool, _rate_shard, shard) for shard in shards]
        if progress is not None:
            for shard, future in zip(shards, futures, strict=True):
                future.add_done_callback(functools.partial(_tick, progress, len(shard.ids)))
        results = await asyncio.gather(*futures)
    return dict(item for shard in results for item in shard)
