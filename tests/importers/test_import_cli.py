"""`meter import` end to end on the real excerpts (tests/data): the bill's peak and peak time per
pool equal a plain sweep over the imported events, a re-import is all duplicates, and bad input
is one stderr line with exit 2."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

from meter.cli import main
from meter.importers.command import timeout_note
from meter.importers.common import Quiet
from tests.contracts_toml import account, contracts, pool
from tests.importers.sweep import peaks

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
FLEXLM = DATA / "flexlm"
QUEUE_LOG = DATA / "asterisk" / "queue_log"
AS_OF = "2026-12-02T00:00:00Z"
RATED_AT = datetime.fromisoformat("2026-12-02T00:00:00+00:00")
TIMEOUT = "40d"  # longer than any checkout here (the import's note says so)
POOL_MAP = ('"64300ACD_F" = "acad_suite"\n"85730ACD_2012_0F" = "acad_2012"\n'
            '"MATLAB" = "matlab"\n"Statistics_Toolbox" = "stats"\n"Signal_Toolbox" = "signal"\n')
POOLS = ("acad_suite", "acad_2012", "matlab", "stats", "signal")


def _pool(name: str) -> str:
    return pool(name, tier="essentials", model="concurrent", quantity=5, price="10.00",
                overage_price="10.00")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Contracts of the two accounts (FlexLM: Madrid; call centre: UTC) and the pool map."""
    c = tmp_path / "contracts.toml"
    c.write_text(contracts(
        account("lic", timezone="Europe/Madrid", anchor="2016-01-01", session_timeout=TIMEOUT,
                pools=[_pool(p) for p in POOLS]),
        account("cc", anchor="2026-01-01", session_timeout="2d", pools=[_pool("agents")])))
    m = tmp_path / "map.toml"
    m.write_text(POOL_MAP)
    return {"contracts": c, "map": m, "db": tmp_path / "meter.db", "out": tmp_path / "ev.jsonl"}


def _main(argv: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _row(text: str, name: str) -> int:
    m = re.search(rf"^{re.escape(name)}\s+(\d+)$", text, re.MULTILINE)
    assert m is not None, (name, text)
    return int(m[1])


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _report(files: dict[str, Path], period: str, capsys: pytest.CaptureFixture[str]
            ) -> dict[str, Any]:
    code, out, _ = _main(["report", "--db", files["db"], "--contracts", files["contracts"],
                          "--period", period], capsys)
    assert 0 == code
    doc: dict[str, Any] = json.loads(out)
    return doc


# (fixture, period, the sweep's peak per pool and when it was first reached)
REAL = [
    ("adskflex_2016.log", "2016-03", {"acad_suite": (7, "2016-03-30T08:26:52+00:00"),
                                      "acad_2012": (7, "2016-03-30T08:26:52+00:00")}),
    # Most MATLAB checkouts of this excerpt are still out at its end: they vanish.
    ("mlm_start_2022.log", "2022-06", {"matlab": (2, "2022-06-09T08:30:34+00:00"),
                                       "stats": (0, None), "signal": (0, None)}),
    ("mlm_shutdown_2022.log", "2022-07", {"matlab": (4, "2022-07-06T15:12:35+00:00"),
                                          "signal": (2, "2022-07-06T13:27:03+00:00")}),
]


@pytest.mark.parametrize(("name", "period", "expected"), REAL)
def test_flexlm_real_excerpt_bills_the_peak_a_plain_sweep_finds(
        name: str, period: str, expected: dict[str, tuple[int, str | None]],
        files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Imported into a real SQLite store and rated by `meter report`: per pool, the peak and
    the instant it was first reached equal a sweep over the imported JSONL; the counts equal
    the OUT and IN lines of the file; importing again adds nothing."""
    log = FLEXLM / name
    common: list[object] = [log, "--account", "lic", "--timezone", "Europe/Madrid",
                            "--pool-map", files["map"]]
    code, out, _ = _main(["import", "flexlm", *common, "--out", files["out"]], capsys)
    assert 0 == code
    text = log.read_text(encoding="utf-8")
    mapped = set(re.findall(r'^"([^"]+)"', POOL_MAP, re.MULTILINE))
    outs = re.findall(r'\) OUT: "([^"]+)"', text)
    ins = re.findall(r'\) IN: "([^"]+)"', text)
    assert sum(f in mapped for f in outs) == _row(out, "checkouts")
    assert sum(f not in mapped for f in outs) == _row(out, "unmapped")
    assert sum(f in mapped for f in ins) == _row(out, "checkins")
    events = _events(files["out"])
    assert len(events) == _row(out, "events")

    code, out, _ = _main(["import", "flexlm", *common, "--db", files["db"],
                          "--contracts", files["contracts"], "--as-of", AS_OF], capsys)
    assert (0, len(events), 0, 0) == (code, _row(out, "accepted"), _row(out, "duplicates"),
                                      _row(out, "rejected"))
    assert "session_timeout 40d is longer: nothing here is closed early" in out

    # Rated long after the logs: a checkout still out at their end has been quiet for longer
    # than the timeout, so it ends at its checkout (it vanishes from the bill).
    oracle = peaks(events, timedelta(days=40), RATED_AT)
    billed = {p["pool"]: (p["peak"], p["peak_at"]) for p in
              _report(files, period, capsys)["accounts"][0]["pools"]}
    for pool_id in POOLS:
        peak, at = oracle.get(pool_id, (0, None))
        want = (peak, at.isoformat().replace("+00:00", "Z") if at else None)
        got = billed[pool_id]
        assert want == (got[0], got[1] if got[0] else None), pool_id
    assert expected == {p: (n, t.isoformat() if t else None) for p, (n, t) in oracle.items()}

    code, out, _ = _main(["import", "flexlm", *common, "--db", files["db"],
                          "--contracts", files["contracts"], "--as-of", AS_OF], capsys)
    assert (0, 0, len(events)) == (code, _row(out, "accepted"), _row(out, "duplicates"))


def test_asterisk_queue_log_bills_the_peak_a_plain_sweep_finds(
        files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The queue_log fixture ingested into pool `agents`: peak and peak time equal the sweep
    (heartbeats included, the 2d timeout of the contract); importing again adds nothing."""
    common: list[object] = [QUEUE_LOG, "--account", "cc", "--pool", "agents"]
    code, out, _ = _main(["import", "asterisk", *common, "--out", files["out"]], capsys)
    assert (0, 5, 5, 11, 7) == (code, _row(out, "logins"), _row(out, "logoffs"),
                                _row(out, "heartbeats"), _row(out, "other"))
    events = _events(files["out"])
    ingest_args: list[object] = ["import", "asterisk", *common, "--db", files["db"],
                   "--contracts", files["contracts"], "--as-of", AS_OF]
    code, out, _ = _main(ingest_args, capsys)
    assert (0, 21, 0) == (code, _row(out, "accepted"), _row(out, "duplicates"))
    oracle = peaks(events, timedelta(days=2), RATED_AT)
    # Agent/1004's call at 09:00 opens a session (a lost login) that its 16:30 login continues.
    assert {"agents": (4, datetime.fromisoformat("2026-11-02T09:00:09+00:00"))} == oracle
    doc = _report(files, "2026-11", capsys)
    cc = next(a for a in doc["accounts"] if a["account"] == "cc")
    assert [("agents", 4, "2026-11-02T09:00:09Z")] == \
        [(p["pool"], p["peak"], p["peak_at"]) for p in cc["pools"]]
    code, out, _ = _main(ingest_args, capsys)
    assert (0, 0, 21) == (code, _row(out, "accepted"), _row(out, "duplicates"))


def test_out_dash_writes_events_to_stdout_and_the_summary_to_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--out -`: stdout holds only JSONL events (for a pipe into `meter ingest -`); the counts
    and the session_timeout note go to stderr."""
    code, out, err = _main(["import", "asterisk", QUEUE_LOG, "--account", "cc", "--out", "-"],
                           capsys)
    lines = out.splitlines()
    assert (0, 21) == (code, len(lines))
    assert {"login", "logout", "heartbeat"} == {json.loads(line)["type"] for line in lines}
    assert 21 == _row(err, "events")
    assert "note: longest quiet stretch here: 8h (session Agent/1001" in err


@pytest.mark.parametrize(("kind", "content", "extra", "message"), [
    ("flexlm", " 8:00:00 (lmgrd) TIMESTAMP 6/9/2022\n 9:61:00 (MLM) OUT: \"F\" a@h\n",
     ["--timezone", "UTC", "--out", "-"], "{log}:2: field time: 9:61:00 is not a time of day"),
    ("flexlm", "", ["--timezone", "Mars/Olympus", "--out", "-"],
     "--timezone: unknown time zone 'Mars/Olympus' (an IANA name such as Europe/Madrid)"),
    ("flexlm", "", ["--timezone", "UTC"],
     "give --out FILE (- for stdout) or --db PATH with --contracts, not both or neither"),
    ("asterisk", "1793606405|x|NONE|Agent/1|AGENTLOGIN|SIP/1\nsoon|x|NONE|Agent/1|AGENTLOGOFF\n",
     ["--out", "-"], "{log}:2: field time: expected seconds since the epoch, got 'soon'"),
    ("asterisk", "1793606405|x|NONE|NONE|AGENTLOGIN|SIP/1\n", ["--out", "-"],
     "{log}:1: field agent: AGENTLOGIN names no agent"),
    ("asterisk", "1793606405|AGENTLOGIN\n", ["--db", "x.db"],
     "--db needs --contracts FILE (the events are validated against it)"),
])
def test_bad_input_is_one_stderr_line_and_exit_2(  # noqa: PLR0917 - pytest passes by name
        kind: str, content: str, extra: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A bad line names file, line and field; a bad flag names the flag; nothing is written."""
    log = tmp_path / "in.log"
    log.write_text(content)
    code, out, err = _main(["import", kind, log, "--account", "a", *extra], capsys)
    assert (2, "", [f"meter import: {message.format(log=log)}"]) == (code, out, err.splitlines())


def test_a_progress_bar_with_the_files_total_only_on_a_terminal(tmp_path: Path) -> None:
    """With stderr a terminal, tqdm shows bytes read of the log's size (so an ETA); piped,
    stderr holds only the summary."""
    log = FLEXLM / "adskflex_2016.log"
    cmd = [sys.executable, "-m", "meter", "import", "flexlm", str(log), "--account", "lic",
           "--timezone", "Europe/Madrid", "--out", str(tmp_path / "ev.jsonl")]
    piped = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    assert "" == piped.stderr
    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, cwd=ROOT, check=True)
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
    size = tqdm.format_sizeof(log.stat().st_size, "", 1024)
    assert b"import: 100%" in shown
    assert f"{size}/{size} [".encode() in shown


def test_the_note_says_whether_the_accounts_timeout_covers_the_logs() -> None:
    """The longest quiet stretch, a timeout that covers it, and the account's verdict."""
    since = datetime.fromisoformat("2016-03-30T10:19:13+00:00")
    quiet = Quiet(timedelta(days=6, seconds=17023), "acad", "u@h", since, 2)
    assert [
        "note: longest quiet stretch here: 6d4h43m43s (session u@h in pool acad from "
        "2016-03-30T10:19:13Z); give account acme a longer one, e.g. session_timeout = \"8d\".",
        "note: 2 sessions are still open at the end of the logs: once session_timeout has "
        "passed since their last event, the meter ends them there.",
        "note: account acme's session_timeout 12h is NOT longer than 6d4h43m43s: those "
        "sessions will be closed early.",
    ] == timeout_note("flexlm", "acme", quiet, timedelta(hours=12))[1:]
    assert "session_timeout 8d is longer: nothing here is closed early" in \
        timeout_note("flexlm", "acme", quiet, timedelta(days=8))[-1]


def test_a_bad_pool_map_or_an_unknown_account_is_one_line_and_exit_2(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pool map value that is not a pool name, and an account the contracts do not have,
    are refused before any log is read."""
    bad_map = tmp_path / "bad.toml"
    bad_map.write_text('"MATLAB" = 3\n')
    log = FLEXLM / "adskflex_2016.log"
    code, out, err = _main(["import", "flexlm", log, "--account", "lic", "--timezone", "UTC",
                            "--pool-map", bad_map, "--out", "-"], capsys)
    assert (2, "", [f"meter import: --pool-map {bad_map}: feature 'MATLAB': the pool must be a "
                    "non-empty string, got 3"]) == (code, out, err.splitlines())
    code, out, err = _main(["import", "flexlm", log, "--account", "nobody", "--timezone", "UTC",
                            "--db", files["db"], "--contracts", files["contracts"]], capsys)
    assert (2, "", [f"meter import: --account nobody: no such account in {files['contracts']}"]
            ) == (code, out, err.splitlines())
    assert not files["db"].exists()
