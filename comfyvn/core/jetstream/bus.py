"""The hook bus on NATS JetStream: several processes and machines share one history.

What changes against the embedded bus is only where an event becomes durable and where
``seq`` comes from. ``emit()`` still only appends to a deque; a publisher on the link's loop
sends the queued events to JetStream, pipelined, each with its id as ``Nats-Msg-Id`` (a retry
after a lost ack or a reconnect is stored once), and the stream's acknowledgement carries the
seq. Nothing is handed to subscribers from the publish side: every node, this one included,
learns of committed events from one ordered consumer on the stream, in stream order, and feeds
them to the same ring, subscriber cursors and listeners as the embedded writer does. So every
node sees every event once, with the same ``seq`` and ``id``.

While NATS is unreachable, emits wait in the deque (at most ``buffer_limit``; beyond it
``emit()`` raises :class:`BusUnavailableError`; while NATS takes publishes a burst only queues,
as on the embedded bus) and are published in order when it is back;
the consumer resumes after the last seq it handed on, so subscribers see no duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..envelope import Emitted, encode_payload
from ..event_log import LogRow, RetentionPolicy
from ..hook_bus import BusClosedError, CommitTimeout, HookBus, UnknownHookError
from ..subscription import Subscription
from .event_log import ForeignMessageError, JetStreamEventLog, decode_row, encode_body
from .link import NatsLink

__all__ = ["BusUnavailableError", "JetStreamBus"]

log = logging.getLogger("comfyvn.bus")

_PUBLISH_BATCH = 1000  # publishes in flight at once (the acks come back pipelined)
_ACKS_KEPT = 100_000  # ticket -> seq answers kept for callers that ask after the ack


class BusUnavailableError(CommitTimeout):
    """The shared bus is unreachable and the in-process buffer is full: the emit is refused."""


class JetStreamBus(HookBus):
    log: JetStreamEventLog  # type: ignore[assignment]

    def __init__(
        self,
        link: NatsLink,
        log_store: JetStreamEventLog,
        *,
        retention: RetentionPolicy | None = None,
        ring_size: int = 10_000,
        listener_budget_s: float = 5.0,
        commit_timeout_s: float = 10.0,
        buffer_limit: int = 10_000,
        ack_timeout_s: float = 5.0,
    ) -> None:
        self.link = link
        self.buffer_limit = buffer_limit
        self.ack_timeout_s = ack_timeout_s
        self._ticket = 0
        self._acked: dict[int, int] = {}
        self._ack_waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]]]
        self._ack_waiters = {}
        self._ack_lock = threading.Lock()
        self._retry: list[LogRow] = []  # published, not yet acknowledged: sent again, in order
        self._in_flight = 0
        self._stop_deadline = float("inf")
        self._publish_error: str | None = None
        self._publisher_idle = False
        self._wake_publisher: asyncio.Event | None = None
        self._incoming: list[LogRow] = []
        self._consumer: Any = None
        self._tasks: list[Any] = []
        super().__init__(
            log_store,  # type: ignore[arg-type]  # the same reads as SQLiteEventLog
            retention=retention,
            ring_size=ring_size,
            listener_budget_s=listener_budget_s,
            prune_interval_s=float("inf"),  # JetStream applies the retention limits itself
            commit_timeout_s=commit_timeout_s,
        )

    # -- start -------------------------------------------------------------------------------
    def _start_writer(self) -> None:
        link = self.link
        link.on_disconnect.append(self._fail_ack_waiters)
        link.on_reconnect.append(self._on_reconnect)
        self._wake_publisher = link.run(_new_event(), timeout=10.0)
        link.run(self._start_consumer(), timeout=10.0)
        self._tasks = [
            link.submit(self._publish_loop()),
            link.submit(self._maintenance_loop()),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    def _on_reconnect(self) -> None:
        # A new consumer from the last seq this node handed on. nats-py's ordered consumer
        # would recreate itself too, but from the last seq *it* saw: on a node that received
        # nothing since start that is 0, and the whole stream would come down again.
        self.link.loop.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        old, self._consumer = self._consumer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        try:
            await self._start_consumer()
        except Exception as exc:  # the maintenance loop tries again
            log.warning("could not resubscribe to the bus stream: %s", _text(exc))

    async def _start_consumer(self) -> None:
        from nats.js import api

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._committed_seq + 1,
        )
        self._consumer = await self.link.js.subscribe(
            f"{self.log.prefix}>",
            stream=self.log.stream,
            cb=self._on_message,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            config=config,
            pending_msgs_limit=100_000,
            pending_bytes_limit=256 * 1024 * 1024,
        )

    def subscribe(
        self, topics: Iterable[str] | None = None, since: int | None = None
    ) -> Subscription:
        """As on the embedded bus, except that a ``since`` ahead of what this node has handed
        on is kept when the stream holds it: a client resuming on a node a few ms behind the
        one it left must not get envelopes again."""
        sub = super().subscribe(topics, since)
        if since is not None and since > sub.cursor:
            with self._ack_lock:
                known = max(self._acked.values(), default=0)
            if since <= known:
                sub.cursor = since
            else:
                try:
                    top = self.log.latest_seq()
                except Exception:  # NATS down: the embedded rule (at most the head we know)
                    top = sub.cursor
                sub.cursor = max(sub.cursor, min(since, top))
        return sub

    # -- emit --------------------------------------------------------------------------------
    def emit(self, event: str, payload: Mapping[str, Any]) -> Emitted:
        """Queue an event for JetStream; returns before the publish (``seq`` is 0 until
        :meth:`acknowledge`)."""
        if event not in self._known:
            raise UnknownHookError(event)
        with self._seq_lock:
            if self._stopping:
                raise BusClosedError(f"the hook bus is closed; {event} was not emitted")
            # The bound is for outages: while the bus takes publishes, a burst only queues
            # (as on the embedded bus); while it does not, memory must not grow without end.
            if len(self._pending) >= self.buffer_limit and self.write_error is not None:
                raise BusUnavailableError(
                    f"{event} was not emitted: {self.buffer_limit} events are already waiting "
                    f"for the bus ({self.write_error})"
                )
            self._ticket += 1
            ticket = self._ticket
            event_id = f"evt_{self._boot}_{ticket}"
            self._pending.append((ticket, event_id, event, time.time(), payload))
        if self._publisher_idle:
            self.link.call_soon(self._ring_publisher)
        return Emitted(event, 0, event_id, ticket)

    def _ring_publisher(self) -> None:
        if self._wake_publisher is not None:
            self._wake_publisher.set()

    @property
    def latest_seq(self) -> int:
        return self._committed_seq

    @property
    def write_error(self) -> str | None:
        return self.link.reason or self._publish_error

    # -- acknowledgements --------------------------------------------------------------------
    async def acknowledge(self, emitted: Emitted, timeout: float | None = None) -> int:
        """The stream seq of ``emitted`` once JetStream stored it. While NATS is unreachable
        this fails at once (the event stays buffered and is published when NATS is back)."""
        timeout = self.commit_timeout_s if timeout is None else timeout
        loop = asyncio.get_running_loop()
        with self._ack_lock:
            seq = self._acked.get(emitted.ticket)
            if seq is not None:
                return seq
            if not self.link.connected:
                raise CommitTimeout(self._buffered_message(emitted))
            fut: asyncio.Future[int] = loop.create_future()
            waiter = (loop, fut)
            self._ack_waiters.setdefault(emitted.ticket, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:  # CommitTimeout too: NATS went away while this call waited
            raise CommitTimeout(self._buffered_message(emitted)) from None
        finally:
            with self._ack_lock:
                waiters = self._ack_waiters.get(emitted.ticket)
                if waiters and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._ack_waiters[emitted.ticket]

    def _buffered_message(self, emitted: Emitted) -> str:
        why = self.write_error or "NATS did not acknowledge it in time"
        return (
            f"{emitted.event} {emitted.id} is not yet stored on the bus: {why}; it is buffered "
            "in this server and published (once) when NATS acknowledges it"
        )

    def _fail_ack_waiters(self) -> None:
        """NATS went away: API calls waiting for an ack answer now (a 503 naming it) instead
        of at the commit timeout; their events stay queued and are published when it is back."""
        with self._ack_lock:
            waiting, self._ack_waiters = self._ack_waiters, {}
        for waiters in waiting.values():
            for loop, fut in waiters:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_fail, fut, CommitTimeout("disconnected"))

    def _record_acks(self, acks: list[tuple[int, int]]) -> None:
        ready: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int], int]] = []
        with self._ack_lock:
            acked = self._acked
            for ticket, seq in acks:
                acked[ticket] = seq
                for loop, fut in self._ack_waiters.pop(ticket, ()):
                    ready.append((loop, fut, seq))
            if len(acked) > _ACKS_KEPT:  # oldest first: dicts keep insertion order
                for ticket in list(acked)[: len(acked) - _ACKS_KEPT // 2]:
                    del acked[ticket]
        for loop, fut, seq in ready:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut, seq)

    # -- publisher (on the link's loop) ------------------------------------------------------
    async def _publish_loop(self) -> None:
        wake = self._wake_publisher
        assert wake is not None
        backoff = 0.05
        while True:
            if not self._retry and not self._pending:
                if self._stopping:
                    return
                self._publisher_idle = True
                if not self._pending:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await wake.wait()
                wake.clear()
                self._publisher_idle = False
                continue
            if self._stopping and time.monotonic() > self._stop_deadline:
                self._give_up()
                return
            if not self.link.connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.link.wait_connected()
                continue
            self._in_flight = 1  # before the drain: flush() must never see nothing anywhere
            batch = self._retry + self._fit(
                self._rows(self._drain(_PUBLISH_BATCH - len(self._retry)))
            )
            self._retry = await self._publish(batch)
            self._in_flight = 0
            if self._retry:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.05

    def _fit(self, rows: list[LogRow]) -> list[LogRow]:
        """An envelope over NATS' maximum message size would be refused for ever and block
        everything behind it: it becomes an error payload under its id (as a payload that is
        not JSON does), naming the size. The embedded log has no such limit."""
        limit = int(self.link.nc.max_payload) - 512  # headers and the id/ts prefix
        out = rows
        for i, row in enumerate(rows):
            if len(row.data) > limit:
                if out is rows:
                    out = list(rows)
                reason = (
                    f"payload of {len(row.data)} bytes is over the shared bus's maximum message "
                    f"size ({limit} bytes of payload; NATS max_payload)"
                )
                log.error("%s %s: %s", row.event, row.id, reason)
                out[i] = row._replace(data=encode_payload({"error": reason}))
        return out

    async def _publish(self, rows: list[LogRow]) -> list[LogRow]:
        """Publish ``rows`` pipelined; returns those to send again.

        Acknowledgements are taken in order only, up to the first row that was not: a later
        row may have been stored while an earlier one was lost with a dropped connection, and
        "the last event of a call is acknowledged" must keep meaning "all of them are". The
        rest is sent again; the stream recognises the ids and answers with the first seq."""
        js = self.link.js
        subject = self.log.subject
        futures: list[asyncio.Future[Any]] = []
        try:
            for row in rows:
                body = encode_body(row.id, row.ts, row.data)
                headers = {"Nats-Msg-Id": row.id}
                futures.append(await js.publish_async(subject(row.event), body, headers=headers))
        except Exception as exc:
            self._note_publish_error(exc)
        if futures:
            await asyncio.wait(futures, timeout=self.ack_timeout_s)
        acks: list[tuple[int, int]] = []
        first_failure: int | None = None
        for i, row in enumerate(rows):
            fut = futures[i] if i < len(futures) else None
            ok = fut is not None and fut.done() and not fut.cancelled() and not fut.exception()
            if ok and first_failure is None:
                acks.append((row.seq, fut.result().seq))  # type: ignore[union-attr]
                continue
            if first_failure is None:
                first_failure = i
            if fut is not None and not fut.done():
                fut.cancel()
            elif fut is not None and not fut.cancelled() and fut.exception():
                await self._publish_failed(row, fut.exception())
        if acks:
            self._record_acks(acks)
        if first_failure is None:
            if self._publish_error is not None:
                log.info("the bus acknowledges publishes again")
                self._publish_error = None
            return []
        if self._publish_error is None and self.link.connected:
            self._publish_error = "NATS did not acknowledge publishes in time"
        return rows[first_failure:]

    async def _publish_failed(self, row: LogRow, exc: BaseException | None) -> None:
        from nats.js.errors import NoStreamResponseError

        self._note_publish_error(exc)
        if isinstance(exc, NoStreamResponseError):
            # The stream is gone (deleted, or NATS came back with an empty store): make it
            # again; the maintenance loop notices the new stream and restarts this node's view.
            with contextlib.suppress(Exception):
                await self.log._ensure_stream()
                log.error("the bus stream %s was missing and is created again", self.log.stream)

    def _note_publish_error(self, exc: BaseException | None) -> None:
        text = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
        if self._publish_error is None:
            log.warning("publishing to the bus failed, will retry: %s", text)
        self._publish_error = f"publishing to the bus failed: {text}"

    def _give_up(self) -> bool:
        lost = len(self._retry) + len(self._pending)
        log.error(
            "shutting down with %d events not yet stored on the bus (%s)", lost, self.write_error
        )
        return True

    async def _maintenance_loop(self) -> None:
        next_stream_check = time.monotonic() + 5.0
        while not self._stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            self._check_listeners(now)
            if now >= next_stream_check and self.link.connected:
                next_stream_check = now + 5.0
                with contextlib.suppress(Exception):
                    await self._check_stream()

    async def _check_stream(self) -> None:
        """The stream was replaced (deleted and made again: its seqs start over): this node's
        view restarts from the new stream's start, loudly; subscribers get what it holds."""
        info = await self.link.jsm.stream_info(self.log.stream)
        if self._consumer is None:
            await self._resubscribe()
        if self.log.created is None or info.created == self.log.created:
            return
        log.error(
            "the bus stream %s was replaced (created %s, was %s): seqs start over; this "
            "server's history and streams follow the new stream",
            self.log.stream,
            info.created,
            self.log.created,
        )
        self.log.created = info.created
        self._committed_seq = int(info.state.first_seq or 1) - 1
        self._restart_ring(self._committed_seq + 1)
        with self._subs_lock:
            by_loop = {loop: list(subs) for loop, subs in self._subscriptions.items()}
        for loop, subs in by_loop.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_rewind, subs, self._committed_seq)
        await self._resubscribe()

    # -- fan-out (on the link's loop) --------------------------------------------------------
    async def _on_message(self, msg: Any) -> None:
        seq = msg.metadata.sequence.stream
        cut = len(self.log.prefix)
        try:
            self._incoming.append(decode_row(seq, msg.subject[cut:], msg.data))
        except ForeignMessageError as exc:
            log.warning("%s", exc)  # its seq is skipped: the ring restarts after it
            return
        if len(self._incoming) == 1:
            # Handed on once the subscription's queue is drained: a burst is one commit.
            self.link.loop.call_soon(self._hand_on)

    def _hand_on(self) -> None:
        rows, self._incoming = self._incoming, []
        run: list[LogRow] = []
        for row in rows:
            expected = (run[-1].seq if run else self._committed_seq) + 1
            if row.seq < expected:
                continue  # a redelivery after a consumer reset: already handed on
            if row.seq > expected:
                if run:
                    self._on_commit(run)
                    run = []
                self._restart_ring(row.seq)
            run.append(row)
        if run:
            self._on_commit(run)

    def _restart_ring(self, first: int) -> None:
        """The stream skipped seqs (retention pruned them, or they were deleted): the ring
        restarts there; cursors behind it read the stream and get an exact gap."""
        with self._ring_lock:
            self._ring.clear()
            self._ring_env.clear()
            self._ring_first = first

    # -- reporting ---------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything emitted so far is stored and handed on by this node."""
        deadline = time.monotonic() + timeout
        while self._pending or self._retry or self._in_flight:
            if time.monotonic() > deadline:
                raise CommitTimeout(f"events still waiting for the bus: {self.write_error}")
            time.sleep(0.01)
        with self._ack_lock:
            top = max(self._acked.values(), default=0)
        with self._commit_cond:
            if not self._commit_cond.wait_for(
                lambda: self._committed_seq >= top, max(0.0, deadline - time.monotonic())
            ):
                raise CommitTimeout(f"seq {top} was not received back from the bus in time")

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats.update(
            emitted=self._ticket,
            latest_seq=self._committed_seq,
            pending=len(self._pending) + len(self._retry),
            bus={
                "kind": "nats",
                "url": self.link.shown_url,
                "stream": self.log.stream,
                "connected": self.link.connected,
                "buffer_limit": self.buffer_limit,
            },
        )
        return stats

    # -- shutdown ----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued (for at most ``timeout``; what NATS has not taken by then
        is logged as lost), then leave the bus."""
        with self._seq_lock:
            if self._stopping:
                return
            self._stop_deadline = time.monotonic() + max(0.0, timeout - 1.0)
            self._stopping = True
        self.link.call_soon(self._ring_publisher)
        for task in self._tasks:
            with contextlib.suppress(Exception):
                task.result(timeout)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self.link.run(self._consumer.unsubscribe(), timeout=2.0)
        for handle in self.listeners():
            handle.stop(timeout=1.0)
        with self._listeners_lock:
            self._listeners.clear()
        self.link.close()


async def _new_event() -> asyncio.Event:
    return asyncio.Event()  # made on the link's loop, where it is awaited


def _rewind(subs: list[Subscription], seq: int) -> None:
    for sub in subs:
        sub.cursor = min(sub.cursor, seq)
        sub._wake.set()


def _log_crash(task: Any) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a shared-bus task stopped: %s", _text(task.exception()))


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fail(fut: asyncio.Future[int], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


def _resolve(fut: asyncio.Future[int], seq: int) -> None:
    if not fut.done():
        fut.set_result(seq)
