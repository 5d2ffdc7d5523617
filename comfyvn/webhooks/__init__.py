"""Webhook forwarder: durable subscriptions, Standard Webhooks signing, outbox and delivery.

Layout: :mod:`.config` (env knobs), :mod:`.models` (records and API bodies); shared by both
stores, :mod:`.signing`, :mod:`.sender` (one signed POST, through the server-wide outbound
policy of :mod:`comfyvn.net`) and :mod:`.retry` (where a delivery goes after an attempt); the
embedded store, :mod:`.store` (SQLite tables next to the event log), :mod:`.outbox` (rows
written in the event's own transaction), :mod:`.worker` (sending and retries) and
:mod:`.manager` (what the server holds as ``services.webhooks``). On a shared bus (``--bus``)
:mod:`.shared` takes the place of the last four, with the same interface and its state in
NATS JetStream.
"""

from .config import WebhookConfig
from .manager import WebhookError, WebhookManager, start_webhooks

__all__ = ["WebhookConfig", "WebhookError", "WebhookManager", "start_webhooks"]
