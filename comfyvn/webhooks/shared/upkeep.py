"""Puts back what the webhook state needs when it disappears from NATS underneath us.

Streams, consumers and buckets are made at start (:mod:`.setup`), but they can go later: an
operator deletes the hooks stream (the bus makes it again on its next publish, seqs starting
over, and the fan-out consumer went with the old one), an outbox or attempts stream is
deleted, a delete of a subscription stopped half-way. Nothing else would notice: the fan-out
would wait on a consumer that no longer exists and no event would ever be delivered again.
Every ``UPKEEP_S`` each node checks, and makes again what is missing:

- the outbox and attempts streams and the leases bucket (:func:`.setup.ensure_layout`); a
  deleted subscriptions bucket is not repaired here (every subscription went with it);
- the fan-out consumer: from the first seq of a replaced hooks stream (all of it is new), or
  after the last event this node fanned out if only the consumer went;
- each subscription's delivery consumer (then lanes bind again);
- and it removes the delivery consumer and messages of a subscription no longer in the
  bucket (a delete that did not finish, or a stray from an older node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..config import WebhookConfig
from .catalog import Catalog
from .delivery import Dispatcher
from .fanout import FanOut
from .names import Names
from .setup import ensure_consumer, ensure_layout, sender_consumer_config

__all__ = ["Upkeep"]

log = logging.getLogger("comfyvn.webhooks")

UPKEEP_S = 2.0
_SENDER_PREFIX = "webhook-send-"


class Upkeep:
    def __init__(
        self,
        *,
        js: Any,
        jsm: Any,
        names: Names,
        config: WebhookConfig,
        catalog: Catalog,
        fanout: FanOut,
        dispatcher: Dispatcher,
        purge: Any,
    ) -> None:
        self.js = js
        self.jsm = jsm
        self.names = names
        self.cfg = config
        self.catalog = catalog
        self.fanout = fanout
        self.dispatcher = dispatcher
        self.purge = purge  # async (sub_id) -> None: a subscription's messages and attempts
        self._task: asyncio.Task[None] | None = None
        self._hooks_created = ""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.check()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, mostly: the next round tries again
                if not failing:
                    log.warning("webhook upkeep: %s; retrying", exc or type(exc).__name__)
                failing = True
            await asyncio.sleep(UPKEEP_S)

    async def check(self) -> None:
        """One round: make again whatever is missing, remove what a delete left behind."""
        from nats.js.errors import NotFoundError

        try:
            hooks = await self.jsm.stream_info(self.names.hooks_stream)
        except NotFoundError:
            return  # the bus makes it again on its next publish; nothing to fan out until then
        created = str(hooks.created or "")
        replaced = bool(self._hooks_created) and created != self._hooks_created
        self._hooks_created = created
        if replaced:
            self.fanout.last_seq = 0  # its seqs start over
        missing = not await _exists(
            self.jsm.consumer_info, self.names.hooks_stream, self.names.fanout_consumer
        )
        leases = f"KV_{self.names.leases_bucket}"  # creates and redelivers need it
        for stream in (self.names.outbox_stream, self.names.attempts_stream, leases):
            missing = missing or not await _exists(self.jsm.stream_info, stream)
        if missing:
            start = int(hooks.state.first_seq or 1) if replaced else None
            if start is None and self.fanout.last_seq:
                start = self.fanout.last_seq + 1
            # Else (this node fanned nothing out): from the stream's end, as at first; from
            # its start could send events again that were delivered long ago.
            await ensure_layout(self.js, self.jsm, self.names, self.cfg, fanout_start=start)
            log.warning("webhook upkeep: made the missing webhook streams or consumers again")
            self.fanout.rebind = True
        await self._senders()

    async def _senders(self) -> None:
        """A delivery consumer for every subscription, none for a subscription that is gone."""
        from nats.js.errors import KeyNotFoundError

        await self.catalog.refresh()
        infos = await self.jsm.consumers_info(self.names.outbox_stream)
        have = {i.name[len(_SENDER_PREFIX) :] for i in infos if i.name.startswith(_SENDER_PREFIX)}
        subs = self.catalog.subscriptions
        remade = False
        for sub_id in subs.keys() - have:
            if not await self._stored(sub_id):  # deleted since the snapshot
                continue
            config = sender_consumer_config(self.names, sub_id, self.cfg)
            await ensure_consumer(self.jsm, self.names.outbox_stream, config)
            remade = True
        if remade:
            log.warning("webhook upkeep: made missing delivery queues again")
            self.dispatcher.generation += 1
        for sub_id in have - subs.keys():
            try:
                await self.catalog.kv.get(sub_id)
                continue  # created since the snapshot
            except KeyNotFoundError:
                pass
            await self.jsm.delete_consumer(
                self.names.outbox_stream, self.names.sender_consumer(sub_id)
            )
            await self.purge(sub_id)
            log.info("webhook upkeep: removed the queue of deleted webhook %s", sub_id)

    async def _stored(self, sub_id: str) -> bool:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.catalog.kv.get(sub_id)
        except KeyNotFoundError:
            return False
        return entry.value is not None


async def _exists(info: Any, *args: str) -> bool:
    from nats.js.errors import NotFoundError

    try:
        await info(*args)
    except NotFoundError:
        return False
    return True
