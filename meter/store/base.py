"""The store's interface, `Store`, and the values that cross it.

Callers name what they want (a batch stored, an account's rating inputs, a finalized report),
never how it is stored: every SQL statement of `meter` lives in an implementation module
(`meter.store.sqlite`, the embedded default). Times are microseconds since the epoch, UTC;
windows are half-open, `start_us <= ts_us < end_us`; `seq` is the arrival order the store gives
accepted events.

Contract (tests/meter/test_store_contract.py runs it against every implementation):
- accepted events are unique on (account, id); a batch is one transaction and `add` returns
  only after it committed;
- rejected messages are kept with their reason: whole up to `rejected_keep_bytes`, beyond that
  as their size, sha256 and first `rejected_keep_bytes` bytes (garbage must not fill the disk);
  a stored rejected row leaves `rejected` only by `reprocess_rejected` or `prune_rejected`;
- a finalized report, once stored, is never replaced;
- there is at most one checkpoint, and saving one replaces it;
- a copy (`export_events` / `import_events`, `export_rejected` / `import_rejected`,
  `finalized_reports` / `add_finalized`) keeps every `seq`, payload and report as it was, so a
  store moved to another implementation bills the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from meter.events import Event
    from rating.bill import Row
    from rating.columns import StoredColumns

__all__ = [
    "EXPORT_PAGE",
    "BatchResult",
    "EventRecord",
    "FinalizedReport",
    "RatingColumns",
    "RatingRows",
    "RejectedMessage",
    "Store",
    "StoredEvent",
    "StoredRejected",
]


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A refused message as received; the store keeps it whole up to `Store.rejected_keep_bytes`."""

    received_us: int
    topic: str | None
    account: str | None
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class StoredRejected:
    """A rejected message as stored: `raw` is the payload whole, or its first bytes when
    `truncated` (then `size` and `sha256` describe the whole payload, which is gone).
    Rows stored before the cap existed have `sha256` None and are whole."""

    seq: int
    received_us: int
    topic: str | None
    account: str | None
    reason: str
    detail: str
    raw: bytes
    size: int
    sha256: str | None
    truncated: bool


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did."""

    new: int
    duplicates: int
    rejected: int
    #: Positions in the batch of the events that were stored (not duplicates), in batch order.
    fresh: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An accepted event as stored (times in microseconds since the epoch, UTC)."""

    seq: int
    account: str
    id: str
    type: str
    user: str
    pool: str | None
    session: str | None
    ts_us: int
    received_us: int


#: An accepted event whole, for a copy of the store: as stored, and its payload as received.
EventRecord = tuple[StoredEvent, bytes]
#: Rows per page of `export_events` and `export_rejected`.
EXPORT_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class RatingRows:
    """An account's events as the rating reads them, and the newest arrival among them."""

    #: (id, type, user, pool, session, ts_us) in (ts_us, id) order.
    rows: tuple[Row, ...]
    #: The largest `seq` of the rows (0 when there are none).
    last_seq: int


@dataclass(frozen=True, slots=True, eq=False)
class RatingColumns:
    """`RatingRows` as column arrays (`rating.columns.StoredColumns`): the same rows, in the
    same order, and the newest arrival among them."""

    columns: StoredColumns
    last_seq: int


@dataclass(frozen=True, slots=True)
class FinalizedReport:
    """One account's period frozen as it was billed (`meter report --finalize`).

    `report` and `charts` are canonical JSON text; events with `seq > cutoff_seq` arrived after
    it and adjust a later period. `finalized_us` is the wall clock, kept beside the report and
    never in it.
    """

    account: str
    period_start_us: int
    period_end_us: int
    report: str
    charts: str
    input_hash: str
    cutoff_seq: int
    finalized_us: int


class Store(ABC):
    """An open store: `await meter.store.open_store(db)`, then `await store.close()` (or
    `async with`)."""

    #: What another process passes to `open_store` to reach the same store, and what messages
    #: name it by: never holding a password (a PostgreSQL password for another process comes
    #: from PGPASSWORD, PGPASSFILE or ~/.pgpass, as libpq reads them).
    location: str
    #: A rejected payload up to this many bytes is stored whole (so it can be reprocessed);
    #: a longer one keeps only this many, beside its size and sha256 (`rejected_keep_bytes`).
    rejected_keep_bytes: int = 1024

    @abstractmethod
    async def close(self) -> None:
        """Close the store (idempotent)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- ingest -------------------------------------------------------------------------------

    @abstractmethod
    async def add(self, events: Sequence[Event], rejected: Sequence[RejectedMessage] = (),
                  *, received_us: int = 0, which: bool = True, one_statement: bool = True,
                  meanwhile: Callable[[], None] | None = None) -> BatchResult:
        """Store a batch in one transaction; duplicates of (account, id) are skipped and counted.

        With `which`, `fresh` says which events were new. `one_statement` is a hint for callers
        whose thread stays busy meanwhile (the daemon); an implementation may ignore it.
        `meanwhile` is called once, on the caller's thread, while the batch is being written
        where the store can overlap the two (else before it writes): the daemon's tracker
        applies the batch before this one then.
        Returns only after the commit; on failure nothing of the batch is stored and
        `StoreError.retriable` says whether trying again can succeed.
        """

    # --- reading events -----------------------------------------------------------------------

    @abstractmethod
    async def events(self, account: str | None = None, start_us: int | None = None,
                     end_us: int | None = None) -> list[StoredEvent]:
        """Accepted events, optionally of one account and in `[start_us, end_us)`, in
        event-time order (ties by arrival)."""

    @abstractmethod
    async def seat_events_before(self, end_us: int) -> list[StoredEvent]:
        """Every assign and unassign with `ts_us < end_us`, of all accounts, in event-time order
        (the rosters that decide the pool of later session events)."""

    @abstractmethod
    async def latest_event_times(self) -> dict[str, int]:
        """The newest event time stored per account."""

    @abstractmethod
    async def rating_rows(self, account: str, start_us: int, end_us: int, *, through_seq: int,
                          seats_before: bool = False) -> RatingRows:
        """The account's events in `[start_us, end_us)` that arrived by `through_seq`.

        With `seats_before`, every assign and unassign before `start_us` comes first (a named
        pool's roster needs them all); the rows are in (ts_us, id) order either way, ids
        compared by code point.
        """

    async def rating_columns(self, account: str, start_us: int, end_us: int, *, through_seq: int,
                             seats_before: bool = False) -> RatingColumns:
        """`rating_rows` as column arrays, for a report of millions of rows: the rows become
        arrays with no Python loop per row (`StoredColumns.from_rows`)."""
        from rating.columns import StoredColumns  # noqa: PLC0415 - numpy only where reports run

        got = await self.rating_rows(account, start_us, end_us, through_seq=through_seq,
                                     seats_before=seats_before)
        return RatingColumns(StoredColumns.from_rows(got.rows), got.last_seq)

    @abstractmethod
    async def has_events_before(self, account: str, end_us: int) -> bool:
        """Whether the account has any event with `ts_us < end_us`."""

    @abstractmethod
    async def count_arrived(self, account: str, start_us: int, end_us: int, *, after_seq: int,
                            through_seq: int) -> int:
        """How many of the account's events in `[start_us, end_us)` arrived with
        `after_seq < seq <= through_seq` (late events for a finalized period)."""

    @abstractmethod
    async def last_seq(self) -> int:
        """The newest arrival `seq` (0 for an empty store)."""

    @abstractmethod
    async def events_after(self, seq: int, *, limit: int | None = None,
                           account: str | None = None) -> list[StoredEvent]:
        """Accepted events with `seq` greater than `seq`, in arrival (`seq`) order; at most
        `limit` of them (the replay after a checkpoint reads them in pages); only `account`'s
        where it is given (a re-rate, under the ingest lock)."""

    # --- the live tracker's checkpoint --------------------------------------------------------

    @abstractmethod
    async def save_checkpoint(self, seq: int, blob: bytes) -> None:
        """Replace the checkpoint with `blob`, which covers the events up to `seq`."""

    @abstractmethod
    async def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The checkpoint as saved, (seq, blob), or None when there is none."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """Row counts: accepted `events` and `rejected`."""

    @abstractmethod
    async def rejected_by_reason(self) -> dict[str, int]:
        """Rejected messages counted by reason."""

    # --- rejected messages --------------------------------------------------------------------

    @abstractmethod
    async def rejected(self, *, account: str | None = None, reason: str | None = None,
                       since_us: int | None = None, seq: int | None = None
                       ) -> list[StoredRejected]:
        """Stored rejected messages in arrival (`seq`) order, optionally only those naming
        `account` (in the payload or as `<prefix>/<account>/events` topic), of `reason`,
        received at or after `since_us`, or the one row `seq`."""

    @abstractmethod
    async def reprocess_rejected(self, seqs: Sequence[int], events: Sequence[Event]
                                 ) -> tuple[int, int]:
        """Move rejected rows into the log in one transaction: `events[i]` is what row `seqs[i]`
        parses to now. Each event is stored with its row's receive time (duplicates of
        (account, id) skipped) and the row is deleted. Rows no longer in `rejected` are
        skipped with their events, so a second call moves nothing. Returns (moved, duplicates):
        rows moved, and how many of them were in the log already."""

    @abstractmethod
    async def prune_rejected(self, older_than_us: int, max_bytes: int) -> int:
        """Delete rejected rows received before `older_than_us`, then the oldest rows until
        the stored payloads of the rest sum to at most `max_bytes`; returns how many went."""

    @abstractmethod
    async def schema_version(self) -> int:
        """The applied schema version."""

    # --- finalized reports --------------------------------------------------------------------

    @abstractmethod
    async def finalized(self, account: str, period_start_us: int) -> FinalizedReport | None:
        """The account's finalized report of the period starting at `period_start_us`."""

    @abstractmethod
    async def add_finalized(self, report: FinalizedReport) -> bool:
        """Store a finalized report; False (and nothing changed) when that account's period was
        finalized already."""

    @abstractmethod
    async def finalized_reports(self) -> list[FinalizedReport]:
        """Every finalized report, in (account, period_start_us) order."""

    # --- copying a store (`meter migrate`) ----------------------------------------------------

    @abstractmethod
    async def event_records(self, after_seq: int, *, limit: int) -> list[EventRecord]:
        """At most `limit` accepted events with `seq > after_seq`, in `seq` order, each with its
        raw payload: one page of `export_events`."""

    @abstractmethod
    async def rejected_after(self, after_seq: int, *, limit: int) -> list[StoredRejected]:
        """At most `limit` rejected rows with `seq > after_seq`, in `seq` order, as stored
        (truncated payloads stay truncated): one page of `export_rejected`."""

    async def export_events(self, *, page: int = EXPORT_PAGE) -> AsyncIterator[list[EventRecord]]:
        """Every accepted event with its payload, in `seq` order, `page` at a time (each page
        read on its own, so a store written meanwhile is read up to its newest page)."""
        after = 0
        while rows := await self.event_records(after, limit=page):
            yield rows
            after = rows[-1][0].seq

    async def export_rejected(self, *, page: int = EXPORT_PAGE
                              ) -> AsyncIterator[list[StoredRejected]]:
        """Every rejected row as stored, in `seq` order, `page` at a time."""
        after = 0
        while rows := await self.rejected_after(after, limit=page):
            yield rows
            after = rows[-1].seq

    @abstractmethod
    async def import_events(self, rows: Sequence[EventRecord]) -> int:
        """Store exported events in one transaction exactly as they were: the same `seq` (a
        finalized report's `cutoff_seq` refers to it), arrival time and raw payload; later
        `add`s continue after the largest `seq`. For a copy into an empty store: a `seq` or
        (account, id) stored already is a non-retriable `StoreError` and nothing is stored,
        never a merge. Returns how many were stored (all of them)."""

    @abstractmethod
    async def import_rejected(self, rows: Sequence[StoredRejected]) -> int:
        """Store exported rejected rows in one transaction as they were (`seq`, payload, size,
        digest, truncation; `rejected_keep_bytes` is not applied again). A `seq` stored
        already is a non-retriable `StoreError`. Returns how many were stored."""
