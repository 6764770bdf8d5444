"""Progress bars with a total: `meter publish` of a file shows bytes read of its size (so an ETA)
on a terminal, and `meter ingest` from a pipe counts lines (test_ingest.py has ingest of a file).
Run as processes with stderr on a real pty."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tqdm import tqdm

from tests.conftest import Broker

ROOT = Path(__file__).resolve().parent.parent.parent
EVENTS = ROOT / "sample_sessions" / "events-2026-11.jsonl"
CONTRACTS = ROOT / "sample_sessions" / "contracts.toml"


def on_terminal(argv: list[str], cwd: Path, stdin: Path | None = None) -> tuple[int, str]:
    """Run `python -m meter ARGV` with stderr on a 120-column pty: (exit code, what it drew)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    with contextlib.ExitStack() as stack:
        given = stack.enter_context(stdin.open("rb")) if stdin else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", "meter", *argv], cwd=cwd, stdin=given,
                                stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the child has exited
            while chunk := os.read(leader, 4096):
                shown += chunk
        os.close(leader)
        return proc.wait(timeout=120), shown.decode(errors="replace")


def total(path: Path) -> str:
    """How tqdm writes the file's size as a total (unit_scale, divisor 1024)."""
    return tqdm.format_sizeof(path.stat().st_size, "", 1024)


def test_ingest_from_a_pipe_counts_lines_without_a_total(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    cat = subprocess.Popen(["cat", str(EVENTS)], stdout=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "meter", "ingest", "-", "--db",
                             str(tmp_path / "m.db"), "--contracts", str(CONTRACTS), "--as-of",
                             "2026-12-02T00:00:00Z"], cwd=tmp_path, stdin=cat.stdout,
                            stdout=subprocess.DEVNULL, stderr=follower)
    assert cat.stdout is not None
    cat.stdout.close()
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    assert 0 == proc.wait(timeout=120)
    assert 0 == cat.wait(timeout=10)
    text = shown.decode(errors="replace")
    assert " lines [" in text
    assert "%" not in text.split("ingest:")[1].split("\n")[0]


def test_publish_of_a_file_shows_bytes_of_its_size_to_100_percent(mosquitto: Broker,
                                                                   topic_prefix: str,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "few.jsonl"
    path.write_bytes(b"".join(EVENTS.read_bytes().splitlines(keepends=True)[:2000]))
    code, shown = on_terminal(["publish", str(path), "--broker", mosquitto.url,
                               "--topic-prefix", topic_prefix], tmp_path)
    assert 0 == code
    size = total(path)
    assert "published: 100%" in shown
    assert f"{size}/{size} [" in shown
