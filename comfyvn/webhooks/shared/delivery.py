"""Sending on a shared bus: every node takes deliveries from durable consumers all nodes share.

**One consumer per subscription** (``webhook-send-<sub_id>``), not one for all: JetStream counts
a delivery waiting for its retry as pending on its consumer, and a node can only take a message
a consumer hands it, in order. With one consumer for all, a dead endpoint's retries and a
disabled endpoint's paused deliveries would sit in front of everyone else's. Per subscription,
an endpoint only ever holds up itself, as the embedded worker's per-endpoint queues do; a
disabled subscription's consumer is simply not read (its deliveries wait, none is polled) and
is read again the moment it is re-enabled; and per-endpoint concurrency is the number of
``lanes`` (pull requests) a node keeps open on it.

**One node at a time, at least once.** JetStream hands a message to one puller and gives it
to another only after ``ack_wait`` without an ack, a nak or an in-progress signal. A node keeps
every message it holds alive with ``in_progress()`` every third of ``ack_wait`` (while it waits
for a send slot and while it sends), so a slow receiver never gets a second, overlapping
request from another node; a node that dies stops signalling and, after ``ack_wait``, another
node sends the same message: same body, same ``webhook-id`` (the envelope id). After an
attempt the node first stores the attempt record, then acks (delivered), naks with the
schedule's delay (retry), or terminates (410, exhausted): a death between the two repeats
the decision, never skips it.

**Where a delivery stands** is its last attempt record (:mod:`.deliveries`), one direct get
for every message taken, even a first delivery: a consumer made again (:mod:`.upkeep`) hands
every kept message out as new, and only the last attempt says it was delivered already.
Each record names the outbox message that drove it (``via``). A manual redeliver
(only of a delivered or failed delivery, under a lease) that fails puts the delivery back on
the schedule with a *retry message* on the subscription's queue; from then on that message
drives it and the original, should it ever come back, sees a record it did not write and
stands down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import WebhookConfig
from ..retry import decide
from ..sender import Sender
from ..store import Outcome
from .catalog import Catalog
from .deliveries import DeliveryLog
from .effects import Effects
from .names import Names
from .records import AttemptRecord, OutboxItem

__all__ = ["Dispatcher"]

log = logging.getLogger("comfyvn.webhooks")

FETCH_S = 2.0  # a lane's pull request lasts this long; a stopped lane ends within it
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_MAX_UNRECORDED = 10_000


@dataclass
class _Pump:
    """The lanes of one subscription on this node; ``stop`` lets them finish what they hold."""

    sub_id: str
    stop: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    fetching: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Plan:
    action: str  # send | wait | done
    tries: int = 0  # attempts of the schedule before this one
    number: int = 1  # this attempt's number
    delay: float = 0.0  # wait: seconds until due


class Dispatcher:
    def __init__(
        self,
        *,
        js: Any,
        jsm: Any,
        names: Names,
        config: WebhookConfig,
        catalog: Catalog,
        deliveries: DeliveryLog,
        effects: Effects,
        sender: Sender,
        node: str,
    ) -> None:
        self.js = js
        self.jsm = jsm
        self.names = names
        self.cfg = config
        self.catalog = catalog
        self.log = deliveries
        self.effects = effects
        self.sender = sender
        self.node = node
        self._pumps: dict[str, _Pump] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._held = 0
        self._closing = False
        self._upkeep: set[asyncio.Task[None]] = set()
        self.generation = 0  # bumped when consumers were remade: lanes bind again
        self._failing: set[str] = set()  # subscriptions whose last message failed: logged once
        # Attempts sent whose record could not be stored yet: (sub id, msg seq) -> record.
        self._unrecorded: dict[tuple[str, int], tuple[AttemptRecord, Outcome]] = {}

    # -- which subscriptions this node reads (link loop) -------------------------------------
    def sync(self) -> None:
        """Start lanes for every enabled subscription, stop those of the others."""
        if self._closing:
            return
        subs = self.catalog.subscriptions
        for sub_id, sub in subs.items():
            pump = self._pumps.get(sub_id)
            if sub.enabled:
                if pump is None:
                    self._start_pump(sub_id)
                elif pump.stop:  # re-enabled while its lanes were winding down
                    pump.stop = False
                    self._top_up(pump)
        gone = False
        for sub_id, pump in self._pumps.items():
            sub = subs.get(sub_id)
            gone = gone or sub is None
            if sub is None or not sub.enabled:
                self._stop_pump(pump)
        if gone:  # a deleted subscription's connection pool goes too
            task = asyncio.get_running_loop().create_task(self.sender.close_stale(subs))
            self._upkeep.add(task)
            task.add_done_callback(self._upkeep.discard)

    def _start_pump(self, sub_id: str) -> None:
        self._top_up(self._pumps.setdefault(sub_id, _Pump(sub_id)))

    def _top_up(self, pump: _Pump) -> None:
        """``per_endpoint`` lanes (after a quick disable and enable, some may have ended)."""
        while len(pump.tasks) < self.cfg.per_endpoint:
            task = asyncio.get_running_loop().create_task(self._lane(pump))
            pump.tasks.add(task)
            task.add_done_callback(lambda t, p=pump: self._lane_done(p, t))

    def _stop_pump(self, pump: _Pump) -> None:
        pump.stop = True
        for task in list(pump.fetching):  # idle lanes end now; busy ones after their send
            task.cancel()

    def _lane_done(self, pump: _Pump, task: asyncio.Task[None]) -> None:
        pump.tasks.discard(task)
        if self._closing or self._pumps.get(pump.sub_id) is not pump:
            return
        if not pump.stop:
            self._top_up(pump)  # ended though still wanted: re-enabled as it stopped
        elif not pump.tasks:
            del self._pumps[pump.sub_id]

    async def close(self) -> None:
        """Stop every lane; what a lane holds goes back to the queue at once (nak)."""
        self._closing = True
        tasks = [t for pump in self._pumps.values() for t in pump.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"in_flight": self._held, "lanes": sum(len(p.tasks) for p in self._pumps.values())}

    # -- a lane ------------------------------------------------------------------------------
    async def _lane(self, pump: _Pump) -> None:
        import nats.errors

        me = asyncio.current_task()
        assert me is not None
        psub: Any = None
        bound = self.generation
        failures = 0
        try:
            while not pump.stop:
                if psub is not None and bound != self.generation:  # its consumer was remade
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                    psub = None
                pump.fetching.add(me)
                try:
                    if psub is None:
                        # Only bind: the consumer is made with the subscription (and remade
                        # by upkeep), never here, so a lane that outlives a delete cannot
                        # bring a deleted subscription's queue back.
                        bound = self.generation
                        psub = await self.js.pull_subscribe_bind(
                            consumer=self.names.sender_consumer(pump.sub_id),
                            stream=self.names.outbox_stream,
                        )
                    msgs = await psub.fetch(1, timeout=FETCH_S)
                    failures = 0
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except asyncio.CancelledError:
                    if pump.stop and not self._closing:
                        return  # stopped while idle
                    raise
                except Exception as exc:
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    failures += 1
                    if failures == 1:
                        log.warning("webhook %s: taking deliveries failed: %s", pump.sub_id, exc)
                    if psub is not None:
                        with contextlib.suppress(Exception):
                            await psub.unsubscribe()
                        psub = None
                    await asyncio.sleep(delay)
                    continue
                finally:
                    pump.fetching.discard(me)
                for msg in msgs:
                    await self._handle(pump.sub_id, msg)
        finally:
            if psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()

    async def _keep_alive(self, msg: Any) -> None:
        every = max(0.2, self.cfg.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _handle(self, sub_id: str, msg: Any) -> None:
        """One message from the queue, from taking it to its ack, nak or term."""
        self._held += 1
        keep = asyncio.get_running_loop().create_task(self._keep_alive(msg))
        settled = False
        try:
            async with self._slots:
                settled = await self._process(sub_id, msg)
            self._failing.discard(sub_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS unreachable, a stream gone: the message comes back later
            if sub_id not in self._failing:  # once per failing streak, not once per message
                self._failing.add(sub_id)
                log.warning(
                    "webhook %s: delivery message %s: %s; retrying with a backoff",
                    sub_id,
                    _seq(msg),
                    _describe(exc),
                )
            # Not at once: the same message would be fetched again in a tight loop (a send
            # each time, or a warning each time) for as long as the trouble lasts.
            with contextlib.suppress(BaseException):
                await asyncio.shield(msg.nak(delay=self._backoff(msg)))
            settled = True
        finally:
            keep.cancel()
            self._held -= 1
            if not settled:  # cancelled or paused: back to the queue now, not after ack_wait
                with contextlib.suppress(BaseException):
                    await asyncio.shield(msg.nak())

    def _backoff(self, msg: Any) -> float:
        """0.5 s, 1 s, 2 s ... per redelivery of the message, at most ``ack_wait``."""
        n = 1
        with contextlib.suppress(Exception):
            n = int(msg.metadata.num_delivered or 1)
        return min(self.cfg.ack_wait_s, 0.5 * 2 ** min(max(n - 1, 0), 16))

    async def _process(self, sub_id: str, msg: Any) -> bool:
        """Returns True once the message is settled (acked, naked or terminated)."""
        sub = self.catalog.get(sub_id)
        if sub is None:  # deleted: its queue is being purged
            await msg.ack()
            return True
        if not sub.enabled:  # paused: read again once it is enabled
            return False
        meta = msg.metadata
        kind, _ = self.names.kind(msg.subject)
        item = OutboxItem.parse(
            meta.sequence.stream,
            kind,
            sub_id,
            msg.headers,
            meta.timestamp.timestamp(),
            msg.data,
        )
        unrecorded = self._unrecorded.get((sub_id, item.msg_seq))
        if unrecorded is not None:  # sent by this node, its record not stored yet
            return await self._settle(sub_id, msg, item, *unrecorded)
        plan = await self._plan(item)
        if plan.action == "done":
            await msg.ack()
            return True
        if plan.action == "wait":
            await msg.nak(delay=plan.delay)
            return True
        attempt = await self.sender.send(sub, item.delivery_id, item.event_id, item.body)
        attempt.number = plan.number
        outcome = decide(self.cfg, item.event, plan.tries, attempt, manual=False)
        record = AttemptRecord.of(outcome, via=item.msg_seq, node=self.node)
        return await self._settle(sub_id, msg, item, record, outcome)

    async def _settle(
        self, sub_id: str, msg: Any, item: OutboxItem, record: AttemptRecord, outcome: Outcome
    ) -> bool:
        """Record the attempt, then ack, nak or term. A record that cannot be stored is kept
        here and stored again when the message comes back (with a backoff), instead of the
        receiver getting the same request again at once."""
        key = (sub_id, item.msg_seq)
        self._unrecorded[key] = (record, outcome)
        while len(self._unrecorded) > _MAX_UNRECORDED:  # taken by another node meanwhile
            del self._unrecorded[next(iter(self._unrecorded))]
        await self.log.record(sub_id, record)  # first the record: then the queue may move on
        self._unrecorded.pop(key, None)
        try:
            await self.effects.apply(sub_id, outcome)
        except Exception as exc:  # the attempt stands; only its mark on the endpoint is lost
            log.warning("webhook %s: could not record the result on it: %s", sub_id, exc)
        if outcome.status == "pending":
            delay = max(0.0, (outcome.next_attempt_at or 0.0) - time.time())
            await msg.nak(delay=delay)
        elif outcome.status == "delivered":
            await msg.ack()
        else:
            await msg.term()
        return True

    async def _plan(self, item: OutboxItem) -> _Plan:
        """Send now (which attempt, how many tries so far), wait, or nothing left to do."""
        now = time.time()
        retry = item.continues is not None
        # Always one direct get, even for a message handed out for the first time: a consumer
        # made again (upkeep, a stream restored) hands every kept message out as new, and
        # only the last attempt says whether it was delivered already.
        last = await self.log.last_attempt(item.sub_id, item.delivery_id)
        if retry and (last is None or last.attempt < item.after_attempt):
            # The redeliver that published this retry died before storing its attempt.
            due = item.due or now
            number = (last.attempt if last else 0) + 1
            return _Plan("wait", delay=due - now) if due > now else _Plan("send", 1, number)
        if last is None:  # an original that came back before any attempt was stored
            due = item.created_at + self.cfg.retry_schedule[0]
            return _Plan("wait", delay=due - now) if due > now else _Plan("send")
        if last.via != item.msg_seq or last.final:
            return _Plan("done")  # finished, or driven by a newer message now
        due = last.next_attempt_at or now
        if due > now:
            return _Plan("wait", delay=due - now)
        return _Plan("send", last.tries, last.attempt + 1)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _seq(msg: Any) -> Any:
    with contextlib.suppress(Exception):
        return msg.metadata.sequence.stream
    return "?"
