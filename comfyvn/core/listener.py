"""Listeners: in-process consumers of committed events, each isolated on its own thread.

A listener gets ``(event, payload_copy)`` after the commit. Its own worker thread and bounded
queue mean that one listener's exception or slowness never stops or delays another, nor the
writer: a full queue drops (counted, logged) rather than blocking the bus.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .event_log import LogRow

__all__ = ["Listener", "ListenerHandle"]

log = logging.getLogger("comfyvn.hooks")

Listener = Callable[[str, dict[str, Any]], Any]


@dataclass(eq=False)
class ListenerHandle:
    """A registered listener: its own worker thread and bounded queue isolate it from the rest."""

    fn: Listener
    events: frozenset[str] | None
    name: str
    max_queue: int = 10_000
    calls: int = 0
    errors: int = 0
    dropped: int = 0
    last_error: str | None = None
    busy_since: float | None = None
    stalled: bool = False
    # What the caller registered, when ``fn`` wraps it (plugins): unregister_listener(fn) finds it.
    source_fn: Callable[..., Any] | None = field(default=None, repr=False)
    _queue: queue.Queue[LogRow | None] = field(init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _discard: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(self.max_queue)

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events

    def offer(self, row: LogRow) -> None:
        if self._discard:
            return
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "listener %s is not keeping up: %d events dropped", self.name, self.dropped
                )

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"hook-listener:{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0, *, discard: bool = False) -> None:
        """Stop the worker. ``discard`` (unregister, plugin reload) drops what is still queued,
        so a listener that was mid-call never runs again on old events once it returns."""
        if discard:
            self._discard = True
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while (row := self._queue.get()) is not None:
            if self._discard:
                break
            self.busy_since = time.monotonic()
            try:
                self.fn(row.event, json.loads(row.data))  # a fresh copy for every listener
            except BaseException as exc:  # SystemExit from a plugin must not end its worker
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.errors == 1:
                    log.exception(
                        "listener %s failed on %s (seq %d)", self.name, row.event, row.seq
                    )
                else:
                    log.warning(
                        "listener %s failed again on %s (seq %d): %s [%d failures]",
                        self.name,
                        row.event,
                        row.seq,
                        self.last_error,
                        self.errors,
                    )
            finally:
                self.calls += 1
                self.busy_since = None
                self.stalled = False

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": sorted(self.events) if self.events is not None else ["*"],
            "calls": self.calls,
            "errors": self.errors,
            "dropped": self.dropped,
            "stalled": self.stalled,
            "last_error": self.last_error,
        }
