"""Progress bars on a terminal: what total a bar can show for a stream.

`meter ingest` and `meter publish` show bytes of a file read so far (with an ETA) where the size
is known, and a count of lines or events from a pipe.
"""

from __future__ import annotations

import os
import stat
from typing import IO

__all__ = ["byte_size"]


def byte_size(stream: IO[bytes]) -> int | None:
    """The byte size of a regular file; None for a pipe or a terminal (no total to show)."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
