"""Webhook routes: subscriptions, the delivery log, redeliver and ping.

Secrets are returned in full only by create and rotate-secret; everything else masks them.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel

from comfyvn.webhooks.manager import WebhookManager
from comfyvn.webhooks.models import (
    Attempt,
    Delivery,
    DeliveryDetail,
    DeliveryList,
    DeliveryStatus,
    RotateSecretRequest,
    SendResult,
    Subscription,
    WebhookChanged,
    WebhookCreate,
    WebhookCreated,
    WebhookDeleteByUrl,
    WebhookDeleted,
    WebhookDetail,
    WebhookList,
    WebhookPatch,
)

from ..bodies import parse_json_body
from ..errors import error_responses
from ..services import get_services

router = APIRouter(prefix="/api/modder/hooks/webhooks", tags=["webhooks"])

MAX_BODY_BYTES = 16 * 1024
B = TypeVar("B", bound=BaseModel)
# 400/401/422/503 are documented on every route by the app (COMMON_ERRORS).
_NOT_FOUND = error_responses(404)
DeliveryId = Annotated[int, Path(ge=1, le=2**62, description="Delivery id from the log")]


def _json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """Bodies are parsed by hand (size limit, named errors); this documents them."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _manager(request: Request) -> WebhookManager:
    """The embedded forwarder, or on a shared bus (``--bus``) the same interface backed by
    NATS (:class:`comfyvn.webhooks.shared.SharedWebhookManager`)."""
    services = get_services(request)
    manager = services.webhooks
    if manager is None:
        reason = services.webhooks_unavailable or "the webhook forwarder is not running"
        raise HTTPException(503, reason)
    return manager


async def _fresh(request: Request) -> WebhookManager:
    """The forwarder, once it has seen every subscription change made before this request
    (on a shared bus another node may have made it a moment ago; embedded, at once)."""
    manager = _manager(request)
    await manager.refresh()
    return manager


async def _body(request: Request, model: type[B], *, required: bool = True) -> B:
    return await parse_json_body(request, model, limit=MAX_BODY_BYTES, required=required)


def _with_secret(sub: Subscription) -> dict[str, Any]:
    """The one place a secret is shown: right after create or rotate."""
    return {**sub.masked(), "secret": sub.secret}


def _sent(delivery: Delivery | None, attempt: Attempt) -> dict[str, Any]:
    return {
        "ok": True,
        "delivered": attempt.ok,
        "delivery": delivery.to_dict() if delivery else None,
        "attempt": attempt.to_dict(),
    }


@router.get("", summary="List webhook subscriptions (secrets masked)", response_model=WebhookList)
async def list_webhooks(request: Request) -> dict[str, Any]:
    manager = await _fresh(request)
    return {"ok": True, "items": manager.describe_masked()}


@router.post(
    "",
    status_code=201,
    summary="Subscribe a URL; the response is the only one that shows the secret",
    response_model=WebhookCreated,
    responses=error_responses(409, 413),
    openapi_extra=_json_body(WebhookCreate),
)
async def create_webhook(request: Request) -> dict[str, Any]:
    manager = await _fresh(request)
    body = await _body(request, WebhookCreate)
    sub = await manager.create(body)
    return {
        "ok": True,
        "webhook": _with_secret(sub),
        "note": "store the secret now: it is not shown again (rotate it if lost)",
    }


@router.delete(
    "",
    summary="Stop sending one hook (or '*') to a URL: the simple case",
    response_model=WebhookDeleted,
    responses=error_responses(404, 409, 413),
    openapi_extra=_json_body(WebhookDeleteByUrl),
)
async def delete_by_url(request: Request) -> dict[str, Any]:
    manager = await _fresh(request)
    body = await _body(request, WebhookDeleteByUrl)
    result = await manager.delete_by_url(body.event, body.url)
    return {"ok": True, **result}


@router.get(
    "/{webhook_id}",
    summary="One subscription with delivery counts",
    response_model=WebhookDetail,
    responses=_NOT_FOUND,
)
async def get_webhook(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = await _fresh(request)
    sub = manager.get(webhook_id)
    counts = await asyncio.to_thread(manager.counts, webhook_id)
    return {"ok": True, "webhook": sub.masked(), "deliveries": counts}


@router.patch(
    "/{webhook_id}",
    summary="Change url, events, enabled or description",
    response_model=WebhookChanged,
    responses=error_responses(404, 413),
    openapi_extra=_json_body(WebhookPatch),
)
async def patch_webhook(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = await _fresh(request)
    body = await _body(request, WebhookPatch)
    sub = await manager.update(webhook_id, body)
    return {"ok": True, "webhook": sub.masked()}


@router.delete(
    "/{webhook_id}",
    summary="Delete a subscription and its delivery log",
    response_model=WebhookDeleted,
    responses=_NOT_FOUND,
)
async def delete_webhook(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = await _fresh(request)
    await manager.delete(webhook_id)
    return {"ok": True, "deleted": [webhook_id], "updated": []}


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="New secret; the old one keeps signing too for a grace period",
    response_model=WebhookChanged,
    responses=error_responses(404, 413),
    openapi_extra=_json_body(RotateSecretRequest, required=False),
)
async def rotate_secret(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = await _fresh(request)
    body = await _body(request, RotateSecretRequest, required=False)
    sub = await manager.rotate(webhook_id, body)
    return {"ok": True, "webhook": _with_secret(sub)}


@router.get(
    "/{webhook_id}/deliveries",
    summary="The delivery log, newest first",
    response_model=DeliveryList,
    responses=_NOT_FOUND,
)
async def list_deliveries(
    request: Request,
    webhook_id: str,
    status: Annotated[DeliveryStatus | None, Query(description="pending|delivered|failed")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**62, description="Only deliveries with a lower id")
    ] = None,
) -> dict[str, Any]:
    manager = await _fresh(request)
    items = await asyncio.to_thread(manager.deliveries, webhook_id, status, limit, before)
    return {
        "ok": True,
        "items": [d.to_dict() for d in items],
        "next_before": items[-1].id if len(items) == limit else None,
    }


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    summary="One delivery with its envelope and every attempt",
    response_model=DeliveryDetail,
    responses=_NOT_FOUND,
)
async def get_delivery(
    request: Request, webhook_id: str, delivery_id: DeliveryId
) -> dict[str, Any]:
    manager = await _fresh(request)
    delivery, attempts = await asyncio.to_thread(manager.delivery, webhook_id, delivery_id)
    return {
        "ok": True,
        "delivery": delivery.to_dict(envelope=True),
        "attempts": [a.to_dict() for a in attempts],
    }


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    summary="Send one delivery again now and return the attempt",
    response_model=SendResult,
    responses=error_responses(404, 409),
)
async def redeliver(request: Request, webhook_id: str, delivery_id: DeliveryId) -> dict[str, Any]:
    manager = await _fresh(request)
    delivery, attempt = await manager.redeliver(webhook_id, delivery_id)
    return _sent(delivery, attempt)


@router.post(
    "/{webhook_id}/ping",
    summary="Send a signed 'ping' event now and return the attempt",
    response_model=SendResult,
    responses=_NOT_FOUND,
)
async def ping(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = await _fresh(request)
    delivery, attempt = await manager.ping(webhook_id)
    return _sent(delivery, attempt)
