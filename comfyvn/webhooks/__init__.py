"""Webhook forwarder: durable subscriptions, Standard Webhooks signing, outbox and delivery.

Layout: :mod:`.config` (env knobs), :mod:`.models` (records and API bodies), :mod:`.signing`,
:mod:`.safety` and :mod:`.transport` (where a webhook may go: re-exports of the server-wide
outbound policy in :mod:`comfyvn.net`), :mod:`.store` (SQLite tables next
to the event log), :mod:`.outbox` (rows written in the event's own transaction), :mod:`.worker`
(sending and retries) and :mod:`.manager` (what the server holds as ``services.webhooks``).
"""

from .config import WebhookConfig
from .manager import WebhookError, WebhookManager, start_webhooks

__all__ = ["WebhookConfig", "WebhookError", "WebhookManager", "start_webhooks"]
