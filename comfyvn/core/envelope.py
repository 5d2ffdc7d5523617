"""Envelopes: the one shape every consumer sees (history, WebSocket, SSE, webhooks).

The wire form of an envelope is built once, by the bus writer when it commits, and reused for
every subscriber: fan-out to fifty clients formats each envelope once, not fifty times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from .event_log import LogRow

__all__ = [
    "Emitted",
    "Envelope",
    "Gap",
    "encode_payload",
    "envelope_dict",
    "envelope_json",
    "envelope_of",
]

# One encoder for the process: json.dumps with non-default arguments builds a new JSONEncoder
# on every call, which was most of the writer's time per row.
encode_payload = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False).encode


class Emitted(NamedTuple):
    """What ``emit()`` hands back. On the embedded bus ``seq`` is final at once; on a shared
    bus (NATS JetStream) the stream assigns it, so it is 0 here and ``await
    bus.acknowledge(emitted)`` returns it; ``ticket`` is this process's emit counter."""

    event: str
    seq: int
    id: str
    ticket: int = 0


class Envelope(NamedTuple):
    """A committed envelope as subscribers get it: ``wire`` is its JSON text."""

    seq: int
    event: str
    wire: str


@dataclass(frozen=True, slots=True)
class Gap:
    """The log no longer holds envelopes ``first..last`` (retention pruned them)."""

    first: int
    last: int

    def to_dict(self) -> dict[str, Any]:
        return {"gap": True, "from": self.first, "to": self.last}


def envelope_json(row: LogRow) -> str:
    """The wire form of an envelope, built from the already-serialized payload."""
    return (
        f'{{"seq":{row.seq},"id":"{row.id}","event":"{row.event}",'
        f'"ts":{row.ts!r},"data":{row.data}}}'
    )


def envelope_of(row: LogRow) -> Envelope:
    return Envelope(row.seq, row.event, envelope_json(row))


def envelope_dict(row: LogRow) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "id": row.id,
        "event": row.event,
        "ts": row.ts,
        "data": json.loads(row.data),
    }
