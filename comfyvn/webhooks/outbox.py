"""The outbox writer: delivery rows inserted inside the event log's commit transaction.

Runs on the bus writer thread for every committed batch, so it does nothing slow: it matches
events against an in-memory tuple of enabled subscriptions (swapped atomically on change),
builds each envelope once with :func:`envelope_json`, and ``executemany``-s the rows. No network
I/O and no locks here; the worker is only poked to look for new work.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from comfyvn.core.event_log import LogRow
from comfyvn.core.hook_bus import envelope_json

from .models import Subscription
from .store import INSERT_DELIVERY_SQL

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, first_delay_s: float, notify: Callable[[int], None]) -> None:
        self._first_delay_s = first_delay_s
        self._notify = notify
        self._targets: tuple[tuple[str, frozenset[str] | None], ...] = ()

    def set_targets(self, subscriptions: Iterable[Subscription]) -> None:
        self._targets = tuple((s.id, s.event_filter) for s in subscriptions if s.enabled)

    @property
    def target_count(self) -> int:
        return len(self._targets)

    def __call__(self, conn: sqlite3.Connection, rows: Sequence[LogRow]) -> None:
        targets = self._targets
        if not targets:
            return
        delay = self._first_delay_s
        params: list[tuple[Any, ...]] = []
        for row in rows:
            body: str | None = None
            for sub_id, events in targets:
                if events is None or row.event in events:
                    if body is None:
                        body = envelope_json(row)
                    params.append(
                        (sub_id, row.seq, row.id, row.event, body, row.ts + delay, row.ts, row.ts)
                    )
        if params:
            conn.executemany(INSERT_DELIVERY_SQL, params)
            self._notify(rows[-1].seq)
