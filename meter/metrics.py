"""The daemon's Prometheus metrics: a custom collector that builds fresh families at scrape time
from plain counters and the latest tracker snapshot, plus two histograms. Labels come only from
configured values: account, pool, add-on id and the fixed rejection reasons.

The daemon's event loop owns every value; the scrape thread only reads them. The tracker snapshot
is an immutable tuple swapped in whole, so a scrape never sees half an update.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meter import __version__
from meter.events import REASONS
from meter.finalization import REASONS as WAIT_REASONS
from meter.sys_topics import BrokerStats
from meter.tracker import SHORTFALL_ADDONS, AddonView, PoolView, Tracker
from rating.contracts import Contracts

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics", "Snapshot"]

#: Event time to commit. Live traffic lands in the low buckets; replays of old events in +Inf.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                          10.0, 30.0, 60.0, 300.0, 3600.0)
#: One batch transaction (one fsync with synchronous=FULL).
BATCH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0)
#: Account label of rejects whose account is not a configured one (unknown, garbage).
NO_ACCOUNT: Final = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The tracker's state at one instant, for scrapes."""

    pools: tuple[PoolView, ...] = ()
    addons: tuple[AddonView, ...] = ()

    @classmethod
    def of(cls, tracker: Tracker) -> Snapshot:
        """Read a tracker (on the event loop) into an immutable snapshot."""
        return cls(tracker.views(), tracker.addon_views())


class Metrics:
    """Every metric of `meter serve`, registered on `registry` (a fresh one per test)."""

    def __init__(self, contracts: Contracts, registry: CollectorRegistry, *,
                 db_path: Path | None = None) -> None:
        self.contracts = contracts
        self.db_path = db_path
        accounts = [a.id for a in contracts.accounts]
        self.received = dict.fromkeys(accounts, 0)
        self.duplicates = dict.fromkeys(accounts, 0)
        self.rejected = {(a, r): 0 for a in [*accounts, NO_ACCOUNT] for r in REASONS}
        self.last_event_us = dict.fromkeys(accounts, 0)
        self.connected = False
        self.reconnects = 0
        #: Times another client took the broker session of our client id (see meter.source).
        self.session_takeovers = 0
        self.store_errors = 0
        self.store_healthy = True
        #: The broker's `$SYS` counters (meter.sys_topics); each absent until the broker says it.
        self.broker = BrokerStats()
        self.snapshot = Snapshot()
        #: Account -> why its last ended period waits for finalization (absent: not waiting).
        self.finalization_waiting: dict[str, str] = {}
        #: On a cluster member (`meter.cluster`): the accounts of the tracking partitions it
        #: holds, the only ones whose live gauges it exports; None: every account (one daemon).
        self.tracked: frozenset[str] | None = None
        #: On a cluster member: the ingest slot it holds, -1 while it waits as a standby.
        self.slot: int | None = None
        #: On a cluster member: how many ingest slots the cluster has.
        self.slots: int | None = None
        #: On a cluster member: seconds one open transaction has held the tracking feed back.
        self.feed_held_s = 0.0
        self._addon_keys = [
            (a.id, addon) for a in contracts.accounts
            if any(p.tier == "elite" and p.model == "concurrent" for p in a.pools)
            for addon in SHORTFALL_ADDONS
        ]
        self.ingest_latency = Histogram(
            "meter_ingest_latency_seconds",
            "Time from an accepted event's own timestamp to the commit that stored it.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_commit = Histogram(
            "meter_batch_commit_seconds",
            "Time to commit one batch of messages to the store (one transaction).",
            buckets=BATCH_BUCKETS, registry=registry)
        self.rerate = Histogram(
            "meter_rerate_seconds",
            "Time batches were held back while an account replayed from the store (after a late "
            "event or a session timeout) was put in place.",
            buckets=BATCH_BUCKETS, registry=registry)
        registry.register(_Collector(self))

    # --- updates, from the event loop -------------------------------------------------------------

    def count_rejected(self, account: str | None, reason: str) -> None:
        """One rejected message; an account outside the contracts is labelled ""."""
        key = (account if account in self.received else NO_ACCOUNT, reason)
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def saw_event(self, account: str, ts_us: int) -> None:
        """Keep the newest event time per account."""
        if account in self.last_event_us and ts_us > self.last_event_us[account]:
            self.last_event_us[account] = ts_us

    # --- scrape -----------------------------------------------------------------------------------

    def store_size(self) -> int:
        """Bytes on disk of the database with its WAL and shared-memory files."""
        if self.db_path is None:
            return 0
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.db_path}{suffix}").st_size
        return total

    def tracks(self, account: str) -> bool:
        """Whether this process shows `account`'s live state (on a cluster member: whether it
        holds the account's tracking partition)."""
        return self.tracked is None or account in self.tracked

    def pool_views(self) -> Iterator[PoolView]:
        """The snapshot's views of the accounts this process tracks, with zeros for pools the
        tracker has not reported yet."""
        seen = {(v.account, v.pool): v for v in self.snapshot.pools}
        for account in self.contracts.accounts:
            if not self.tracks(account.id):
                continue
            for pool in account.pools:
                view = seen.get((account.id, pool.id))
                if view is None:
                    concurrent = pool.model == "concurrent"
                    view = PoolView(account.id, pool.id, pool.model, 0, 0, 0, 0, 0, 0, 0, 0,
                                    0.0 if concurrent else None, 0 if concurrent else None, 0, 0,
                                    None)
                yield view

    def collect(self) -> Iterable[Metric]:
        """Fresh metric families from the current values."""
        info = GaugeMetricFamily("meter_build_info", "The meter's version (value is always 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily("meter_mqtt_connected",
                                "1 while connected and subscribed to the broker, else 0.",
                                value=1 if self.connected else 0)
        yield CounterMetricFamily("meter_reconnects_total",
                                  "Connection attempts to the broker after the first one.",
                                  value=self.reconnects)
        yield CounterMetricFamily("meter_session_takeovers_total",
                                  "Times another client connected with this meter's client id and "
                                  "the broker dropped this one (session taken over).",
                                  value=self.session_takeovers)
        if self.broker.dropped is not None:
            yield CounterMetricFamily(
                "meter_broker_dropped_messages_total",
                "Messages the broker dropped (its $SYS publish/messages/dropped: a full queue, "
                "broker-wide, reset when the broker restarts); absent where $SYS is not readable.",
                value=self.broker.dropped)
        if self.broker.queued is not None:
            yield GaugeMetricFamily(
                "meter_broker_queued_messages",
                "Messages the broker holds (its $SYS store/messages/count); absent where $SYS is "
                "not readable.", value=self.broker.queued)
        yield GaugeMetricFamily("meter_store_healthy",
                                "0 while the last store write failed and is being retried.",
                                value=1 if self.store_healthy else 0)
        yield CounterMetricFamily("meter_store_errors_total",
                                  "Batch writes that failed with a retriable store error.",
                                  value=self.store_errors)
        yield GaugeMetricFamily("meter_store_size_bytes",
                                "Size of the SQLite database with its WAL on disk.",
                                value=self.store_size())

        by_account = (
            ("meter_events_received_total", CounterMetricFamily,
             "Valid events stored, each counted once however often it was delivered.",
             self.received),
            ("meter_events_duplicate_total", CounterMetricFamily,
             "Valid events received again (redeliveries, replays) and not stored twice.",
             self.duplicates),
        )
        for name, family, doc, values in by_account:
            metric = family(name, doc, labels=["account"])
            for account, value in list(values.items()):
                metric.add_metric([account], value)
            yield metric
        last = GaugeMetricFamily("meter_last_event_timestamp_seconds",
                                 "Event time of the newest accepted event (0: none yet).",
                                 labels=["account"])
        for account, ts_us in list(self.last_event_us.items()):
            last.add_metric([account], ts_us / 1e6)
        yield last
        rejected = CounterMetricFamily(
            "meter_events_rejected_total",
            "Messages refused by validation, stored in the rejected table, by reason; account is "
            "the topic's account when configured, else empty.",
            labels=["account", "reason"])
        for (account, reason), value in list(self.rejected.items()):
            rejected.add_metric([account, reason], value)
        yield rejected
        waiting = GaugeMetricFamily(
            "meter_finalization_waiting",
            "1 while the account's last ended period waits for finalization, for the reason "
            "labelled (lateness, disconnected, draining, late_events); else 0.",
            labels=["account", "reason"])
        now_waiting = dict(self.finalization_waiting)
        for account in self.received:
            for reason in WAIT_REASONS:
                waiting.add_metric([account, reason], 1 if now_waiting.get(account) == reason else 0)
        yield waiting

        yield from self._pool_families()

        shortfall = GaugeMetricFamily(
            "meter_addon_shortfall",
            "Per-seat add-ons (wfm, qm) an Elite concurrent account lacks for the users seen this "
            "period (live estimate; the report is authoritative).",
            labels=["account", "addon"])
        known = {(a.account, a.addon): a.shortfall for a in self.snapshot.addons}
        for key in self._addon_keys:
            if self.tracks(key[0]):
                shortfall.add_metric(list(key), known.get(key, 0))
        yield shortfall
        if self.slot is not None:
            yield GaugeMetricFamily(
                "meter_cluster_slot",
                "Cluster members: the ingest slot this member holds (its broker client id is "
                "CLIENT_ID-N), -1 while it waits as a standby.", value=self.slot)
        if self.slots is not None:
            yield GaugeMetricFamily(
                "meter_cluster_slots",
                "Cluster members: the cluster's number of ingest slots (--slots).",
                value=self.slots)
        if self.tracked is not None:
            yield GaugeMetricFamily(
                "meter_cluster_tracked_accounts",
                "Cluster members: accounts whose live gauges this member exports (those of the "
                "tracking partitions it holds).", value=len(self.tracked))
            yield GaugeMetricFamily(
                "meter_cluster_feed_held_seconds",
                "Cluster members: how long one open transaction on the database server has held "
                "the live feed back (its rows, and every row committed after it, wait for it to "
                "end; nothing is skipped); 0 when none is open.", value=self.feed_held_s)

    def _pool_families(self) -> Iterator[Metric]:
        labels = ["account", "pool"]
        fams = {
            "active": GaugeMetricFamily("meter_active_users",
                                        "Users signed in now (once per user, however many devices).",
                                        labels=labels),
            "licensed": GaugeMetricFamily("meter_licensed_seats",
                                          "Licensed quantity in force now (orders included).",
                                          labels=labels),
            "peak": GaugeMetricFamily("meter_period_peak_users",
                                      "Highest number of users signed in this billing period.",
                                      labels=labels),
            "peak_at": GaugeMetricFamily("meter_period_peak_timestamp_seconds",
                                         "When this period's peak was first reached.",
                                         labels=labels),
            "start": GaugeMetricFamily("meter_period_start_timestamp_seconds",
                                       "Start of the current billing period.", labels=labels),
            "excess": GaugeMetricFamily("meter_excess_users",
                                        "Users signed in above the licensed quantity now.",
                                        labels=labels),
            "grace": GaugeMetricFamily(
                "meter_grace_remaining_seconds",
                "Concurrent pools: seconds until the current excess becomes billable; the full "
                "grace when there is no excess, 0 once it is billable.", labels=labels),
            "billable": GaugeMetricFamily(
                "meter_period_billable_overage_seats",
                "Concurrent pools: overage seats the grace rule has made billable so far this "
                "period.", labels=labels),
        }
        for v in self.pool_views():
            key = [v.account, v.pool]
            fams["active"].add_metric(key, v.active_users)
            fams["licensed"].add_metric(key, v.licensed)
            fams["peak"].add_metric(key, v.peak_users)
            fams["peak_at"].add_metric(key, v.peak_at_us / 1e6)
            fams["start"].add_metric(key, v.period_start_us / 1e6)
            fams["excess"].add_metric(key, v.excess)
            if v.grace_remaining_s is not None:
                fams["grace"].add_metric(key, v.grace_remaining_s)
            if v.billable_overage is not None:
                fams["billable"].add_metric(key, v.billable_overage)
        yield from fams.values()


class _Collector:
    """Adapter so the registry calls `Metrics.collect` (and learns its names once)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()

    def describe(self) -> Iterable[Metric]:
        return self._metrics.collect()
