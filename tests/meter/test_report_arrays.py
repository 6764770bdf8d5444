"""The report reads its inputs as column arrays and hashes them in layout 2 (`columns_hash`);
reports hashed in layout 1 (JSON of every row, the only layout before) still verify."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from meter.report.compose import canonical
from meter.report.inputs import HASH_VERSION, columns_hash, input_hash
from meter.store import FinalizedReport, open_store
from rating.columns import StoredColumns
from rating.usage import to_us
from tests.meter.test_report import CONTRACTS, run_cli

#: Each sample account's input hash as `meter report` made it before layouts (commit 1b47813),
#: and the report's own hash over them.
V1 = {
    "acme": "24f37401ac3f073159b48f29642300876aba652463a9e2ca601bf89f85f8a680",
    "globex": "984f55a900ee40778f5d7ea1c7b769533d4668615aafb72a39960aaba91b1adb",
    "initech": "1c6eebfd9d7f912363ffa9ccd51a4446259c423ea407c4552b5dc290b55d30ff",
}
V1_REPORT = "ebdcf25a2334fa1bca24b7b267ad6ddea4c3214f08cb4243846fe3cb9d9f81fc"

ROWS = [
    ("e1", "login", "ann", "agents", "s1", 10),
    ("e2", "heartbeat", "bob", None, None, 20),
    ("e3", "logout", "ann", "agents", "s1", 30),
    ("e4", "assign", "bob", "leads", None, 40),
]


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed sample month, loaded as tests/meter/test_report.py loads it."""
    db = tmp_path_factory.mktemp("db") / "meter.db"
    events = CONTRACTS.parent / "events-2026-11.jsonl"
    assert 0 == run_cli("ingest", str(events), "--db", str(db), "--contracts", str(CONTRACTS),
                        "--as-of", "2026-12-02T00:00:00Z")[0]
    return db


def test_columns_code_texts_in_order_of_first_appearance() -> None:
    """Rows become arrays (kind codes of `KINDS`, -1 for no pool or session) and back."""
    cols = StoredColumns.from_rows(ROWS)
    assert (("e1", "e2", "e3", "e4"), [2, 0, 1, 3], [0, 1, 0, 1], ("ann", "bob"),
            [0, -1, 0, 1], ("agents", "leads"), [0, -1, 0, -1], ("s1",), [10, 20, 30, 40]) == (
        cols.ids, cols.kind.tolist(), cols.user.tolist(), cols.users, cols.pool.tolist(),
        cols.pools, cols.session.tolist(), cols.sessions, cols.ts.tolist())
    assert ROWS == cols.rows()
    assert 0 == len(StoredColumns.from_rows([]).rows())


def test_layout_2_is_sha256_of_the_column_bytes() -> None:
    """`columns_hash` is the documented layout, byte for byte."""
    h = hashlib.sha256()
    h.update(b"license-meter inputs v2\nrating 2\n{}\n4\n")
    h.update(np.array([10, 20, 30, 40], "<i8").tobytes())
    h.update(np.array([2, 0, 1, 3], "i1").tobytes())
    h.update(np.array([0, 1, 0, 1], "<i4").tobytes())
    h.update(np.array([0, -1, 0, 1], "<i4").tobytes())
    h.update(np.array([0, -1, 0, -1], "<i4").tobytes())
    h.update(b'["e1","e2","e3","e4"]\n["ann","bob"]\n["agents","leads"]\n["s1"]\n')
    assert h.hexdigest() == columns_hash("{}", StoredColumns.from_rows(ROWS))


def test_layouts_tell_every_column_apart() -> None:
    """Changing any one value of any column changes both layouts' hashes."""
    base = StoredColumns.from_rows(ROWS)
    changed = [[*ROWS[:1], (*ROWS[1][:field], value, *ROWS[1][field + 1:]), *ROWS[2:]]
               for field, value in ((0, "e9"), (1, "login"), (2, "ann"), (3, "agents"),
                                    (4, "s1"), (5, 21))]
    for rows in changed:
        cols = StoredColumns.from_rows(rows)  # type: ignore[arg-type]
        assert columns_hash("{}", base) != columns_hash("{}", cols)
        assert input_hash("{}", ROWS) != input_hash("{}", cols.rows())


def test_new_reports_carry_layout_2_and_verify(sample_db: Path, tmp_path: Path) -> None:
    """A report made now says `hash_version` 2 in its inputs, and verifies."""
    assert 2 == HASH_VERSION
    code, out = run_cli("report", "--db", str(sample_db), "--contracts", str(CONTRACTS),
                        "--period", "2026-11")
    doc = json.loads(out)
    assert (0, [2, 2, 2]) == (code, [a["inputs"]["hash_version"] for a in doc["accounts"]])
    assert set(V1.values()).isdisjoint(a["input_hash"] for a in doc["accounts"])
    path = tmp_path / "report.json"
    path.write_text(out)
    code, out = run_cli("verify", str(path), "--db", str(sample_db), "--contracts", str(CONTRACTS))
    assert (0, "match") == (code, out.strip().splitlines()[-1])


def test_a_report_finalized_under_layout_1_still_verifies(sample_db: Path, tmp_path: Path
                                                          ) -> None:
    """Reports finalized before layouts (no `hash_version`, the JSON-of-rows hash) are stored
    as they were: rendered from the store they keep their hashes, and `meter verify` recomputes
    them in layout 1: match; after an UPDATE of one rated row: mismatch."""
    db = tmp_path / "meter.db"
    db.write_bytes(sample_db.read_bytes())
    args = ("--db", str(db), "--contracts", str(CONTRACTS))
    code, out = run_cli("report", *args, "--period", "2026-11")
    assert 0 == code

    async def freeze_as_v1() -> None:
        async with await open_store(db) as store:
            for part in json.loads(out)["accounts"]:
                part["finalized"] = True
                part["input_hash"] = V1[part["account"]]
                del part["inputs"]["hash_version"]
                start, end = (to_us(datetime.fromisoformat(part["period"][k]))
                              for k in ("start", "end"))
                assert await store.add_finalized(FinalizedReport(
                    account=part["account"], period_start_us=start, period_end_us=end,
                    report=canonical(part), charts="{}", input_hash=part["input_hash"],
                    cutoff_seq=part["inputs"]["through_seq"], finalized_us=start))

    asyncio.run(freeze_as_v1())
    code, out = run_cli("report", *args, "--period", "2026-11")
    doc = json.loads(out)
    assert (0, V1, V1_REPORT) == (code, {a["account"]: a["input_hash"] for a in doc["accounts"]},
                                  doc["input_hash"])
    assert all("hash_version" not in a["inputs"] for a in doc["accounts"])
    path = tmp_path / "report.json"
    path.write_text(out)
    code, out = run_cli("verify", str(path), *args)
    assert (0, "match") == (code, out.strip().splitlines()[-1])
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE events SET user = 'someone-else' WHERE seq = "
                     "(SELECT min(seq) FROM events WHERE account = 'acme' AND type = 'login' "
                     "AND ts_us >= 1793577600000000)")  # 2026-11-02, inside acme's window
    code, out = run_cli("verify", str(path), *args)
    lines = out.strip().splitlines()
    assert (1, "mismatch") == (code, lines[-1])
