"""The subscriptions of a shared bus: a KV bucket, and this node's live copy of it.

Each node watches the bucket (an ordered consumer from the last value of every key), so the
fan-out, the senders and ``GET`` read a local snapshot with no round trip. A snapshot can lag
the bucket by the watch's delay, so whatever must see every change made before it started
(an API request after another node's create; the fan-out of an event emitted after a create)
first calls :meth:`Catalog.refresh`: it reads the bucket stream's last sequence and waits until
the watch has applied it. That is one request, and it makes "created on node A, then listed on
node B" and "created, then an event emitted" exact rather than probably right.

Changes are compare-and-set on the key's revision: read, change, write only if nobody wrote in
between, else read again. Two nodes recording a failure and a success on the same subscription
at the same moment both land; neither overwrites the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from ..models import Subscription
from .names import Names
from .records import SubscriptionRecord

__all__ = ["Catalog", "ConcurrentChange"]

log = logging.getLogger("comfyvn.webhooks")

_CAS_TRIES = 50
_DELETED = ("DEL", "PURGE")


class ConcurrentChange(RuntimeError):
    """A compare-and-set lost to other writers every time it was tried."""


class Catalog:
    def __init__(self, js: Any, jsm: Any, kv: Any, names: Names) -> None:
        self.js = js
        self.jsm = jsm
        self.kv = kv
        self.names = names
        self._records: dict[str, SubscriptionRecord] = {}
        self._subs: dict[str, Subscription] = {}  # replaced whole: safe to read from any thread
        self.revision = 0  # the bucket stream's sequence the snapshot includes
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._watch: Any = None
        self.on_change: list[Callable[[], None]] = []  # run on the link's loop

    # -- the watch (link loop) ---------------------------------------------------------------
    async def start(self) -> None:
        from nats.js import api

        self._watch = await self.js.subscribe(
            f"$KV.{self.names.subscriptions_bucket}.>",
            stream=f"KV_{self.names.subscriptions_bucket}",
            cb=self._on_msg,
            ordered_consumer=True,
            idle_heartbeat=2.0,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT),
        )
        await self.refresh(timeout=10.0)

    async def stop(self) -> None:
        if self._watch is not None:
            try:
                await self._watch.unsubscribe()
            except Exception as exc:
                log.debug("webhook catalog watch: %s", exc)

    async def _on_msg(self, msg: Any) -> None:
        seq = msg.metadata.sequence.stream
        key = msg.subject.rsplit(".", 1)[-1]
        op = (msg.headers or {}).get("KV-Operation") or (msg.headers or {}).get(
            "Nats-Marker-Reason"
        )
        records = dict(self._records)
        if op in _DELETED or op in ("MaxAge", "Remove") or not msg.data:
            records.pop(key, None)
        else:
            try:
                records[key] = SubscriptionRecord.decode(msg.data, seq)
            except Exception:  # never the value in the log: it holds the secret
                log.error("webhook subscription %s in the bucket is unreadable; ignored", key)
                records.pop(key, None)
        self._records = records
        self._subs = {k: r.sub for k, r in sorted(records.items(), key=_creation_order)}
        self.revision = max(self.revision, seq)
        for target, fut in list(self._waiters):
            if target <= self.revision and not fut.done():
                fut.set_result(None)
        self._waiters = [(t, f) for t, f in self._waiters if not f.done()]
        for fn in list(self.on_change):
            try:
                fn()
            except Exception:
                log.exception("webhook catalog listener failed")

    async def refresh(self, timeout: float = 5.0) -> None:
        """Until the snapshot includes every change written to the bucket before this call."""
        info = await self.jsm.stream_info(f"KV_{self.names.subscriptions_bucket}")
        target = int(info.state.last_seq or 0)
        if target <= self.revision:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise TimeoutError(
                f"the webhook subscriptions did not catch up with the bus in {timeout:g} s"
            ) from None
        finally:
            if not fut.done():
                fut.cancel()
            self._waiters = [(t, f) for t, f in self._waiters if f is not fut]

    # -- reading (any thread) ----------------------------------------------------------------
    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return self._subs

    @property
    def records(self) -> dict[str, SubscriptionRecord]:
        return self._records

    def get(self, sub_id: str) -> Subscription | None:
        return self._subs.get(sub_id)

    # -- writing (link loop) -----------------------------------------------------------------
    async def create(self, record: SubscriptionRecord) -> None:
        await self.kv.create(record.sub.id, record.encode())

    async def mutate(
        self, sub_id: str, change: Callable[[Subscription], Subscription | None]
    ) -> Subscription | None:
        """Apply ``change`` to the stored subscription with compare-and-set; ``None`` if it
        does not exist. ``change`` returning ``None`` means nothing to write."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        for _ in range(_CAS_TRIES):
            try:
                entry = await self.kv.get(sub_id)
            except KeyNotFoundError:
                return None
            if entry.value is None or entry.operation in _DELETED:
                return None
            current = SubscriptionRecord.decode(entry.value, entry.revision)
            changed = change(current.sub)
            if changed is None:
                return current.sub
            record = dataclasses.replace(current, sub=changed)
            try:
                await self.kv.update(sub_id, record.encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # somebody else wrote meanwhile: read again, apply again
            return changed
        raise ConcurrentChange(f"webhook {sub_id} is being changed by others; try again")

    async def delete(self, sub_id: str) -> None:
        await self.kv.delete(sub_id)


def _creation_order(item: tuple[str, SubscriptionRecord]) -> tuple[float, str]:
    return item[1].sub.created_at, item[0]
