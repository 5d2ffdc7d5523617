"""The delivery log on a shared bus: outbox messages plus their attempts, read by any node.

There is no table to update: a delivery's state is its last attempt record (one subject per
delivery in the attempts stream, so that is one direct get), and the routes' listing is
rebuilt from the two streams in the shape the SQLite log answers with. Newest first by id
(the outbox sequence), read backwards in windows that grow until a page is full, headers only.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from ..models import Delivery
from .names import Names
from .reading import read_range
from .records import (
    H_ATTEMPT,
    H_DELIVERY,
    H_DUE,
    H_STATUS,
    AttemptRecord,
    OutboxItem,
    build_delivery,
)

__all__ = ["DeliveryLog"]

_FIRST_WINDOW = 256
_STREAM_NOT_FOUND = 10059  # JetStream's err_code


class DeliveryLog:
    def __init__(self, js: Any, jsm: Any, names: Names, first_delay_s: float) -> None:
        self.js = js
        self.jsm = jsm
        self.names = names
        self.first_delay_s = first_delay_s

    # -- writing -----------------------------------------------------------------------------
    async def record(self, sub_id: str, record: AttemptRecord) -> None:
        """Store one attempt; a retried publish of the same attempt is stored once."""
        await self.js.publish(
            self.names.attempts(sub_id, record.delivery),
            record.encode(),
            stream=self.names.attempts_stream,
            headers={
                # started_at too: two distinct attempts with the same number and message
                # (two nodes, a redelivery after ack_wait) are both stored; only a retried
                # publish of this very record is stored once.
                "Nats-Msg-Id": (
                    f"{record.delivery}.{record.attempt}.{record.via}.{record.started_at!r}"
                ),
                H_STATUS: record.status,  # counts read headers only
            },
        )

    async def publish_ping(self, sub_id: str, msg_id: str, body: str) -> int:
        ack = await self.js.publish(
            self.names.ping(sub_id),
            body.encode(),
            stream=self.names.outbox_stream,
            headers={"Nats-Msg-Id": msg_id, **OutboxItem.headers("ping", msg_id, None)},
        )
        return int(ack.seq)

    async def publish_retry(self, item: OutboxItem, after_attempt: int, due: float | None) -> int:
        """A manual redeliver failed: its retries go through the outbox consumer like any
        delivery's, driven by this message (see :mod:`.delivery`)."""
        headers = {
            "Nats-Msg-Id": f"retry.{item.delivery_id}.{after_attempt}",
            **OutboxItem.headers(item.event, item.event_id, item.event_seq),
            H_DELIVERY: str(item.delivery_id),
            H_ATTEMPT: str(after_attempt),
        }
        if due is not None:
            headers[H_DUE] = repr(due)
        ack = await self.js.publish(
            self.names.retry(item.sub_id),
            item.body.encode(),
            stream=self.names.outbox_stream,
            headers=headers,
        )
        return int(ack.seq)

    async def purge(self, sub_id: str) -> None:
        """A deleted subscription's deliveries, retries, pings and attempts go with it."""
        await self.jsm.purge_stream(self.names.outbox_stream, subject=self.names.any_of(sub_id))
        await self.jsm.purge_stream(
            self.names.attempts_stream, subject=self.names.attempts_of(sub_id)
        )

    # -- reading -----------------------------------------------------------------------------
    async def last_attempt(self, sub_id: str, delivery_id: int) -> AttemptRecord | None:
        from nats.js.errors import NotFoundError

        try:
            raw = await self.jsm.get_last_msg(
                self.names.attempts_stream, self.names.attempts(sub_id, delivery_id), direct=True
            )
        except NotFoundError as exc:
            if getattr(exc, "err_code", None) == _STREAM_NOT_FOUND:  # not "no attempt yet"
                raise
            return None
        return AttemptRecord.decode(raw.data)

    async def item(self, delivery_id: int) -> OutboxItem | None:
        """The delivery (or ping) with this id; ``None`` for a retry message or no message."""
        from nats.js.errors import NotFoundError

        try:
            raw = await self.jsm.get_msg(self.names.outbox_stream, seq=delivery_id, direct=True)
        except NotFoundError:
            return None
        kind, sub_id = self.names.kind(raw.subject)
        if kind == "retry":
            return None
        created = raw.time.timestamp() if raw.time is not None else time.time()
        return OutboxItem.parse(int(raw.seq), kind, sub_id, raw.headers, created, raw.data)

    async def attempts(self, sub_id: str, delivery_id: int, since: float) -> list[AttemptRecord]:
        msgs = await read_range(
            self.js,
            self.jsm,
            self.names.attempts_stream,
            [self.names.attempts(sub_id, delivery_id)],
            start_time=since - 1.0,
        )
        return [AttemptRecord.decode(m.data) for m in msgs]

    async def _attempts_by_delivery(
        self, sub_id: str, since: float | None
    ) -> dict[int, list[AttemptRecord]]:
        msgs = await read_range(
            self.js,
            self.jsm,
            self.names.attempts_stream,
            [self.names.attempts_of(sub_id)],
            start_time=None if since is None else since - 1.0,
        )
        grouped: dict[int, list[AttemptRecord]] = defaultdict(list)
        for msg in msgs:
            record = AttemptRecord.decode(msg.data)
            grouped[record.delivery].append(record)
        return grouped

    async def _items(self, sub_id: str, start: int, stop: int) -> list[OutboxItem]:
        names = self.names
        msgs = await read_range(
            self.js,
            self.jsm,
            names.outbox_stream,
            [names.outbox(sub_id), names.ping(sub_id)],
            start_seq=start,
            stop_seq=stop,
            headers_only=True,
        )
        items = []
        for msg in msgs:
            kind, _ = names.kind(msg.subject)
            created = msg.metadata.timestamp.timestamp()
            seq = msg.metadata.sequence.stream
            items.append(OutboxItem.parse(seq, kind, sub_id, msg.headers, created, None))
        return items

    async def list(
        self, sub_id: str, status: str | None, limit: int, before: int | None
    ) -> list[Delivery]:
        state = (await self.jsm.stream_info(self.names.outbox_stream)).state
        if not state.messages:
            return []
        first, top = int(state.first_seq), int(state.last_seq)
        if before is not None:
            top = min(top, before - 1)
        window = max(_FIRST_WINDOW, limit * 4)
        while True:
            start = max(first, top - window + 1)
            items = await self._items(sub_id, start, top) if start <= top else []
            done = start <= first
            if status is None:
                items = items[-limit:]
                if len(items) >= limit or done:
                    return await self._deliveries(sub_id, items)
            else:
                rows = [d for d in await self._deliveries(sub_id, items) if d.status == status]
                if len(rows) >= limit or done:
                    return rows[:limit]
            window *= 4

    async def _deliveries(self, sub_id: str, items: list[OutboxItem]) -> list[Delivery]:
        """Newest first, each with the state of its last attempt."""
        if not items:
            return []
        attempts = await self._attempts_by_delivery(sub_id, min(i.created_at for i in items))
        delay = self.first_delay_s
        rows = [build_delivery(i, attempts.get(i.delivery_id, []), delay) for i in items]
        rows.sort(key=lambda d: d.id, reverse=True)
        return rows

    async def counts(self, sub_id: str) -> dict[str, int]:
        info = await self.jsm.stream_info(
            self.names.outbox_stream, subjects_filter=self.names.any_of(sub_id)
        )
        subjects = info.state.subjects or {}
        total = sum(n for subject, n in subjects.items() if self.names.kind(subject)[0] != "retry")
        counts = {"pending": 0, "delivered": 0, "failed": 0}
        if not total:
            return counts
        first = int(info.state.first_seq or 0)
        msgs = await read_range(
            self.js,
            self.jsm,
            self.names.attempts_stream,
            [self.names.attempts_of(sub_id)],
            headers_only=True,
        )
        last: dict[int, str] = {}  # delivery id -> status after its latest attempt
        for msg in msgs:
            last[int(msg.subject.rsplit(".", 1)[1])] = (msg.headers or {}).get(H_STATUS, "")
        for delivery_id, status in last.items():
            if delivery_id >= first and status in ("delivered", "failed"):
                counts[status] += 1
        counts["pending"] = max(0, total - counts["delivered"] - counts["failed"])
        return counts


def ping_body(sub_id: str, msg_id: str, now: float) -> str:
    return json.dumps(
        {
            "seq": None,
            "id": msg_id,
            "event": "ping",
            "ts": now,
            "data": {"webhook_id": sub_id, "message": "ping from ComfyVN Studio"},
        },
        separators=(",", ":"),
    )
