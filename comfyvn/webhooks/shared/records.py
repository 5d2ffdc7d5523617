"""What the webhook messages and KV values hold, and how the delivery log is rebuilt from them.

Nothing here talks to NATS: these are the encodings, kept apart so every reader and writer
agrees on them.

- A subscription is one KV value: the :class:`Subscription` fields as JSON, plus ``from_seq``,
  the hooks stream's last seq when it was created (the fan-out gives it only later events).
- A delivery is one outbox message: the body is the envelope exactly as POSTed; the headers
  name the event, its id and seq, so a listing reads headers only. Its stream sequence is the
  delivery id the routes use: unique and increasing, like the SQLite row id.
- An attempt is one message on the delivery's own subject in the attempts stream, carrying
  everything the log shows plus what the next node needs to go on: ``tries`` (attempts of the
  schedule so far), ``status`` and ``next_attempt_at`` after it, and ``via``, the outbox
  message that drove it (see :mod:`.delivery`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from comfyvn.core.json_input import read_json

from ..models import Attempt, Delivery, Subscription
from ..store import Outcome

__all__ = [
    "H_ATTEMPT",
    "H_DELIVERY",
    "H_DUE",
    "H_EVENT",
    "H_EVENT_ID",
    "H_SEQ",
    "H_STATUS",
    "AttemptRecord",
    "OutboxItem",
    "SubscriptionRecord",
    "build_delivery",
]

H_EVENT = "Comfyvn-Event"
H_EVENT_ID = "Comfyvn-Event-Id"
H_SEQ = "Comfyvn-Seq"
H_DELIVERY = "Comfyvn-Delivery"  # on a retry message: the delivery it continues
H_ATTEMPT = "Comfyvn-Attempt"  # on a retry message: the number of the attempt that asked for it
H_DUE = "Comfyvn-Due"  # on a retry message: when it falls due (UTC seconds)
H_STATUS = "Comfyvn-Status"  # on an attempt: the delivery's status after it

_SUB_FIELDS = [f.name for f in fields(Subscription)]


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    sub: Subscription
    from_seq: int  # hooks stream seq at creation: only later events are fanned out to it
    revision: int = 0  # KV revision this was read at (compare-and-set)
    # The hooks stream's creation time that ``from_seq`` counts in: once the stream is
    # replaced (deleted and made again, seqs start over) every event of the new one is later.
    hooks_created: str = ""

    def start_after(self, hooks_created: str) -> int:
        """The seq after which events go to it, in the hooks stream created at this time."""
        if self.hooks_created and hooks_created and self.hooks_created != hooks_created:
            return 0
        return self.from_seq

    def encode(self) -> bytes:
        values = asdict(self.sub)
        values["events"] = list(self.sub.events)
        values["from_seq"] = self.from_seq
        values["hooks_created"] = self.hooks_created
        return json.dumps(values, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, revision: int) -> SubscriptionRecord:
        values = read_json(data, what="webhook subscription record")  # NATS is outside us
        from_seq = int(values.pop("from_seq", 0))
        hooks_created = str(values.pop("hooks_created", "") or "")
        known = {k: values[k] for k in _SUB_FIELDS if k in values}
        known["events"] = tuple(known["events"])
        return cls(Subscription(**known), from_seq, revision, hooks_created)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One outbox-stream message: a delivery, a retry of one (``continues``) or a ping."""

    msg_seq: int  # its stream sequence
    sub_id: str
    kind: str  # outbox | retry | ping
    event: str
    event_id: str
    event_seq: int | None
    created_at: float
    body: str
    continues: int | None = None  # retry: the delivery id it continues
    after_attempt: int = 0  # retry: the manual attempt that asked for it
    due: float | None = None  # retry: when it falls due

    @property
    def delivery_id(self) -> int:
        return self.continues if self.continues is not None else self.msg_seq

    @staticmethod
    def headers(event: str, event_id: str, seq: int | None) -> dict[str, str]:
        out = {H_EVENT: event, H_EVENT_ID: event_id}
        if seq is not None:
            out[H_SEQ] = str(seq)
        return out

    @classmethod
    def parse(
        cls,
        msg_seq: int,
        kind: str,
        sub_id: str,
        headers: dict[str, str] | None,
        created_at: float,
        data: bytes | None,
    ) -> OutboxItem:
        h = headers or {}
        seq = h.get(H_SEQ)
        continues = h.get(H_DELIVERY)
        due = h.get(H_DUE)
        return cls(
            msg_seq=msg_seq,
            sub_id=sub_id,
            kind=kind,
            event=h.get(H_EVENT, ""),
            event_id=h.get(H_EVENT_ID, ""),
            event_seq=int(seq) if seq else None,
            created_at=created_at,
            body=(data or b"").decode(),
            continues=int(continues) if continues else None,
            after_attempt=int(h.get(H_ATTEMPT, "0")),
            due=float(due) if due else None,
        )


@dataclass(slots=True)
class AttemptRecord:
    delivery: int
    attempt: int  # 1, 2, ... per delivery
    tries: int
    status: str  # the delivery's status after it: pending | delivered | failed
    next_attempt_at: float | None
    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    response: str | None
    outcome: str
    via: int  # the outbox message that drove it; 0 for a ping or a final manual attempt
    node: str = ""

    @classmethod
    def of(cls, outcome: Outcome, *, via: int, node: str) -> AttemptRecord:
        a = outcome.attempt
        return cls(
            delivery=a.delivery_id,
            attempt=a.number,
            tries=outcome.tries,
            status=outcome.status,
            next_attempt_at=outcome.next_attempt_at,
            started_at=a.started_at,
            latency_ms=a.latency_ms,
            status_code=a.status_code,
            error=a.error,
            response=a.response,
            outcome=a.outcome,
            via=via,
            node=node,
        )

    @property
    def final(self) -> bool:
        return self.status != "pending"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> AttemptRecord:
        values: dict[str, Any] = read_json(data, what="webhook attempt record")
        return cls(**{f.name: values.get(f.name) for f in fields(cls) if f.name in values})

    def to_attempt(self, sub_id: str) -> Attempt:
        return Attempt(
            delivery_id=self.delivery,
            webhook_id=sub_id,
            started_at=self.started_at,
            latency_ms=self.latency_ms,
            status_code=self.status_code,
            error=self.error,
            response=self.response,
            number=self.attempt,
            outcome=self.outcome,
        )


def build_delivery(
    item: OutboxItem, attempts: list[AttemptRecord], first_delay_s: float
) -> Delivery:
    """The delivery as the routes show it: its state is its last attempt's."""
    last = attempts[-1] if attempts else None
    return Delivery(
        id=item.delivery_id,
        webhook_id=item.sub_id,
        event_seq=item.event_seq,
        event_id=item.event_id,
        event=item.event,
        status=last.status if last else "pending",
        attempts=len(attempts),
        tries=last.tries if last else 0,
        next_attempt_at=last.next_attempt_at if last else item.created_at + first_delay_s,
        created_at=item.created_at,
        updated_at=last.started_at if last else item.created_at,
        last_status_code=last.status_code if last else None,
        last_error=last.error if last else None,
        last_latency_ms=last.latency_ms if last else None,
        body=item.body,
    )
