"""The hook bus: emit, durable group commit, and the hand-off to listeners and subscribers.

The hot path is :meth:`HookBus.emit`: it takes a sequence number under a lock and appends a
tuple to a deque, nothing else. A single writer thread drains the deque, serializes payloads
once, commits them to the event log in groups, and only then hands them on. Everything
downstream (listeners, WebSocket/SSE subscribers, webhooks) sees committed envelopes only, so
whatever a consumer saw is in the history and a reconnecting consumer can resume by ``seq``.

Listeners live in :mod:`.listener`, subscriber cursors in :mod:`.subscription`, the envelope
shapes in :mod:`.envelope`; this module re-exports them for existing imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from .envelope import (
    Emitted,
    Envelope,
    Gap,
    encode_payload,
    envelope_dict,
    envelope_json,
    envelope_of,
)
from .event_log import BatchSizer, LogRow, RetentionPolicy, SQLiteEventLog
from .hook_specs import HOOK_SPECS
from .listener import Listener, ListenerHandle
from .subscription import Subscription

__all__ = [
    "BusClosedError",
    "CommitTimeout",
    "Emitted",
    "Envelope",
    "Gap",
    "HookBus",
    "Listener",
    "ListenerHandle",
    "Subscription",
    "UnknownHookError",
    "envelope_dict",
    "envelope_json",
]

log = logging.getLogger("comfyvn.hooks")


class UnknownHookError(KeyError):
    def __str__(self) -> str:
        known = ", ".join(sorted(HOOK_SPECS))
        return f"unknown hook {self.args[0]!r}; known hooks: {known}"


class CommitTimeout(TimeoutError):
    """The event log did not commit in time (e.g. the data dir is not writable)."""


class BusClosedError(RuntimeError):
    """``emit()`` after ``close()``: refused loudly, since nothing would ever commit it."""


class HookBus:
    """One bus per data dir. Thread-safe ``emit``; async subscribers on any event loop."""

    # Retention pruning may use at most this share of the writer's time, in batches of about
    # BatchSizer.budget_s each: still ~100k rows/s on a small VM, far above any emit rate,
    # while the WAL it writes (a deleted row costs about its own size) stays a trickle.
    PRUNE_DUTY = 0.2
    PRUNE_DUTY_BUSY = 0.05

    def __init__(
        self,
        log_store: SQLiteEventLog,
        *,
        retention: RetentionPolicy | None = None,
        ring_size: int = 10_000,
        listener_budget_s: float = 5.0,
        prune_interval_s: float = 60.0,
        commit_timeout_s: float = 10.0,
    ) -> None:
        self.log = log_store
        self.retention = retention or RetentionPolicy()
        self.listener_budget_s = listener_budget_s
        self.commit_timeout_s = commit_timeout_s
        self._prune_interval_s = prune_interval_s
        self._pruning = False  # a prune tick is under way, one short batch per writer loop
        self._prune_sizer = BatchSizer()  # learns how many rows fit the per-batch budget
        self._prune_resume_at = 0.0  # duty cycle: rest between batches (PRUNE_DUTY)
        self.prune_stats = {"batches": 0, "removed": 0, "max_batch_ms": 0.0}
        self._boot = secrets.token_hex(8)
        self._known = HOOK_SPECS  # live view: hooks defined later are accepted too
        self._seq_lock = threading.Lock()
        self._seq = self._start_seq = self.log.latest_seq()
        self._pending: deque[tuple[int, str, str, float, Any]] = deque()
        # The writer's doorbell: a plain lock held while no wake-up is pending, released by
        # emit() to wake the writer (a C-level lock costs a fraction of threading.Event's
        # Python-level Condition on this per-event path).
        self._doorbell = threading.Lock()
        self._doorbell.acquire()
        self._writer_idle = False
        self._stopping = False
        self._committed_seq = self._seq
        self._commit_cond = threading.Condition()
        self._async_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # The ring: the last committed envelopes, contiguous by seq, so a cursor maps to an index
        # (ring[seq - ring_first]) and a read costs its own length, not the ring's.
        self._ring_size = ring_size
        self._ring: list[LogRow] = []
        self._ring_env: list[Envelope | None] = []  # the wire form, once built
        self._ring_first = self._seq + 1
        self._ring_lock = threading.Lock()
        self._subscriptions: dict[asyncio.AbstractEventLoop, set[Subscription]] = {}
        self._subs_lock = threading.Lock()
        self._listeners: list[ListenerHandle] = []
        self._listeners_lock = threading.Lock()
        self._write_error: str | None = None
        self._start_writer()

    def _start_writer(self) -> None:
        """The embedded log's single writer thread; a shared-bus subclass publishes instead."""
        self._writer = threading.Thread(target=self._run_writer, name="hook-writer", daemon=True)
        self._writer.start()

    # -- hot path ----------------------------------------------------------------------------
    def emit(self, event: str, payload: Mapping[str, Any]) -> Emitted:
        """Queue an event; returns before the commit. The payload must not be mutated after."""
        if event not in self._known:
            raise UnknownHookError(event)
        with self._seq_lock:
            if self._stopping:
                raise BusClosedError(f"the hook bus is closed; {event} was not emitted")
            self._seq += 1
            seq = self._seq
            event_id = f"evt_{self._boot}_{seq}"
            self._pending.append((seq, event_id, event, time.time(), payload))
        if self._writer_idle:
            self._ring_doorbell()
        return Emitted(event, seq, event_id)

    def _ring_doorbell(self) -> None:
        with contextlib.suppress(RuntimeError):  # already rung: the writer will wake anyway
            self._doorbell.release()

    # -- commit tracking ---------------------------------------------------------------------
    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    @property
    def latest_seq(self) -> int:
        return self._seq

    @property
    def write_error(self) -> str | None:
        return self._write_error

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything emitted so far is committed."""
        target = self._seq
        with self._commit_cond:
            if not self._commit_cond.wait_for(lambda: self._committed_seq >= target, timeout):
                raise CommitTimeout(self._timeout_message(target))

    async def wait_committed(self, seq: int, timeout: float | None = None) -> None:
        """Await the commit of ``seq``: API calls answer only after their events are durable."""
        timeout = self.commit_timeout_s if timeout is None else timeout
        if self._committed_seq >= seq:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._commit_cond:
            if self._committed_seq >= seq:
                return
            waiter = (seq, loop, fut)
            self._async_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise CommitTimeout(self._timeout_message(seq)) from None
        finally:  # timed out or cancelled: the writer must not keep (or call into) this loop
            with self._commit_cond, contextlib.suppress(ValueError):
                self._async_waiters.remove(waiter)

    async def acknowledge(self, emitted: Emitted, timeout: float | None = None) -> int:
        """Await the durability of one emit and return its ``seq``; every API call that emits
        answers only after this (DESIGN.md 3). Here the seq is known at emit time; on a shared
        bus it is the stream's sequence, known once the bus acknowledged the publish."""
        await self.wait_committed(emitted.seq, timeout)
        return emitted.seq

    def _timeout_message(self, seq: int) -> str:
        reason = f": {self._write_error}" if self._write_error else ""
        return f"event {seq} was not committed to the event log in time{reason}"

    # -- writer thread -----------------------------------------------------------------------
    def _drain(self, limit: int = 5000) -> list[tuple[int, str, str, float, Any]]:
        pending = self._pending
        take = pending.popleft
        return [take() for _ in range(min(limit, len(pending)))]

    def _run_writer(self) -> None:
        """Drain, serialize once, commit as a group, hand on; retry a failing log forever
        (except at shutdown), so an acknowledged-later event is never dropped by the writer."""
        self._next_maintenance = time.monotonic() + 0.5
        self._next_prune = time.monotonic() + 1.0
        while True:
            self._maintain(time.monotonic())
            batch = self._drain()
            if batch:
                rows = self._rows(batch)
                if not self._commit_with_retry(rows):
                    return
                self._on_commit(rows)
            if self._pruning and time.monotonic() >= self._prune_resume_at:
                # One short delete between two group commits: whatever was emitted meanwhile
                # is committed before the next batch, so retention never stalls an emit by
                # more than one batch (DESIGN.md 9).
                self._prune_step()
                continue
            if batch:
                continue
            if self._stopping and not self._pending:
                return  # emit() refuses once stopping is set, so nothing can follow
            self._writer_idle = True
            if not self._pending:
                wait = 0.05
                if self._pruning:
                    wait = min(wait, max(0.0, self._prune_resume_at - time.monotonic()))
                self._doorbell.acquire(timeout=wait)
            self._writer_idle = False

    def _rows(self, batch: list[tuple[int, str, str, float, Any]]) -> list[LogRow]:
        """Serialize each payload once, in one pass; a batch holding a payload that is not JSON
        is redone row by row so only that row becomes an error payload."""
        encode = encode_payload
        try:
            return [LogRow(s, i, e, ts, encode(p)) for s, i, e, ts, p in batch]
        except (TypeError, ValueError, RecursionError):
            return [self._row(*item) for item in batch]

    def _row(self, seq: int, event_id: str, event: str, ts: float, payload: Any) -> LogRow:
        """A payload that is not JSON (NaN, a circular reference, a tuple key) becomes an
        explicit error payload: the envelope keeps its seq, the wire stays valid JSON for every
        client, and the writer thread never dies over one bad emitter."""
        try:
            data = encode_payload(payload)
        except (TypeError, ValueError, RecursionError) as exc:
            reason = f"payload could not be serialized to JSON: {type(exc).__name__}: {exc}"
            log.error("%s (seq %d): %s", event, seq, reason)
            data = encode_payload({"error": reason})
        return LogRow(seq, event_id, event, ts, data)

    def _commit_with_retry(self, rows: list[LogRow]) -> bool:
        delay = 0.05
        while True:
            try:
                self.log.append(rows)
            except Exception as exc:  # disk full, file too large, read-only dir, locked db...
                if self._write_error is None:
                    log.error("event log commit failed, will retry: %s", exc)
                self._write_error = f"{type(exc).__name__}: {exc}"
                if self._stopping and delay >= 2.0:
                    lost = len(rows) + len(self._pending)
                    log.error("giving up on %d uncommitted events at shutdown: %s", lost, exc)
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self._write_error is not None:
                log.info("event log is writable again")
                self._write_error = None
            return True

    def _maintain(self, now: float) -> None:
        if now >= self._next_maintenance:
            self._next_maintenance = now + 0.5
            self._check_listeners(now)
        if now >= self._next_prune:
            self._next_prune = now + self._prune_interval_s
            self._pruning = not self._stopping

    def _prune_step(self) -> None:
        """One retention batch, sized to take a few ms; the tick ends with a batch that was not
        full (caught up) or with an error (retried at the next tick)."""
        if self._stopping:  # shutdown commits and exits; the next start resumes pruning
            self._pruning = False
            return
        limit = self._prune_sizer.size
        started = time.perf_counter()
        try:
            removed = self.log.prune_batch(self.retention, limit)
        except Exception as exc:
            self._pruning = False
            log.warning("event log prune failed: %s", exc)
            return
        elapsed = time.perf_counter() - started
        # Rest between batches so that pruning takes at most PRUNE_DUTY of the writer and of
        # the disk: SQLite's WAL checkpoints stay small and I/O stays smooth. Emits are
        # committed during the rest as usual.
        # While emits queue up (a burst), retention yields further: it can catch up when the
        # burst is over, and a log briefly above its bound costs nothing.
        duty = self.PRUNE_DUTY_BUSY if len(self._pending) > 1000 else self.PRUNE_DUTY
        rest = elapsed * (1.0 - duty) / duty
        self._prune_resume_at = time.monotonic() + rest
        self._prune_sizer.update(removed, elapsed)
        stats = self.prune_stats
        stats["batches"] += 1
        stats["removed"] += removed
        stats["max_batch_ms"] = max(stats["max_batch_ms"], elapsed * 1000)
        if removed < limit:
            self._pruning = False

    def _on_commit(self, rows: list[LogRow]) -> None:
        top = rows[-1].seq
        # The wire form is built once per envelope for every subscriber: here, off the event
        # loop, while anyone subscribes; else on the first read (nobody may ever read it).
        if self._subscriptions:
            envelopes: list[Envelope | None] = [
                Envelope(r.seq, r.event, envelope_json(r)) for r in rows
            ]
        else:
            envelopes = [None] * len(rows)
        with self._ring_lock:
            ring, ring_env = self._ring, self._ring_env
            ring.extend(rows)
            ring_env.extend(envelopes)
            excess = len(ring) - self._ring_size
            if excess >= self._ring_size // 4 or (excess > 0 and len(rows) >= self._ring_size):
                del ring[:excess]  # trimmed in chunks: amortized O(1) per envelope
                del ring_env[:excess]
                self._ring_first += excess
        with self._commit_cond:
            self._committed_seq = top
            self._commit_cond.notify_all()
            ready = [w for w in self._async_waiters if w[0] <= top]
            if ready:
                self._async_waiters = [w for w in self._async_waiters if w[0] > top]
        if ready:
            # One wake-up per event loop, not per waiter: each call_soon_threadsafe is a write
            # to the loop's self-pipe.
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, loop, fut in ready:
                by_loop.setdefault(loop, []).append(fut)
            for loop, futures in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the waiter's loop closed meanwhile
                    loop.call_soon_threadsafe(_resolve_all, futures)
        with self._subs_lock:
            loops = [loop for loop, subs in self._subscriptions.items() if subs]
        for loop in loops:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake_subscribers, loop)
        with self._listeners_lock:
            listeners = list(self._listeners)
        for handle in listeners:
            for row in rows:
                if handle.wants(row.event):
                    handle.offer(row)

    def _check_listeners(self, now: float) -> None:
        for handle in list(self._listeners):
            since = handle.busy_since
            if since is not None and not handle.stalled and now - since > self.listener_budget_s:
                handle.stalled = True
                log.warning(
                    "listener %s has been busy for over %.1f s; other listeners are unaffected",
                    handle.name,
                    self.listener_budget_s,
                )

    # -- listeners ---------------------------------------------------------------------------
    def register_listener(
        self, fn: Listener, events: Iterable[str] | None = None, *, name: str | None = None
    ) -> ListenerHandle:
        """Call ``fn(event, payload_copy)`` for each committed event on its own thread."""
        wanted = self._check_names(events)
        label = name or getattr(fn, "__qualname__", repr(fn))
        handle = ListenerHandle(fn, wanted, label)
        handle.start()
        with self._listeners_lock:
            self._listeners.append(handle)
        return handle

    def _check_names(self, names: Iterable[str] | None) -> frozenset[str] | None:
        wanted = None if names is None else frozenset(names)
        if wanted is not None:
            unknown = sorted(wanted - set(self._known))
            if unknown:
                raise UnknownHookError(unknown[0])
        return wanted

    def unregister_listener(self, handle: ListenerHandle) -> bool:
        with self._listeners_lock:
            if handle not in self._listeners:
                return False
            self._listeners.remove(handle)
        handle.stop(timeout=0.5, discard=True)
        return True

    def narrow_listener(self, handle: ListenerHandle, events: Iterable[str] | None) -> bool:
        """Stop ``events`` for ``handle`` (all of them: unregister it). True if anything changed."""
        if events is None:
            return self.unregister_listener(handle)
        drop = self._check_names(events) or frozenset()
        with self._listeners_lock:
            if handle not in self._listeners:
                return False
            current = handle.events if handle.events is not None else frozenset(self._known)
            remaining = current - drop
            if remaining == current:
                return False
            if remaining:
                handle.events = frozenset(remaining)
                return True
        return self.unregister_listener(handle)

    def unregister_matching(
        self, fn_or_handle: ListenerHandle | Listener, events: Iterable[str] | None = None
    ) -> bool:
        """Unregister by handle or by the function that was registered (every handle of it);
        with ``events``, only those events stop."""
        if isinstance(fn_or_handle, ListenerHandle):
            return self.narrow_listener(fn_or_handle, events)
        matches = [
            h for h in self.listeners() if h.fn is fn_or_handle or h.source_fn is fn_or_handle
        ]
        changed = [self.narrow_listener(h, events) for h in matches]
        return any(changed)

    def listeners(self) -> list[ListenerHandle]:
        with self._listeners_lock:
            return list(self._listeners)

    # -- subscribers -------------------------------------------------------------------------
    def subscribe(
        self, topics: Iterable[str] | None = None, since: int | None = None
    ) -> Subscription:
        """An async cursor over committed envelopes; call from the loop that will read it."""
        wanted = self._check_names(topics)
        loop = asyncio.get_running_loop()
        start = self._committed_seq if since is None else min(max(since, 0), self._committed_seq)
        sub = Subscription(self, wanted, start, loop)
        with self._subs_lock:
            self._subscriptions.setdefault(loop, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._subs_lock:
            subs = self._subscriptions.get(sub.loop)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscriptions[sub.loop]

    def _wake_subscribers(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._subs_lock:
            subs = list(self._subscriptions.get(loop, ()))
        for sub in subs:
            sub._wake.set()

    def subscriber_count(self) -> int:
        with self._subs_lock:
            return sum(len(s) for s in self._subscriptions.values())

    def _from_ring(self, cursor: int, limit: int) -> list[Envelope] | None:
        """Envelopes after ``cursor`` from memory, or None when the ring no longer reaches
        back that far (the subscription then reads the log)."""
        with self._ring_lock:
            start = cursor + 1 - self._ring_first
            if start < 0:
                return None
            envelopes = self._ring_env[start : start + limit]
            if None in envelopes:
                rows = self._ring[start : start + limit]
                envelopes = [e or envelope_of(r) for e, r in zip(envelopes, rows, strict=True)]
                self._ring_env[start : start + len(envelopes)] = envelopes
            return envelopes  # type: ignore[return-value]

    # -- history -----------------------------------------------------------------------------
    def history(
        self, *, limit: int = 25, since: int | None = None, events: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        if since is None:
            rows = self.log.read_latest(limit, events)
        else:
            rows = self.log.read_since(since, limit, events)
        return [envelope_dict(r) for r in rows]

    def stats(self) -> dict[str, Any]:
        return {
            "emitted": self._seq - self._start_seq,
            "latest_seq": self._seq,
            "committed_seq": self._committed_seq,
            "pending": len(self._pending),
            "subscribers": self.subscriber_count(),
            "listeners": [h.stats() for h in self.listeners()],
            "write_error": self._write_error,
        }

    # -- shutdown ----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Commit everything still pending, then stop listeners and close the log."""
        with self._seq_lock:  # after this, emit() refuses: the writer's last drain is complete
            if self._stopping:
                return
            self._stopping = True
        self._ring_doorbell()
        self._writer.join(timeout)
        for handle in self.listeners():
            handle.stop(timeout=1.0)
        with self._listeners_lock:
            self._listeners.clear()
        self.log.close()


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
