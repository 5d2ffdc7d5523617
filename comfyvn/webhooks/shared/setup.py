"""Streams, buckets and durable consumers of the webhook state, made idempotently at start.

Every node runs this when it starts; whatever exists is kept with its messages, and the
streams' limits and the consumers' ack wait of the node that started last win (as for the hooks
stream). All of it is file storage: the outbox survives a restart of NATS as the SQLite outbox
survives a restart of the server.

- ``<ns>-webhook-outbox``: deliveries, retries of manual redeliveries and pings. Limits
  retention by age (``COMFYVN_WEBHOOK_LOG_MAX_AGE``), not work-queue: a delivery stays
  readable after it is acknowledged, for the delivery log and for redeliver.
- ``<ns>-webhook-attempts``: the attempt log, the same age limit.
- ``<ns>-webhooks``: the subscriptions (KV, one revision kept: updates compare-and-set).
- ``<ns>-webhook-leases``: short-lived keys that stop two nodes from redelivering one
  delivery at the same moment (KV with a TTL, so a node that dies drops its lease).
- ``webhook-fanout`` on the hooks stream: created at the stream's end (``DeliverPolicy.NEW``),
  as a subscription only gets the events that come after it; made again from a given seq by
  :mod:`.upkeep` when it disappears (with a replaced hooks stream, for one).
- ``webhook-send-<sub_id>`` on the outbox, one per subscription (:mod:`.delivery` says why).
"""

from __future__ import annotations

from typing import Any

from ..config import WebhookConfig
from .names import Names

__all__ = [
    "DEDUP_WINDOW_S",
    "ensure_consumer",
    "ensure_fanout",
    "ensure_layout",
    "fanout_consumer_config",
    "sender_consumer_config",
]

# A fan-out or an attempt record redone within this window (a node that died before its ack,
# a lost publish ack) is stored once: Nats-Msg-Id is deterministic for both.
DEDUP_WINDOW_S = 300.0


async def ensure_layout(
    js: Any, jsm: Any, names: Names, cfg: WebhookConfig, fanout_start: int | None = None
) -> tuple[Any, Any]:
    """Make the streams, buckets and the fan-out consumer; returns the two KV handles.
    ``fanout_start``: where a fan-out consumer made now starts (None: the stream's end)."""
    from nats.js import api

    for name, subjects in (
        (names.outbox_stream, names.outbox_subjects),
        (names.attempts_stream, names.attempts_subjects),
    ):
        await _ensure_stream(
            jsm,
            api.StreamConfig(
                name=name,
                subjects=subjects,
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
                max_age=cfg.log_max_age_s,
                duplicate_window=DEDUP_WINDOW_S,
                allow_direct=True,
                num_replicas=1,
            ),
        )
    subs = await _ensure_bucket(
        js, api.KeyValueConfig(bucket=names.subscriptions_bucket, storage=api.StorageType.FILE)
    )
    leases = await _ensure_bucket(
        js,
        api.KeyValueConfig(
            bucket=names.leases_bucket,
            storage=api.StorageType.FILE,
            ttl=max(60.0, 2 * cfg.timeout_s),
        ),
    )
    await ensure_fanout(jsm, names, cfg, fanout_start)
    return subs, leases


async def ensure_fanout(jsm: Any, names: Names, cfg: WebhookConfig, start_seq: int | None) -> None:
    """Create the fan-out consumer, or update the one there (ack wait) keeping where it
    starts: JetStream refuses a change of deliver policy on an existing consumer."""
    from nats.js.errors import NotFoundError

    try:
        info = await jsm.consumer_info(names.hooks_stream, names.fanout_consumer)
    except NotFoundError:
        info = None
    config = fanout_consumer_config(names, cfg, start_seq)
    if info is not None:
        config.deliver_policy = info.config.deliver_policy
        config.opt_start_seq = info.config.opt_start_seq
    await ensure_consumer(jsm, names.hooks_stream, config)


def fanout_consumer_config(names: Names, cfg: WebhookConfig, start_seq: int | None) -> Any:
    """The fan-out's consumer: at the stream's end at first (``start_seq`` None); when it is
    made again after it disappeared (:mod:`.upkeep`), from ``start_seq``, so the events of
    a replaced stream, or those after the last one fanned out, are not skipped."""
    from nats.js import api

    by_seq = start_seq is not None
    return api.ConsumerConfig(
        name=names.fanout_consumer,
        durable_name=names.fanout_consumer,
        description="comfyvn webhooks: one outbox message per event and subscription",
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if by_seq else api.DeliverPolicy.NEW,
        opt_start_seq=max(1, start_seq or 1) if by_seq else None,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_ack_pending=-1,
        max_deliver=-1,
        filter_subject=f"{names.hooks_prefix}>",
    )


def sender_consumer_config(names: Names, sub_id: str, cfg: WebhookConfig) -> Any:
    """The delivery queue of one subscription, shared by every node.

    ``max_ack_pending`` is unlimited because deliveries waiting for a retry (a nak with a delay,
    up to hours) count as pending: a cap would let one failing endpoint's retries stop its new
    deliveries, which the embedded worker never does. ``max_deliver`` is unlimited as the
    schedule, not JetStream, decides when a delivery is exhausted."""
    from nats.js import api

    name = names.sender_consumer(sub_id)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"comfyvn webhooks: deliveries of {sub_id}",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_ack_pending=-1,
        max_deliver=-1,
        filter_subjects=[names.outbox(sub_id), names.retry(sub_id)],
    )


async def ensure_consumer(jsm: Any, stream: str, config: Any) -> None:
    """Create, or update in place (ack wait) a durable consumer; its position is kept."""
    await jsm.add_consumer(stream, config)


async def _ensure_stream(jsm: Any, config: Any) -> None:
    from nats.js.errors import NotFoundError

    try:
        await jsm.stream_info(config.name)
    except NotFoundError:
        try:
            await jsm.add_stream(config)
            return
        except Exception:  # another node created it meanwhile: update it below
            await jsm.stream_info(config.name)
    await jsm.update_stream(config)


async def _ensure_bucket(js: Any, config: Any) -> Any:
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except Exception:  # another node created it meanwhile
            return await js.key_value(config.bucket)
