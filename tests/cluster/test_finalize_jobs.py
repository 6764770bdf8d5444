"""Finalization through the job table (`meter.cluster.jobs`) on a real PostgreSQL: a worker
SIGKILLed halfway loses nothing and freezes nothing twice, each report is the one an
uninterrupted run makes, and the cluster's broker link follows each slot's reports."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from meter.cli import main
from meter.cluster.jobs import (
    LINK_FRESH,
    Job,
    enqueue,
    finalize_due_jobs,
    finish,
    link,
    report_link,
    work,
)
from meter.errors import UsageError
from meter.finalization import Link
from meter.report.build import make_report, read_contracts
from meter.store import open_store
from tests.contracts_toml import account, contracts, pool
from tests.pgserver import PgServer

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 300
MONTH = "2026-01"
JAN = (1767225600000000, 1769904000000000)  # [2026-01-01, 2026-02-01) UTC, microseconds
#: Receive time for ingests: after every event these tests write.
AS_OF = "2026-02-01T06:00:00+00:00"
NOW = datetime(2026, 2, 2, 12, 0, tzinfo=UTC)


def _contracts(n: int) -> str:
    return contracts(*(
        account(f"acct{i:03d}", pools=[pool("agents", tier="premium", model="concurrent",
                                            quantity=2, price="100.00", overage_price="150.00")])
        for i in range(n)))


def _events(n: int) -> str:
    """Per account: i % 4 + 1 users in overlapping sessions on 5 January (so the overage
    differs between accounts), and one short session late in the month."""
    lines = []
    for i in range(n):
        acct = f"acct{i:03d}"
        for u in range(i % 4 + 1):
            for kind, at in (("login", f"2026-01-05T{9 + u:02d}:00:00Z"),
                             ("logout", f"2026-01-05T{13 + u:02d}:30:00Z"),
                             ("login", f"2026-01-28T{10 + u:02d}:15:00Z"),
                             ("logout", f"2026-01-28T{10 + u:02d}:45:00Z")):
                lines.append(json.dumps({
                    "id": f"{acct}-{u}-{kind}-{at}", "type": kind, "account": acct,
                    "user": f"u{u}", "pool": "agents", "session": f"s{u}", "ts": at}))
    return "\n".join(lines) + "\n"


@dataclass
class Files:
    contracts: Path
    events: Path


def _files(tmp_path: Path, n: int) -> Files:
    files = Files(tmp_path / "contracts.toml", tmp_path / "events.jsonl")
    files.contracts.write_text(_contracts(n))
    files.events.write_text(_events(n))
    return files


def _ingest(files: Files, url: str) -> None:
    assert 0 == main(["ingest", str(files.events), "--db", url, "--contracts",
                      str(files.contracts), "--as-of", AS_OF])


def _sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def _report_cmd(files: Files, url: str) -> list[str]:
    return [sys.executable, "-m", "meter", "report", "--finalize", "--period", MONTH,
            "--db", url, "--contracts", str(files.contracts)]


def _without_issued_at(report: str) -> dict[str, Any]:
    """A finalized report's document with `invoice.issued_at` (the finalization's wall-clock
    time, the one part that differs between two runs) set to None."""
    doc: dict[str, Any] = json.loads(report)
    doc["invoice"]["issued_at"] = None
    return doc


def _finalized(url: str) -> dict[str, tuple[dict[str, Any], str, str, int]]:
    rows = _sql(url, "SELECT account, report, charts, input_hash, cutoff_seq FROM finalized")
    assert len(rows) == len({r[0] for r in rows})
    return {r[0]: (_without_issued_at(r[1]), r[2], r[3], r[4]) for r in rows}


@pytest.fixture
def second_db(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


def test_a_worker_killed_mid_finalization_loses_nothing_and_freezes_nothing_twice(
        pg_url: str, second_db: str, tmp_path: Path) -> None:
    """300 accounts, two `meter report --finalize` processes started together on one database,
    one SIGKILLed once it has finalized some: the other finishes every job, including the one
    the killed worker held. Every account is finalized exactly once, each job done by one of
    the two, and every stored report (and the survivor's output) equals an uninterrupted run's
    on a second database with the same events, apart from `invoice.issued_at`."""
    files = _files(tmp_path, ACCOUNTS)
    _ingest(files, pg_url)
    _ingest(files, second_db)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outs = [tmp_path / "out0.json", tmp_path / "out1.json"]
    errs = [tmp_path / "err0.txt", tmp_path / "err1.txt"]
    procs = []
    for out, err in zip(outs, errs, strict=True):
        with out.open("wb") as o, err.open("wb") as e:
            procs.append(subprocess.Popen(_report_cmd(files, pg_url), stdout=o, stderr=e,
                                          stdin=subprocess.DEVNULL, env=env, cwd=ROOT))
    victim, survivor = procs
    mark = f"meter report pid {victim.pid} on host %"
    deadline = time.monotonic() + 300
    while True:
        (done_by_victim,), = _sql(pg_url, "SELECT count(*) FROM finalize_job "
                                          "WHERE state = 'done' AND worker LIKE %s", (mark,))
        if done_by_victim >= 10:
            break
        assert victim.poll() is None, errs[0].read_text()
        assert time.monotonic() < deadline, "the first worker finalized nothing in 300 s"
        time.sleep(0.02)
    killed_us = int(time.time() * 1e6)
    victim.send_signal(signal.SIGKILL)
    assert -signal.SIGKILL == victim.wait(60)
    assert 0 == survivor.wait(600), errs[1].read_text()

    jobs = _sql(pg_url, "SELECT account, period_start_us, period_end_us, label, state, worker, "
                        "attempts FROM finalize_job ORDER BY account")
    assert [(f"acct{i:03d}", *JAN, MONTH, "done") for i in range(ACCOUNTS)] == [
        j[:5] for j in jobs]
    by_worker: dict[str, set[str]] = {}
    for j in jobs:
        by_worker.setdefault(j[5], set()).add(j[0])
    victim_name = f"meter report pid {victim.pid} on host {os.uname().nodename}"
    survivor_name = f"meter report pid {survivor.pid} on host {os.uname().nodename}"
    assert {victim_name, survivor_name} == set(by_worker)
    assert len(by_worker[victim_name]) >= 10
    # attempts counts the takes that ended: the killed worker's last one was rolled back.
    assert {1} == {j[6] for j in jobs}
    # The survivor names exactly the accounts it froze, in the old output's words. One more of
    # its jobs may have been frozen by the victim, killed after storing the report and before
    # marking the job done: the survivor only marked it done (it says nothing of it).
    printed = {line.split()[1] for line in errs[1].read_text().splitlines()
               if line.startswith("finalized ")}
    assert printed <= by_worker[survivor_name]
    only_marked = sorted(by_worker[survivor_name] - printed)
    assert len(only_marked) <= 1
    for frozen_account in only_marked:
        (frozen_us,), = _sql(pg_url, "SELECT finalized_us FROM finalized WHERE account = %s",
                             (frozen_account,))
        assert frozen_us < killed_us
    (count, distinct), = _sql(pg_url, "SELECT count(*), count(DISTINCT account) FROM finalized")
    assert (ACCOUNTS, ACCOUNTS) == (count, distinct)

    # The uninterrupted run, on the second database.
    reference = subprocess.run(_report_cmd(files, second_db), capture_output=True,
                               stdin=subprocess.DEVNULL, env=env, cwd=ROOT, check=False)
    assert 0 == reference.returncode, reference.stderr
    assert [f"finalized acct{i:03d} {MONTH}" for i in range(ACCOUNTS)] == [
        line for line in reference.stderr.decode().splitlines() if line.startswith("finalized ")]
    got, want = _finalized(pg_url), _finalized(second_db)
    assert sorted(want) == sorted(got)
    for acct, expected in want.items():
        assert expected == got[acct], acct
    survivor_doc, reference_doc = (json.loads(text) for text in
                                   (outs[1].read_text(), reference.stdout.decode()))
    for doc in (survivor_doc, reference_doc):
        for part in doc["accounts"]:
            part["invoice"]["issued_at"] = None
    assert reference_doc == survivor_doc


def _two_accounts(tmp_path: Path, url: str) -> Files:
    files = _files(tmp_path, 2)
    _ingest(files, url)
    return files


def _jobs(n: int) -> list[Job]:
    return [Job(f"acct{i:03d}", *JAN, MONTH) for i in range(n)]


def test_enqueue_is_idempotent(pg_url: str, tmp_path: Path) -> None:
    """A job already in the table, queued or done, is not queued again; only new ones count."""
    _two_accounts(tmp_path, pg_url)
    assert 2 == asyncio.run(enqueue(pg_url, _jobs(2), now=NOW))
    assert 0 == asyncio.run(enqueue(pg_url, _jobs(2), now=NOW))
    _sql(pg_url, "UPDATE finalize_job SET state = 'done' WHERE account = 'acct000'")
    assert 1 == asyncio.run(enqueue(pg_url, _jobs(3), now=NOW + timedelta(hours=1)))
    assert 0 == asyncio.run(enqueue(pg_url, [], now=NOW))
    assert [("acct000", "done", 0, 1770033600000000), ("acct001", "queued", 0, 1770033600000000),
            ("acct002", "queued", 0, 1770037200000000)] == _sql(
        pg_url, "SELECT account, state, attempts, queued_us FROM finalize_job ORDER BY account")


def test_work_finalizes_each_queued_job_and_marks_it_done(pg_url: str, tmp_path: Path) -> None:
    """`work` takes the queued jobs in order, finalizes each through the normal path and marks
    it done with its name and time; a second `work` finds nothing to do."""
    files = _two_accounts(tmp_path, pg_url)
    asyncio.run(enqueue(pg_url, _jobs(2), now=NOW))
    done = asyncio.run(work(pg_url, files.contracts, worker="w1", now=NOW))
    assert [("acct000", MONTH), ("acct001", MONTH)] == done
    assert [] == asyncio.run(work(pg_url, files.contracts, worker="w2", now=NOW))
    assert [("acct000", "done", "w1", 1, 1770033600000000),
            ("acct001", "done", "w1", 1, 1770033600000000)] == _sql(
        pg_url, "SELECT account, state, worker, attempts, done_us FROM finalize_job "
                "ORDER BY account")
    assert [("acct000", "2026-02-02T12:00:00Z"), ("acct001", "2026-02-02T12:00:00Z")] == [
        (a, json.loads(r)["invoice"]["issued_at"])
        for a, r in _sql(pg_url, "SELECT account, report FROM finalized ORDER BY account")]


async def _finalize_directly(url: str, files: Files, acct: str, now: datetime) -> None:
    parsed, text = await read_contracts(files.contracts)
    async with await open_store(url) as store:
        report = await make_report(store, parsed, text, MONTH, accounts=[acct], finalize=True,
                                   now=now)
    assert (acct,) == report.finalized_now


def test_a_job_whose_report_is_stored_is_only_marked_done(pg_url: str, tmp_path: Path) -> None:
    """A worker that died after storing the report, before marking the job done, left a queued
    job with its report in `finalized`: the next worker marks it done and stores nothing (the
    first report, with its issue time, stays the only one)."""
    files = _two_accounts(tmp_path, pg_url)
    earlier = NOW - timedelta(hours=5)
    asyncio.run(_finalize_directly(pg_url, files, "acct000", earlier))
    asyncio.run(enqueue(pg_url, _jobs(2), now=NOW))
    assert [("acct001", MONTH)] == asyncio.run(work(pg_url, files.contracts, worker="w", now=NOW))
    assert [("acct000", "done", "w"), ("acct001", "done", "w")] == _sql(
        pg_url, "SELECT account, state, worker FROM finalize_job ORDER BY account")
    assert [("acct000", 1770015600000000), ("acct001", 1770033600000000)] == _sql(
        pg_url, "SELECT account, finalized_us FROM finalized ORDER BY account")


def test_a_job_held_by_a_worker_is_skipped_by_the_others(pg_url: str, tmp_path: Path) -> None:
    """While one connection holds a job's row lock (a worker rating it), `work` skips it and
    does the rest; once the holder's connection ends without marking it done (killed), the
    job is free and the next `work` does it."""
    files = _two_accounts(tmp_path, pg_url)
    asyncio.run(enqueue(pg_url, _jobs(2), now=NOW))
    holder = psycopg.connect(pg_url)
    holder.execute("SELECT 1 FROM finalize_job WHERE account = 'acct000' FOR UPDATE")
    try:
        assert [("acct001", MONTH)] == asyncio.run(work(pg_url, files.contracts, worker="w",
                                                        now=NOW))
    finally:
        holder.close()  # as a SIGKILL ends it: never committed
    assert [("acct000", MONTH)] == asyncio.run(work(pg_url, files.contracts, worker="w2",
                                                    now=NOW))
    assert [("acct000", "w2"), ("acct001", "w")] == _sql(
        pg_url, "SELECT account, worker FROM finalize_job ORDER BY account")


def test_a_failing_job_is_left_queued_and_the_others_are_done(pg_url: str,
                                                              tmp_path: Path) -> None:
    """A job the contracts cannot rate (its account is gone) is given back queued with its
    attempt counted, the jobs after it are still done, and then its error is raised."""
    files = _two_accounts(tmp_path, pg_url)
    gone = Job("acct000-gone", *JAN, MONTH)
    asyncio.run(enqueue(pg_url, [gone, *_jobs(2)], now=NOW))
    with pytest.raises(UsageError) as raised:
        asyncio.run(work(pg_url, files.contracts, worker="w", now=NOW))
    assert ("finalization job acct000-gone 2026-01: no account 'acct000-gone' in the "
            "contracts") == str(raised.value)
    assert [("acct000", "done", 1), ("acct000-gone", "queued", 1), ("acct001", "done", 1)] == _sql(
        pg_url, "SELECT account, state, attempts FROM finalize_job ORDER BY account")
    assert [("acct000",), ("acct001",)] == _sql(pg_url, "SELECT account FROM finalized "
                                                        "ORDER BY account")


def test_finish_waits_for_a_job_another_worker_holds_and_works_it_if_that_one_dies(
        pg_url: str, tmp_path: Path) -> None:
    """`finish` (what `meter report --finalize` runs) does the free jobs, then waits on the one
    another connection holds; when that connection ends without marking it done (a killed
    worker), `finish` works it itself and returns only once every job of its own is done."""
    files = _two_accounts(tmp_path, pg_url)
    asyncio.run(enqueue(pg_url, _jobs(1), now=NOW))
    holder = psycopg.connect(pg_url)
    holder.execute("SELECT 1 FROM finalize_job WHERE account = 'acct000' FOR UPDATE")
    result: list[list[tuple[str, str]]] = []
    thread = threading.Thread(target=lambda: result.append(
        asyncio.run(finish(pg_url, files.contracts, _jobs(2), worker="w", now=NOW))))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        # acct001 done, and finish blocked on acct000's row lock:
        while not (_sql(pg_url, "SELECT 1 FROM finalize_job WHERE account = 'acct001' "
                                "AND state = 'done'")
                   and _sql(pg_url, "SELECT 1 FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND wait_event_type = 'Lock'")):
            assert time.monotonic() < deadline, "finish never waited for the held job"
            time.sleep(0.02)
        assert [("acct000", "queued")] == _sql(pg_url, "SELECT account, state FROM finalize_job "
                                                       "WHERE state = 'queued'")
    finally:
        holder.close()
    thread.join(60)
    assert [[("acct001", MONTH), ("acct000", MONTH)]] == result
    assert [("acct000", "done", "w"), ("acct001", "done", "w")] == _sql(
        pg_url, "SELECT account, state, worker FROM finalize_job ORDER BY account")


def test_report_finalize_on_postgresql_goes_through_the_job_table(pg_url: str,
                                                                   tmp_path: Path) -> None:
    """`meter report --finalize` on PostgreSQL queues the chosen accounts' period and works it:
    same output and exit code as before, and a second run finalizes nothing."""
    files = _two_accounts(tmp_path, pg_url)

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["report", "--db", pg_url, "--contracts", str(files.contracts),
                         "--period", MONTH, "--account", "acct001", "--finalize"])
        return code, out.getvalue(), err.getvalue()

    code, out, err = run()
    assert (0, f"finalized acct001 {MONTH}\n") == (code, err)
    assert ["acct001"] == [a["account"] for a in json.loads(out)["accounts"]]
    assert [("acct001", "done", 1)] == _sql(pg_url, "SELECT account, state, attempts "
                                                    "FROM finalize_job")
    code, again, err = run()
    assert (0, "", out) == (code, err, again)


def test_report_finalize_on_a_date_queues_the_period_holding_it(pg_url: str,
                                                                tmp_path: Path) -> None:
    """With `--on DATE` the job is the account's period holding that date, labelled by the
    month it starts in; the output names the date, as on SQLite."""
    files = _two_accounts(tmp_path, pg_url)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["report", "--db", pg_url, "--contracts", str(files.contracts),
                     "--on", "2026-01-15", "--finalize"])
    assert (0, "finalized acct000 2026-01-15\nfinalized acct001 2026-01-15\n") == (
        code, err.getvalue())
    assert [("acct000", *JAN, MONTH, "done"), ("acct001", *JAN, MONTH, "done")] == _sql(
        pg_url, "SELECT account, period_start_us, period_end_us, label, state FROM finalize_job "
                "ORDER BY account")


def test_finalize_due_jobs_queues_what_is_due_and_works_it(pg_url: str, tmp_path: Path) -> None:
    """The cluster variant of `finalize_due`: January is due a day after its end with a 1h
    lateness (no watch: lateness alone), so both accounts are queued and finalized; a second
    call finds nothing due. Before end + lateness nothing is queued."""
    files = _two_accounts(tmp_path, pg_url)
    early = datetime(2026, 2, 1, 0, 30, tzinfo=UTC)
    assert [] == asyncio.run(finalize_due_jobs(pg_url, files.contracts, early, worker="d"))
    assert [] == _sql(pg_url, "SELECT account FROM finalize_job")
    expected = [("acct000", MONTH), ("acct001", MONTH)]
    assert expected == asyncio.run(finalize_due_jobs(pg_url, files.contracts, NOW, worker="d"))
    assert [] == asyncio.run(finalize_due_jobs(pg_url, files.contracts, NOW, worker="d"))
    assert [("acct000", "done", "d"), ("acct001", "done", "d")] == _sql(
        pg_url, "SELECT account, state, worker FROM finalize_job ORDER BY account")


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _links(url: str, rows: list[tuple[int, float | None, float | None, float]],
                 slots: int, now: datetime) -> Link:
    """Each row (slot, connected since, last received, updated), in seconds after T0, reported
    once, then the cluster's link for `slots` at `now`."""
    conn = await psycopg.AsyncConnection.connect(url)
    async with conn:
        for slot, since, last, updated in rows:
            # On a caller's connection for slot 0, by URL for the others: both ways.
            target: str | psycopg.AsyncConnection[Any] = conn if slot == 0 else url
            await report_link(target, slot, f"member-{slot}",
                              connected_since=None if since is None else _at(since),
                              last_received=None if last is None else _at(last),
                              now=_at(updated))
    return await link(url, slots, now)


LINK_RULES = [
    # (name, rows (slot, connected since, last received, updated), slots, now, expected)
    ("all fresh and connected", [(0, 5, 40, 58), (1, 20, 30, 59), (2, 10, None, 55)], 3, 60,
     Link(_at(20), _at(40))),
    ("one stale", [(0, 5, 40, 58), (1, 20, 30, 49), (2, 10, None, 55)], 3, 60,
     Link(None, _at(40))),
    ("updated exactly LINK_FRESH ago: fresh", [(0, 5, 40, 50), (1, 20, 30, 59)], 2, 60,
     Link(_at(20), _at(40))),
    ("one missing", [(0, 5, 40, 58), (2, 10, 45, 55)], 3, 60, Link(None, _at(45))),
    ("one disconnected", [(0, 5, 40, 58), (1, None, 50, 59)], 2, 60, Link(None, _at(50))),
    ("none at all", [], 2, 60, Link(None, None)),
    ("a slot beyond the cluster's count is ignored", [(0, 5, 40, 58), (1, 20, 30, 59),
                                                      (5, 30, 55, 59)], 2, 60,
     Link(_at(20), _at(40))),
]


@pytest.mark.parametrize(("rows", "slots", "now", "expected"),
                         [r[1:] for r in LINK_RULES], ids=[r[0] for r in LINK_RULES])
def test_link_is_connected_only_when_every_slot_is_fresh_and_connected(
        pg_url: str, rows: list[tuple[int, float | None, float | None, float]], slots: int,
        now: float, expected: Link) -> None:
    """`link` reads `slot_link`: connected since the latest connection start only when every
    slot 0..slots-1 reported within `LINK_FRESH` that it is connected; last received is the
    latest of any slot."""
    asyncio.run(_check_schema(pg_url))
    assert timedelta(seconds=10) == LINK_FRESH
    assert expected == asyncio.run(_links(pg_url, rows, slots, _at(now)))


async def _check_schema(url: str) -> None:
    async with await open_store(url):
        pass  # migrated


def test_report_link_replaces_the_slot_row(pg_url: str) -> None:
    """A slot's row is its holder's latest report (a new holder's replaces the old one's)."""
    asyncio.run(_check_schema(pg_url))
    asyncio.run(report_link(pg_url, 1, "a", connected_since=_at(0), last_received=None,
                            now=_at(1)))
    asyncio.run(report_link(pg_url, 1, "b", connected_since=None, last_received=_at(3),
                            now=_at(4)))
    assert [(1, "b", None, 1772366403000000, 1772366404000000)] == _sql(
        pg_url, "SELECT slot, holder, connected_since_us, last_received_us, updated_us "
                "FROM slot_link")
