"""Subscriptions: async cursors over committed envelopes, for the WebSocket and SSE streams.

A subscription is a cursor, not a queue: it reads from the bus's in-memory ring while it is
close to the head and from the log when it has fallen behind, so a slow client costs no memory
and loses nothing. Only when retention already pruned its cursor does it get a :class:`Gap`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .envelope import Envelope, Gap, envelope_of

if TYPE_CHECKING:
    from .hook_bus import HookBus

__all__ = ["Subscription"]


class Subscription:
    """A cursor that never drops: it reads from memory, or from the log when it fell behind."""

    def __init__(
        self,
        bus: HookBus,
        topics: frozenset[str] | None,
        cursor: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.cursor = cursor
        self.loop = loop
        self._wake = asyncio.Event()
        self.closed = False

    async def next_batch(self, limit: int = 500) -> list[Envelope | Gap]:
        """Wait for and return the next envelopes (or a gap notice) after the cursor."""
        bus = self.bus
        while True:
            self._wake.clear()
            items = self._from_memory(limit)  # the common case: no await, no task
            if items is None:
                items, cursor = await asyncio.to_thread(self._read_log, self.cursor, limit)
                # Moved only here, once the rows are handed over: a caller cancelled while the
                # log was being read (a timeout, a closing stream) loses nothing.
                self.cursor = cursor
            if items:
                return items
            if self.cursor >= bus.committed_seq:
                await self._wake.wait()

    def _from_memory(self, limit: int) -> list[Envelope | Gap] | None:
        """The next envelopes from the ring; ``[]`` when caught up, None when the ring no
        longer reaches back to the cursor (read the log instead)."""
        bus = self.bus
        topics = self.topics
        while self.cursor < bus.committed_seq:
            rows = bus._from_ring(self.cursor, limit)
            if rows is None:
                return None
            if not rows:
                return []
            self.cursor = rows[-1].seq
            if topics is None:
                return rows  # type: ignore[return-value]  # a fresh list from the ring
            matched: list[Envelope | Gap] = [r for r in rows if r.event in topics]
            if matched:
                return matched
        return []

    def _read_log(self, cursor: int, limit: int) -> tuple[list[Envelope | Gap], int]:
        """Rows after ``cursor`` from the log and the cursor after them (not applied here).

        The oldest seq is read after the rows, so retention pruning that races the read shows
        up as an explicit gap instead of a silent hole.
        """
        bus = self.bus
        snapshot = bus.committed_seq
        rows = bus.log.read_since(cursor, limit, self.topics)
        complete = len(rows) < limit  # everything committed up to the snapshot was read
        first = bus.log.first_seq()
        items: list[Envelope | Gap] = []
        missing_to = snapshot if first is None else first - 1
        if missing_to > cursor:
            items.append(Gap(cursor + 1, missing_to))
            rows = [r for r in rows if r.seq > missing_to]
            cursor = missing_to
        items.extend(envelope_of(row) for row in rows)  # formatted here, off the event loop
        if rows:
            cursor = max(cursor, rows[-1].seq)
        if complete:
            cursor = max(cursor, snapshot)
        return items, cursor

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
