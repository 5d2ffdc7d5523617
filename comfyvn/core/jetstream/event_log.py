"""The hook history as a JetStream stream: the same reads as the SQLite log, on every node.

One stream per namespace (``<ns>-hooks``), subjects ``<ns>.hooks.<event>``, file storage and
the retention policy as stream limits (JetStream prunes by itself, a prefix at a time, so the
log stays one contiguous run from ``first_seq()`` as the SQLite log does). ``seq`` is the
stream sequence. A message's body is ``<id>\\n<ts>\\n<payload JSON>``: the consumer on every
node rebuilds the :class:`LogRow` with two splits, no JSON parse; the id also rides in the
``Nats-Msg-Id`` header, so a retried publish is stored once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..event_log import LogRow, RetentionPolicy
from .link import NatsLink

__all__ = [
    "DEDUP_WINDOW_S",
    "ForeignMessageError",
    "JetStreamEventLog",
    "check_namespace",
    "decode_row",
    "encode_body",
]

log = logging.getLogger("comfyvn.bus")

# A publish retried within this window (after a lost ack, a reconnect) is stored once.
DEDUP_WINDOW_S = 300.0
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"bus namespace {namespace!r} is not valid: use 1-64 letters, digits, '_' or '-' "
            "(it names a JetStream stream and a subject prefix)"
        )
    return namespace


def encode_body(event_id: str, ts: float, data: str) -> bytes:
    return f"{event_id}\n{ts!r}\n{data}".encode()


_EVENT_ID = re.compile(r"^evt_[0-9a-f]{1,64}_[0-9]{1,20}$")
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ForeignMessageError(ValueError):
    """A message on the hook subjects that no ComfyVN server wrote (or a damaged one)."""


def decode_row(seq: int, event: str, body: bytes) -> LogRow:
    """Rebuild a row, checking every part that goes into the wire form unescaped: anything
    else on our subjects (another tool publishing there, a damaged message) is refused, so it
    can never forge a field of an envelope or break the JSON a client parses."""
    try:
        event_id, ts_text, data = body.decode().split("\n", 2)
        ts = float(ts_text)
        valid = (
            _EVENT_ID.fullmatch(event_id) is not None
            and _EVENT_NAME.fullmatch(event) is not None
            and math.isfinite(ts)
            and isinstance(json.loads(data), dict)
        )
    except (UnicodeDecodeError, ValueError):
        valid = False
    if not valid:
        raise ForeignMessageError(
            f"message {seq} on {event!r} is not a ComfyVN envelope; it is skipped"
        )
    return LogRow(seq, event_id, event, ts, data)


class JetStreamEventLog:
    """Reads go through short-lived consumers on the link's loop; callers are worker threads
    (``asyncio.to_thread`` from routes and subscriptions), never the link's own loop."""

    path = None  # nothing in the data dir: the stream lives in NATS

    def __init__(
        self,
        link: NatsLink,
        namespace: str,
        retention: RetentionPolicy,
        *,
        read_timeout_s: float = 10.0,
    ) -> None:
        self.link = link
        self.namespace = check_namespace(namespace)
        self.stream = f"{namespace}-hooks"
        self.prefix = f"{namespace}.hooks."
        self.retention = retention
        self.read_timeout_s = read_timeout_s
        self.created: Any = None  # the stream's creation time: a change means it was replaced

    def subject(self, event: str) -> str:
        return self.prefix + event

    # -- set-up ------------------------------------------------------------------------------
    def ensure_stream(self) -> None:
        self.link.run(self._ensure_stream(), timeout=self.read_timeout_s)

    async def _ensure_stream(self) -> None:
        from nats.js import api
        from nats.js.errors import NotFoundError

        config = api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_msgs=self.retention.max_events or -1,
            max_age=self.retention.max_age_s or 0,
            duplicate_window=DEDUP_WINDOW_S,
            allow_direct=True,
            num_replicas=1,
        )
        jsm = self.link.jsm
        try:
            info = await jsm.stream_info(self.stream)
        except NotFoundError:
            info = await jsm.add_stream(config)
        else:
            # Only what this node's flags say changes (its retention); replicas, placement
            # and anything an operator set on the stream stay as they are.
            current = info.config
            wanted = (config.max_msgs, config.max_age)
            if (current.max_msgs, current.max_age) != wanted:
                current.max_msgs, current.max_age = wanted
                info = await jsm.update_stream(current)
        if self.created is None:  # a later re-creation is noticed by the bus's stream check
            self.created = info.created

    # -- reads -------------------------------------------------------------------------------
    async def _state(self) -> Any:
        info = await self.link.jsm.stream_info(self.stream)
        return info.state

    def latest_seq(self) -> int:
        return int(self.link.run(self._state(), timeout=self.read_timeout_s).last_seq or 0)

    def first_seq(self) -> int | None:
        state = self.link.run(self._state(), timeout=self.read_timeout_s)
        if not state.messages:
            return None
        return int(state.first_seq)

    def read_since(
        self, since: int, limit: int, events: Iterable[str] | None = None
    ) -> list[LogRow]:
        return self.link.run(self._read(since + 1, limit, events), timeout=self.read_timeout_s)

    def read_latest(self, limit: int, events: Iterable[str] | None = None) -> list[LogRow]:
        return self.link.run(self._read_latest(limit, events), timeout=self.read_timeout_s)

    async def _read_latest(self, limit: int, events: Iterable[str] | None) -> list[LogRow]:
        """The last ``limit`` matching rows: a stream is read forwards only, so look back over a
        window that doubles until it holds enough (one short consumer per try)."""
        state = await self._state()
        last, first = int(state.last_seq or 0), int(state.first_seq or 1)
        if not state.messages:
            return []
        window = limit
        while True:
            start = max(first, last - window + 1)
            rows = await self._read(start, None, events)
            if len(rows) >= limit or start <= first:
                return rows[-limit:]
            window *= 4

    async def _read(
        self, start: int, limit: int | None, events: Iterable[str] | None
    ) -> list[LogRow]:
        """Rows from ``start`` on (all of them that exist now when ``limit`` is None)."""
        from nats.js import api

        names = None if events is None else sorted(set(events))
        if names == []:
            return []
        filters = [f"{self.prefix}>"] if names is None else [self.subject(n) for n in names]
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
            max_waiting=1,
        )
        if len(filters) == 1:
            config.filter_subject = filters[0]
        else:
            config.filter_subjects = filters
        js, jsm = self.link.js, self.link.jsm
        info = await jsm.add_consumer(self.stream, config=config)
        try:
            wanted = info.num_pending if limit is None else min(limit, info.num_pending)
            if not wanted:
                return []
            sub = await js.pull_subscribe_bind(consumer=info.name, stream=self.stream)
            rows: list[LogRow] = []
            cut = len(self.prefix)
            try:
                got = 0
                while got < wanted:
                    try:
                        msgs = await sub.fetch(min(wanted - got, 1000), timeout=5.0)
                    except TimeoutError:  # nats' own is a subclass
                        if await self._pruned_past(start, rows):
                            break  # retention took the rest while we read: not an error
                        raise
                    for msg in msgs:
                        got += 1
                        seq = msg.metadata.sequence.stream
                        try:
                            rows.append(decode_row(seq, msg.subject[cut:], msg.data))
                        except ForeignMessageError as exc:
                            log.warning("%s", exc)
            finally:
                await sub.unsubscribe()
            return rows
        finally:
            await _delete_consumer(jsm, self.stream, info.name)

    async def _pruned_past(self, start: int, rows: list[LogRow]) -> bool:
        """A fetch came back short: did retention remove what was left to read?"""
        state = await self._state()
        next_wanted = rows[-1].seq + 1 if rows else start
        return int(state.first_seq or 0) > next_wanted or not state.messages

    # -- the writer side is the bus's publisher; retention is the stream's own ---------------
    def append(self, rows: Sequence[LogRow]) -> None:
        raise NotImplementedError("on a shared bus the hook bus publishes; nothing appends")

    def prune(self, policy: RetentionPolicy, now: float | None = None) -> int:
        return 0

    def prune_batch(self, policy: RetentionPolicy, limit: int, now: float | None = None) -> int:
        return 0

    def close(self) -> None:
        pass


async def _delete_consumer(jsm: Any, stream: str, name: str) -> None:
    with contextlib.suppress(Exception):  # inactive_threshold removes it anyway
        await jsm.delete_consumer(stream, name)
