"""PostgreSQL specifics of the store, on the test session's own cluster (tests/pgserver.py).
The behaviour both stores share is in test_store_contract.py."""

from __future__ import annotations

import psycopg

from tests.pgserver import PgServer


def test_each_test_gets_a_fresh_empty_database(pg_server: PgServer, pg_url: str) -> None:
    """`pg_url` names a database of this test's own on the session's cluster, with no tables,
    and the cluster syncs to disk (fsync on: the durability tests mean it)."""
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    assert (0,) == tables
    assert ("on",) == fsync
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/t_")
