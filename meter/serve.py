"""`meter serve`: the daemon. Wires settings, store, tracker, metrics and the MQTT source, commits
each batch before it is acknowledged, rebuilds live state from the store on start, and on SIGTERM
or SIGINT drains what is in flight and exits 0 within a few seconds.

`run(settings, stop)` is the daemon (tests call it with their own event); `meter.daemon.run_cli`
parses, installs signal handlers that set the event, and runs it or a cluster member.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry

from meter import checkpoint
from meter.config import Settings, is_postgres, redact, share_password
from meter.errors import ConfigError, DatabaseInUse, MeterError, StoreError
from meter.events import Event, Limits, Rejection, parse, to_us
from meter.finalization import Link
from meter.metrics import Metrics, Snapshot
from meter.metrics_http import serve_metrics
from meter.source import Delivery, backoff_delay, topic_account
from meter.sources import Source, make_source
from meter.store import RejectedMessage, Store, StoredEvent, open_store
from meter.sys_topics import watch as watch_broker
from meter.tracker import Tracker
from rating.contracts import Contracts, parse_contracts
from rating.errors import RatingError
from rating.periods import monthly_period

if TYPE_CHECKING:
    from meter.http import HttpServer

__all__ = ["Ingestor", "hold", "hold_database", "rebuild", "run", "watermark"]

log = logging.getLogger("meter.serve")

#: How often the tracker snapshot behind the gauges is refreshed without traffic.
TICK_SECONDS: Final = 1.0
#: The shortest time between two re-rates of one dirty account: a stream of late events costs
#: at most one replay of the account this often.
RERATE_EVERY_SECONDS: Final = 1.0
_RNG: Final = random.Random()  # noqa: S311 - retry jitter, not cryptography


def _now_us() -> int:
    return to_us(datetime.now(UTC))


def load_contracts(path: Path | None) -> Contracts:
    """The contracts file, or no accounts at all (every event is then `unknown_account`)."""
    if path is None:
        log.warning("no contracts file: every event will be rejected as unknown_account")
        return Contracts(accounts=())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read contracts: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_contracts(text, source=str(path))


@dataclass(frozen=True)
class _Committed:
    """One committed batch as `Ingestor` applies and counts it: every event (new or duplicate),
    the rejected messages, the new events, and when the commit returned."""

    events: Sequence[Event]
    rejected: Sequence[RejectedMessage]
    fresh: list[Event]
    committed_s: float


class Ingestor:
    """The batch handler: validate, commit (retrying a store that is locked or full), then
    update counters and the tracker. Returns True once the batch is durable."""

    def __init__(self, settings: Settings, *, contracts: Contracts, store: Store,
                 tracker: Tracker | None, metrics: Metrics, stop: asyncio.Event) -> None:
        self.settings = settings
        self.contracts = contracts
        self.store = store
        #: None on a cluster member: its tracker partitions read the committed rows from the
        #: store (`meter.cluster.tracking`), since a shared subscription splits each account.
        self.tracker = tracker
        self.metrics = metrics
        self.stop = stop
        self.limits = Limits(max_bytes=settings.max_bytes,
                             future_skew=timedelta(seconds=settings.max_future))
        self._snapshot_at = 0.0
        self._window_us = int(settings.reorder_window * 1e6)
        #: Held while a batch is committed. Whoever reads the store to replace or save tracker
        #: state (re-rating, checkpoints) holds it through `settled`, which first applies what
        #: was committed: it then sees exactly what the tracker has applied.
        self.lock = asyncio.Lock()
        #: The last commit, not yet applied to the tracker nor counted: the next commit does it
        #: while its own batch is in the store's hands (or `settled`, or the loop's next turn
        #: when no commit follows).
        self._unapplied: _Committed | None = None
        #: A commit was cancelled while the store had its batch: it may be stored without the
        #: tracker having it, so no checkpoint is saved from here on (a restart replays from the
        #: last one, which is exact).
        self.unsure = False

    @contextlib.asynccontextmanager
    async def settled(self) -> AsyncIterator[None]:
        """The ingest lock, held with every committed event applied to the tracker."""
        async with self.lock:
            self._apply_committed()
            yield

    def _apply_committed(self) -> None:
        """Apply the last commit to the tracker and count it, unless done already (the lock's
        holder, or no one, calls it: never while a holder is between its commit and its own
        call)."""
        done, self._unapplied = self._unapplied, None
        if done is None:
            return
        fresh = done.fresh
        if fresh and self.tracker is not None:
            self.tracker.apply_all(fresh)
            # The batch's accounts apply what their watermarks passed now, a little at each
            # commit: left to the once-a-second refresh, a second's events (5,000 at 5,000
            # events/s) were applied in one go, a 40-90 ms stall of the loop every second that
            # set ingest's p99 latency.
            self.tracker.advance_each(self._wall_us(), self._window_us,
                                      accounts={e.account for e in fresh})
        m = self.metrics
        for r in done.rejected:
            m.count_rejected(r.account, r.reason)
        for e in done.events:
            m.duplicates[e.account] += 1  # taken back below for the ones that were new
        for e in fresh:
            m.duplicates[e.account] -= 1
            m.received[e.account] += 1
            ts_us = e.ts_us
            m.saw_event(e.account, ts_us)
            m.ingest_latency.observe(max(0.0, done.committed_s - ts_us / 1e6))

    def _apply_if_idle(self) -> None:
        """The loop's next turn after a commit: apply it unless another commit (which applies it
        meanwhile) or a `settled` holder has the lock."""
        if not self.lock.locked():
            self._apply_committed()

    def _wall_us(self) -> int | None:
        """The wall clock for `Tracker.advance_each`; None with tracker_clock=events."""
        return _now_us() if self.settings.tracker_clock == "wall" else None

    async def _write(self, events: Sequence[Event], rejected: Sequence[RejectedMessage],
                     received_us: int) -> list[Event] | None:
        """Commit; returns the events that were new, or None if stop came while the store was
        failing (nothing is acknowledged then)."""
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = await self.store.add(events, rejected, received_us=received_us,
                                              meanwhile=self._apply_committed)
            except (StoreError, sqlite3.OperationalError) as exc:
                retriable = exc.retriable if isinstance(exc, StoreError) else True
                if not retriable:
                    raise
                self.metrics.store_errors += 1
                self.metrics.store_healthy = False
                if self.stop.is_set():
                    log.error("store still failing at shutdown; %d messages left "
                              "unacknowledged for redelivery: %s", len(events) + len(rejected), exc)
                    return None
                delay = backoff_delay(attempt, 0.05, 5.0, _RNG)
                attempt += 1
                log.warning("store write failed, will retry in %.2fs (nothing acknowledged): %s",
                            delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                continue
            self.metrics.batch_commit.observe(time.perf_counter() - started)
            self.metrics.store_healthy = True
            return [events[i] for i in result.fresh]

    async def handle(self, batch: Sequence[Delivery]) -> bool:
        """Validate and commit one batch (the source acknowledges it when this returns True)."""
        received = datetime.now(UTC)
        received_us = to_us(received)
        events: list[Event] = []
        rejected: list[RejectedMessage] = []
        prefix = self.settings.topic_prefix
        for d in batch:
            account = topic_account(d.topic, prefix)
            outcome: Event | Rejection
            if account is None:
                outcome = Rejection("tenant_mismatch", f"topic {d.topic!r} names no account")
            else:
                outcome = parse(d.payload, contracts=self.contracts, received_at=received,
                                topic_account=account, limits=self.limits)
            if isinstance(outcome, Rejection):
                rejected.append(RejectedMessage(received_us, d.topic, outcome.account,
                                                outcome.reason, outcome.detail, d.payload))
            else:
                events.append(outcome)
        return await self.commit(events, rejected, received_us) is not None

    async def commit(self, events: Sequence[Event], rejected: Sequence[RejectedMessage],
                     received_us: int) -> list[Event] | None:
        """Commit validated events and rejected messages as one batch (the tracker applies and
        the metrics count them on the loop's next turn, or during the next commit); returns the
        events that were new (the rest were duplicates), or None when stop came while the store
        was failing (nothing is stored then). MQTT batches and HTTP requests both come through
        here."""
        async with self.lock:
            # The tracker applies the commit before this one while this batch is written (the
            # store calls `meanwhile` once it has the batch), and this batch's new events wait
            # for the next commit: applied between two commits, they kept the store's thread
            # idle for ~9 us an event (4,000-event batches, 1,000 accounts).
            try:
                fresh = await self._write(events, rejected, received_us)
            except asyncio.CancelledError:
                self.unsure = True
                raise
            finally:
                self._apply_committed()  # where the store failed before it called `meanwhile`
            if fresh is None:
                return None
            self._unapplied = _Committed(events, rejected, fresh, time.time())
        asyncio.get_running_loop().call_soon(self._apply_if_idle)
        self.refresh(force=False)
        return fresh

    def refresh(self, *, force: bool) -> None:
        """Advance each account of the tracker to its own `watermark` and publish a new snapshot
        for scrapes."""
        if self.tracker is None:
            return
        now = time.monotonic()
        # At most once a tick under load: with 1,000 pools a snapshot costs ~30 ms, and five a
        # second took 16% of the daemon (bench/ingest.py --profile); scrapes come every 15 s.
        # (5% early is still on time: the tick's own wait may end a hair before its second.)
        if not force and now - self._snapshot_at < 0.95 * TICK_SECONDS:
            return
        self._snapshot_at = now
        self._apply_if_idle()
        self.tracker.advance_each(self._wall_us(), self._window_us)
        self.metrics.snapshot = Snapshot.of(self.tracker)


async def rerater(stop: asyncio.Event, *, store: Store, ingestor: Ingestor,
                  metrics: Metrics) -> None:
    """Make the live view equal the bill again wherever the tracker marks an account dirty (a
    late event, a timed-out session), each account at most once a `RERATE_EVERY_SECONDS`."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RERATE_EVERY_SECONDS)
        assert ingestor.tracker is not None  # a cluster member re-rates in meter.cluster
        dirty = ingestor.tracker.dirty_accounts()
        for account in dirty:
            if stop.is_set():
                return
            started = time.perf_counter()
            replayed, held = await _rerate(account, store=store, ingestor=ingestor)
            metrics.rerate.observe(held)
            log.debug("re-rated %s from %d stored events in %.3fs (batches held %.3fs)",
                      account, replayed, time.perf_counter() - started, held)
        if dirty:
            ingestor.refresh(force=True)


async def _rerate(account: str, *, store: Store, ingestor: Ingestor) -> tuple[int, float]:
    """Replay `account` from the store and install it; returns the events replayed and how long
    batches were held back.

    The read and the replay (in a thread) run beside ingest. Only the install takes the ingest
    lock, with the account's events stored since the read: `seq` is read first, so an event
    committed meanwhile is either in the read or among those after it, and ids tell which.
    """
    tracker = ingestor.tracker
    assert tracker is not None
    after = await store.last_seq()
    start = tracker.replay_start(account)
    events = await store.events(account=account, start_us=start)
    contract = ingestor.contracts.get(account)
    seats = ([e for e in await store.seat_events_before(start) if e.account == account]
             if contract is not None and contract.named_pools else [])
    replay = await asyncio.to_thread(tracker.replay, account, events, seats)
    read = {e.seq for e in events}
    async with ingestor.settled():
        held = time.perf_counter()
        since = [e for e in await store.events_after(after, account=account)
                 if e.seq not in read]
        tracker.install(replay, since)
        return len(events) + len(since), time.perf_counter() - held


def watermark(settings: Settings, latest_us: int, wall_us: int) -> int:
    """Where the tracker may apply one account's events up to: the reorder window before its now,
    which is the wall clock or the account's newest event (`latest_us`), whichever is later, or
    with tracker_clock=events its newest event alone. Another account's events never count (the
    rule `Tracker.advance_each` applies)."""
    now_us = max(latest_us, wall_us) if settings.tracker_clock == "wall" else latest_us
    return now_us - int(settings.reorder_window * 1e6)


async def rebuild(store: Store, contracts: Contracts, settings: Settings,
                  metrics: Metrics) -> Tracker:
    """Live state after a restart: the saved checkpoint with the events committed after it
    (`restore`), or, without a usable one, the current periods' events replayed into a new
    tracker (`replay_periods`)."""
    started = time.perf_counter()
    latest = await store.latest_event_times()
    for account, ts_us in latest.items():
        metrics.saw_event(account, ts_us)
    wall_us = _now_us()
    restored = await restore(store, contracts)
    tracker = restored if restored is not None else await replay_periods(
        store, contracts, settings, latest, wall_us)
    tracker.advance_each(wall_us if settings.tracker_clock == "wall" else None,
                         int(settings.reorder_window * 1e6))
    metrics.snapshot = Snapshot.of(tracker)
    log.info("live state ready in %.2fs", time.perf_counter() - started)
    return tracker


#: Events read per query when replaying after a checkpoint: bounds memory, not the replay.
REPLAY_PAGE: Final = 50_000


async def restore(store: Store, contracts: Contracts) -> Tracker | None:
    """The tracker of the saved checkpoint with every event committed after it applied, in
    arrival order (an event older than its account's restored watermark is a late event, as it
    was live); None, with a log line, when there is none or it was made for other contracts or
    by another version."""
    saved = await store.load_checkpoint()
    if saved is None:
        return None
    try:
        tracker, seq = checkpoint.load(contracts, saved[1])
    except checkpoint.Stale as exc:
        log.warning("checkpoint ignored, rebuilding from the stored events: %s", exc)
        return None
    covered, replayed = seq, 0
    while page := await store.events_after(seq, limit=REPLAY_PAGE):
        replayed += tracker.apply_all(page)
        seq = page[-1].seq
    log.info("restored the checkpoint at seq %d and replayed %d events stored after it",
             covered, replayed)
    return tracker


def window_start(contracts: Contracts, settings: Settings, latest: dict[str, int],
                 wall_us: int) -> int:
    """Where a replay of the current periods starts: the earliest of the accounts' current
    period starts minus their session timeout (so sessions open at the start are seen). An
    account's current period is the one at its own `watermark`; `latest` is its newest stored
    event time."""
    # An account with no stored event: the wall clock, or in events mode the newest of any (it
    # only decides where replay starts; that account's watermark stays put until its events).
    default_us = max(latest.values(), default=wall_us)
    starts = []
    for a in contracts.accounts:
        at_us = watermark(settings, latest.get(a.id, default_us), wall_us)
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at_us)
        starts.append(to_us(monthly_period(a, at).start - a.session_timeout))
    return min(starts, default=wall_us)


def replayed(contracts: Contracts, start_us: int, seats: Sequence[StoredEvent],
             events: Sequence[StoredEvent]) -> Tracker:
    """A new tracker from `start_us` with `events` (from `start_us` on) applied; `seats` are
    the seat events before it, which still decide which pool a session event is in."""
    tracker = Tracker(contracts, start_us)
    for e in seats:
        e_at_start = StoredEvent(e.seq, e.account, e.id, e.type, e.user, e.pool, e.session,
                                 start_us, e.received_us)
        tracker.apply(e_at_start)
    tracker.apply_all(events)
    return tracker


async def replay_periods(store: Store, contracts: Contracts, settings: Settings,
                         latest: dict[str, int], wall_us: int) -> Tracker:
    """A new tracker with the current periods' events replayed (`window_start`)."""
    start_us = window_start(contracts, settings, latest, wall_us)
    seats = await store.seat_events_before(start_us)
    events = await store.events(start_us=start_us)
    tracker = replayed(contracts, start_us, seats, events)
    log.info("rebuilt live state from %d stored events (%d seat events before the window)",
             len(events), len(seats))
    return tracker


async def save_checkpoint(store: Store, ingestor: Ingestor, *,
                          unless_seq: int | None = None) -> int | None:
    """Save the tracker's checkpoint; its seq (None when it was `unless_seq`: nothing new).

    The seq and the state are taken together under the ingest lock, so the checkpoint covers
    exactly the committed events the tracker has applied; it is encoded in a thread and written
    after the lock is released, so a batch waits only for the copy of the state.
    """
    async with ingestor.settled():
        if ingestor.unsure:
            log.warning("checkpoint not saved: a batch was cancelled while the store had it, so "
                        "the tracker may lack it; the next start replays from the last checkpoint")
            return None
        seq = await store.last_seq()
        if seq == unless_seq:
            return None
        assert ingestor.tracker is not None
        state = checkpoint.capture(ingestor.tracker, seq)
    blob = await asyncio.to_thread(checkpoint.encode, state)
    await store.save_checkpoint(seq, blob)
    log.debug("saved a checkpoint at seq %d (%d bytes)", seq, len(blob))
    return seq


async def checkpointer(settings: Settings, stop: asyncio.Event, *, store: Store,
                       ingestor: Ingestor) -> None:
    """Save a checkpoint every `checkpoint_every` while new events come (the one at shutdown is
    `run`'s); a failure is logged and tried at the next one, never fatal to collection."""
    saved: int | None = None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.checkpoint_every)
        if stop.is_set():
            return
        try:
            saved = await save_checkpoint(store, ingestor, unless_seq=saved) or saved
        except (StoreError, sqlite3.Error) as exc:
            log.warning("checkpoint not saved, trying again in %.0fs: %s",
                        settings.checkpoint_every, exc)


#: How often the daemon applies the rejected table's retention and size bound.
PRUNE_EVERY_SECONDS: Final = 600.0


async def rejected_pruner(settings: Settings, stop: asyncio.Event, *, store: Store) -> None:
    """Keep the rejected table within `rejected_retention` and `rejected_max_bytes`: at start,
    then every `PRUNE_EVERY_SECONDS`. The freed pages are reused by SQLite (the file does not
    shrink). A failure is logged and tried again at the next round, never fatal to collection."""
    while not stop.is_set():
        older_than_us = _now_us() - int(settings.rejected_retention * 1e6)
        try:
            pruned = await store.prune_rejected(older_than_us, settings.rejected_max_bytes)
        except (StoreError, sqlite3.Error) as exc:
            log.warning("rejected messages not pruned, trying again in %.0fs: %s",
                        PRUNE_EVERY_SECONDS, exc)
        else:
            if pruned:
                log.info("pruned %d rejected messages (older than %s, or beyond %d bytes)",
                         pruned, timedelta(seconds=settings.rejected_retention),
                         settings.rejected_max_bytes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_EVERY_SECONDS)


def _serve_metrics(settings: Settings, registry: CollectorRegistry) -> Any:
    host, port = settings.metrics_addr
    try:
        server = serve_metrics(host, port, registry, certfile=settings.metrics_cert_file,
                               keyfile=settings.metrics_key_file,
                               username=settings.metrics_username,
                               password=settings.metrics_password)
    except OSError as exc:
        raise ConfigError(f"--metrics-addr {host}:{port}: cannot listen: "
                          f"{exc.strerror or exc}") from None
    return server


@contextlib.contextmanager
def hold_database(db: Path) -> Iterator[None]:
    """Hold `<db>.lock` for as long as the daemon runs; `DatabaseInUse` (exit 2, naming the
    holder's pid and host) when another `meter serve` holds it.

    One daemon per database: a second one would split the broker session (the same client id)
    and write the same log. The lock is an exclusive `flock` on a file beside the database, not
    a pid file: the kernel releases it when the holder dies however it dies, so a SIGKILLed
    daemon never blocks its own restart and there is no stale pid to judge. The file is never
    removed (unlinking it would let two daemons lock two different files of one name); it holds
    the holder's pid and host only to name them. `meter ingest` does not take it: it may write
    beside the daemon. flock is per host on network file systems: keep the database local.
    A PostgreSQL database is held by `hold` instead.
    """
    path = Path(f"{db}.lock")
    try:
        # Not O_TRUNC: opening must not erase what the holder wrote before we know we hold it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"--db {db}: cannot create the lock file {path}: "
                          f"{exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            pid, host = [*holder, "?", "?"][:2]
            raise DatabaseInUse(f"--db {db}: in use by another meter serve (pid {pid} on host "
                                f"{host}, lock {path}); one daemon per database") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def hold(db: Path | str) -> AsyncIterator[asyncio.Event]:
    """One daemon per database, for as long as the daemon runs: `DatabaseInUse` (exit 2, naming
    the holder) when another `meter serve` has it. A SQLite file by `hold_database`'s lock file;
    a PostgreSQL database by the store's own lock in the server (`hold_daemon_lock`), which the
    server releases when the holder's connection ends however it ends, and which is taken again
    after a server restart. The yielded event is set if the lock was lost to another daemon."""
    if is_postgres(db):
        from meter.store.postgres import hold_daemon_lock  # noqa: PLC0415 - psycopg loads only for a URL

        async with hold_daemon_lock(str(db)) as lost:
            yield lost
    else:
        with hold_database(Path(db)):
            yield asyncio.Event()  # a flock is never lost while its holder lives


async def run(settings: Settings, stop: asyncio.Event, *,
              registry: CollectorRegistry | None = None) -> None:
    """Run the daemon until `stop` is set; return after a clean drain and disconnect."""
    share_password(settings.db)  # for the finalizer's rating workers (see `share_password`)
    async with hold(settings.db) as lost:  # first: a second daemon says one line and nothing else
        log.info("meter serve: %s", settings.describe())

        async def stop_when_lost() -> None:
            await lost.wait()
            stop.set()

        watch = asyncio.create_task(stop_when_lost(), name="lock-watch")
        try:
            await _run(settings, stop, registry=registry)
        finally:
            watch.cancel()
        if lost.is_set():
            # Exit 1 after the drain: the supervisor's restart then says who holds it (exit 2).
            raise StoreError(f"--db {redact(str(settings.db))}: the daemon lock was lost to another "
                             "meter serve while the database server was away; stopped",
                             retriable=False)


async def _run(settings: Settings, stop: asyncio.Event, *,
               registry: CollectorRegistry | None) -> None:
    contracts = load_contracts(settings.contracts)
    registry = registry if registry is not None else CollectorRegistry()
    store = await open_store(settings.db, synchronous=settings.synchronous)
    store.rejected_keep_bytes = settings.rejected_keep_bytes
    server = None
    try:
        # The size on disk of a PostgreSQL database is the server's to report, not a file here.
        metrics = Metrics(contracts, registry,
                          db_path=None if is_postgres(settings.db) else Path(settings.db))
        server = _serve_metrics(settings, registry)
        tracker = await rebuild(store, contracts, settings, metrics)
        ingestor = Ingestor(settings, contracts=contracts, store=store, tracker=tracker,
                            metrics=metrics, stop=stop)

        def connected(up: bool) -> None:
            metrics.connected = up

        def reconnecting() -> None:
            metrics.reconnects += 1

        def taken_over() -> None:
            metrics.session_takeovers += 1

        source = make_source(settings, on_connected=connected, on_reconnect=reconnecting,
                             on_takeover=taken_over)
        http: HttpServer | None = None
        if settings.http_addr is not None:
            from meter.http import start_http  # noqa: PLC0415 - aiohttp loads only when asked for

            # Bound before anything runs: an address in use is one line and exit 2.
            http = await start_http(settings, ingestor=ingestor, registry=registry)

        async def tick() -> None:
            while not stop.is_set():
                # Not forced: under traffic the commits refresh once a second already, and a
                # second snapshot right after one (~20 ms with 1,000 pools) only stalls the loop.
                ingestor.refresh(force=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK_SECONDS)

        with one_error():
            async with contextlib.AsyncExitStack() as closing, asyncio.TaskGroup() as tg:
                if http is not None:
                    closing.push_async_callback(http.close)  # stopped however the group ends
                consumer = tg.create_task(source.run(ingestor.handle, stop), name="mqtt-source")
                tg.create_task(tick(), name="tracker-tick")
                tg.create_task(watch_broker(settings, metrics.broker, stop), name="broker-sys")
                tg.create_task(rerater(stop, store=store, ingestor=ingestor, metrics=metrics),
                               name="rerater")
                if settings.finalize_after > 0 and settings.contracts is not None:
                    tg.create_task(finalizer(settings, stop, link=source_link(source),
                                             metrics=metrics), name="finalizer")
                if settings.checkpoint_every > 0:
                    tg.create_task(checkpointer(settings, stop, store=store, ingestor=ingestor),
                                   name="checkpointer")
                tg.create_task(rejected_pruner(settings, stop, store=store), name="rejected-pruner")
                if http is not None:
                    tg.create_task(http.serve(stop), name="http-api")
                tg.create_task(_deadline(stop, consumer, settings.shutdown_timeout + 1.0),
                               name="shutdown-deadline")
        if consumer.cancelled():
            # A batch may have committed without being applied: the next start replays from
            # the last checkpoint instead.
            log.warning("no checkpoint saved: the drain did not finish")
        else:
            try:
                log.info("saved a checkpoint at seq %s", await save_checkpoint(store, ingestor))
            except (StoreError, sqlite3.Error) as exc:
                log.error("no checkpoint saved (the next start replays more): %s", exc)
        log.info("stopped: %d messages acknowledged this run", source.acked)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        await store.close()


@contextlib.contextmanager
def one_error() -> Iterator[None]:
    """A task group that failed by one task (a store that cannot be written, a bug) raises that
    task's error: the CLI prints a MeterError as one line, anything else with its traceback."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _deadline(stop: asyncio.Event, task: asyncio.Task[None], seconds: float) -> None:
    """After stop, give the drain `seconds`, then cancel it (unacknowledged work is redelivered)."""
    await stop.wait()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), seconds)
    if not task.done():
        log.error("drain took longer than %.1fs; exiting with it unfinished", seconds)
        task.cancel()


#: How often the daemon checks for periods due for finalization (more often while one waits for
#: the broker: see `_next_check`).
FINALIZE_EVERY_SECONDS: Final = 60.0


def _when(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _next_check(settings: Settings, waiting: dict[str, tuple[str, str]]) -> float:
    """Seconds to the next check: each minute; every half quiet interval (at least 1 s) while a
    period waits for the connection, so a drained backlog is finalized soon after; and once
    `finalize_after` (at least 1 s) while one waits for late events to stop."""
    reasons = {reason for _, reason in waiting.values()}
    every = FINALIZE_EVERY_SECONDS
    if reasons & {"disconnected", "draining"}:
        every = min(every, max(1.0, settings.finalize_quiet / 2))
    if "late_events" in reasons:
        every = min(every, max(1.0, settings.finalize_after))
    return every


def source_link(source: Source) -> Callable[[], Awaitable[Link]]:
    """The broker link of a lone daemon's source, for `finalizer`."""
    async def link() -> Link:
        return Link(_when(source.connected_at), _when(source.received_at))
    return link


async def finalizer(settings: Settings, stop: asyncio.Event, *,
                    link: Callable[[], Awaitable[Link]], metrics: Metrics,
                    worker: str | None = None) -> None:
    """Finalize each account's last ended period once `meter.finalization.wait_reason` allows:
    `finalize_after` past its end, the broker's backlog drained (`link`: this daemon's
    connection, or on a cluster every slot's), no late event for it lately.

    Runs in a thread with a connection of its own, so rating a month never stalls the MQTT
    consumer; a failure is logged and tried again at the next check, never fatal to collection.
    Each change of a period's reason to wait is logged once and shown in
    `meter_finalization_waiting`. A cluster member (`worker` names it) queues what is due in
    the job table and works it beside the other members (`meter.cluster.jobs`).
    """
    from meter.finalization import EXPLAINED  # noqa: PLC0415 - the rating stack loads only when used
    from meter.report.build import Watch, finalize_due  # noqa: PLC0415 - as above

    assert settings.contracts is not None
    lateness = timedelta(seconds=settings.finalize_after)
    quiet = timedelta(seconds=settings.finalize_quiet)
    watch = Watch(started=datetime.now(UTC))
    while not stop.is_set():
        before = dict(watch.waiting)
        try:
            watch.link = await link()
            now = datetime.now(UTC)
            if worker is None:
                due = finalize_due(settings.db, settings.contracts, now, lateness, quiet=quiet,
                                   watch=watch)
            else:
                from meter.cluster.jobs import finalize_due_jobs  # noqa: PLC0415 - a cluster's only

                due = finalize_due_jobs(str(settings.db), settings.contracts, now, lateness,
                                        quiet=quiet, watch=watch, worker=worker, stop=stop)
            done = await asyncio.to_thread(asyncio.run, due)
            for account, month in done:
                log.info("finalized %s %s", account, month)
        except (MeterError, RatingError, OSError, sqlite3.Error) as exc:
            log.error("finalization failed, retrying in %.0fs: %s", FINALIZE_EVERY_SECONDS, exc)
        for account, (month, reason) in sorted(watch.waiting.items()):
            if before.get(account) != (month, reason):
                log.info("finalization of %s %s waits (%s): %s", account, month, reason,
                         EXPLAINED[reason])
        metrics.finalization_waiting = {a: r for a, (_, r) in watch.waiting.items()}
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _next_check(settings, watch.waiting))
