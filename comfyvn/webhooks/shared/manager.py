"""The webhook forwarder of a node on a shared bus (``services.webhooks`` with ``--bus``).

The same methods, arguments, answers and errors as the embedded :class:`WebhookManager`, so
the routes, the CLI and the Studio need not know which one they talk to; what is behind them
lives in NATS (:mod:`.setup` lists it) and any node answers for all of it.

It runs on a NATS connection of its own (a second :class:`NatsLink`: its own socket, thread
and event loop). Sending webhooks is HTTP work with timeouts, retries and slow receivers; on
the bus's connection it would share a loop with the publisher that acknowledges emits and the
consumer that feeds WebSocket clients. Apart, neither can delay the other, and everything
webhook-related (watch, fan-out, lanes, sends) runs on one loop with no hand-offs between them.
Route calls hop onto that loop and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from comfyvn.core.jetstream import BusUnreachableError, JetStreamBus, NatsLink
from comfyvn.net import AddressPolicy, RefusedAddress

from ..config import WebhookConfig
from ..manager import WebhookError, new_subscription, normalize_events, patch_changes
from ..models import (
    ALL_EVENTS,
    Attempt,
    Delivery,
    RotateSecretRequest,
    Subscription,
    WebhookCreate,
    WebhookPatch,
)
from ..retry import decide
from ..sender import Sender
from ..signing import SecretError, generate_secret, parse_secret
from .catalog import Catalog, ConcurrentChange
from .deliveries import DeliveryLog, ping_body
from .delivery import Dispatcher
from .effects import Effects
from .fanout import FanOut
from .names import Names
from .records import AttemptRecord, OutboxItem, SubscriptionRecord, build_delivery
from .setup import ensure_consumer, ensure_layout, sender_consumer_config
from .upkeep import Upkeep

__all__ = ["SharedWebhookManager", "start_shared_webhooks"]

log = logging.getLogger("comfyvn.webhooks")
T = TypeVar("T")
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what can be a KV key and a subject token

CALL_TIMEOUT_S = 15.0
CREATE_LEASE = "create"  # a key of the leases bucket (delivery ids are numbers)
CREATE_LEASE_WAIT_S = 5.0


class SharedWebhookManager:
    def __init__(
        self,
        bus: JetStreamBus,
        config: WebhookConfig | None = None,
        policy: AddressPolicy | None = None,
    ) -> None:
        self.bus = bus
        self.config = config or WebhookConfig.from_env()
        self.policy = policy or AddressPolicy(
            allow_hosts={"COMFYVN_WEBHOOK_ALLOW_HOSTS": self.config.allow_hosts},
            deny_hosts={"COMFYVN_WEBHOOK_DENY_HOSTS": self.config.deny_hosts},
            allow_loopback=self.config.allow_loopback,
        )
        self.names = Names(bus.log.namespace, bus.log.stream, bus.log.prefix)
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.link = NatsLink(bus.link.url, name=f"{bus.link.name} webhooks")
        self._parts: _Parts | None = None
        self._lock: asyncio.Lock | None = None  # one operator change at a time on this node

    # -- lifecycle (a worker thread) ---------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        try:
            self._parts = self.link.run(self._start(), timeout=30.0)
        except BaseException:
            self.link.close()
            raise
        subs = self._p.catalog.subscriptions
        log.info(
            "webhooks on the shared bus %s: %d subscription(s), %d enabled",
            self.link.shown_url,
            len(subs),
            sum(s.enabled for s in subs.values()),
        )

    async def _start(self) -> _Parts:
        js, jsm = self.link.js, self.link.jsm
        kv, leases = await ensure_layout(js, jsm, self.names, self.config)
        catalog = Catalog(js, jsm, kv, self.names)
        deliveries = DeliveryLog(js, jsm, self.names, self.config.retry_schedule[0])
        effects = Effects(catalog, self.config.disable_after)
        sender = Sender(self.config, self.policy)
        dispatcher = Dispatcher(
            js=js,
            jsm=jsm,
            names=self.names,
            config=self.config,
            catalog=catalog,
            deliveries=deliveries,
            effects=effects,
            sender=sender,
            node=self.node,
        )
        fanout = FanOut(js, self.names, catalog)
        upkeep = Upkeep(
            js=js,
            jsm=jsm,
            names=self.names,
            config=self.config,
            catalog=catalog,
            fanout=fanout,
            dispatcher=dispatcher,
            purge=deliveries.purge,
        )
        parts = _Parts(catalog, deliveries, effects, sender, dispatcher, fanout, leases, upkeep)
        self._lock = asyncio.Lock()
        catalog.on_change.append(dispatcher.sync)
        await catalog.start()
        effects.start()
        parts.fanout.start()
        with contextlib.suppress(Exception):  # strays of an unfinished delete; else next round
            await upkeep.check()
        upkeep.start()
        dispatcher.sync()
        return parts

    def stop(self) -> None:
        parts, self._parts = self._parts, None
        if parts is not None:
            with contextlib.suppress(Exception):
                self.link.run(parts.stop(), timeout=10.0)
        self.link.close()

    @property
    def _p(self) -> _Parts:
        if self._parts is None:
            raise WebhookError(503, "the webhook forwarder is not running; try again once it is")
        return self._parts

    # -- calling onto the link's loop, NATS trouble as a 503 ---------------------------------
    @contextlib.contextmanager
    def _bus_errors(self) -> Iterator[None]:
        import nats.errors

        try:
            yield
        except WebhookError:
            raise
        except ConcurrentChange as exc:
            raise WebhookError(409, str(exc)) from None
        except (BusUnreachableError, TimeoutError, ConnectionError, nats.errors.Error) as exc:
            why = self.link.reason or str(exc) or type(exc).__name__
            raise WebhookError(503, f"the shared bus did not answer ({why}); try again") from None

    async def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        with self._bus_errors():
            future = asyncio.wrap_future(self.link.submit(coro))
            return await asyncio.wait_for(future, timeout)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._bus_errors():
            return self.link.run(coro, timeout=CALL_TIMEOUT_S)

    # -- reading -----------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Until this node has seen every subscription change made (on any node) before."""
        await self._call(self._p.catalog.refresh())

    def describe_masked(self) -> list[dict[str, Any]]:
        if self._parts is None:
            return []
        now = time.time()
        return [s.masked(now) for s in self._parts.catalog.subscriptions.values()]

    def stats(self) -> dict[str, Any]:
        p = self._p
        return {
            "subscriptions": len(p.catalog.subscriptions),
            **p.dispatcher.stats(),
            "attempts": p.sender.sent,
            "delivered": p.sender.delivered,
            "failed_attempts": p.sender.failed_attempts,
        }

    def _check_id(self, sub_id: str) -> None:
        """An id that cannot be a KV key or a subject token ("*", ">", "a b") names no
        webhook: a 404 as for any unknown id, not the bus's InvalidKeyError as a 503."""
        if not _ID.fullmatch(sub_id):
            raise WebhookError(404, f"no webhook with id {sub_id!r}")

    def get(self, sub_id: str) -> Subscription:
        sub = self._p.catalog.get(sub_id)
        if sub is None:
            raise WebhookError(404, f"no webhook with id {sub_id!r}")
        return sub

    def counts(self, sub_id: str) -> dict[str, int]:
        self.get(sub_id)
        return self._run(self._p.deliveries.counts(sub_id))

    def deliveries(
        self, sub_id: str, status: str | None, limit: int, before: int | None
    ) -> list[Delivery]:
        self.get(sub_id)
        return self._run(self._p.deliveries.list(sub_id, status, limit, before))

    def delivery(self, sub_id: str, delivery_id: int) -> tuple[Delivery, list[Attempt]]:
        self.get(sub_id)
        return self._run(self._delivery(sub_id, delivery_id))

    async def _delivery(self, sub_id: str, delivery_id: int) -> tuple[Delivery, list[Attempt]]:
        item, records = await self._item_and_attempts(sub_id, delivery_id)
        delivery = build_delivery(item, records, self.config.retry_schedule[0])
        return delivery, [r.to_attempt(sub_id) for r in records]

    async def _item_and_attempts(
        self, sub_id: str, delivery_id: int
    ) -> tuple[OutboxItem, list[AttemptRecord]]:
        log_ = self._p.deliveries
        item = await log_.item(delivery_id)
        if item is None or item.sub_id != sub_id:
            raise WebhookError(404, f"webhook {sub_id!r} has no delivery {delivery_id}")
        return item, await log_.attempts(sub_id, delivery_id, item.created_at)

    # -- changes -----------------------------------------------------------------------------
    async def _check_url(self, url: str) -> None:
        try:
            await self.policy.check_url_resolved(url)
        except RefusedAddress as exc:
            raise WebhookError(400, f"url refused: {exc}") from None

    async def create(self, body: WebhookCreate) -> Subscription:
        events = normalize_events(body.events)
        await self._check_url(body.url)
        sub = new_subscription(body, events)
        return await self._call(self._insert(sub))

    async def _insert(self, sub: Subscription) -> Subscription:
        p = self._p
        assert self._lock is not None
        async with self._lock, self._create_lease():
            await p.catalog.refresh()
            existing = p.catalog.subscriptions
            if len(existing) >= self.config.max_subscriptions:
                raise WebhookError(
                    409,
                    f"already {len(existing)} webhooks; the limit is "
                    f"{self.config.max_subscriptions} (COMFYVN_WEBHOOK_MAX_SUBSCRIPTIONS)",
                )
            for other in existing.values():
                if other.url == sub.url and set(other.events) == set(sub.events):
                    raise WebhookError(
                        409,
                        f"webhook {other.id} already sends these events to this URL; "
                        "PATCH it or DELETE it first",
                    )
            hooks = await self.link.jsm.stream_info(self.names.hooks_stream)
            record = SubscriptionRecord(
                sub, int(hooks.state.last_seq or 0), hooks_created=str(hooks.created or "")
            )
            await p.catalog.create(record)
            # Its queue is made here, once; lanes only bind to it (a lane that outlived a
            # delete must not make it again), and upkeep remakes it if it disappears.
            config = sender_consumer_config(self.names, sub.id, self.config)
            try:
                await ensure_consumer(self.link.jsm, self.names.outbox_stream, config)
            except Exception as exc:  # stored: upkeep makes its queue on its next round
                log.info("webhook %s: its queue is made later: %s", sub.id, exc)
            await p.catalog.refresh()
        return sub

    @contextlib.asynccontextmanager
    async def _create_lease(self) -> AsyncIterator[None]:
        """One create at a time in the whole cluster: the duplicate check and the limit are
        read, then written, and two nodes doing that at once would both pass (the embedded
        store does it in one transaction). A KV key with the leases bucket's TTL, so a node
        that dies holding it blocks creates for that TTL at most."""
        from nats.js.errors import KeyWrongLastSequenceError

        leases = self._p.leases
        deadline = time.monotonic() + CREATE_LEASE_WAIT_S
        while True:
            try:
                await leases.create(CREATE_LEASE, self.node.encode())
                break
            except KeyWrongLastSequenceError:
                if time.monotonic() > deadline:
                    raise WebhookError(
                        409, "another node is creating a webhook right now; try again"
                    ) from None
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await leases.delete(CREATE_LEASE)

    async def _mutate(self, sub_id: str, **changes: Any) -> Subscription:
        """Apply ``changes`` (as PATCH does) with compare-and-set; 404 if it is gone."""
        self._check_id(sub_id)

        def change(current: Subscription) -> Subscription | None:
            todo = dict(changes)
            if "enabled" in todo and todo["enabled"] == current.enabled:
                # Re-sending the same state must not wipe the recorded disable reason.
                for key in ("enabled", "disabled_reason", "consecutive_failures"):
                    todo.pop(key, None)
            if not todo:
                return None
            return dataclasses.replace(current, **todo, updated_at=time.time())

        async def run() -> Subscription | None:
            p = self._p
            sub = await p.catalog.mutate(sub_id, change)
            await p.catalog.refresh()
            return sub

        sub = await self._call(run())
        if sub is None:
            raise WebhookError(404, f"no webhook with id {sub_id!r}")
        return sub

    async def update(self, sub_id: str, patch: WebhookPatch) -> Subscription:
        self._check_id(sub_id)
        if patch.url is not None:
            await self._check_url(patch.url)
        changes = patch_changes(patch)
        return await self._mutate(sub_id, **changes)

    async def rotate(self, sub_id: str, body: RotateSecretRequest) -> Subscription:
        self._check_id(sub_id)
        secret = body.secret if body.secret is not None else generate_secret()
        try:
            parse_secret(secret)
        except SecretError as exc:
            raise WebhookError(400, str(exc)) from None
        grace = self.config.rotation_grace_s if body.grace_seconds is None else body.grace_seconds

        def change(current: Subscription) -> Subscription:
            if secret == current.secret:
                raise WebhookError(400, "the new secret is the same as the current one")
            keep_old = grace > 0
            return dataclasses.replace(
                current,
                secret=secret,
                old_secret=current.secret if keep_old else None,
                old_secret_expires_at=time.time() + grace if keep_old else None,
                updated_at=time.time(),
            )

        async def run() -> Subscription | None:
            p = self._p
            sub = await p.catalog.mutate(sub_id, change)
            await p.catalog.refresh()
            return sub

        sub = await self._call(run())
        if sub is None:
            raise WebhookError(404, f"no webhook with id {sub_id!r}")
        return sub

    async def delete(self, sub_id: str) -> None:
        self._check_id(sub_id)
        await self._call(self._delete(sub_id, must_exist=True))

    async def _delete(self, sub_id: str, *, must_exist: bool) -> None:
        """Out of the bucket first (no new deliveries, lanes stop), then its queue and log.

        Repeatable: a delete cut short (a timeout after the key went) is finished by the next
        one, which finds the key gone but the queue still there (upkeep finishes it too)."""
        from nats.js.errors import KeyNotFoundError, NotFoundError

        p = self._p
        try:
            await p.catalog.kv.get(sub_id)
            stored = True
        except KeyNotFoundError:
            stored = False
        if stored:
            await p.catalog.delete(sub_id)
        queued = True
        try:
            await self.link.jsm.delete_consumer(
                self.names.outbox_stream, self.names.sender_consumer(sub_id)
            )
        except NotFoundError:
            queued = False
        if not stored and not queued:
            if must_exist:
                raise WebhookError(404, f"no webhook with id {sub_id!r}")
            return
        await p.deliveries.purge(sub_id)
        await p.catalog.refresh()

    async def delete_by_url(self, event: str, url: str) -> dict[str, list[str]]:
        event = event.strip()
        if event != ALL_EVENTS:
            normalize_events([event])
        return await self._call(self._delete_by_url(event, url))

    async def _delete_by_url(self, event: str, url: str) -> dict[str, list[str]]:
        p = self._p
        assert self._lock is not None
        async with self._lock:
            await p.catalog.refresh()
            matching = [s for s in p.catalog.subscriptions.values() if s.url == url]
            if not matching:
                raise WebhookError(404, "no webhook is registered for this URL")
            if event == ALL_EVENTS:
                targets = matching
            else:
                targets = [s for s in matching if event in s.events]
                if not targets:
                    if any(ALL_EVENTS in s.events for s in matching):
                        ids = ", ".join(s.id for s in matching if ALL_EVENTS in s.events)
                        raise WebhookError(
                            409,
                            f"webhook {ids} forwards every hook ('*'); PATCH its 'events' "
                            "or DELETE with event '*'",
                        )
                    raise WebhookError(404, f"no webhook sends {event!r} to this URL")
            deleted: list[str] = []
            updated: list[str] = []
            for sub in targets:
                if event != ALL_EVENTS:
                    # What remains is worked out from the stored value inside the
                    # compare-and-set, not from the snapshot (a PATCH may have come between).
                    left: list[bool] = [False]
                    await p.catalog.mutate(sub.id, _without_event(event, left))
                    if left[0]:
                        updated.append(sub.id)
                        continue
                await self._delete(sub.id, must_exist=False)
                deleted.append(sub.id)
            await p.catalog.refresh()
        return {"deleted": deleted, "updated": updated}

    # -- sending now -------------------------------------------------------------------------
    async def ping(self, sub_id: str) -> tuple[Delivery | None, Attempt]:
        self.get(sub_id)
        return await self._call(self._ping(sub_id), timeout=self.config.timeout_s + CALL_TIMEOUT_S)

    async def _ping(self, sub_id: str) -> tuple[Delivery | None, Attempt]:
        p = self._p
        sub = self.get(sub_id)
        now = time.time()
        msg_id = f"msg_ping_{secrets.token_hex(8)}"
        body = ping_body(sub_id, msg_id, now)
        delivery_id = await p.deliveries.publish_ping(sub_id, msg_id, body)
        attempt = await p.sender.send(sub, delivery_id, msg_id, body)
        attempt.number = 1
        outcome = decide(self.config, "ping", 0, attempt, manual=True)
        record = AttemptRecord.of(outcome, via=0, node=self.node)
        await p.deliveries.record(sub_id, record)
        item = OutboxItem(delivery_id, sub_id, "ping", "ping", msg_id, None, now, body)
        return build_delivery(item, [record], self.config.retry_schedule[0]), attempt

    async def redeliver(self, sub_id: str, delivery_id: int) -> tuple[Delivery, Attempt]:
        self.get(sub_id)
        return await self._call(
            self._redeliver(sub_id, delivery_id), timeout=self.config.timeout_s + CALL_TIMEOUT_S
        )

    async def _redeliver(self, sub_id: str, delivery_id: int) -> tuple[Delivery, Attempt]:
        """One attempt now, by this node, of a delivered or failed delivery. A pending one
        belongs to its queue (it may be in flight on another node): a 409 that says so."""
        from nats.js.errors import KeyWrongLastSequenceError

        p = self._p
        sub = self.get(sub_id)
        await self._item_and_attempts(sub_id, delivery_id)  # 404 before taking a lease
        lease = str(delivery_id)
        try:
            await p.leases.create(lease, self.node.encode())
        except KeyWrongLastSequenceError:
            raise WebhookError(
                409, f"delivery {delivery_id} is being redelivered right now; try again"
            ) from None
        try:
            # Read under the lease: a redeliver that finished just before it was taken has
            # stored its attempt (maybe a pending one) by now.
            item, records = await self._item_and_attempts(sub_id, delivery_id)
            last = records[-1] if records else None
            if last is None or not last.final:
                when = "once the webhook is enabled again" if not sub.enabled else "automatically"
                raise WebhookError(
                    409,
                    f"delivery {delivery_id} is pending: it is sent (and retried) {when}; "
                    "redeliver it once it is delivered or failed",
                )
            attempt = await p.sender.send(sub, delivery_id, item.event_id, item.body)
            attempt.number = last.attempt + 1
            outcome = decide(self.config, item.event, 0, attempt, manual=True)
            via = 0
            if outcome.status == "pending":  # back on the schedule, through the queue
                via = await p.deliveries.publish_retry(
                    item, attempt.number, outcome.next_attempt_at
                )
            record = AttemptRecord.of(outcome, via=via, node=self.node)
            await p.deliveries.record(sub_id, record)
            try:
                await p.effects.apply(sub_id, outcome)
            except Exception as exc:
                log.warning("webhook %s: could not record the result on it: %s", sub_id, exc)
        finally:
            with contextlib.suppress(Exception):
                await p.leases.delete(lease)
        delivery = build_delivery(item, [*records, record], self.config.retry_schedule[0])
        return delivery, attempt


def _without_event(event: str, left: list[bool]) -> Callable[[Subscription], Subscription | None]:
    """Drops ``event`` from the current value; ``left[0]`` says whether any event remains
    (if none does, nothing is written: the caller deletes the subscription)."""

    def change(sub: Subscription) -> Subscription | None:
        remaining = tuple(e for e in sub.events if e != event)
        left[0] = bool(remaining)
        if not remaining or remaining == sub.events:
            return None
        return dataclasses.replace(sub, events=remaining, updated_at=time.time())

    return change


@dataclasses.dataclass
class _Parts:
    """What runs on the link's loop once started."""

    catalog: Catalog
    deliveries: DeliveryLog
    effects: Effects
    sender: Sender
    dispatcher: Dispatcher
    fanout: FanOut
    leases: Any
    upkeep: Upkeep

    async def stop(self) -> None:
        await self.upkeep.stop()
        await self.fanout.stop()
        await self.dispatcher.close()
        await self.effects.stop()
        await self.catalog.stop()
        await self.sender.aclose()


async def start_shared_webhooks(services: Any, stack: AsyncExitStack) -> SharedWebhookManager:
    """The forwarder for the shared bus ``services.bus``; sets ``services.webhooks``."""
    manager = SharedWebhookManager(services.bus, policy=services.outbound)
    await asyncio.to_thread(manager.start)
    services.webhooks = manager
    stack.callback(_stop, manager)
    return manager


def _stop(manager: SharedWebhookManager) -> None:
    with contextlib.suppress(Exception):
        manager.stop()
