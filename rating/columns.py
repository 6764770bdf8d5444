"""An account's stored events as column arrays (`StoredColumns`), and the pool rule over arrays.

The report reads millions of rows; here they become numpy arrays without a Python loop per row,
text columns coded in order of first appearance (so the same rows always give the same arrays).
`resolve_pools` is `Account.pool_for` applied to arrays, tabulated from `pool_for` itself so the
two can never disagree; `held_pools` is `Rosters.assigned_pool` applied to arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from numpy.typing import NDArray

from rating.contracts import Account
from rating.named import Rosters
from rating.usage import KINDS, to_us

__all__ = ["KIND_NAMES", "Row", "StoredColumns", "code", "first_appearance", "held_pools",
           "resolve_pools"]

#: One stored event as the report reads it: (id, type, user, pool, session, ts_us).
Row = tuple[str, str, str, str | None, str | None, int]

#: The event type of each `KINDS` code.
KIND_NAMES: dict[int, str] = {c: k for k, c in KINDS.items()}

I8 = NDArray[np.int8]
I32 = NDArray[np.int32]
I64 = NDArray[np.int64]


def code(values: Sequence[str | None]) -> tuple[I32, tuple[str, ...]]:
    """Dictionary-code a text column: int32 codes (-1 for None) and the texts they decode to,
    in order of first appearance. The loop over rows is C's (`dict.fromkeys`, `map`)."""
    vocab = tuple(v for v in dict.fromkeys(values) if v is not None)
    index: dict[str | None, int] = {v: i for i, v in enumerate(vocab)}
    index[None] = -1
    return np.fromiter(map(index.__getitem__, values), np.int32, len(values)), vocab


def first_appearance(codes: NDArray[np.integer]) -> tuple[I32, NDArray[np.int64]]:
    """Recode `codes` (all >= 0) 0, 1, 2, ... in order of first appearance; returns the new
    codes and, per new code, the old one."""
    if codes.shape[0] == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    old, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    new = np.empty(order.shape[0], np.int32)
    new[order] = np.arange(order.shape[0], dtype=np.int32)
    return new[inverse.reshape(-1)], old[order].astype(np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class StoredColumns:
    """One account's stored events, one array per column, in the store's (ts_us, id) order.

    `kind` holds `KINDS` codes; `user`, `pool` and `session` index `users`, `pools` and
    `sessions` (-1 where the event has no pool or session), coded in order of first appearance.
    """

    ids: tuple[str, ...]
    kind: I8
    user: I32
    users: tuple[str, ...]
    pool: I32
    pools: tuple[str, ...]
    session: I32
    sessions: tuple[str, ...]
    ts: I64

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, rows: Sequence[Row]) -> StoredColumns:
        """The columns of `rows` (id, type, user, pool, session, ts_us)."""
        if not rows:
            empty32 = np.zeros(0, np.int32)
            return cls((), np.zeros(0, np.int8), empty32, (), empty32, (), empty32, (),
                       np.zeros(0, np.int64))
        # One C-level pass per column (`zip(*rows)` costs an iterator per row).
        ids, types, users, pools, sessions = (list(map(itemgetter(i), rows)) for i in range(5))
        type_codes, type_names = code(types)
        table = np.array([KINDS[t] for t in type_names], np.int8)
        user, user_vocab = code(users)
        pool, pool_vocab = code(pools)
        session, session_vocab = code(sessions)
        return cls(ids=tuple(ids), kind=table[type_codes], user=user, users=user_vocab, pool=pool,
                   pools=pool_vocab, session=session, sessions=session_vocab,
                   ts=np.fromiter(map(itemgetter(5), rows), np.int64, len(rows)))

    def row(self, i: int) -> Row:
        """Row `i` as the store gave it."""
        pool, session = int(self.pool[i]), int(self.session[i])
        return (self.ids[i], KIND_NAMES[int(self.kind[i])], self.users[int(self.user[i])],
                None if pool < 0 else self.pools[pool],
                None if session < 0 else self.sessions[session], int(self.ts[i]))

    def rows(self) -> list[Row]:
        """Every row as the store gave it (the slow, per-row form; for the old hash version)."""
        return [self.row(i) for i in range(len(self))]


def resolve_pools(account: Account, kind: NDArray[np.integer], held: NDArray[np.integer]
                  ) -> tuple[I32, tuple[str, ...]]:
    """`account.pool_for` of every (kind, held) pair: `held` indexes `account.named_pools`
    (-1: no seat held). Returns int32 indexes into the account's pool ids (-1: None).

    The rule is tabulated from `pool_for` over its whole domain (every kind, no seat or each
    named pool), so this is the same rule, applied by one array lookup.
    """
    names = tuple(p.id for p in account.pools)
    index = {name: i for i, name in enumerate(names)}
    held_options: tuple[str | None, ...] = (*account.named_pools, None)  # -1 reads the last
    width = len(held_options)
    table = np.full((max(KINDS.values()) + 1) * width, -1, np.int32)
    for kind_name, k in KINDS.items():
        for h, name in enumerate(held_options):
            pool = account.pool_for(kind_name, name)
            table[k * width + h] = -1 if pool is None else index[pool]
    column = np.where(held < 0, width - 1, held).astype(np.int64)
    return table[kind.astype(np.int64) * width + column], names


def held_pools(account: Account, rosters: Rosters, user: NDArray[np.integer],
               users: Sequence[str], ts: I64) -> I32:
    """`rosters.assigned_pool` of every (user, ts_us) pair, as an index into
    `account.named_pools` (-1: no seat held); `user` indexes `users`.

    Rosters are taken in their order and a row keeps the first pool found, as `assigned_pool`
    does; each assignment looks only at its user's rows (found by binary search).
    """
    held = np.full(user.shape[0], -1, np.int32)
    if not user.shape[0]:
        return held
    position = {p: i for i, p in enumerate(account.named_pools)}
    codes = {u: i for i, u in enumerate(users)}
    order = np.argsort(user, kind="stable")
    by_user = user[order]
    for roster in rosters.rosters:
        for a in roster.assignments:
            c = codes.get(a.user)
            if c is None:
                continue
            lo, hi = np.searchsorted(by_user, [c, c + 1])
            rows = order[lo:hi]
            t = ts[rows]
            inside = to_us(a.start) <= t
            if a.end is not None:
                inside &= t < to_us(a.end)
            rows = rows[inside & (held[rows] < 0)]
            held[rows] = position[roster.pool]
    return held
