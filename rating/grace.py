"""The grace rules: which level of a step function is billable, and the excess episodes.

Continuous (Zoom): level k counts when f(t) >= k holds for one unbroken stretch LONGER than the
grace G. Cumulative (Genesys Cloud): level k counts when the total time with f(t) >= k in the
period is AT LEAST G (and not zero). All arithmetic is on integer microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from numpy.typing import NDArray

from rating.contracts import Pool
from rating.sessions import argsort_pairs
from rating.timeline import SPAN_BITS, Steps

__all__ = ["EpisodeArrays", "billable_levels", "continuous_levels", "cumulative_levels",
           "episode_arrays", "format_hms", "grace_text", "window_minimum"]

I64 = NDArray[np.int64]


def format_hms(span: timedelta) -> str:
    """A grace or an episode to the second as bills write it: "30m00s", "1h02m03s"."""
    seconds = span // timedelta(seconds=1)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def grace_text(pool: Pool) -> str:
    """The pool's grace rule in words, as the report states it."""
    grace = format_hms(pool.grace)
    if pool.grace_mode == "cumulative":
        return f"cumulative: a level is billed when its total time in the period reaches {grace}"
    return f"continuous: a level is billed when held for one unbroken stretch longer than {grace}"


def window_minimum(steps: Steps, grace_us: I64, only: NDArray[np.bool_] | None = None
                   ) -> tuple[I64, NDArray[np.bool_]]:
    """For each step i, the minimum of the function over `[t_i, t_i + G]` (a stretch of G + 1us).

    Returns it with `valid`: whether that stretch fits in the period. A level k is held for a
    stretch longer than G exactly when some valid step's window minimum is at least k (such a
    stretch may as well start at a step). Windows vary in count, so the minimum comes from a
    sparse table built one doubling at a time (O(n log w) for w steps in the widest window).
    `only` limits the work to some slots (the others get zeros).
    """
    g, v = steps.g, steps.value
    n = g.shape[0]
    slot = steps.slot_of()
    target = g + grace_us[slot]
    valid = target < steps.end_g()[slot]
    wmin = np.zeros(n, np.int64)
    # A window starting on a zero step has minimum zero; only positive, valid steps need work.
    work = valid & (v > 0)
    if only is not None:
        work &= only[slot]
    rows = np.flatnonzero(work)
    if rows.size == 0:
        return wmin, valid
    right = np.searchsorted(g, target[rows], side="right") - 1
    length = right - rows + 1
    level = np.zeros(rows.shape[0], np.int64)  # floor(log2(length)), in integers
    widest = int(length.max())
    k = 1
    while (1 << k) <= widest:
        level += length >= (1 << k)
        k += 1
    table = v
    for lvl in range(k):
        here = level == lvl
        if here.any():
            r = rows[here]
            wmin[r] = np.minimum(table[r], table[right[here] - (1 << lvl) + 1])
        if lvl + 1 < k:
            step = 1 << lvl
            table = np.minimum(table[:-step], table[step:])
    return wmin, valid


def continuous_levels(steps: Steps, grace_us: I64,
                      window: tuple[I64, NDArray[np.bool_]] | None = None) -> I64:
    """Per slot, the highest level held for one unbroken stretch longer than the grace."""
    wmin, valid = window if window is not None else window_minimum(steps, grace_us)
    return _max_per_slot(np.where(valid, wmin, 0), steps.offsets)


def cumulative_levels(steps: Steps, grace_us: I64, only: NDArray[np.bool_] | None = None) -> I64:
    """Per slot, the highest level k whose total time with f(t) >= k is at least the grace.

    A grace of zero still needs the level to be reached for some time. `only` limits the work
    to some slots (the others get 0).
    """
    if only is not None and not only.all():
        return _on_slots(steps, only, lambda sub: cumulative_levels(sub, grace_us[only]))
    v = steps.value
    slot = steps.slot_of()
    dur = steps.durations()
    top = int(v.max()) if v.size else 0
    # Per slot, values from high to low; the running time above the current value is T(value).
    order = argsort_pairs(slot, top - v, max(1, top.bit_length()))
    vs, ds = v[order], dur[order]
    total = np.cumsum(ds)
    head = steps.offsets[:-1]
    before = np.zeros(steps.slots, np.int64)
    has = head < steps.offsets[1:]
    before[has] = total[head[has]] - ds[head[has]]
    held = total - np.repeat(before, np.diff(steps.offsets))
    hits = np.flatnonzero(held >= np.maximum(grace_us, 1)[slot[order]])
    first = np.searchsorted(hits, head)
    out = np.zeros(steps.slots, np.int64)
    found = first < hits.shape[0]
    found[found] = hits[first[found]] < steps.offsets[1:][found]
    out[found] = vs[hits[first[found]]]
    return out


def _on_slots(steps: Steps, only: NDArray[np.bool_], fn: Callable[[Steps], I64]) -> I64:
    """`fn` applied to the chosen slots only, scattered back (0 elsewhere)."""
    rows = only[steps.slot_of()]
    counts = np.diff(steps.offsets)[only]
    chosen = np.flatnonzero(only)
    # Renumber the chosen slots 0..k-1 on the global axis; offsets inside a slot stay.
    renumber = np.zeros(steps.slots, np.int64)
    renumber[chosen] = np.arange(chosen.shape[0])
    g = steps.g[rows]
    g = (renumber[g >> SPAN_BITS] << SPAN_BITS) | (g & np.int64((1 << SPAN_BITS) - 1))
    sub = Steps(g, steps.value[rows], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                steps.start[only], steps.end[only])
    out = np.zeros(steps.slots, np.int64)
    out[chosen] = fn(sub)
    return out


def billable_levels(steps: Steps, grace_us: I64, continuous: NDArray[np.bool_],
                    window: tuple[I64, NDArray[np.bool_]] | None = None) -> I64:
    """Per slot, the highest billable level under that slot's rule."""
    out = np.zeros(steps.slots, np.int64)
    if not continuous.all():
        out = cumulative_levels(steps, grace_us, ~continuous)
    if continuous.any():
        levels = (continuous_levels(steps, grace_us, window) if window is not None
                  else _pruned_continuous_levels(steps, grace_us, continuous))
        out = np.where(continuous, levels, out)
    return out


def _pruned_continuous_levels(steps: Steps, grace_us: I64, only: NDArray[np.bool_]) -> I64:
    """`continuous_levels` with the window minimum run only where it can beat a lower bound.

    A step that alone lasts longer than the grace holds its level long enough, so the highest
    such step (`floor`) is billable. A stretch that beats it stays above it throughout: only the
    runs of consecutive steps above `floor` can hold one, and each run is searched as a period
    of its own (a window leaving it would take in a step at or below `floor`). On a month of
    c(t) this leaves well under 1% of the steps to search.
    """
    slot = steps.slot_of()
    v = steps.value
    dur = steps.durations()
    floor = _max_per_slot(np.where(dur > grace_us[slot], v, 0), steps.offsets)
    idx = np.flatnonzero((v > floor[slot]) & only[slot])
    if idx.size == 0:
        return floor
    run_slot = slot[idx]
    first = np.ones(idx.shape[0], np.bool_)
    first[1:] = (idx[1:] != idx[:-1] + 1) | (run_slot[1:] != run_slot[:-1])
    heads = np.flatnonzero(first)
    tail = idx[np.append(heads[1:], idx.shape[0]) - 1]
    run_of = np.cumsum(first) - 1
    g = steps.g
    head_g = g[idx[heads]]
    slot_of_run = run_slot[heads]
    # Each run as a period of its own: from its first step to the end of its last.
    start = steps.start[slot_of_run] + (head_g - (slot_of_run << SPAN_BITS))
    runs = Steps((run_of << SPAN_BITS) | (g[idx] - head_g[run_of]), v[idx],
                 np.append(heads, idx.shape[0]).astype(np.int64), start,
                 start + (g[tail] + dur[tail] - head_g))
    per_run = continuous_levels(runs, grace_us[slot_of_run])
    run_offsets = np.searchsorted(slot_of_run, np.arange(steps.slots + 1)).astype(np.int64)
    return np.maximum(floor, _max_per_slot(per_run, run_offsets))


def _max_per_slot(values: I64, offsets: I64) -> I64:
    out = np.zeros(offsets.shape[0] - 1, np.int64)
    has = offsets[:-1] < offsets[1:]
    if has.any():
        out[has] = np.maximum.reduceat(values, offsets[:-1][has])
    return out


@dataclass(frozen=True, slots=True, eq=False)
class EpisodeArrays:
    """Maximal stretches with x(t) > 0, per slot: global start and end, peak, sustained level."""

    slot: I64
    start_g: I64
    end_g: I64
    peak: I64
    sustained: I64


def episode_arrays(x: Steps, grace_us: I64, continuous: NDArray[np.bool_], overage: I64,
                   window: tuple[I64, NDArray[np.bool_]] | None = None) -> EpisodeArrays:
    """The excess episodes of x(t) and the level each sustained under its slot's rule.

    Continuous: the highest level the episode held for one stretch longer than the grace.
    Cumulative: the billed level it reached, min(its peak, the period's overage seats), since
    every episode adds to the time at the levels it reaches. `window` is `window_minimum(x, G)`
    when the caller has it already.
    """
    v = x.value
    n = v.shape[0]
    slot = x.slot_of()
    pos = v > 0
    prev_pos = np.zeros(n, np.bool_)
    prev_pos[1:] = pos[:-1] & (slot[1:] == slot[:-1])
    next_pos = np.zeros(n, np.bool_)
    next_pos[:-1] = pos[1:] & (slot[1:] == slot[:-1])
    first = np.flatnonzero(pos & ~prev_pos)
    last = np.flatnonzero(pos & ~next_pos)
    if first.size == 0:
        empty = np.empty(0, np.int64)
        return EpisodeArrays(empty, empty, empty, empty, empty)
    ep_slot = slot[first]
    at_slot_end = last + 1 == x.offsets[1:][ep_slot]
    end_g = np.where(at_slot_end, x.end_g()[ep_slot], np.append(x.g, 0)[last + 1])
    bounds = np.empty(first.size * 2, np.int64)
    bounds[0::2] = first
    bounds[1::2] = last + 1
    peak = np.maximum.reduceat(np.append(v, 0), bounds)[0::2]
    sustained = np.minimum(peak, overage[ep_slot])
    if continuous.any():
        wmin, valid = window if window is not None else window_minimum(x, grace_us)
        local = np.maximum.reduceat(np.append(np.where(valid, wmin, 0), 0), bounds)[0::2]
        sustained = np.where(continuous[ep_slot], local, sustained)
    return EpisodeArrays(ep_slot, x.g[first], end_g, peak, sustained)
