"""Errors of the imperative shell.

    MeterError
     +-- InvalidEvent     an event that fails validation (carries the rejection reason)
     +-- StoreError       the database cannot be opened, migrated or written
     +-- ConfigError      settings or command-line values that cannot work
     +-- UsageError       bad usage or a bad input file

`ContractError` (a bad contracts file) is raised by the pure core, `rating.errors`; it is
re-exported here so shell code can catch `(MeterError, ContractError)` from one place.
"""

from __future__ import annotations

from rating.errors import ContractError

__all__ = ["ConfigError", "ContractError", "InvalidEvent", "MeterError", "StoreError", "UsageError"]


class MeterError(Exception):
    """Base of every error raised by `meter`."""

    #: Whether retrying the same operation later can succeed (a locked or full database can).
    retriable: bool = False


class InvalidEvent(MeterError):
    """An event failed validation; `reason` is one of `meter.events.REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StoreError(MeterError):
    """The SQLite store failed; `retriable` says whether waiting can fix it (locked, disk full)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class ConfigError(MeterError):
    """Settings that cannot work; the message names the flag, variable or key."""


class UsageError(MeterError):
    """Bad usage or a bad input file: exit code 2, one line on stderr."""
