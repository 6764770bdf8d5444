"""`meter ingest`: exact summaries for the sample month, idempotent re-runs, stdin, exit codes."""

from __future__ import annotations

import fcntl
import os
import pty
import sqlite3
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from tqdm import tqdm

from meter.cli import main
from meter.events import REASONS

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_sessions" / "events-2026-11.jsonl"
CONTRACTS = ROOT / "sample_sessions" / "contracts.toml"
AS_OF = "2026-12-02T00:00:00Z"

#: What sample_sessions/README.md says the generator planted in the committed month.
SAMPLE_LINES = 31_306
SAMPLE_DUPLICATES = 124
SAMPLE_REJECTED = {"not_json": 2, "schema": 3, "oversized": 1, "bad_timestamp": 2, "future": 1,
                   "tenant_mismatch": 0, "unknown_account": 2, "unknown_pool": 2}
SAMPLE_ACCEPTED = SAMPLE_LINES - SAMPLE_DUPLICATES - sum(SAMPLE_REJECTED.values())

LOGIN = ('{{"id":"{id}","type":"login","account":"acme","user":"u1",'
         '"ts":"{ts}","pool":"agents","session":"s1"}}')


def line(n: int, ts: str = "2026-11-12T10:00:00-05:00") -> str:
    return LOGIN.format(id=f"e{n}", ts=ts)


def summary_of(text: str) -> dict[str, int]:
    """The printed summary as {name: number}; reasons keep their name."""
    out = {}
    for row in text.splitlines():
        name, value = row.split()
        out[name] = int(value)
    return out


def expected_summary(files: int, lines: int, accepted: int, duplicates: int,
                     rejected: dict[str, int], *, blank: int = 0) -> dict[str, int]:
    full = dict.fromkeys(REASONS, 0) | rejected
    return {"files": files, "lines": lines, "blank": blank, "accepted": accepted,
            "duplicates": duplicates, "rejected": sum(full.values()), **full}


def ingest(capsys: pytest.CaptureFixture[str], db: Path, *files: str | Path,
           extra: tuple[str, ...] = ("--as-of", AS_OF), contracts: Path = CONTRACTS
           ) -> tuple[int, str, str]:
    code = main(["ingest", *map(str, files), "--db", str(db), "--contracts", str(contracts),
                 *extra])
    out, err = capsys.readouterr()
    return code, out, err


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_sample_month_reports_exactly_what_was_planted(
        capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    """Ingesting the sample month counts the planted redeliveries and malformed lines exactly;
    a second run finds every event a duplicate; the database holds each event once."""
    code, out, err = ingest(capsys, db_path, SAMPLE)
    assert (0, "") == (code, err)
    assert expected_summary(1, SAMPLE_LINES, SAMPLE_ACCEPTED, SAMPLE_DUPLICATES,
                            SAMPLE_REJECTED) == summary_of(out)

    code, out, err = ingest(capsys, db_path, SAMPLE)
    assert (0, "") == (code, err)
    assert expected_summary(1, SAMPLE_LINES, 0, SAMPLE_ACCEPTED + SAMPLE_DUPLICATES,
                            SAMPLE_REJECTED) == summary_of(out)

    assert [(SAMPLE_ACCEPTED, SAMPLE_ACCEPTED)] == rows(
        db_path, "SELECT count(*), count(DISTINCT account || '/' || id) FROM events")
    by_reason = {r: n for r, n in SAMPLE_REJECTED.items() if n}
    assert sorted(by_reason.items()) == rows(
        db_path, "SELECT reason, count(*) FROM rejected GROUP BY reason ORDER BY reason")


def test_the_committed_month_is_what_the_generator_writes(tmp_path: Path) -> None:
    """generate.py is deterministic and the committed file is its output; it says what it planted."""
    out = tmp_path / "month.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "sample_sessions" / "generate.py"),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert SAMPLE.read_bytes() == out.read_bytes()
    assert SAMPLE.stat().st_size < 5_000_000
    assert (f"expected ingest: accepted {SAMPLE_ACCEPTED}, duplicates {SAMPLE_DUPLICATES}, "
            f"rejected {sum(SAMPLE_REJECTED.values())}") in done.stderr
    assert "acme/agents (continuous 0:30:00): max excess 3; overage seats 3;" in done.stderr


def test_the_generator_clones_accounts_with_their_contracts(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--accounts N writes N accounts' events and contracts that ingest accepts."""
    out, contracts = tmp_path / "big.jsonl", tmp_path / "big.toml"
    subprocess.run([sys.executable, str(ROOT / "sample_sessions" / "generate.py"), "--out",
                    str(out), "--accounts", "4", "--days", "2", "--agents", "3",
                    "--contracts-out", str(contracts)], capture_output=True, check=True)
    code, text, _ = ingest(capsys, tmp_path / "big.db", out, contracts=contracts)
    summary = summary_of(text)
    assert 0 == code
    assert 2 == summary["unknown_account"]  # only the two planted strangers: the clones are known
    assert 13 == summary["rejected"]
    assert summary["lines"] == summary["accepted"] + summary["duplicates"] + summary["rejected"]
    assert [("acme-0001",), ("acme-0004",), ("globex-0002",), ("initech-0003",)] == rows(
        tmp_path / "big.db", "SELECT DISTINCT account FROM events ORDER BY account")


def test_a_small_file_gives_this_exact_summary(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, db_path: Path) -> None:
    """Blank lines are skipped and counted, CRLF endings are fine, a bad line never aborts, and
    the summary is printed in this layout."""
    src = tmp_path / "small.jsonl"
    src.write_bytes("\r\n".join([line(1), "", "not json", "   ", line(2), line(1),
                                 line(3, ts="2026-11-12T10:00:00")]).encode() + b"\r\n")
    code, out, err = ingest(capsys, db_path, src)
    assert (0, "") == (code, err)
    assert (
        "files                      1\n"
        "lines                      7\n"
        "blank                      2\n"
        "accepted                   2\n"
        "duplicates                 1\n"
        "rejected                   2\n"
        "  not_json                 1\n"
        "  schema                   0\n"
        "  oversized                0\n"
        "  bad_timestamp            1\n"
        "  future                   0\n"
        "  tenant_mismatch          0\n"
        "  unknown_account          0\n"
        "  unknown_pool             0\n"
    ) == out
    assert [(f"file:{src}:3", "not_json", None, b"not json"),
            (f"file:{src}:7", "bad_timestamp", "acme", line(3, ts="2026-11-12T10:00:00").encode())
            ] == rows(db_path, "SELECT topic, reason, account, raw FROM rejected ORDER BY seq")


def test_several_files_and_stdin_in_one_run(tmp_path: Path, db_path: Path) -> None:
    """`-` reads stdin (as a subprocess, `python -m meter`); rejected stdin lines say stdin:LINE."""
    first = tmp_path / "a.jsonl"
    first.write_text(line(1) + "\n" + line(2) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "meter", "ingest", str(first), "-", "--db", str(db_path),
         "--contracts", str(CONTRACTS), "--as-of", AS_OF],
        input=f"{line(2)}\n{line(3)}\n{{oops\n", capture_output=True, text=True, cwd=ROOT,
        check=False)
    assert (0, "") == (done.returncode, done.stderr)
    assert expected_summary(2, 5, 3, 1, {"not_json": 1}) == summary_of(done.stdout)
    assert [("stdin:3",)] == rows(db_path, "SELECT topic FROM rejected")


def test_receive_time_is_as_of_or_now_and_max_future_is_configurable(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, db_path: Path) -> None:
    """--as-of is the receive time stored and used for `future`; --max-future widens the skew;
    without --as-of a line in 2099 is future."""
    src = tmp_path / "f.jsonl"
    src.write_text(line(1, "2026-12-02T00:10:00Z") + "\n" + line(2, "2099-01-01T00:00:00Z") + "\n")
    _, out, _ = ingest(capsys, db_path, src)
    assert expected_summary(1, 2, 0, 0, {"future": 2}) == summary_of(out)
    _, out, _ = ingest(capsys, db_path, src, extra=("--as-of", AS_OF, "--max-future", "15m"))
    assert expected_summary(1, 2, 1, 0, {"future": 1}) == summary_of(out)
    assert [(1_796_169_600_000_000,)] == rows(db_path, "SELECT received_us FROM events")
    far = tmp_path / "far.jsonl"
    far.write_text(line(3, "2099-01-01T00:00:00Z") + "\n")
    _, out, _ = ingest(capsys, db_path, far, extra=())
    assert expected_summary(1, 1, 0, 0, {"future": 1}) == summary_of(out)


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jsonl"], "meter ingest: missing.jsonl: cannot read: No such file or directory"),
    (["{dir}"], "meter ingest: {dir}: cannot read: Is a directory"),
    (["{good}", "--contracts", "nope.toml"],
     "meter ingest: nope.toml: cannot read contracts: No such file or directory"),
    (["{good}", "--contracts", "{bad_contracts}"],
     "meter ingest: {bad_contracts}: account 'acme', table [account], key 'currency': "
     "unknown currency 'XYZ' (known: AED, "),
    (["{good}", "--as-of", "2026-12-01T00:00:00"],
     "meter ingest: --as-of: '2026-12-01T00:00:00' has no UTC offset (add Z or +HH:MM)"),
    (["{good}", "--as-of", "soon"],
     "meter ingest: --as-of: expected an RFC 3339 time with offset, got 'soon'"),
    (["{good}", "--max-future", "five"],
     "meter ingest: --max-future: expected a duration like '5ms', '30s', '30m' or '1h30m', "
     "got 'five'"),
    (["{good}", "--db", "{dir}/no/such/dir/x.db"],
     "meter ingest: --db {dir}/no/such/dir/x.db: directory '{dir}/no/such/dir' does not exist"),
])
def test_bad_input_is_exit_2_with_one_line_naming_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str) -> None:
    """Unreadable files, bad contracts, a bad --as-of or --max-future: exit 2, one line on stderr,
    nothing written."""
    good = tmp_path / "good.jsonl"
    good.write_text(line(1) + "\n")
    bad_contracts = tmp_path / "bad.toml"
    bad_contracts.write_text(CONTRACTS.read_text().replace('currency = "USD"', 'currency = "XYZ"'))
    names = {"good": str(good), "dir": str(tmp_path), "bad_contracts": str(bad_contracts)}
    argv = [a.format(**names) for a in args]
    db = tmp_path / "out.db"
    defaults = ["--db", str(db), "--contracts", str(CONTRACTS)]
    code = main(["ingest", *[a for a in argv if not a.startswith("--")][:1], *defaults,
                 *_flags(argv)])
    _, err = capsys.readouterr()
    assert 2 == code
    assert err.startswith(message.format(**names))
    assert 1 == err.count("\n")
    assert err.endswith("\n")
    assert not db.exists()


def _flags(argv: list[str]) -> list[str]:
    # Everything from the first flag on; later flags override the defaults.
    first = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    return argv[first:]


def test_the_last_file_missing_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              db_path: Path) -> None:
    """All files are opened before anything is stored: a typo in the last name leaves no half
    ingest behind."""
    good = tmp_path / "good.jsonl"
    good.write_text(line(1) + "\n")
    code, out, err = ingest(capsys, db_path, good, tmp_path / "typo.jsonl")
    assert (2, "") == (code, out)
    assert f"meter ingest: {tmp_path}/typo.jsonl: cannot read: No such file or directory\n" == err
    assert not db_path.exists()


def test_usage_errors_exit_2_as_a_subprocess(tmp_path: Path) -> None:
    """`python -m meter ingest` without --db is a usage error: exit 2, one line."""
    done = subprocess.run([sys.executable, "-m", "meter", "ingest", str(SAMPLE), "--contracts",
                           str(CONTRACTS)], capture_output=True, text=True, cwd=tmp_path,
                          check=False)
    assert 2 == done.returncode
    assert "" == done.stdout
    assert done.stderr.endswith("error: the following arguments are required: --db\n")


def test_help_documents_as_of(capsys: pytest.CaptureFixture[str]) -> None:
    """--help explains --as-of (the sample month may lie ahead of today's clock)."""
    with pytest.raises(SystemExit) as info:
        main(["ingest", "--help"])
    out, _ = capsys.readouterr()
    assert 0 == info.value.code
    words = " ".join(out.split())
    assert "--as-of TS" in words
    assert "used for the 'future' check (RFC 3339 with offset; default now)" in words
    assert "--as-of 2026-12-02T00:00:00Z" in words


def test_a_progress_bar_only_on_a_terminal(tmp_path: Path, db_path: Path) -> None:
    """With stderr a terminal, tqdm shows bytes of the file read of its size (so an ETA); piped,
    stderr stays empty."""
    src = tmp_path / "a.jsonl"
    src.write_text("".join(line(n) + "\n" for n in range(50)))
    cmd = [sys.executable, "-m", "meter", "ingest", str(src), "--db", str(db_path),
           "--contracts", str(CONTRACTS), "--as-of", AS_OF]
    piped = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    assert "" == piped.stderr
    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, cwd=ROOT, check=True)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert expected_summary(1, 50, 0, 50, {}) == summary_of(done.stdout.decode())
    assert b"ingest: " in shown
    size = tqdm.format_sizeof(src.stat().st_size, "", 1024)
    assert b"ingest: 100%" in shown
    assert f"{size}/{size} [".encode() in shown
    assert b"B/s]" in shown
