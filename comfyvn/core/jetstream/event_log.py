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
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..event_log import LogRow, RetentionPolicy
from .link import NatsLink

__all__ = ["DEDUP_WINDOW_S", "JetStreamEventLog", "check_namespace", "decode_row", "encode_body"]

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


def decode_row(seq: int, event: str, body: bytes) -> LogRow:
    event_id, ts, data = body.decode().split("\n", 2)
    return LogRow(seq, event_id, event, float(ts), data)


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
        js = self.link.jsm
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(config)
        else:  # the retention flags of this node win; the stream keeps its messages
            await js.update_stream(config)

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
                while len(rows) < wanted:
                    try:
                        msgs = await sub.fetch(min(wanted - len(rows), 1000), timeout=5.0)
                    except TimeoutError:  # nats' own is a subclass; retention took the rest
                        break
                    for msg in msgs:
                        seq = msg.metadata.sequence.stream
                        rows.append(decode_row(seq, msg.subject[cut:], msg.data))
            finally:
                await sub.unsubscribe()
            return rows
        finally:
            await _delete_consumer(jsm, self.stream, info.name)

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
