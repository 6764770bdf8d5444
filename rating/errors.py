"""Errors of the rating core; each class carries the exit code a command ends with.

    RatingError  (exit 1)
     +-- ContractError      a contracts file that does not say what DESIGN section 3 allows (exit 2)
     +-- PolicyViolation    a seat order that its account's policy refuses            (exit 2)

`meter.errors.MeterError` is the shell's base; `meter.errors` re-exports `ContractError` so a
caller of the shell catches contract problems as it catches its own.
"""

from __future__ import annotations

from typing import ClassVar


class RatingError(Exception):
    """Base of every error raised by `rating`."""

    #: What `meter` exits with when this error ends a command: 2 is bad input, 1 anything else.
    exit_code: ClassVar[int] = 1


class ContractError(RatingError, ValueError):
    """The contracts file is wrong; the message names the account, the table and the key."""

    exit_code = 2


class PolicyViolation(RatingError):
    """A seat order breaks its account's seat-change policy; `reason` says which rule."""

    # The order is the caller's input, refused as `meter quote` refuses it (exit 2).
    exit_code = 2

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
