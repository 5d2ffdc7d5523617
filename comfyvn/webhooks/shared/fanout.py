"""The outbox writer on a shared bus: hook events in, one delivery per subscription out.

The embedded outbox writes delivery rows in the event's own SQLite transaction. A stream has
no such transaction, so the fan-out is a durable consumer on the hooks stream shared by every
node (``webhook-fanout``): a node takes a batch of events, publishes one outbox message per
(event, matching enabled subscription), waits for the stream's acks, then acks the events.
A node that dies in between leaves the events unacked; another node fans them out again after
``ack_wait``, and the outbox stores each again-published delivery once, because its
``Nats-Msg-Id`` is made of the event id and the subscription id.

Which subscriptions an event goes to is decided with a snapshot that includes every change
made before the batch was taken (:meth:`Catalog.refresh`) and each subscription's
``from_seq``: as in the embedded server, a subscription gets the events emitted after it was
created, and none emitted while it was disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from comfyvn.core.envelope import envelope_json
from comfyvn.core.jetstream.event_log import ForeignMessageError, decode_row

from .catalog import Catalog
from .names import Names
from .records import OutboxItem

__all__ = ["FanOut"]

log = logging.getLogger("comfyvn.webhooks")

BATCH = 256
FETCH_S = 2.0
ACK_TIMEOUT_S = 10.0


class FanOut:
    def __init__(self, js: Any, names: Names, catalog: Catalog) -> None:
        self.js = js
        self.names = names
        self.catalog = catalog
        self._task: asyncio.Task[None] | None = None
        self.fanned = 0
        # Kept by :mod:`.upkeep`: the hooks stream's creation time (a subscription's from_seq
        # counts in the stream it was created on), the last event seq fanned out (where a
        # consumer made again on the same stream starts) and "bind again" after it did so.
        self.hooks_created = ""
        self.last_seq = 0
        self.rebind = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        import nats.errors

        psub: Any = None
        failing = False
        while True:
            if self.rebind and psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()
                psub = None
            self.rebind = False
            try:
                if psub is None:
                    psub = await self.js.pull_subscribe_bind(
                        consumer=self.names.fanout_consumer, stream=self.names.hooks_stream
                    )
                msgs = await psub.fetch(BATCH, timeout=FETCH_S)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                if psub is not None:
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                raise
            except Exception as exc:
                if not failing:
                    log.warning("webhook fan-out cannot read events: %s; retrying", exc)
                failing = True
                if psub is not None:
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                    psub = None
                await asyncio.sleep(1.0)
                continue
            try:
                await self._fan_out(msgs)
                failing = False
            except Exception as exc:  # not acked: fanned out again (once) after ack_wait
                if not failing:
                    log.warning("webhook fan-out failed: %s; retrying", exc)
                failing = True
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)

    async def _fan_out(self, msgs: list[Any]) -> None:
        await self.catalog.refresh()
        # Which stream these events are from: a subscription's from_seq counts in the stream
        # it was created on, and a replaced stream (seqs start over) is all news to it.
        hooks = await self.catalog.jsm.stream_info(self.names.hooks_stream)
        self.hooks_created = str(hooks.created or "")
        targets = [
            (r.sub.id, r.sub.event_filter, r.start_after(self.hooks_created))
            for r in self.catalog.records.values()
            if r.sub.enabled
        ]
        cut = len(self.names.hooks_prefix)
        pending: list[tuple[Any, list[asyncio.Future[Any]]]] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                row = decode_row(seq, msg.subject[cut:], msg.data)
            except ForeignMessageError as exc:
                # Not ours: terminated alone, so the events around it still go out (once).
                log.warning("webhook fan-out: %s", exc)
                with contextlib.suppress(Exception):
                    await msg.term()
                continue
            body: bytes | None = None
            futures: list[asyncio.Future[Any]] = []
            for sub_id, events, from_seq in targets:
                if seq <= from_seq or (events is not None and row.event not in events):
                    continue
                if body is None:
                    body = envelope_json(row).encode()
                headers = {
                    "Nats-Msg-Id": f"{row.id}.{sub_id}",
                    **OutboxItem.headers(row.event, row.id, seq),
                }
                futures.append(
                    await self.js.publish_async(
                        self.names.outbox(sub_id),
                        body,
                        stream=self.names.outbox_stream,
                        headers=headers,
                    )
                )
            pending.append((msg, futures))
        every = [f for _, futures in pending for f in futures]
        if every:
            await asyncio.wait(every, timeout=ACK_TIMEOUT_S)
        for msg, futures in pending:
            if all(f.done() and not f.cancelled() and f.exception() is None for f in futures):
                await msg.ack()
                self.fanned += len(futures)
                self.last_seq = max(self.last_seq, msg.metadata.sequence.stream)
            else:
                for f in futures:
                    if not f.done():
                        f.cancel()
                await msg.nak(delay=1.0)  # those stored are stored once when redone
