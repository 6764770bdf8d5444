"""The durable store: one interface (`meter.store.base.Store`) that every command reads and
writes through, and `open_store` to open one.

    base      the interface and the values that cross it
    sqlite    the embedded default: one SQLite file
    postgres  a PostgreSQL database (`postgresql://` URL), for more than one file can carry
    leases    a cluster member's advisory-lock leases on PostgreSQL (`meter.cluster`)
    job_table the statements of PostgreSQL's finalization job table (`meter.cluster.jobs`)

Every SQL statement of `meter` is in this package.
"""

from __future__ import annotations

from pathlib import Path

from meter.store.base import (
    BatchResult,
    FinalizedReport,
    RatingColumns,
    RatingRows,
    RejectedMessage,
    Store,
    StoredEvent,
)
from meter.store.sqlite import SqliteStore

# The interface's values (meter.store.base), and the one way to open a store.
__all__ = ["BatchResult", "FinalizedReport", "RatingColumns", "RatingRows", "RejectedMessage",
           "Store", "StoredEvent", "is_postgres_url", "open_store"]


def is_postgres_url(db: object) -> bool:
    """Whether `db` is a PostgreSQL URL (`postgresql://` or `postgres://`), not a SQLite path."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


async def open_store(db: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000,
                     mmap: bool = False) -> Store:
    """Open (creating and migrating if needed) the store at `db`: a `postgresql://` (or
    `postgres://`) URL of an existing database, or else a SQLite path.

    `synchronous` is SQLite's durability mode; `mmap` maps the file for reading (reports read
    rows scattered over all of it). PostgreSQL takes its durability from the server's settings
    and ignores all three.
    """
    if is_postgres_url(db):
        # Imported here: SQLite users never load psycopg.
        from meter.store.postgres import PostgresStore  # noqa: PLC0415

        return await PostgresStore.connect(str(db))
    return await SqliteStore.connect(db, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms,
                                     mmap=mmap)
