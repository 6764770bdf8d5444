"""Worker processes of `meter report`: the rating shards and the PDF printers.

Spawned, not forked (a forked asyncio program is not safe), and tied to the process that spawned
them: a worker ends when its parent dies, even by SIGKILL. This module imports only the standard
library, so a worker that does not rate (a printer) starts without loading the rating.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

__all__ = ["cores", "die_with", "spawn_pool"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else the count)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return count or 1


def die_with(parent: int) -> None:
    """Worker initializer: end this worker when `parent` (the `meter report` process) dies.

    A worker blocks reading its call queue, whose write end it holds itself, so a parent killed
    with SIGKILL (no atexit, no pool shutdown) left it waiting forever. On Linux the kernel sends
    SIGKILL on the parent's death (PR_SET_PDEATHSIG): immediate, and it fires in the middle of a
    rating as well. It is tied to the thread that spawned the worker (the event loop's, which
    lives as long as the process) and is not inherited across fork; where it is not available,
    and against that thread caveat, a daemon thread watches for the re-parenting once a second.
    The check after setting it covers a parent that died before the worker got here.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes that die with this one (started as work is submitted)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with, initargs=(os.getpid(),))
