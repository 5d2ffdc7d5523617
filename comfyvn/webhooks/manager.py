"""The webhook forwarder as the server holds it (``services.webhooks``).

Owns the store, the outbox hook on the event log, the delivery worker and an in-memory snapshot
of the subscriptions (read by the outbox on the writer thread, by the worker, and by
``GET /api/modder/hooks``). Every change goes to SQLite first, then the snapshot is reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from comfyvn.core.errors import RefusedError
from comfyvn.core.hook_bus import HookBus
from comfyvn.core.hook_specs import HOOK_SPECS
from comfyvn.net import AddressPolicy, RefusedAddress

from .config import WebhookConfig
from .models import (
    ALL_EVENTS,
    Attempt,
    Delivery,
    RotateSecretRequest,
    Subscription,
    WebhookCreate,
    WebhookPatch,
)
from .outbox import Outbox
from .signing import SecretError, generate_secret, parse_secret
from .store import WebhookStore
from .worker import DeliveryBusy, DeliveryWorker

__all__ = ["WebhookError", "WebhookManager", "start_webhooks"]

log = logging.getLogger("comfyvn.webhooks")
T = TypeVar("T")


class WebhookError(RefusedError):
    """A refused operator request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail, status)


def new_subscription(body: WebhookCreate, events: tuple[str, ...]) -> Subscription:
    """A new subscription from a create body: its id, its secret (given or generated, checked)
    and timestamps, the same whichever store keeps it (SQLite here, the KV bucket when
    shared)."""
    secret = body.secret if body.secret is not None else generate_secret()
    try:
        parse_secret(secret)
    except SecretError as exc:
        raise WebhookError(400, str(exc)) from None
    now = time.time()
    return Subscription(
        id=f"wh_{secrets.token_hex(8)}",
        url=body.url,
        events=events,
        secret=secret,
        enabled=body.enabled,
        description=body.description,
        created_at=now,
        updated_at=now,
    )


def patch_changes(patch: WebhookPatch) -> dict[str, Any]:
    """The fields a PATCH changes, the same whichever store keeps the subscription: enabling
    clears the reason and the failure count, disabling names the operator."""
    changes: dict[str, Any] = {}
    if patch.url is not None:
        changes["url"] = patch.url
    if patch.events is not None:
        changes["events"] = normalize_events(patch.events)
    if patch.description is not None:
        changes["description"] = patch.description
    if patch.enabled is not None:
        changes["enabled"] = patch.enabled
        if patch.enabled:
            changes["disabled_reason"] = None
            changes["consecutive_failures"] = 0
        else:
            changes["disabled_reason"] = "disabled by an operator"
    return changes


def normalize_events(events: list[str]) -> tuple[str, ...]:
    cleaned: dict[str, None] = {}
    for raw in events:
        name = raw.strip()
        if name == ALL_EVENTS:
            return (ALL_EVENTS,)
        if name not in HOOK_SPECS:
            known = ", ".join(sorted(HOOK_SPECS))
            raise WebhookError(400, f"unknown hook {name!r} in 'events'; known hooks: {known}")
        cleaned.setdefault(name, None)
    return tuple(cleaned)


class WebhookManager:
    def __init__(
        self,
        bus: HookBus,
        config: WebhookConfig | None = None,
        policy: AddressPolicy | None = None,
    ) -> None:
        """``policy``: the server's shared outbound policy; without one (tools, tests) the
        config's own ``COMFYVN_WEBHOOK_*_HOSTS`` lists make a private one."""
        self.bus = bus
        self.config = config or WebhookConfig.from_env()
        self.policy = policy or AddressPolicy(
            allow_hosts={"COMFYVN_WEBHOOK_ALLOW_HOSTS": self.config.allow_hosts},
            deny_hosts={"COMFYVN_WEBHOOK_DENY_HOSTS": self.config.deny_hosts},
            allow_loopback=self.config.allow_loopback,
        )
        self.store = WebhookStore(bus.log.path)
        self._subs: dict[str, Subscription] = {}
        self._mutate = threading.Lock()  # one operator change at a time
        # Read-and-publish of the snapshot is atomic: the worker reloads after every batch of
        # attempts, and a list read before an operator's change must never be published after
        # the list that includes it (a new webhook would get no events, a deleted one revive).
        self._snapshot = threading.Lock()
        self.worker = DeliveryWorker(
            bus=bus,
            store=self.store,
            config=self.config,
            policy=self.policy,
            subscriptions=lambda: self._subs,
            on_change=self.reload,
        )
        self.outbox = Outbox(self.config.retry_schedule[0], self.worker.notify)
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.reload()
        # The hook stays installed until the bus closes: events committed during shutdown
        # still get their delivery rows, which the next start sends.
        self.bus.log.add_txn_hook(self.outbox)
        self.worker.start()
        self._started = True
        log.info(
            "webhooks: %d subscription(s), %d enabled",
            len(self._subs),
            sum(s.enabled for s in self._subs.values()),
        )

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.worker.stop()
            self.store.close()

    def reload(self) -> None:
        with self._snapshot:
            self._publish(self.store.list_subscriptions())

    def _publish(self, subs: list[Subscription]) -> None:
        self._subs = {s.id: s for s in subs}
        self.outbox.set_targets(subs)

    def _remove(self, sub_id: str) -> None:
        """Out of the outbox first, so no new rows appear for it while its rows go."""
        with self._snapshot:
            self._publish([s for s in self._subs.values() if s.id != sub_id])
        self.store.delete_subscription(sub_id)

    # -- reading -----------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Nothing to wait for: the snapshot is reloaded after every change. (On a shared bus
        the routes wait here until this node has seen other nodes' changes.)"""

    def describe_masked(self) -> list[dict[str, Any]]:
        now = time.time()
        return [s.masked(now) for s in self._subs.values()]

    def stats(self) -> dict[str, Any]:
        return {"subscriptions": len(self._subs), **self.worker.stats()}

    def get(self, sub_id: str) -> Subscription:
        sub = self._subs.get(sub_id)  # the snapshot is reloaded after every change
        if sub is None:
            raise WebhookError(404, f"no webhook with id {sub_id!r}")
        return sub

    def counts(self, sub_id: str) -> dict[str, int]:
        return self.store.delivery_counts(sub_id)

    def deliveries(
        self, sub_id: str, status: str | None, limit: int, before: int | None
    ) -> list[Delivery]:
        self.get(sub_id)
        return self.store.list_deliveries(sub_id, status=status, limit=limit, before=before)

    def delivery(self, sub_id: str, delivery_id: int) -> tuple[Delivery, list[Attempt]]:
        self.get(sub_id)
        delivery = self.store.get_delivery(delivery_id)
        if delivery is None or delivery.webhook_id != sub_id:
            raise WebhookError(404, f"webhook {sub_id!r} has no delivery {delivery_id}")
        return delivery, self.store.attempts(delivery_id)

    # -- changes (async: URL checks resolve DNS; SQLite runs off the loop) -------------------
    async def _check_url(self, url: str) -> None:
        try:
            await self.policy.check_url_resolved(url)
        except RefusedAddress as exc:
            raise WebhookError(400, f"url refused: {exc}") from None

    async def create(self, body: WebhookCreate) -> Subscription:
        events = normalize_events(body.events)
        await self._check_url(body.url)
        return await asyncio.to_thread(self._insert, new_subscription(body, events))

    def _insert(self, sub: Subscription) -> Subscription:
        with self._mutate:
            self.reload()
            if len(self._subs) >= self.config.max_subscriptions:
                raise WebhookError(
                    409,
                    f"already {len(self._subs)} webhooks; the limit is "
                    f"{self.config.max_subscriptions} (COMFYVN_WEBHOOK_MAX_SUBSCRIPTIONS)",
                )
            for other in self._subs.values():
                if other.url == sub.url and set(other.events) == set(sub.events):
                    raise WebhookError(
                        409,
                        f"webhook {other.id} already sends these events to this URL; "
                        "PATCH it or DELETE it first",
                    )
            self.store.insert_subscription(sub)
            self.reload()
        return sub

    async def update(self, sub_id: str, patch: WebhookPatch) -> Subscription:
        if patch.url is not None:
            await self._check_url(patch.url)
        changes = patch_changes(patch)
        sub = await asyncio.to_thread(self._update, sub_id, changes)
        if patch.enabled:
            self.worker.wake()  # paused deliveries resume
        return sub

    def _update(self, sub_id: str, changes: dict[str, Any]) -> Subscription:
        with self._mutate:
            current = self.get(sub_id)
            if "enabled" in changes and changes["enabled"] == current.enabled:
                # Re-sending the same state must not wipe the recorded disable reason.
                for key in ("enabled", "disabled_reason", "consecutive_failures"):
                    changes.pop(key, None)
            if not changes:
                return current
            sub = self.store.update_subscription(sub_id, **changes)
            self.reload()
        if sub is None:
            raise WebhookError(404, f"no webhook with id {sub_id!r}")
        return sub

    async def rotate(self, sub_id: str, body: RotateSecretRequest) -> Subscription:
        secret = body.secret if body.secret is not None else generate_secret()
        try:
            parse_secret(secret)
        except SecretError as exc:
            raise WebhookError(400, str(exc)) from None
        grace = self.config.rotation_grace_s if body.grace_seconds is None else body.grace_seconds
        return await asyncio.to_thread(self._rotate, sub_id, secret, grace)

    def _rotate(self, sub_id: str, secret: str, grace: float) -> Subscription:
        with self._mutate:
            current = self.get(sub_id)
            if secret == current.secret:
                raise WebhookError(400, "the new secret is the same as the current one")
            keep_old = grace > 0
            sub = self.store.update_subscription(
                sub_id,
                secret=secret,
                old_secret=current.secret if keep_old else None,
                old_secret_expires_at=time.time() + grace if keep_old else None,
            )
            self.reload()
        if sub is None:
            raise WebhookError(404, f"no webhook with id {sub_id!r}")
        return sub

    async def delete(self, sub_id: str) -> None:
        await asyncio.to_thread(self._delete, sub_id)

    def _delete(self, sub_id: str) -> None:
        with self._mutate:
            self.get(sub_id)
            self._remove(sub_id)
            self.reload()

    async def delete_by_url(self, event: str, url: str) -> dict[str, list[str]]:
        return await asyncio.to_thread(self._delete_by_url, event.strip(), url)

    def _delete_by_url(self, event: str, url: str) -> dict[str, list[str]]:
        if event != ALL_EVENTS:
            normalize_events([event])
        with self._mutate:
            matching = [s for s in self._subs.values() if s.url == url]
            if not matching:
                raise WebhookError(404, "no webhook is registered for this URL")
            deleted: list[str] = []
            updated: list[str] = []
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
            for sub in targets:
                remaining = [e for e in sub.events if e != event] if event != ALL_EVENTS else []
                if remaining:
                    self.store.update_subscription(sub.id, events=remaining)
                    updated.append(sub.id)
                else:
                    self._remove(sub.id)
                    deleted.append(sub.id)
            self.reload()
        return {"deleted": deleted, "updated": updated}

    # -- sending now -------------------------------------------------------------------------
    def _submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        try:
            return asyncio.wrap_future(self.worker.submit(coro))
        except RuntimeError as exc:  # stopping (or never started): say so, not a 500
            raise WebhookError(503, f"{exc}; try again once the server is up") from None

    async def ping(self, sub_id: str) -> tuple[Delivery | None, Attempt]:
        sub = self.get(sub_id)
        return await self._submit(self.worker.ping(sub))

    async def redeliver(self, sub_id: str, delivery_id: int) -> tuple[Delivery, Attempt]:
        sub = self.get(sub_id)
        await asyncio.to_thread(self.delivery, sub_id, delivery_id)  # SQLite: off the loop
        try:
            return await self._submit(self.worker.redeliver(sub, delivery_id))
        except DeliveryBusy as exc:
            raise WebhookError(409, str(exc)) from None


async def start_webhooks(services: Any, stack: AsyncExitStack) -> WebhookManager:
    """Create the forwarder for ``services.bus``, set ``services.webhooks``, stop it on exit."""
    manager = WebhookManager(services.bus, policy=services.outbound)
    await asyncio.to_thread(manager.start)
    services.webhooks = manager
    stack.callback(_stop, manager)
    return manager


def _stop(manager: WebhookManager) -> None:
    with contextlib.suppress(Exception):
        manager.stop()
