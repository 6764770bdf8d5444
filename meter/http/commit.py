"""Group commit for HTTP requests: requests that arrive while a commit is running are committed
together in the next one (up to `batch_max` events), as MQTT messages are batched, so N
requests in flight cost about one transaction (one fsync) instead of N. Each request is
answered with its own part of the result, and only once the transaction holding it committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meter.events import Event
from meter.store import RejectedMessage

__all__ = ["Committer", "GroupCommit"]


class Committer(Protocol):
    """What a group commit needs: `meter.serve.Ingestor.commit`."""

    async def commit(self, events: Sequence[Event], rejected: Sequence[RejectedMessage],
                     received_us: int) -> list[Event] | None: ...


@dataclass(slots=True)
class _Request:
    events: Sequence[Event]
    rejected: Sequence[RejectedMessage]
    received_us: int
    done: asyncio.Future[list[Event] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    """`commit` as `Committer.commit` does it, shared with the requests in flight beside it."""

    def __init__(self, committer: Committer, batch_max: int) -> None:
        self.committer = committer
        self.batch_max = batch_max
        self._queue: list[_Request] = []
        self._drainer: asyncio.Task[None] | None = None
        #: Transactions run, and requests they carried (the bench reads how well they group).
        self.commits = 0
        self.requests = 0

    async def commit(self, events: Sequence[Event], rejected: Sequence[RejectedMessage],
                     received_us: int) -> list[Event] | None:
        """Commit with whatever else is waiting; the events of this request that were new (None:
        the daemon stopped while the store was failing and nothing was stored)."""
        request = _Request(events, rejected, received_us)
        self._queue.append(request)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="http-group-commit")
        # Shielded: a client that hangs up does not take its events out of a commit under way.
        return await asyncio.shield(request.done)

    def _take(self) -> list[_Request]:
        """The next group: the oldest requests, up to `batch_max` events (at least one)."""
        size, n = 0, 0
        for n, request in enumerate(self._queue, 1):  # noqa: B007 - n is read after the loop
            size += len(request.events) + len(request.rejected)
            if size >= self.batch_max:
                break
        group, self._queue = self._queue[:n], self._queue[n:]
        return group

    async def _drain(self) -> None:
        while self._queue:
            group = self._take()
            events = [e for r in group for e in r.events]
            rejected = [m for r in group for m in r.rejected]
            try:
                fresh = await self.committer.commit(events, rejected, group[0].received_us)
            except Exception as exc:  # handed to each request's handler
                for r in group:
                    r.done.set_exception(exc)
                continue
            self.commits += 1
            self.requests += len(group)
            new = None if fresh is None else {id(e) for e in fresh}
            for r in group:
                r.done.set_result(None if new is None else [e for e in r.events if id(e) in new])
