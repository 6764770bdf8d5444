"""What every bench shares: the machine it ran on, the results file, and the short table.

Each bench writes `bench/results/<name>.json` as {"bench", "machine", "params", "results", ...}
so figures can be compared across runs and machines.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
MOSQUITTO = "/usr/sbin/mosquitto"

#: Keys every results file has; the smoke test checks them.
RESULT_KEYS = ("bench", "machine", "params", "results", "started", "seconds")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The working tree's commit, with `+dirty` when bench-relevant files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "meter", "rating", "bench"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, Python and SQLite versions, load average at the start."""
    import sqlite3

    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_mb": mem_kb // 1024,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
        "git_commit": git_commit(),
    }


class Run:
    """One bench run: `run = Run("tracker", params)`, then `run.save(results)`."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.params = params
        self.started = datetime.now(UTC)
        self._t0 = time.perf_counter()
        self.machine = machine()

    def save(self, results: dict[str, Any], out: Path | None = None, **extra: Any) -> Path:
        """Write the results JSON and return its path."""
        doc = {
            "bench": self.name,
            "machine": self.machine,
            "params": self.params,
            "results": results,
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self._t0, 1),
            **extra,
        }
        path = out or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  "
              f"({self.machine['cores']} cores, {self.machine['cpu_model']}, "
              f"Python {self.machine['python']}, {self.machine['git_commit']}, "
              f"load {self.machine['loadavg'][0]:.2f})")
        return path


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                               for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "").replace("-", "").replace("%", "").isdigit()


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def peak_rss_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB (0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def results_arg(value: str | None, name: str) -> Path:
    """The --out path, or the default results file of bench `name`."""
    return Path(value) if value else RESULTS / f"{name}.json"
