"""The delivery worker: sends due outbox rows, records every attempt, schedules retries.

It runs its own asyncio loop on its own thread with one connection pool per endpoint, and
does its SQLite work (the attempt log, status updates, looking for due rows) on one more thread.
Why not the server's loop: the writes may wait on the bus writer's lock; off the server's loop
they can never stall an API request or a WebSocket stream, off the worker's own loop they never
leave a delivery slot idle, and a flood of deliveries cannot starve the server's I/O either.

A pipeline with three stages that never wait on each other:

- queues: due rows are fetched ahead of need, up to ``PREFETCH`` per endpoint, and fetched
  again when half are gone;
- slots: a delivery starts the moment a slot frees (``concurrency`` in all, ``per_endpoint`` per
  endpoint, taken round-robin), straight from the queue;
- rounds: one task fetches due rows on the database thread when a queue is half gone or new
  outbox rows were committed, and hands it the finished attempts at most every
  ``RECORD_EVERY_S``: attempt rows and delivery updates of a batch in one transaction.

At-least-once: a row stays ``pending`` in the database while it is queued, in flight or waiting
to be recorded, and only changes when its attempt is recorded; a killed process simply sends it
again on the next start. Its id stays *claimed* all that time, so no fetch hands it out twice.
The ``webhook-id`` header (the envelope id) lets receivers drop duplicates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from comfyvn.core.hook_bus import CommitTimeout, HookBus
from comfyvn.net import AddressPolicy

from .config import WebhookConfig
from .models import Attempt, Delivery, Subscription
from .retry import decide
from .sender import Sender, parse_retry_after
from .store import Outcome, WebhookStore

__all__ = ["DeliveryBusy", "DeliveryWorker", "parse_retry_after"]

log = logging.getLogger("comfyvn.webhooks")

T = TypeVar("T")
PRUNE_EVERY_S = 600.0
PREFETCH = 128  # due rows queued per endpoint ahead of its free slots; fetched when half are gone
RECORD_EVERY_S = 0.05  # finished attempts are recorded in batches at most this often
HOLD = ("gone", "exhausted")  # results that may disable the endpoint: no new sends till recorded


class DeliveryBusy(RuntimeError):
    """The delivery is being sent right now."""


class DeliveryWorker:
    def __init__(
        self,
        *,
        bus: HookBus,
        store: WebhookStore,
        config: WebhookConfig,
        policy: AddressPolicy,
        subscriptions: Callable[[], dict[str, Subscription]],
        on_change: Callable[[], None],
    ) -> None:
        self.bus = bus
        self.store = store
        self.cfg = config
        self.policy = policy
        self._subscriptions = subscriptions
        self._on_change = on_change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._notified_seq = 0
        self._queues: dict[str, deque[Delivery]] = {}  # due rows fetched ahead, per endpoint
        self._claimed: dict[str, set[int]] = defaultdict(set)  # per endpoint: queued or in flight
        self._inflight: set[int] = set()  # being sent, or sent and not recorded yet
        self._lanes: dict[str, int] = defaultdict(int)  # senders per endpoint
        self._slots = asyncio.Semaphore(config.concurrency)  # binds to the loop on first use
        self._results: list[Outcome] = []  # finished attempts for the next round to record
        self._held: set[str] = set()  # endpoints with a possibly disabling result unrecorded
        self._recorded_at = 0.0  # monotonic time of the last batch
        self._pruning = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.sender = Sender(config, policy)  # signing, policy, one pool per endpoint

    # -- lifecycle (any thread) --------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._thread_main, name="webhook-worker", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("webhook worker did not start")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; in-flight deliveries stay pending and are sent again on the next start."""
        self._stopping = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._set_wake)
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self, seq: int) -> None:
        """New outbox rows were written in the transaction committing ``seq`` (writer thread)."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._on_notify, seq)

    def wake(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._set_wake)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run an operator action (ping, redeliver) on the worker's loop."""
        if self._loop is None or self._stopping:
            coro.close()
            raise RuntimeError("the webhook worker is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": len(self._inflight),
            "attempts": self.sender.sent,
            "delivered": self.sender.delivered,
            "failed_attempts": self.sender.failed_attempts,
        }

    # -- loop thread -------------------------------------------------------------------------
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    def _on_notify(self, seq: int) -> None:
        self._notified_seq = max(self._notified_seq, seq)
        self._set_wake()

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _in_db(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` on the database thread. One thread: calls finish in the order made."""
        assert self._loop is not None
        return self._loop.run_in_executor(self._db, fn, *args)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webhook-db")
        self._ready.set()
        upkeep = asyncio.create_task(self._upkeep_forever())
        try:
            await self._rounds_forever()
        finally:
            if not self._pruning:
                upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)  # a prune under way finishes
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                self._record(self._results)  # what finished; cancelled ones stay pending
            self._db.shutdown()
            await self.sender.aclose()

    async def _rounds_forever(self) -> None:
        assert self._wake is not None
        delay = 0.0
        while not self._stopping:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if self._stopping:
                break
            if self._notified_seq > self.bus.committed_seq:
                with contextlib.suppress(CommitTimeout):
                    await self.bus.wait_committed(self._notified_seq, timeout=10.0)
            try:
                delay = await self._round()
            except Exception:
                log.exception("webhook dispatcher failed; retrying shortly")
                delay = 1.0

    async def _round(self) -> float:
        """Fetch what is due, and record what finished if the last batch is ``RECORD_EVERY_S``
        old; returns how long to sleep unless woken (new outbox rows, a queue half empty, the
        first result of a batch, an operator change)."""
        delay = await self._refill()
        self._start_lanes()
        if self._results:
            wait = self._recorded_at + RECORD_EVERY_S - time.monotonic()
            if wait > 0:
                return min(delay, wait)
            retry_at = await self._record_finished()
            self._start_lanes()  # an endpoint held for a 410 or exhausted result may go on
            if retry_at is not None:  # the rows were claimed when fetched: not in the delay
                delay = min(delay, max(0.0, retry_at - time.time()))
        return delay

    async def _refill(self) -> float:
        """Top up the queues that are half empty, straight away: the lanes are waiting."""
        subs = self._subscriptions()
        for sub_id in [k for k in self._queues if not getattr(subs.get(k), "enabled", False)]:
            # Deleted or disabled meanwhile: its rows stay pending (sent if it is re-enabled).
            self._claimed[sub_id].difference_update(d.id for d in self._queues.pop(sub_id))
        wanted = {
            sub.id: PREFETCH - queued
            for sub in subs.values()
            if sub.enabled and (queued := len(self._queues.get(sub.id, ()))) <= PREFETCH // 2
        }
        if not wanted:
            return self.cfg.poll_s
        # Claimed rows (queued, in flight, finished but not recorded) are not fetched again.
        claimed = {sub_id: list(self._claimed[sub_id]) for sub_id in wanted}
        now, fetched, upcoming = await self._in_db(self._fetch_due, wanted, claimed)
        for sub_id, rows in fetched.items():
            queue = self._queues.setdefault(sub_id, deque())
            for delivery in rows:
                if delivery.id not in self._claimed[sub_id]:  # e.g. by a redeliver meanwhile
                    self._claimed[sub_id].add(delivery.id)
                    queue.append(delivery)
        if upcoming is None:
            return self.cfg.poll_s
        return min(max(upcoming - now, 0.0), self.cfg.poll_s)

    async def _record_finished(self) -> float | None:
        """Record the finished attempts in one transaction; only then are their rows released.
        Returns when the soonest retry among them falls due."""
        self._recorded_at = time.monotonic()
        results, self._results = self._results, []
        try:
            disabled = await self._in_db(self._record, results)
        except Exception:
            self._results[:0] = results  # nothing recorded: still in flight, next round
            raise
        for outcome in results:
            self._claimed[outcome.attempt.webhook_id].discard(outcome.attempt.delivery_id)
            self._inflight.discard(outcome.attempt.delivery_id)
        self._held = {o.attempt.webhook_id for o in self._results if o.effect in HOLD}
        for sub_id in disabled:
            log.warning("webhook %s disabled: %s", sub_id, _reason(results, sub_id))
        retries = [o.next_attempt_at for o in results if o.next_attempt_at is not None]
        return min(retries, default=None)

    def _start_lanes(self) -> None:
        for sub_id, queue in self._queues.items():
            if sub_id in self._held:
                continue
            for _ in range(min(len(queue), self.cfg.per_endpoint) - self._lanes[sub_id]):
                self._lanes[sub_id] += 1
                task = asyncio.create_task(self._lane(sub_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _record(self, results: list[Outcome]) -> list[str]:
        """Database thread: one transaction for the batch, then the subscription snapshot is
        published again (failure counts, a disabled endpoint). Returns disabled endpoints."""
        if not results:
            return []
        disabled = self.store.record(results, self.cfg.disable_after)
        try:
            self._on_change()
        except Exception:  # recorded all the same: must not be recorded twice
            log.exception("webhook subscriptions could not be reloaded")
        return disabled

    def _fetch_due(
        self, wanted: dict[str, int], claimed: dict[str, list[int]]
    ) -> tuple[float, dict[str, list[Delivery]], float | None]:
        """Database thread: due rows per endpoint, and when the next one falls due for the
        endpoints whose due rows are now all claimed (the others are fetched again anyway)."""
        now = time.time()
        fetched = {
            sub_id: self.store.due(sub_id, now, n, claimed[sub_id]) for sub_id, n in wanted.items()
        }
        drained = [sub_id for sub_id, n in wanted.items() if len(fetched[sub_id]) < n]
        return now, fetched, self.store.next_due_after(drained, now) if drained else None

    async def _lane(self, sub_id: str) -> None:
        """One of an endpoint's ``per_endpoint`` senders: sends its queued deliveries one after
        another, each as soon as the last one is answered, and ends when the queue is empty."""
        try:
            while True:
                async with self._slots:  # ``concurrency`` sends at most, endpoints in turn
                    taken = self._take(sub_id)
                    if taken is None:
                        return
                    sub, delivery = taken
                    attempt = await self.send(sub, delivery.id, delivery.event_id, delivery.body)
                outcome = self._decide(delivery, attempt, manual=False)
                self._results.append(outcome)
                if outcome.effect in HOLD:
                    self._held.add(sub_id)
                if len(self._results) == 1:
                    self._set_wake()  # the first of a batch: time its recording
        finally:
            self._lanes[sub_id] -= 1
            self._set_wake()  # the queue may be empty: look for more

    def _take(self, sub_id: str) -> tuple[Subscription, Delivery] | None:
        """The endpoint's next queued delivery, with its current settings (URL, secret)."""
        queue = self._queues.get(sub_id)
        sub = self._subscriptions().get(sub_id)
        if not queue or sub is None or not sub.enabled or sub_id in self._held or self._stopping:
            return None
        delivery = queue.popleft()
        self._inflight.add(delivery.id)
        if len(queue) == PREFETCH // 2:
            self._set_wake()  # half gone: top it up
        return sub, delivery

    async def _upkeep_forever(self) -> None:
        """Retention and idle connection pools. Pruning runs on a thread of its own (it pauses
        between short transactions): neither sends nor rounds wait for it."""
        next_prune = 5.0
        while not self._stopping:
            await asyncio.sleep(next_prune)
            next_prune = PRUNE_EVERY_S
            self._pruning = True
            try:
                await asyncio.to_thread(self.store.prune, time.time() - self.cfg.log_max_age_s)
                await self.sender.close_stale(self._subscriptions())
            except Exception:
                log.exception("webhook log pruning failed")
            finally:
                self._pruning = False

    # -- one attempt -------------------------------------------------------------------------
    def _decide(self, delivery: Delivery, attempt: Attempt, *, manual: bool) -> Outcome:
        """Where the delivery goes after this attempt (the schedule lives in :mod:`.retry`)."""
        return decide(self.cfg, delivery.event, delivery.tries, attempt, manual=manual)

    async def send(self, sub: Subscription, delivery_id: int, msg_id: str, body: str) -> Attempt:
        """One signed POST; never raises (:class:`.sender.Sender`)."""
        return await self.sender.send(sub, delivery_id, msg_id, body)

    # -- operator actions (run on the worker loop via submit) --------------------------------
    async def ping(self, sub: Subscription) -> tuple[Delivery | None, Attempt]:
        now = time.time()
        msg_id = f"msg_ping_{secrets.token_hex(8)}"
        body = json.dumps(
            {
                "seq": None,
                "id": msg_id,
                "event": "ping",
                "ts": now,
                "data": {"webhook_id": sub.id, "message": "ping from ComfyVN Studio"},
            },
            separators=(",", ":"),
        )
        attempt = await self.send(sub, 0, msg_id, body)
        attempt.outcome = "delivered" if attempt.ok else "failed"
        delivery_id = await self._in_db(self.store.insert_ping, sub.id, msg_id, body, attempt)
        return await self._in_db(self.store.get_delivery, delivery_id), attempt

    async def redeliver(self, sub: Subscription, delivery_id: int) -> tuple[Delivery, Attempt]:
        if delivery_id in self._inflight:
            raise DeliveryBusy(f"delivery {delivery_id} is being sent right now; try again")
        if delivery_id in self._claimed[sub.id]:  # queued: this attempt takes its place
            queue = self._queues.get(sub.id, deque())
            for queued in [d for d in queue if d.id == delivery_id]:
                queue.remove(queued)
        self._claimed[sub.id].add(delivery_id)
        self._inflight.add(delivery_id)
        try:
            delivery = await self._in_db(self.store.get_delivery, delivery_id)
            if delivery is None:
                raise KeyError(delivery_id)
            attempt = await self.send(sub, delivery.id, delivery.event_id, delivery.body)
            outcome = self._decide(delivery, attempt, manual=True)
            if await self._in_db(self._record, [outcome]):
                log.warning("webhook %s disabled: the receiver answered 410 Gone", sub.id)
            updated = await self._in_db(self.store.get_delivery, delivery_id)
            if updated is not None:
                attempt.number = updated.attempts  # the attempt just recorded
            return updated or delivery, attempt
        finally:
            self._claimed[sub.id].discard(delivery_id)
            self._inflight.discard(delivery_id)
            self._set_wake()


def _reason(results: list[Outcome], sub_id: str) -> str:
    for outcome in results:
        if outcome.attempt.webhook_id == sub_id and outcome.effect == "gone":
            return "the receiver answered 410 Gone"
    return "consecutive deliveries failed after every retry"
