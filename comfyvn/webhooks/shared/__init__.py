"""Webhooks on a shared bus (``serve --bus nats://...``): every node delivers, none owns them.

The embedded forwarder keeps subscriptions, outbox and attempts in the data dir's SQLite file;
on a shared bus they live in NATS JetStream next to the hook stream, so any node answers the
webhook routes and any node sends:

- :mod:`.names`: every stream, bucket, subject and consumer name of a namespace;
- :mod:`.setup`: makes them (idempotently, by every node at start);
- :mod:`.records`: what the KV values and messages hold;
- :mod:`.catalog`: the subscriptions (KV bucket, compare-and-set) and each node's live copy;
- :mod:`.fanout`: hook events to outbox messages (a durable consumer shared by all nodes);
- :mod:`.delivery`: outbox messages to signed POSTs (durable consumers shared by all nodes);
- :mod:`.effects`: what attempts do to their subscription (410, auto-disable, counters);
- :mod:`.deliveries` and :mod:`.reading`: the delivery log, rebuilt from the streams;
- :mod:`.upkeep`: makes again what disappears from NATS (a deleted stream or consumer);
- :mod:`.manager`: what the server holds as ``services.webhooks``.

Signing, the address policy, the retry schedule and ``Retry-After`` are the embedded
forwarder's own code (:mod:`..sender`, :mod:`..retry`). Imported only with a bus configured:
it needs ``nats-py`` (the ``bus`` extra).
"""

from .manager import SharedWebhookManager, start_shared_webhooks

__all__ = ["SharedWebhookManager", "start_shared_webhooks"]
