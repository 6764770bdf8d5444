"""`meter serve --slots N`: one member of a cluster on a PostgreSQL database.

A member joins (`Leases.open`), then runs side by side: ingest through the first free slot (or
waits as a standby until one frees), its share of the tracking partitions, the finalization
worker, and the usual metrics, pruning and optional HTTP ingest. Ingest commits batches as a lone
daemon does (ack after commit; the unique key absorbs redeliveries) but applies nothing to a
tracker: the partitions read the committed rows back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry

from meter.config import Settings, redact
from meter.errors import StoreError
from meter.finalization import Link
from meter.metrics import Metrics
from meter.serve import (
    Ingestor,
    _deadline,
    _serve_metrics,
    finalizer,
    load_contracts,
    one_error,
    rejected_pruner,
)
from meter.sources import Source, make_source
from meter.store import open_store
from meter.store.leases import SLOT, Leases
from meter.store.postgres import PostgresStore

from .jobs import link, report_link
from .tracking import Tracking

if TYPE_CHECKING:
    from meter.http import HttpServer

__all__ = ["SLOT_POLL_S", "run_cluster", "slot_settings"]

log = logging.getLogger("meter.cluster")

#: How often a standby looks for a free slot.
SLOT_POLL_S: Final = 1.0
#: How often a slot's holder records its broker link for the cluster's finalization rule.
LINK_EVERY_S: Final = 1.0


def slot_settings(settings: Settings, slot: int) -> Settings:
    """The MQTT settings of ingest slot `slot`: client id CLIENT_ID-N (one broker session per
    slot, kept while its holder is away), on the shared subscription of group CLIENT_ID."""
    return dataclasses.replace(settings, client_id=f"{settings.client_id}-{slot}",
                               share_group=settings.client_id)


async def run_cluster(settings: Settings, stop: asyncio.Event, *,
                      registry: CollectorRegistry | None = None) -> None:
    """Run one member until `stop` is set; return after a clean drain. `StoreError` (exit 1)
    when the lease connection was lost."""
    assert settings.slots is not None
    url = str(settings.db)
    contracts = load_contracts(settings.contracts)
    opened = await open_store(settings.db, synchronous=settings.synchronous)  # migrates first
    assert isinstance(opened, PostgresStore)
    store = opened
    try:
        leases = await Leases.open(url, slots=settings.slots, partitions=settings.partitions)
    except BaseException:
        await store.close()
        raise
    server = None
    try:
        log.info("meter serve: cluster member (%s) of %d slots and %d partitions: %s",
                 leases.name, settings.slots, settings.partitions, settings.describe())
        registry = registry if registry is not None else CollectorRegistry()
        store.rejected_keep_bytes = settings.rejected_keep_bytes
        metrics = Metrics(contracts, registry, db_path=None)
        metrics.slot = -1
        metrics.slots = settings.slots
        server = _serve_metrics(settings, registry)
        ingestor = Ingestor(settings, contracts=contracts, store=store, tracker=None,
                            metrics=metrics, stop=stop)
        tracking = Tracking(settings, contracts, store=store, leases=leases, metrics=metrics,
                            partitions=settings.partitions)
        http: HttpServer | None = None
        if settings.http_addr is not None:
            from meter.http import start_http  # noqa: PLC0415 - aiohttp loads only when asked for

            http = await start_http(settings, ingestor=ingestor, registry=registry)
        member = _Member(settings, leases=leases, ingestor=ingestor, metrics=metrics)
        with one_error():
            async with contextlib.AsyncExitStack() as closing, asyncio.TaskGroup() as tg:
                if http is not None:
                    closing.push_async_callback(http.close)
                consumer = tg.create_task(member.ingest(stop), name="mqtt-slot")
                tg.create_task(tracking.run(stop), name="tracking")
                tg.create_task(leases.keep(stop), name="leases")
                tg.create_task(rejected_pruner(settings, stop, store=store),
                               name="rejected-pruner")
                if settings.finalize_after > 0 and settings.contracts is not None:
                    tg.create_task(member.finalize(stop), name="finalizer")
                if http is not None:
                    tg.create_task(http.serve(stop), name="http-api")
                tg.create_task(_deadline(stop, consumer, settings.shutdown_timeout + 1.0),
                               name="shutdown-deadline")
        log.info("stopped: %d messages acknowledged this run", member.acked)
        if leases.lost.is_set():
            raise StoreError(f"--db {redact(url)}: the cluster's lease connection was lost; "
                             "stopped (restart to join again)", retriable=False)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        await store.close()
        await leases.close()


class _Member:
    """The ingest slot and finalization of one member (tracking is `Tracking`)."""

    def __init__(self, settings: Settings, *, leases: Leases, ingestor: Ingestor,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.leases = leases
        self.ingestor = ingestor
        self.metrics = metrics
        self.source: Source | None = None

    @property
    def acked(self) -> int:
        return self.source.acked if self.source is not None else 0

    async def ingest(self, stop: asyncio.Event) -> None:
        """Take the first free slot (waiting as a standby while all are held), then consume
        its broker session until `stop`."""
        assert self.settings.slots is not None
        if self.leases.retiring:
            await self.retire(self.leases.retiring, stop)
        slot = None
        waiting_since: float | None = None
        while slot is None and not stop.is_set():
            slot = await self.leases.take_slot(self.settings.slots)
            if slot is None:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    log.info("standby: all %d ingest slots are held; taking the first that "
                             "frees", self.settings.slots)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SLOT_POLL_S)
        if slot is None:
            return
        own = slot_settings(self.settings, slot)
        log.info("ingest slot %d taken: client id %s on %s", slot, own.client_id,
                 own.subscription)
        self.metrics.slot = slot
        metrics = self.metrics

        def connected(up: bool) -> None:
            metrics.connected = up

        def reconnecting() -> None:
            metrics.reconnects += 1

        def taken_over() -> None:
            metrics.session_takeovers += 1

        self.source = make_source(own, on_connected=connected, on_reconnect=reconnecting,
                                  on_takeover=taken_over)
        links = asyncio.create_task(self.report_links(slot, stop), name="slot-link")
        try:
            await self.source.run(self.ingestor.handle, stop)
        finally:
            links.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await links

    async def retire(self, slots: range, stop: asyncio.Event) -> None:
        """Retire the slots of a cluster that was started again with fewer: each one's broker
        session still holds what was queued for it and is still in the shared group, so it
        would get a share of new messages for ever. Connect as it, unsubscribe (no new message
        is routed to it from the UNSUBACK on), and store and acknowledge what it holds until it
        has been idle for `finalize_quiet`."""
        quiet = max(1.0, self.settings.finalize_quiet)
        every = True
        for k in slots:
            if stop.is_set() or not await self.leases.take(SLOT, k):
                every = False  # stopping, or another member retires it (and records it)
                continue
            try:
                own = slot_settings(self.settings, k)
                log.warning("retiring ingest slot %d (the cluster has %d slots now): draining "
                            "its broker session %s", k, self.settings.slots, own.client_id)
                source = make_source(own)
                source.retire = True
                done = asyncio.Event()
                run = asyncio.create_task(source.run(self.ingestor.handle, done),
                                          name=f"retire-slot-{k}")
                while not run.done():
                    since = source.connected_at
                    if stop.is_set() or (since is not None and time.time() - max(
                            since, source.received_at or 0.0) > quiet):
                        done.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(run), 0.2)
                await run
                every = every and not stop.is_set()
                log.warning("ingest slot %d retired: %d messages stored from its session", k,
                            source.acked)
            finally:
                await self.leases.release(SLOT, k)
        if every:
            await self.leases.retired()

    async def finalize(self, stop: asyncio.Event) -> None:
        """Queue the periods due and work the job table beside the other members, waiting while
        any slot is not connected and drained (`jobs.link`)."""
        settings = self.settings
        assert settings.slots is not None
        slots = settings.slots

        async def cluster_link() -> Link:
            return await link(str(settings.db), slots, datetime.now(UTC))

        await finalizer(settings, stop, link=cluster_link, metrics=self.metrics,
                        worker=self.leases.name)

    async def report_links(self, slot: int, stop: asyncio.Event) -> None:
        """Record this slot's broker link every `LINK_EVERY_S` for the cluster's finalization
        rule; a failure is logged and tried again (finalization only waits meanwhile)."""
        url = str(self.settings.db)
        while not stop.is_set():
            source = self.source
            if source is not None:
                try:
                    await report_link(url, slot, self.leases.name,
                                      connected_since=_when(source.connected_at),
                                      last_received=_when(source.received_at),
                                      now=datetime.now(UTC))
                except StoreError as exc:
                    log.warning("slot %d link not recorded: %s", slot, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LINK_EVERY_S)


def _when(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)
