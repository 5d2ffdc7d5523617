"""Reading a run of messages from a stream, for the delivery log routes.

A short-lived consumer (no acks, in memory, removed at the end and by the server if the node
dies first) reads what exists when it is created, from a sequence or a time, filtered by
subject, optionally headers only. The same approach as the hook history's reads.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

__all__ = ["read_range"]

_FETCH_MAX = 1000


async def read_range(
    js: Any,
    jsm: Any,
    stream: str,
    filters: list[str],
    *,
    start_seq: int | None = None,
    start_time: float | None = None,
    stop_seq: int | None = None,
    headers_only: bool = False,
) -> list[Any]:
    """Messages matching ``filters`` from ``start_seq`` (or ``start_time``, or the first) up
    to ``stop_seq`` (or the stream's end now), in stream order."""
    from nats.js import api

    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
        max_waiting=1,
        headers_only=headers_only or None,
    )
    if start_seq is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = max(1, start_seq)
    elif start_time is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.datetime.fromtimestamp(max(0.0, start_time), datetime.UTC)
    else:
        config.deliver_policy = api.DeliverPolicy.ALL
    if len(filters) == 1:
        config.filter_subject = filters[0]
    else:
        config.filter_subjects = filters
    info = await jsm.add_consumer(stream, config=config)
    try:
        wanted = int(info.num_pending or 0)
        if not wanted:
            return []
        sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        out: list[Any] = []
        try:
            while len(out) < wanted:
                msgs = await sub.fetch(min(wanted - len(out), _FETCH_MAX), timeout=5.0)
                for msg in msgs:
                    if stop_seq is not None and msg.metadata.sequence.stream > stop_seq:
                        return out
                    out.append(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out
    finally:
        with contextlib.suppress(Exception):  # inactive_threshold removes it anyway
            await jsm.delete_consumer(stream, info.name)
