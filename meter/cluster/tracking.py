"""Live tracking on a cluster member: accounts split into fixed partitions by a stable hash, each
partition leased by one member, which rebuilds its tracker from the partition's checkpoint (or
the current periods' rows) and then feeds it the rows committed since, read from the store.

The feed's cursor is a transaction horizon, not a seq: a batch draws its seqs before it commits,
so a reader could see seq 20 committed while seq 10 is not yet, and a "seq > last" cursor would
skip 10 for ever. Each read takes a snapshot and its xmin horizon (every transaction below it has
ended); it applies the rows of the transactions from the previous horizon up to this one, which
are all final. A long transaction anywhere on the server holds the horizon back: the gauges lag,
nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from meter import checkpoint
from meter.config import Settings
from meter.errors import StoreError
from meter.events import to_us
from meter.metrics import Metrics, Snapshot
from meter.serve import TICK_SECONDS, replayed, window_start
from meter.store.base import StoredEvent
from meter.store.leases import PARTITION, Leases
from meter.store.postgres import Horizon, PostgresStore
from meter.tracker import AddonView, PoolView, Tracker
from rating.contracts import Contracts

__all__ = ["FEED_EVERY_S", "Part", "Tracking", "partition_of"]

log = logging.getLogger("meter.cluster")

#: How often held partitions are fed the rows committed since (the gauges' extra delay).
FEED_EVERY_S: Final = 0.25
#: How often the member checks its share of partitions against the running members.
BALANCE_EVERY_S: Final = 1.0
#: The shortest time between two re-rates of the dirty accounts (as on a lone daemon).
RERATE_EVERY_S: Final = 1.0


def partition_of(account: str, partitions: int) -> int:
    """The partition of `account`: the same on every member and every start (CRC-32 of its id,
    not Python's per-process `hash`)."""
    return zlib.crc32(account.encode()) % partitions


def _now_us() -> int:
    return to_us(datetime.now(UTC))


@dataclass
class Part:
    """One held partition: its accounts' tracker, fed with every row below `horizon`."""

    number: int
    contracts: Contracts
    tracker: Tracker
    horizon: int
    saved_at: float = 0.0

    @property
    def accounts(self) -> list[str]:
        return [a.id for a in self.contracts.accounts]


class Tracking:
    """The partitions one member holds, kept fed, re-rated, published and checkpointed."""

    def __init__(self, settings: Settings, contracts: Contracts, *, store: PostgresStore,
                 leases: Leases, metrics: Metrics, partitions: int) -> None:
        self.settings = settings
        self.contracts = contracts
        self.store = store
        self.leases = leases
        self.metrics = metrics
        self.partitions = partitions
        self.parts: dict[int, Part] = {}
        self._of = {a.id: partition_of(a.id, partitions) for a in contracts.accounts}
        self._horizon_since: tuple[int, float] | None = None
        self.metrics.tracked = frozenset()

    def accounts_of(self, number: int) -> Contracts:
        return Contracts(accounts=tuple(a for a in self.contracts.accounts
                                        if self._of[a.id] == number))

    async def run(self, stop: asyncio.Event) -> None:
        """Balance, feed, re-rate and publish until `stop`; then save every held partition's
        checkpoint (its lease goes with the connection). A store that fails is retried."""
        balanced = rerated = published = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                try:
                    if now - balanced >= BALANCE_EVERY_S:
                        balanced = now
                        await self.balance()
                    await self.feed()
                    if now - rerated >= RERATE_EVERY_S:
                        rerated = now
                        await self.rerate()
                    # As a lone daemon's tick: a snapshot of 1,000 pools costs ~30 ms.
                    if now - published >= TICK_SECONDS:
                        published = now
                        self.publish()
                    await self.checkpoint_due(now)
                except StoreError as exc:
                    if not exc.retriable:
                        raise
                    log.warning("tracking: %s (retrying)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), FEED_EVERY_S)
        finally:
            for part in list(self.parts.values()):
                with contextlib.suppress(StoreError):
                    await self.save(part)

    # --- leases -----------------------------------------------------------------------------

    async def balance(self) -> None:
        """Hold `ceil(partitions / members)`: give back the highest ones above that share
        (checkpoint first, so the next holder replays little), take free ones below it."""
        members = await self.leases.members()
        share = math.ceil(self.partitions / members)
        held = sorted(self.parts)
        for number in held[share:]:
            part = self.parts.pop(number)
            await self.save(part)
            await self.leases.release_partition(number)
            log.info("tracking partition %d handed back (%d members share %d partitions)",
                     number, members, self.partitions)
        if len(held) < share:
            taken = (await self.leases.holders(PARTITION)).keys()
            free = [p for p in range(self.partitions) if p not in taken]
            for number in await self.leases.take_partitions(free, share - len(held)):
                try:
                    self.parts[number] = await self.load(number)
                except BaseException:
                    await self.leases.release_partition(number)
                    raise
        self.metrics.tracked = frozenset(a for p in self.parts.values() for a in p.accounts)

    async def load(self, number: int) -> Part:
        """A taken partition's tracker: its checkpoint, or the current periods replayed."""
        started = time.perf_counter()
        contracts = self.accounts_of(number)
        accounts = [a.id for a in contracts.accounts]
        wall_us = _now_us()
        saved = await self.store.load_partition_checkpoint(number, self.partitions)
        part: Part | None = None
        if saved is not None:
            horizon, blob = saved
            try:
                tracker, _ = checkpoint.load(contracts, blob)
                part = Part(number, contracts, tracker, horizon)
                how = "its checkpoint"
            except checkpoint.Stale as exc:
                log.warning("tracking partition %d: checkpoint ignored (%s)", number, exc)
        async with self.store.snapshot() as h:
            latest = await h.latest(accounts)
            if part is None:
                part = await self._replay(number, contracts, h, latest, wall_us)
                how = "the stored events"
        for account, ts_us in latest.items():
            self.metrics.saw_event(account, ts_us)
        part.tracker.advance_each(self._wall(wall_us), self._window_us)
        log.info("tracking partition %d (%d accounts) taken, from %s in %.2fs", number,
                 len(accounts), how, time.perf_counter() - started)
        return part

    async def _replay(self, number: int, contracts: Contracts, h: Horizon,
                      latest: dict[str, int], wall_us: int) -> Part:
        accounts = [a.id for a in contracts.accounts]
        start_us = window_start(contracts, self.settings, latest, wall_us)
        seats = await h.seats_before(accounts, start_us)
        events = await h.events_from(accounts, start_us)
        tracker = await asyncio.to_thread(replayed, contracts, start_us, seats, events)
        return Part(number, contracts, tracker, h.at)

    # --- feeding ----------------------------------------------------------------------------

    async def feed(self) -> int:
        """Apply to each held partition the rows of the transactions that ended since its
        horizon; returns how many rows were applied."""
        if not self.parts:
            return 0
        applied = 0
        async with self.store.snapshot() as h:
            self._held(h)
            by_horizon: dict[int, list[Part]] = {}
            for part in self.parts.values():
                by_horizon.setdefault(part.horizon, []).append(part)
            for since, parts in by_horizon.items():
                if since >= h.at:
                    continue
                rows = await h.stored_since([a for p in parts for a in p.accounts], since)
                applied += self._apply(parts, rows)
                # As a lone daemon's commit does: the rows' accounts apply what their
                # watermarks passed now, not a second's worth at once in `publish`.
                touched, wall = {e.account for e in rows}, self._wall(_now_us())
                for part in parts:
                    part.tracker.advance_each(wall, self._window_us, accounts=touched)
                for e in rows:
                    self.metrics.saw_event(e.account, e.ts_us)
                for part in parts:
                    part.horizon = h.at
        return applied

    def _held(self, h: Horizon) -> None:
        """How long one open transaction has held the horizon where it is (0 when none runs)."""
        now = time.monotonic()
        if not h.running:
            self._horizon_since = None
        elif self._horizon_since is None or self._horizon_since[0] != h.at:
            self._horizon_since = (h.at, now)
        self.metrics.feed_held_s = 0.0 if self._horizon_since is None else (
            now - self._horizon_since[1])

    def _apply(self, parts: Sequence[Part], rows: Sequence[StoredEvent]) -> int:
        if len(parts) == 1:
            return parts[0].tracker.apply_all(rows)
        by_number = {p.number: p for p in parts}
        n = 0
        for e in rows:
            by_number[self._of[e.account]].tracker.apply(e)
            n += 1
        return n

    async def rerate(self) -> None:
        """Make the live view equal the bill again where a tracker marks an account dirty (a
        late event, a timed-out session): replay it from the rows below its partition's horizon,
        which are exactly the rows the tracker has applied."""
        for part in list(self.parts.values()):
            for account in part.tracker.dirty_accounts():
                started = time.perf_counter()
                tracker = part.tracker
                start = tracker.replay_start(account)
                contract = self.contracts.get(account)
                async with self.store.snapshot("re-rate read") as h:
                    events = await h.events_from([account], start, below=part.horizon)
                    seats = (await h.seats_before([account], start, below=part.horizon)
                             if contract is not None and contract.named_pools else [])
                replay = await asyncio.to_thread(tracker.replay, account, events, seats)
                # Nothing was fed meanwhile (this loop feeds too): no row to apply after it.
                tracker.install(replay, ())
                self.metrics.rerate.observe(time.perf_counter() - started)

    def publish(self) -> None:
        """Advance every held tracker to its accounts' watermarks and show them to scrapes."""
        wall = self._wall(_now_us())
        pools: list[PoolView] = []
        addons: list[AddonView] = []
        for part in self.parts.values():
            part.tracker.advance_each(wall, self._window_us)
            pools += part.tracker.views()
            addons += part.tracker.addon_views()
        self.metrics.snapshot = Snapshot(tuple(pools), tuple(addons))

    # --- checkpoints ------------------------------------------------------------------------

    async def checkpoint_due(self, now: float) -> None:
        every = self.settings.checkpoint_every
        if every <= 0:
            return
        for part in list(self.parts.values()):
            if now - part.saved_at >= every:
                await self.save(part)

    async def save(self, part: Part) -> None:
        """Save `part`'s tracker with the horizon it is fed up to."""
        state = checkpoint.capture(part.tracker, 0)
        horizon = part.horizon
        blob = await asyncio.to_thread(checkpoint.encode, state)
        await self.store.save_partition_checkpoint(part.number, self.partitions, horizon, blob)
        part.saved_at = time.monotonic()

    # --- clock ------------------------------------------------------------------------------

    def _wall(self, wall_us: int) -> int | None:
        return wall_us if self.settings.tracker_clock == "wall" else None

    @property
    def _window_us(self) -> int:
        return int(self.settings.reorder_window * 1e6)
