"""The delivery worker: sends due outbox rows, records every attempt, schedules retries.

It runs its own asyncio loop on its own thread with one ``httpx.AsyncClient``. Why a thread and
not the server's loop: the worker's SQLite writes (attempt log, status updates) are synchronous
and may wait on the bus writer's lock; on a private loop they can never stall an API request or
a WebSocket stream, and a flood of deliveries cannot starve the server's own I/O either.

At-least-once: a row stays ``pending`` in the database while it is in flight and only changes
after its attempt is recorded, so a killed process simply sends it again on the next start. The
``webhook-id`` header (the envelope id) lets receivers drop duplicates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from comfyvn import __version__
from comfyvn.core.hook_bus import CommitTimeout, HookBus
from comfyvn.net import AddressPolicy, RefusedAddress, guarded_transport

from .config import WebhookConfig
from .models import Attempt, Delivery, Subscription
from .signing import webhook_headers
from .store import Outcome, WebhookStore

__all__ = ["DeliveryBusy", "DeliveryWorker", "parse_retry_after"]

log = logging.getLogger("comfyvn.webhooks")

T = TypeVar("T")
PRUNE_EVERY_S = 600.0


class DeliveryBusy(RuntimeError):
    """The delivery is being sent right now."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also admits '²', which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


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
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._notified_seq = 0
        self._inflight: set[int] = set()
        self._per_sub: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[tuple[Outcome, str]] = []
        self._failing: set[str] = set()  # endpoints whose last attempt failed (log transitions)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.sent = 0
        self.delivered = 0
        self.failed_attempts = 0

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
            "attempts": self.sent,
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
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

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._dispatch_forever()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                self._flush()  # record what finished; cancelled ones stay pending
            for client in self._clients.values():
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _dispatch_forever(self) -> None:
        assert self._wake is not None
        next_prune = time.monotonic() + 5.0
        while not self._stopping:
            self._wake.clear()
            if self._notified_seq > self.bus.committed_seq:
                with contextlib.suppress(CommitTimeout):
                    await self.bus.wait_committed(self._notified_seq, timeout=10.0)
            try:
                self._flush()
                delay = self._dispatch_due()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    self.store.prune(time.time() - self.cfg.log_max_age_s)
                    await self._close_stale_clients()
            except Exception:
                log.exception("webhook dispatcher failed; retrying shortly")
                delay = 1.0
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _dispatch_due(self) -> float:
        """Start what is due within the concurrency bounds; returns how long to sleep."""
        now = time.time()
        subs = [s for s in self._subscriptions().values() if s.enabled]
        for sub in subs:
            busy = self._per_sub[sub.id]
            free = min(self.cfg.concurrency - len(self._inflight), self.cfg.per_endpoint - busy)
            if free <= 0:
                continue
            for delivery in self.store.due(sub.id, now, free + busy):
                if free <= 0:
                    break
                if delivery.id in self._inflight:
                    continue
                self._launch(sub, delivery)
                free -= 1
        upcoming = self.store.next_due_after([s.id for s in subs], now)
        if upcoming is None:
            return self.cfg.poll_s
        return min(max(upcoming - now, 0.0), self.cfg.poll_s)

    def _launch(self, sub: Subscription, delivery: Delivery) -> None:
        self._inflight.add(delivery.id)
        self._per_sub[sub.id] += 1
        task = asyncio.create_task(self._deliver(sub, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sub: Subscription, delivery: Delivery) -> None:
        attempt = await self.send(sub, delivery.id, delivery.event_id, delivery.body)
        self._results.append((self._decide(delivery, attempt, manual=False), sub.id))
        self._set_wake()

    def _flush(self) -> None:
        if not self._results:
            return
        results, self._results = self._results, []
        try:
            disabled = self.store.record([o for o, _ in results], self.cfg.disable_after)
        except Exception:
            self._results[:0] = results  # keep them in flight; try again on the next pass
            raise
        for outcome, sub_id in results:
            self._inflight.discard(outcome.attempt.delivery_id)
            self._per_sub[sub_id] -= 1
        for sub_id in disabled:
            log.warning("webhook %s disabled: %s", sub_id, _reason(results, sub_id))
        self._on_change()

    # -- one attempt -------------------------------------------------------------------------
    def _client_for(self, sub_id: str) -> httpx.AsyncClient:
        """One connection pool per endpoint: small pools stay cheap to manage (httpcore scans
        every connection per request) and one endpoint's sockets never queue another's."""
        client = self._clients.get(sub_id)
        if client is None:
            slots = self.cfg.per_endpoint + 2  # + room for a ping or redeliver
            limits = httpx.Limits(
                max_connections=slots, max_keepalive_connections=slots, keepalive_expiry=30.0
            )
            client = httpx.AsyncClient(
                transport=guarded_transport(self.policy, limits),
                timeout=httpx.Timeout(self.cfg.timeout_s),
                follow_redirects=False,
                headers={
                    "content-type": "application/json",
                    "user-agent": f"ComfyVN-Webhooks/{__version__}",
                },
            )
            self._clients[sub_id] = client
        return client

    async def _close_stale_clients(self) -> None:
        known = self._subscriptions()
        for sub_id in [k for k in self._clients if k not in known]:
            client = self._clients.pop(sub_id)
            with contextlib.suppress(Exception):
                await client.aclose()

    def _decide(self, delivery: Delivery, attempt: Attempt, *, manual: bool) -> Outcome:
        """Where the delivery goes after this attempt (the retry schedule lives here)."""
        now = time.time()
        schedule = self.cfg.retry_schedule
        tries = 1 if manual else delivery.tries + 1
        if delivery.event == "ping":  # diagnostic: never retried, never changes the endpoint
            attempt.outcome = "delivered" if attempt.ok else "failed"
            return Outcome(attempt, attempt.outcome, tries, None, "none")
        if attempt.ok:
            attempt.outcome = "delivered"
            return Outcome(attempt, "delivered", tries, None, "success")
        if attempt.status_code == 410:
            attempt.outcome = "disabled"
            return Outcome(attempt, "failed", tries, None, "gone")
        if tries < len(schedule):
            delay = schedule[tries]
            if attempt.retry_after is not None:
                delay = max(delay, min(attempt.retry_after, self.cfg.retry_after_max_s))
            attempt.outcome = "retry"
            return Outcome(attempt, "pending", tries, now + delay, "retry")
        attempt.outcome = "failed"
        # A manual redeliver that fails is not an "exhausted" delivery: the operator asked once.
        return Outcome(attempt, "failed", tries, None, "retry" if manual else "exhausted")

    async def send(self, sub: Subscription, delivery_id: int, msg_id: str, body: str) -> Attempt:
        """One signed POST; never raises. The error text never contains the secret."""
        client = self._client_for(sub.id)
        started = time.time()
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        response: str | None = None
        retry_after: float | None = None
        try:
            self.policy.check_url(sub.url)
            payload = body.encode()
            headers = webhook_headers(sub.signing_keys(started), msg_id, int(time.time()), payload)
            async with (
                asyncio.timeout(self.cfg.timeout_s),
                client.stream("POST", sub.url, content=payload, headers=headers) as resp,
            ):
                status = resp.status_code
                response = await _read_prefix(resp, self.cfg.response_bytes)
                retry_after = parse_retry_after(resp.headers.get("retry-after"), time.time())
                if resp.is_redirect:
                    error = f"HTTP {status}: redirects are not followed"
                elif not 200 <= status < 300:
                    error = f"HTTP {status}"
        except RefusedAddress as exc:
            error = f"refused: {exc}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"no response within {self.cfg.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug must not kill the worker
            log.exception("webhook %s: unexpected error sending delivery %s", sub.id, delivery_id)
            error = f"internal error: {type(exc).__name__}"
        latency_ms = round((time.perf_counter() - t0) * 1000.0, 2)
        self.sent += 1
        ok = status is not None and 200 <= status < 300
        if ok:
            self.delivered += 1
            if sub.id in self._failing:
                self._failing.discard(sub.id)
                log.info("webhook %s is delivering again", sub.id)
        else:
            self.failed_attempts += 1
            if sub.id not in self._failing:  # once per failing streak; the delivery log has all
                self._failing.add(sub.id)
                log.warning(
                    "webhook %s: delivery %s failed (%s); retrying per schedule, see "
                    "GET /api/modder/hooks/webhooks/%s/deliveries",
                    sub.id,
                    delivery_id,
                    error,
                    sub.id,
                )
            else:
                log.debug("webhook %s delivery %s failed: %s", sub.id, delivery_id, error)
        return Attempt(
            delivery_id=delivery_id,
            webhook_id=sub.id,
            started_at=started,
            latency_ms=latency_ms,
            status_code=status,
            error=error,
            response=response,
            retry_after=retry_after,
        )

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
        delivery_id = self.store.insert_ping(sub.id, msg_id, body, attempt)
        return self.store.get_delivery(delivery_id), attempt

    async def redeliver(self, sub: Subscription, delivery_id: int) -> tuple[Delivery, Attempt]:
        if delivery_id in self._inflight:
            raise DeliveryBusy(f"delivery {delivery_id} is being sent right now; try again")
        self._inflight.add(delivery_id)
        try:
            delivery = self.store.get_delivery(delivery_id)
            if delivery is None:
                raise KeyError(delivery_id)
            attempt = await self.send(sub, delivery.id, delivery.event_id, delivery.body)
            outcome = self._decide(delivery, attempt, manual=True)
            disabled = self.store.record([outcome], self.cfg.disable_after)
            if disabled:
                log.warning("webhook %s disabled: the receiver answered 410 Gone", sub.id)
            self._on_change()
            updated = self.store.get_delivery(delivery_id) or delivery
            return updated, attempt
        finally:
            self._inflight.discard(delivery_id)
            self._set_wake()


async def _read_prefix(resp: httpx.Response, limit: int) -> str:
    """The first ``limit`` bytes of the body; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit].decode("utf-8", "replace")


def _reason(results: list[tuple[Outcome, str]], sub_id: str) -> str:
    for outcome, sid in results:
        if sid == sub_id and outcome.effect == "gone":
            return "the receiver answered 410 Gone"
    return "consecutive deliveries failed after every retry"
