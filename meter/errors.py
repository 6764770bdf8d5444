"""Errors of the imperative shell; each class carries the exit code `meter` ends with.

    MeterError  (exit 1)
     +-- StoreError       the database cannot be opened, migrated or written        (exit 1)
     |    +-- NotMeterDatabase  an existing file that is empty, foreign or corrupt      (exit 2)
     +-- ConfigError      settings or command-line values that cannot work          (exit 2)
     +-- UsageError       bad usage or a bad input file                             (exit 2)
     +-- DatabaseInUse    another `meter serve` holds the database                  (exit 2)

`ContractError` (a bad contracts file, exit 2) is raised by the pure core, `rating.errors`; it is
re-exported here so shell code can catch `(MeterError, ContractError)` from one place.
"""

from __future__ import annotations

from typing import ClassVar

from rating.errors import ContractError

__all__ = ["ConfigError", "ContractError", "DatabaseInUse", "MeterError", "NotMeterDatabase",
           "StoreError", "UsageError"]


class MeterError(Exception):
    """Base of every error raised by `meter`."""

    #: What `meter` exits with when this error ends a command: 2 is bad input, 1 anything else.
    exit_code: ClassVar[int] = 1
    #: Whether retrying the same operation later can succeed (a locked or full database can).
    retriable: bool = False


class StoreError(MeterError):
    """The SQLite store failed; `retriable` says whether waiting can fix it (locked, disk full)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class NotMeterDatabase(StoreError):
    """`--db` names a file that exists but is not a meter database (empty, another program's
    SQLite file, or corrupt): exit 2, and it is never taken for a new, empty history."""

    exit_code = 2


class ConfigError(MeterError):
    """Settings that cannot work; the message names the flag, variable or key."""

    exit_code = 2


class UsageError(MeterError):
    """Bad usage or a bad input file: exit code 2, one line on stderr."""

    exit_code = 2


class DatabaseInUse(MeterError):
    """Another `meter serve` runs on this database: exit code 2, the message names its pid and host.
    Not retriable by waiting in a loop: the operator must stop one of the two."""

    exit_code = 2
