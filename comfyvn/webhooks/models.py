"""Webhook records (plain dataclasses inside) and the API bodies (pydantic at the edge)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from comfyvn.net import MAX_URL_LENGTH, redact_url

from .signing import mask_secret, parse_secret

__all__ = [
    "DELIVERY_STATUSES",
    "Attempt",
    "AttemptOut",
    "Delivery",
    "DeliveryDetail",
    "DeliveryList",
    "DeliveryOut",
    "DeliveryStatus",
    "RotateSecretRequest",
    "SendResult",
    "Subscription",
    "WebhookChanged",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookDeleteByUrl",
    "WebhookDeleted",
    "WebhookDetail",
    "WebhookList",
    "WebhookOut",
    "WebhookPatch",
]

DeliveryStatus = Literal["pending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")
ALL_EVENTS = "*"


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    url: str
    events: tuple[str, ...]  # ("*",) means every hook
    secret: str = field(repr=False)  # never in a log line or a traceback's locals
    enabled: bool
    description: str
    created_at: float
    updated_at: float
    old_secret: str | None = field(default=None, repr=False)
    old_secret_expires_at: float | None = None
    disabled_reason: str | None = None
    consecutive_failures: int = 0
    last_success_at: float | None = None
    last_failure_at: float | None = None

    @property
    def event_filter(self) -> frozenset[str] | None:
        return None if ALL_EVENTS in self.events else frozenset(self.events)

    def signing_keys(self, now: float) -> list[bytes]:
        """The current key, plus the previous one while its rotation grace period lasts."""
        keys = [parse_secret(self.secret)]
        if self.old_secret and (self.old_secret_expires_at or 0) > now:
            keys.append(parse_secret(self.old_secret))
        return keys

    def masked(self, now: float | None = None) -> dict[str, Any]:
        rotating = bool(self.old_secret) and (
            now is None or (self.old_secret_expires_at or 0) > now
        )
        return {
            "id": self.id,
            "url": redact_url(self.url),
            "events": list(self.events),
            "secret": mask_secret(self.secret),
            "enabled": self.enabled,
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "disabled_reason": self.disabled_reason,
            "consecutive_failures": self.consecutive_failures,
            "last_success_at": self.last_success_at,
            "last_failure_at": self.last_failure_at,
            "previous_secret_expires_at": self.old_secret_expires_at if rotating else None,
        }


@dataclass(slots=True)
class Delivery:
    id: int
    webhook_id: str
    event_seq: int | None
    event_id: str
    event: str
    status: str
    attempts: int
    tries: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    body: str

    def to_dict(self, *, envelope: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event": self.event,
            "event_id": self.event_id,
            "seq": self.event_seq,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at if self.status == "pending" else None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "last_latency_ms": self.last_latency_ms,
        }
        if envelope:
            out["envelope"] = json.loads(self.body)
        return out


@dataclass(slots=True)
class Attempt:
    """One HTTP attempt as logged: status code, latency, error and the start of the response."""

    delivery_id: int
    webhook_id: str
    started_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    response: str | None
    retry_after: float | None = None
    number: int = 0
    outcome: str = ""  # delivered | retry | failed | disabled

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "started_at": self.started_at,
            "latency_ms": self.latency_ms,
            "status_code": self.status_code,
            "ok": self.ok,
            "error": self.error,
            "response": self.response,
            "outcome": self.outcome,
        }


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCreate(_Body):
    url: str = Field(
        max_length=MAX_URL_LENGTH, description="http(s) URL that receives the POSTed envelopes."
    )
    events: list[str] = Field(
        default_factory=lambda: [ALL_EVENTS],
        min_length=1,
        max_length=100,
        description="Hook names to forward, or ['*'] for every hook.",
    )
    secret: str | None = Field(
        default=None,
        max_length=200,
        description="'whsec_' + base64 key (24-64 bytes); generated when omitted.",
    )
    enabled: bool = True
    description: str = Field(default="", max_length=500)


class WebhookPatch(_Body):
    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    events: list[str] | None = Field(default=None, min_length=1, max_length=100)
    enabled: bool | None = Field(
        default=None, description="Re-enabling clears the disable reason and failure count."
    )
    description: str | None = Field(default=None, max_length=500)


class WebhookDeleteByUrl(_Body):
    event: str = Field(description="Hook name to stop forwarding to the URL, or '*' for all.")
    url: str = Field(max_length=MAX_URL_LENGTH)


class RotateSecretRequest(_Body):
    secret: str | None = Field(default=None, max_length=200, description="New secret, or none.")
    grace_seconds: float | None = Field(
        default=None,
        ge=0,
        le=30 * 24 * 3600,
        description="How long the old secret keeps signing too (default 24 h).",
    )


# -- responses (documented in OpenAPI) ---------------------------------------------------------
class WebhookOut(BaseModel):
    id: str
    url: str = Field(description="Receiver URL (a password in it is masked).")
    events: list[str]
    secret: str | None = Field(
        description="Masked ('whsec_****abcd') except in the create and rotate-secret answers."
    )
    enabled: bool
    description: str
    created_at: float
    updated_at: float
    disabled_reason: str | None = Field(description="Why it was disabled (410, failures...).")
    consecutive_failures: int = Field(description="Exhausted deliveries since the last success.")
    last_success_at: float | None
    last_failure_at: float | None
    previous_secret_expires_at: float | None = Field(
        description="Until when the previous secret also signs (after a rotation)."
    )


class WebhookList(BaseModel):
    ok: bool = True
    items: list[WebhookOut]


class WebhookCreated(BaseModel):
    ok: bool = True
    webhook: WebhookOut
    note: str


class WebhookChanged(BaseModel):
    ok: bool = True
    webhook: WebhookOut


class WebhookDetail(BaseModel):
    ok: bool = True
    webhook: WebhookOut
    deliveries: dict[str, int] = Field(description="Delivery counts by status.")


class WebhookDeleted(BaseModel):
    ok: bool = True
    deleted: list[str] = Field(description="Ids of the subscriptions removed.")
    updated: list[str] = Field(default_factory=list, description="Ids that lost one event.")


class DeliveryOut(BaseModel):
    id: int
    webhook_id: str
    event: str = Field(description="Hook name, or 'ping'.")
    event_id: str = Field(description="Envelope id, sent as 'webhook-id' (idempotency key).")
    seq: int | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None = Field(description="When pending: the next attempt (UTC s).")
    created_at: float
    updated_at: float
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None


class DeliveryWithEnvelope(DeliveryOut):
    envelope: dict[str, Any] = Field(description="The body that is POSTed.")


class DeliveryList(BaseModel):
    ok: bool = True
    items: list[DeliveryOut]
    next_before: int | None = Field(description="Pass as 'before' for the next (older) page.")


class AttemptOut(BaseModel):
    attempt: int
    started_at: float
    latency_ms: float
    status_code: int | None
    ok: bool
    error: str | None
    response: str | None = Field(description="The first 1 KiB of the receiver's answer.")
    outcome: str = Field(description="delivered | retry | failed | disabled")


class DeliveryDetail(BaseModel):
    ok: bool = True
    delivery: DeliveryWithEnvelope
    attempts: list[AttemptOut]


class SendResult(BaseModel):
    ok: bool = True
    delivered: bool = Field(description="True when the receiver answered 2xx.")
    delivery: DeliveryOut | None
    attempt: AttemptOut
