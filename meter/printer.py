"""PDF printers: WeasyPrint in worker processes, imported while the report rates.

Printing one account's page costs about as much as everything else `meter report` does for it:
WeasyPrint's import (~0.5 s, Pango's cffi declarations), then layout and writing (~1.2 s for a
seven-page invoice), all single-threaded. `Printers` starts its processes when it is made, so
a report that starts them before it rates has them imported by the time its first page is ready,
and many accounts' PDFs print side by side, one process per core. The processes import this
module and `meter.workers` (the standard library only), never the rating.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from meter.workers import cores, spawn_pool

__all__ = ["MISSING", "Printers", "load", "printers_for"]

#: What `--format pdf` says when WeasyPrint is not installed.
MISSING = ("--format pdf needs WeasyPrint, the optional extra 'pdf': "
           "pip install 'license-meter[pdf]' (or pip install -e '.[pdf]' in a checkout)")


def load() -> Any:
    """The `weasyprint` module (an ImportError where the extra is not installed)."""
    import weasyprint  # noqa: PLC0415 - lazy: an optional extra, and slow to import

    return weasyprint


_printer: list[Any] = []  # in a printer process: the weasyprint module


def _weasyprint() -> Any:
    """In a printer process: WeasyPrint, imported on the first call."""
    if not _printer:
        _printer.append(load())
        # A printer's work is done once its files are written and closed: at exit it skips the
        # interpreter's teardown of WeasyPrint's modules (~0.1 s) that the report waits for.
        atexit.register(os._exit, 0)
    return _printer[0]


def _warm() -> None:
    _weasyprint()


def _print(page: str, path: str) -> None:
    """A printer process: one HTML page laid out for print and written to `path` as a PDF."""
    _weasyprint().HTML(string=page).render().write_pdf(path)


def printers_for(accounts: int) -> int:
    """How many printer processes print `accounts` PDFs: one per core, up to 4."""
    return max(1, min(cores(), 4, accounts))


class Printers:
    """`workers` printer processes, started (and importing WeasyPrint) as soon as it is made."""

    def __init__(self, workers: int) -> None:
        self._pool = spawn_pool(workers)
        # Each call submitted while no process is idle starts one: every process warms up.
        self._warm = [self._pool.submit(_warm) for _ in range(workers)]

    def ready(self) -> None:
        """Wait for the imports: an ImportError where WeasyPrint is not installed."""
        for future in self._warm:
            future.result()

    def print_all(self, jobs: Iterable[tuple[str, Path]]) -> list[Path]:
        """Print each (HTML page, PDF path), side by side; returns the paths in the order given
        once all are written (the first failure raised)."""
        futures: list[tuple[Path, Future[None]]] = [
            (path, self._pool.submit(_print, page, str(path))) for page, path in jobs]
        for _, future in futures:
            future.result()
        return [path for path, _ in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Printers:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
