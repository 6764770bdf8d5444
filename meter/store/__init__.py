"""The durable store: one interface (`meter.store.base.Store`) that every command reads and
writes through, and `open_store` to open one.

    base     the interface and the values that cross it
    sqlite   the embedded default: one SQLite file (every SQL statement of `meter` is there)
"""

from __future__ import annotations

from pathlib import Path

from meter.store.base import BatchResult, FinalizedReport, RatingRows, RejectedMessage, Store, StoredEvent
from meter.store.sqlite import SqliteStore

# The interface's values (meter.store.base), and the one way to open a store.
__all__ = ["BatchResult", "FinalizedReport", "RatingRows", "RejectedMessage", "Store",
           "StoredEvent", "open_store"]


async def open_store(db: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000,
                     mmap: bool = False) -> Store:
    """Open (creating and migrating if needed) the store at `db`, a SQLite path.

    `synchronous` is SQLite's durability mode; `mmap` maps the file for reading (reports read
    rows scattered over all of it).
    """
    return await SqliteStore.connect(db, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms,
                                     mmap=mmap)
