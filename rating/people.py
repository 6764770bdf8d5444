"""Who was counted: per user of a pool, the sessions, the time signed in within the period and
whether they were signed in while the pool was billed for overage.

Computed from the very sessions the bill's c(t) is built from (`rating.sessions`), clipped to the
half-open period `[start, end)`; a user counts once however many sessions overlap, as in c(t).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from rating.usage import from_us

__all__ = ["UserUsage", "usage_by_user"]

I64 = NDArray[np.int64]
_US = 1_000_000


@dataclass(frozen=True, slots=True)
class UserUsage:
    """One user of one pool in one period.

    `sessions` counts the sessions touching the period (as `PoolRating.sessions` does),
    `inferred_closes` those of them closed by the session timeout. `seconds` is the time with at
    least one of them open inside the period (whole seconds, rounded down). `first_login` and
    `last_seen` are the earliest start and latest end of those sessions, clipped to the period.
    `billed_window` is true when the user was signed in during an excess episode that was billed
    (not within grace).
    """

    user: str
    sessions: int
    seconds: int
    first_login: datetime
    last_seen: datetime
    inferred_closes: int
    billed_window: bool


def usage_by_user(users: Sequence[str], user: NDArray[np.integer], start: I64, end: I64,
                  inferred: NDArray[np.bool_], *, period: tuple[int, int],
                  billed: Sequence[tuple[int, int]] = ()) -> tuple[UserUsage, ...]:
    """Per user (sorted by name), the usage of one pool's sessions in `period`.

    Session i is `[start[i], end[i])` in microseconds of user `users[user[i]]`; `period` is
    `(start_us, end_us)` and `billed` the billed episodes as disjoint `(start_us, end_us)`.
    Sessions not touching the period (ending at or before its start, starting at or after its
    end) are left out, except that one of no duration inside it still counts.
    """
    p_start, p_end = period
    touch = (start < p_end) & ((end > p_start) | (start >= p_start))
    if not touch.any():
        return ()
    # Codes may index a long table (every user of a batch): renumber this pool's users 0..n-1.
    known, code = np.unique(np.asarray(user, np.int64)[touch], return_inverse=True)
    code = code.reshape(-1).astype(np.int64)
    s = np.maximum(start[touch], p_start)
    e = np.minimum(end[touch], p_end)
    inf = inferred[touch]
    n = known.shape[0]
    count = np.bincount(code, minlength=n)
    closes = np.bincount(code[inf], minlength=n)
    big = np.iinfo(np.int64).max
    first = np.full(n, big, np.int64)
    np.minimum.at(first, code, s)
    last = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, code, e)
    seconds = _union_us(code, s, e, n) // _US
    hit = _overlaps(s, e, billed)
    in_billed = np.bincount(code[hit], minlength=n) > 0
    out = [UserUsage(users[int(known[u])], int(count[u]), int(seconds[u]),
                     from_us(int(first[u])), from_us(int(last[u])), int(closes[u]),
                     bool(in_billed[u]))
           for u in range(n)]
    out.sort(key=lambda x: x.user)
    return tuple(out)


def _union_us(code: I64, s: I64, e: I64, n: int) -> I64:
    """Per user code, the length of the union of its intervals `[s, e)`."""
    # +1 at each start, -1 at each end, sorted by (user, time); each user's running count starts
    # and ends at 0, so one cumulative sum serves all, and while it is positive the user is in.
    t = np.concatenate([s, e])
    step = np.concatenate([np.ones_like(s), -np.ones_like(e)])
    who = np.concatenate([code, code])
    order = np.lexsort((-step, t, who))  # starts first at equal times: touching spans merge
    t, step, who = t[order], step[order], who[order]
    running = np.cumsum(step)
    span = np.zeros(t.shape[0], np.int64)
    span[:-1] = np.where(running[:-1] > 0, t[1:] - t[:-1], 0)
    out = np.zeros(n, np.int64)
    np.add.at(out, who, span)  # int64: float weights would round long months of microseconds
    return out


def _overlaps(s: I64, e: I64, billed: Sequence[tuple[int, int]]) -> NDArray[np.bool_]:
    """Whether each `[s, e)` shares some time with one of the disjoint `billed` spans."""
    if not billed:
        return np.zeros(s.shape[0], np.bool_)
    spans = sorted(billed)
    b_start = np.array([a for a, _ in spans], np.int64)
    b_end = np.array([b for _, b in spans], np.int64)
    k = np.searchsorted(b_end, s, side="right")  # the first billed span ending after s
    ok = k < b_end.shape[0]
    hit = np.zeros(s.shape[0], np.bool_)
    hit[ok] = b_start[k[ok]] < e[ok]
    return hit & (e > s)
