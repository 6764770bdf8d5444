"""Exact step functions over a period: concurrency c(t), licensed quantity E(t) and excess x(t).

A `Timeline` is one step function on a period; `Steps` holds many (one per pool) in flat arrays
on a shared "global" time axis, `slot << 43 | microseconds since the slot's period start`, so one
sort or search serves every pool at once. Values hold on half-open `[times[i], times[i+1])`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
from numpy.typing import NDArray

from rating.periods import Period
from rating.sessions import SessionArrays, sort_pairs
from rating.usage import from_us, to_us

__all__ = [
    "SPAN_BITS",
    "Steps",
    "Timeline",
    "concurrency_steps",
    "excess_steps",
    "licensed_steps",
]

I64 = NDArray[np.int64]
#: Bits of the offset inside a slot on the global axis: 2**43 us is 101 days, room for a month.
SPAN_BITS: Final = 43
_OFFSET_MASK: Final = np.int64((1 << SPAN_BITS) - 1)


@dataclass(frozen=True, slots=True, eq=False)
class Timeline:
    """A step function on `[period.start, period.end)`.

    `values[i]` holds on `[times[i], times[i+1])`, the last one until `period.end`; `times` are
    microseconds since the epoch (UTC), the first is the period start, and neighbours differ.
    """

    times: I64
    values: I64
    period: Period

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeline):
            return NotImplemented
        return (self.period == other.period and np.array_equal(self.times, other.times)
                and np.array_equal(self.values, other.values))

    __hash__ = None  # type: ignore[assignment]  # holds arrays, like a list

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def __iter__(self) -> Iterator[tuple[datetime, int]]:
        return iter(self.points())

    def points(self) -> tuple[tuple[datetime, int], ...]:
        """The steps as (aware UTC time, value) pairs, for charts and reports."""
        return tuple((from_us(t), v) for t, v in zip(self.times.tolist(), self.values.tolist(),
                                                     strict=True))

    def value_at(self, instant: datetime) -> int:
        """The value in force at `instant` (which must lie in the period)."""
        if instant not in self.period:
            raise ValueError(f"{instant} is outside {self.period}")
        i = int(np.searchsorted(self.times, to_us(instant), side="right")) - 1
        return int(self.values[i])

    def max(self) -> int:
        """The highest value on the period."""
        return int(self.values.max())


@dataclass(frozen=True, slots=True, eq=False)
class Steps:
    """One step function per slot, flattened: slot j owns rows `offsets[j]:offsets[j+1]`.

    `g` is the global time of each step (sorted), `value` its value; every slot has a step at
    its start. `start` and `end` are each slot's period bounds in microseconds since the epoch.
    """

    g: I64
    value: I64
    offsets: I64
    start: I64
    end: I64

    @property
    def slots(self) -> int:
        """Number of step functions held."""
        return int(self.start.shape[0])

    def slot_of(self) -> I64:
        """The slot of every row."""
        return np.repeat(np.arange(self.slots, dtype=np.int64), np.diff(self.offsets))

    def end_g(self) -> I64:
        """Each slot's period end on the global axis."""
        return (np.arange(self.slots, dtype=np.int64) << SPAN_BITS) + (self.end - self.start)

    def durations(self) -> I64:
        """How long each row's value holds, in microseconds."""
        nxt: I64 = np.empty_like(self.g)
        nxt[:-1] = self.g[1:]
        last = self.offsets[1:] - 1
        nxt[last] = self.end_g()
        return nxt - self.g

    def times(self) -> I64:
        """Each row's time in microseconds since the epoch."""
        out: I64 = self.start[self.g >> SPAN_BITS] + (self.g & _OFFSET_MASK)
        return out

    def timeline(self, slot: int, period: Period) -> Timeline:
        """Slot `slot` as a `Timeline` (read-only arrays)."""
        lo, hi = int(self.offsets[slot]), int(self.offsets[slot + 1])
        times = self.start[slot] + (self.g[lo:hi] & _OFFSET_MASK)
        values = self.value[lo:hi].copy()
        times.setflags(write=False)
        values.setflags(write=False)
        return Timeline(times, values, period)


def _finish(g: I64, value: I64, start: I64, end: I64) -> Steps:
    """Steps from rows sorted by g (ties: the last row wins), adding a 0 at each slot start.

    Written for millions of rows: a head is inserted only where a slot has no row at its start,
    rows at or past a slot's end (a few per slot) are found by binary search, and one mask
    compresses the rest."""
    n_slots = start.shape[0]
    heads = np.arange(n_slots, dtype=np.int64) << SPAN_BITS
    at = np.searchsorted(g, heads, side="left")
    missing = at >= g.shape[0]
    missing[~missing] = g[at[~missing]] != heads[~missing]
    all_g = np.insert(g, at[missing], heads[missing])
    all_v = np.insert(value, at[missing], 0)
    # Equal g: the last row wins (few callers pass any).
    last = np.ones(all_g.shape[0], np.bool_)
    np.not_equal(all_g[:-1], all_g[1:], out=last[:-1])
    if not last.all():
        all_g, all_v = all_g[last], all_v[last]
    n = all_g.shape[0]
    first = np.searchsorted(all_g, heads, side="left")  # each slot's first row: its head
    # A row repeating the value before it changes nothing, except a slot's first row.
    keep = np.ones(n, np.bool_)
    np.not_equal(all_v[1:], all_v[:-1], out=keep[1:])
    keep[first] = True
    # Rows at or past a slot's end: a change at a period's end is outside the half-open period.
    past = np.searchsorted(all_g, heads + (end - start), side="left")
    stop = np.append(first[1:], n)
    for lo, hi in zip(past[past < stop].tolist(), stop[past < stop].tolist(), strict=True):
        keep[lo:hi] = False
    all_g, all_v = all_g[keep], all_v[keep]
    offsets = np.searchsorted(all_g, np.append(heads, n_slots << SPAN_BITS)).astype(np.int64)
    return Steps(all_g, all_v, offsets, start, end)


def _check_spans(start: I64, end: I64) -> None:
    if start.size and int((end - start).max()) >= (1 << (SPAN_BITS - 1)):
        raise ValueError("a period longer than 50 days cannot be rated on the global time axis")


def concurrency_steps(sessions: SessionArrays, member_slot: NDArray[np.int64], start: I64,
                      end: I64) -> Steps:
    """c(t) per slot: users with at least one session open, each counted once.

    `member_slot` maps a member code to its slot (-1: not rated); sessions are clipped to the
    slot's period `[start, end)`, which splits those crossing its bounds.
    """
    _check_spans(start, end)
    slot = member_slot[sessions.member]
    # Clip to the slot's period and keep what is rated and left with a duration, in one pass
    # (a slot of -1 reads the last period: harmless, those rows are dropped).
    s = np.maximum(sessions.start, start[slot])
    e = np.minimum(sessions.end, end[slot])
    live = e > s
    live &= slot >= 0
    member = sessions.member[live].astype(np.int64)
    slot, s, e = slot[live], s[live], e[live]
    n = s.shape[0]
    if n == 0:
        empty = np.empty(0, np.int64)
        return _finish(empty, empty, start, end)
    # Per member, +1 at each start and -1 at each end, ends first at equal times: the running
    # count is the member's open sessions; it counts once while that is above zero.
    base = int(s.min())
    sub = np.concatenate([(s - base) << 1 | 1, (e - base) << 1])
    grp = np.concatenate([member, member])
    del s, e
    grp, sub = sort_pairs(grp, sub, max(1, int(sub.max()).bit_length()))
    up = sub & 1
    count = up << 1
    count -= 1
    np.cumsum(count, out=count)
    # A user's first open session starts (count reaches 1 on a +1) or their last ends (0 on -1).
    edge = count == up
    slot = member_slot[grp[edge]]
    times = (sub[edge] >> 1) + base
    up_edge = up[edge]
    del grp, sub, up, count, edge
    # Per slot, in time order with the -1s first at equal times; the cumulative sum is c(t).
    packed = ((slot << SPAN_BITS) | (times - start[slot])) << 1 | up_edge
    packed.sort()
    g = packed >> 1
    c = packed & 1
    c <<= 1
    c -= 1
    np.cumsum(c, out=c)
    last = np.ones(g.shape[0], np.bool_)
    last[:-1] = g[1:] != g[:-1]
    return _finish(g[last], c[last], start, end)


def licensed_steps(licensed: Sequence[Sequence[tuple[datetime, int]]], base: Sequence[int],
                   start: I64, end: I64) -> Steps:
    """E(t) per slot from (time, quantity) steps; before the first step, `base` is in force."""
    _check_spans(start, end)
    gs: list[int] = []
    vs: list[int] = []
    for j, steps in enumerate(licensed):
        ps, pe = int(start[j]), int(end[j])
        value = base[j]
        inside: list[tuple[int, int]] = []
        for at, qty in sorted(steps, key=lambda s: s[0]):
            t = to_us(at)
            if t <= ps:
                value = qty
            elif t < pe:
                inside.append((t, qty))
        gs.append(j << SPAN_BITS)
        vs.append(value)
        for t, qty in inside:
            gs.append((j << SPAN_BITS) | (t - ps))
            vs.append(qty)
    g = np.array(gs, np.int64)
    v = np.array(vs, np.int64)
    order = np.argsort(g, kind="stable")
    return _finish(g[order], v[order], start, end)


def excess_steps(c: Steps, e: Steps) -> Steps:
    """x(t) = max(0, c(t) - E(t)) per slot, exactly, on the union of both functions' steps."""
    # c has millions of steps and E a few per slot: look every c step up in E (a short binary
    # search each) and insert E's steps where c has none, rather than sorting the union and
    # searching it in both. Every slot starts with a step in both, so no lookup falls before
    # its slot.
    x_at_c = np.maximum(c.value - e.value[np.searchsorted(e.g, c.g, side="right") - 1], 0)
    at = np.searchsorted(c.g, e.g, side="left")
    own = (at >= c.g.shape[0]) | (c.g[np.minimum(at, c.g.shape[0] - 1)] != e.g)
    at, eg = at[own], e.g[own]
    x_at_e = np.maximum(c.value[np.searchsorted(c.g, eg, side="right") - 1] - e.value[own], 0)
    return _finish(np.insert(c.g, at, eg), np.insert(x_at_c, at, x_at_e), c.start, c.end)
