"""Errors of the rating core.

    RatingError
     +-- ContractError      a contracts file that does not say what DESIGN section 3 allows
     +-- PolicyViolation    a seat order that its account's policy refuses

`meter.errors.MeterError` is the shell's base; `meter.errors` re-exports `ContractError` so a
caller of the shell catches contract problems as it catches its own.
"""

from __future__ import annotations


class RatingError(Exception):
    """Base of every error raised by `rating`."""


class ContractError(RatingError, ValueError):
    """The contracts file is wrong; the message names the account, the table and the key."""


class PolicyViolation(RatingError):
    """A seat order breaks its account's seat-change policy; `reason` says which rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
