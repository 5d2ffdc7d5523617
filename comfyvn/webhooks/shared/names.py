"""Where the webhook state of one bus namespace lives in NATS: every name in one place.

Subjects carry the subscription id as a token, so one subscription's deliveries, retries,
pings and attempts can be read, counted, consumed and purged by subject filter alone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Names"]


@dataclass(frozen=True, slots=True)
class Names:
    namespace: str
    hooks_stream: str  # the bus's own stream (JetStreamEventLog.stream)
    hooks_prefix: str  # its subject prefix, "<ns>.hooks."

    @property
    def subscriptions_bucket(self) -> str:
        return f"{self.namespace}-webhooks"

    @property
    def leases_bucket(self) -> str:
        return f"{self.namespace}-webhook-leases"

    @property
    def outbox_stream(self) -> str:
        return f"{self.namespace}-webhook-outbox"

    @property
    def attempts_stream(self) -> str:
        return f"{self.namespace}-webhook-attempts"

    @property
    def fanout_consumer(self) -> str:
        return "webhook-fanout"

    def sender_consumer(self, sub_id: str) -> str:
        return f"webhook-send-{sub_id}"

    # -- outbox stream: a delivery, a retry after a manual redeliver, a ping -------------------
    def outbox(self, sub_id: str) -> str:
        return f"{self.namespace}.webhook.outbox.{sub_id}"

    def retry(self, sub_id: str) -> str:
        return f"{self.namespace}.webhook.retry.{sub_id}"

    def ping(self, sub_id: str) -> str:
        return f"{self.namespace}.webhook.ping.{sub_id}"

    def any_of(self, sub_id: str) -> str:
        """Every outbox-stream subject of one subscription."""
        return f"{self.namespace}.webhook.*.{sub_id}"

    @property
    def outbox_subjects(self) -> list[str]:
        ns = self.namespace
        return [f"{ns}.webhook.outbox.>", f"{ns}.webhook.retry.>", f"{ns}.webhook.ping.>"]

    # -- attempts stream: one subject per delivery, so its last attempt is one direct get ------
    def attempts(self, sub_id: str, delivery_id: int) -> str:
        return f"{self.namespace}.webhook.attempts.{sub_id}.{delivery_id}"

    def attempts_of(self, sub_id: str) -> str:
        return f"{self.namespace}.webhook.attempts.{sub_id}.>"

    @property
    def attempts_subjects(self) -> list[str]:
        return [f"{self.namespace}.webhook.attempts.>"]

    def kind(self, subject: str) -> tuple[str, str]:
        """``(kind, sub_id)`` of an outbox-stream subject: kind is outbox, retry or ping."""
        *_, kind, sub_id = subject.split(".")
        return kind, sub_id
