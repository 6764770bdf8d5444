"""Tracker checkpoints: everything a `meter.tracker.Tracker` needs to continue, as bytes, and the
store `seq` of the newest event it has applied, so a restart replays only what came after.

The format is msgpack of plain values (ints, strings, lists; decoded into typed structs, so a
malformed blob is an error, never code), led by a version and a fingerprint of the contracts. A
blob of another version or made with other contracts is refused with `Stale`; the caller then
rebuilds from the log. This module reads and restores the tracker's private state, and is the
only one that does.
"""

from __future__ import annotations

import hashlib
import itertools

import msgspec

from meter.store.base import StoredEvent
from meter.tracker import Tracker, _PoolState
from rating.contracts import Contracts

__all__ = ["VERSION", "Stale", "dump", "fingerprint", "load"]

#: Bump whenever the tracker's state or its meaning changes: older checkpoints are then ignored.
#: 3: sessions as one (user, key, last event) list in expiry order, no timer list (version 2 kept
#: a dict of sessions per user and its timers; the meter rebuilds from the log when it finds one).
VERSION = 3


class Stale(ValueError):
    """A checkpoint that cannot be used (another version, other contracts, malformed); the
    message says which, for the log line."""


class _Pending(msgspec.Struct, array_like=True, frozen=True):
    ts_us: int
    rank: int
    n: int
    account: str
    id: str
    type: str
    user: str
    pool: str | None
    session: str | None


class _Account(msgspec.Struct, array_like=True, frozen=True):
    id: str
    watermark: int
    latest: int
    pending: list[_Pending]  # the heap as a list: order kept, so it stays a heap


class _Pool(msgspec.Struct, array_like=True, frozen=True):
    account: str
    pool: str
    clock: int
    # (user, session key, last event us) of every open session, oldest last event first: the
    # pool's expiry order (a session times out at its last event + timeout + 1 us).
    sessions: list[tuple[str, bytes, int]]
    assigned: list[str]
    licensed: int
    since: list[int]
    cumulative: list[int]
    unknown_logouts: int
    refused_assigns: int
    last_event_us: int | None
    period_start: int
    period_end: int
    peak: int
    peak_at: int
    shown_peak: int
    shown_peak_at: int
    billable: int
    seen: list[str]
    # Whether the pool awaits a re-rate from the store. Its `timed_out` list is not kept: only a
    # replay's first pass, on a tracker of its own, reads it.
    dirty: bool = False


class _Header(msgspec.Struct, frozen=True):
    version: int
    contracts: str


class _Checkpoint(msgspec.Struct, frozen=True):
    version: int
    contracts: str
    seq: int
    unresolved: int
    accounts: list[_Account]
    pools: list[_Pool]


_ENCODER = msgspec.msgpack.Encoder()


def fingerprint(contracts: Contracts) -> str:
    """A digest of the parsed accounts (frozen dataclasses of tuples, so their repr is stable):
    a checkpoint only continues a tracker built from the same contracts."""
    return hashlib.sha256(repr(contracts.accounts).encode()).hexdigest()


def _pool(state: _PoolState) -> _Pool:
    return _Pool(
        account=state.account.id, pool=state.pool.id, clock=state.clock,
        sessions=state.sessions(),
        assigned=sorted(state.assigned), licensed=state.licensed, since=list(state.since),
        cumulative=list(state.cumulative), unknown_logouts=state.unknown_logouts,
        refused_assigns=state.refused_assigns, last_event_us=state.last_event_us,
        period_start=state.period_start, period_end=state.period_end, peak=state.peak,
        peak_at=state.peak_at, shown_peak=state.shown_peak, shown_peak_at=state.shown_peak_at,
        billable=state.billable, seen=state.seen_users(), dirty=state.dirty)


def capture(tracker: Tracker, seq: int) -> _Checkpoint:
    """The tracker's state as plain values (a copy: the tracker may change right after). Cheap
    enough for the event loop; `encode` it elsewhere if it is big."""
    accounts = [
        _Account(account_id, clock.watermark, clock.latest, [
            _Pending(ts, rank, n, e.account, getattr(e, "id", ""), e.type, e.user, e.pool,
                     e.session)
            for ts, rank, n, e in clock.pending])
        for account_id, clock in tracker._clocks.items()
    ]
    return _Checkpoint(version=VERSION, contracts=fingerprint(tracker.contracts), seq=seq,
                       unresolved=tracker.unresolved, accounts=accounts,
                       pools=[_pool(state) for state in tracker._pools.values()])


def encode(checkpoint: _Checkpoint) -> bytes:
    """The bytes of a captured checkpoint (thread-safe: it touches no tracker)."""
    return _ENCODER.encode(checkpoint)


def dump(tracker: Tracker, seq: int) -> bytes:
    """The checkpoint of `tracker`, which has applied exactly the stored events up to `seq`."""
    return encode(capture(tracker, seq))


def _restore_pool(state: _PoolState, p: _Pool) -> None:
    state.clock = p.clock
    # In the order dumped, so a second dump is byte for byte the first.
    state.restore_sessions(p.sessions, p.seen)
    state.assigned = set(p.assigned)
    state.licensed = p.licensed
    state.since = list(p.since)
    state.cumulative = list(p.cumulative)
    state.unknown_logouts = p.unknown_logouts
    state.refused_assigns = p.refused_assigns
    state.last_event_us = p.last_event_us
    state.period_start, state.period_end = p.period_start, p.period_end
    state.peak, state.peak_at = p.peak, p.peak_at
    state.shown_peak, state.shown_peak_at = p.shown_peak, p.shown_peak_at
    state.billable = p.billable
    state.dirty = p.dirty
    state._settled_at = None  # settled again at the restored clock, with what it restored


def load(contracts: Contracts, blob: bytes) -> tuple[Tracker, int]:
    """A tracker restored from `blob` and the store `seq` it covers; `Stale` when the blob is of
    another version, was made with other contracts, or is malformed."""
    try:
        header = msgspec.msgpack.decode(blob, type=_Header)
    except msgspec.DecodeError as exc:
        raise Stale(f"unreadable checkpoint: {exc}") from None
    if header.version != VERSION:
        raise Stale(f"checkpoint version {header.version}, this meter writes {VERSION}")
    if header.contracts != fingerprint(contracts):
        raise Stale("checkpoint made with other contracts")
    try:
        cp = msgspec.msgpack.decode(blob, type=_Checkpoint)
    except msgspec.DecodeError as exc:
        raise Stale(f"malformed checkpoint: {exc}") from None
    # Every clock is overwritten below; the start only has to be a time the contracts can rate.
    tracker = Tracker(contracts, min((p.clock for p in cp.pools), default=0))
    if {a.id for a in cp.accounts} != set(tracker._clocks) or \
            {(p.account, p.pool) for p in cp.pools} != set(tracker._pools):
        raise Stale("checkpoint accounts or pools differ from the contracts")
    n = 0
    for a in cp.accounts:
        clock = tracker._clocks[a.id]
        clock.watermark, clock.latest = a.watermark, a.latest
        clock.pending = [
            (p.ts_us, p.rank, p.n, StoredEvent(0, p.account, p.id, p.type, p.user, p.pool,
                                               p.session, p.ts_us, 0))
            for p in a.pending]
        n = max([n, *(p.n + 1 for p in a.pending)])
    # New buffered events sort after the restored ones at the same instant and kind, as before.
    tracker._seq = itertools.count(n)
    for p in cp.pools:
        _restore_pool(tracker._pools[p.account, p.pool], p)
    tracker.unresolved = cp.unresolved
    return tracker, cp.seq
