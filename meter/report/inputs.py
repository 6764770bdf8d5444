"""A report's inputs: the events an account's period needs, its canonical contract, their hash.

The hash is over the rating version, the contract and the events in (ts_us, id) order, so
arrival order, which never changes a bill, never changes the hash either (`meter verify`).
Its layout is versioned (`HASH_VERSION`, stored in the report as `inputs.hash_version`; absent
means 1): a report is verified under the version it was made with.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meter.errors import UsageError
from meter.store import Store
from rating.bill import RATING_VERSION
from rating.columns import StoredColumns
from rating.contracts import Account
from rating.periods import Period
from rating.usage import to_us

__all__ = ["HASH_VERSION", "Inputs", "account_contract", "account_contracts", "columns_hash",
           "input_hash", "load_inputs", "window"]

#: The layout of new reports' input hashes: 1 is `input_hash` (JSON of every row), 2
#: `columns_hash` (the column arrays' bytes).
HASH_VERSION = 2


@dataclass(frozen=True, slots=True)
class Inputs:
    """The events an account's report rated: those of its input window with `seq <= through_seq`,
    as columns in (ts_us, id) order, and their hash in layout `hash_version`."""

    columns: StoredColumns
    count: int
    through_seq: int
    digest: str
    hash_version: int = HASH_VERSION


def account_contracts(contracts_text: str) -> dict[str, str]:
    """Each account's `[[account]]` table as canonical JSON (comments and other accounts ignored),
    by account id; the file is parsed once however many accounts it holds."""
    doc = tomllib.loads(contracts_text)
    return {
        str(table["id"]): json.dumps(table, sort_keys=True, separators=(",", ":"), default=str)
        for table in doc.get("account", []) if isinstance(table, dict) and "id" in table
    }


def account_contract(contracts_text: str, account_id: str) -> str:
    """One account's canonical contract (see `account_contracts`)."""
    try:
        return account_contracts(contracts_text)[account_id]
    except KeyError:
        raise UsageError(f"contracts: no account {account_id!r}") from None


def input_hash(contract: str, rows: Sequence[Sequence[Any]]) -> str:
    """sha256 over the rating version, the account's canonical contract and its events.

    `rows` are (id, type, user, pool, session, ts_us) in (ts_us, id) order. They are written as
    one JSON array (one C-speed encoding for the whole list).
    """
    h = hashlib.sha256()
    h.update(f"license-meter inputs\nrating {RATING_VERSION}\n".encode())
    h.update(contract.encode())
    h.update(b"\n")
    h.update(json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode())
    return h.hexdigest()


def columns_hash(contract: str, cols: StoredColumns) -> str:
    """sha256 over the rating version, the account's canonical contract and its events, in
    layout 2: the row count, then the column arrays' bytes (ts_us int64, kind int8, user, pool
    and session codes int32, little-endian; codes in order of first appearance, -1 for none),
    then the ids and the code tables as JSON arrays. The same rows give the same bytes, and
    each part has a fixed length or is JSON, so no two inputs share them.
    """
    h = hashlib.sha256()
    h.update(f"license-meter inputs v2\nrating {RATING_VERSION}\n".encode())
    h.update(contract.encode())
    h.update(f"\n{len(cols)}\n".encode())
    for array, dtype in ((cols.ts, "<i8"), (cols.kind, "i1"), (cols.user, "<i4"),
                         (cols.pool, "<i4"), (cols.session, "<i4")):
        h.update(array.astype(dtype, copy=False).tobytes())
    for texts in (cols.ids, cols.users, cols.pools, cols.sessions):
        h.update(json.dumps(texts, separators=(",", ":"), ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def window(account: Account, period: Period) -> tuple[int, int]:
    """The input window of `period` in microseconds: `[start - session_timeout, end +
    session_timeout)`, so sessions open at the start and timeouts near the end are seen."""
    return (to_us(period.start - account.session_timeout),
            to_us(period.end + account.session_timeout))


async def load_inputs(store: Store, account: Account, contract: str, period: Period,
                      through_seq: int, *, hash_version: int = HASH_VERSION) -> Inputs:
    """The events rating `period` needs, up to arrival `through_seq`, and their hash in layout
    `hash_version`: the input window plus, where the account has named pools, every earlier
    assign/unassign (the rosters)."""
    lo, hi = window(account, period)
    got = await store.rating_columns(account.id, lo, hi, through_seq=through_seq,
                                     seats_before=bool(account.named_pools))
    cols = got.columns
    if hash_version == 1:
        digest = input_hash(contract, cols.rows())
    elif hash_version == 2:
        digest = columns_hash(contract, cols)
    else:
        raise UsageError(f"input hash version {hash_version} is not known to this meter")
    return Inputs(columns=cols, count=len(cols), through_seq=got.last_seq, digest=digest,
                  hash_version=hash_version)
