"""Webhook routes: subscriptions, the delivery log, redeliver and ping.

Secrets are returned in full only by create and rotate-secret; everything else masks them.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ValidationError

from comfyvn.webhooks.manager import WebhookError, WebhookManager
from comfyvn.webhooks.models import (
    Attempt,
    Delivery,
    DeliveryStatus,
    RotateSecretRequest,
    Subscription,
    WebhookCreate,
    WebhookDeleteByUrl,
    WebhookPatch,
)

from ..services import get_services

router = APIRouter(prefix="/api/modder/hooks/webhooks", tags=["webhooks"])

MAX_BODY_BYTES = 16 * 1024
B = TypeVar("B", bound=BaseModel)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Refused URL, unknown hook or bad secret"},
    404: {"description": "Unknown webhook or delivery"},
    409: {"description": "Conflict (duplicate, limit, delivery in flight)"},
}


def _manager(request: Request) -> WebhookManager:
    manager = get_services(request).webhooks
    if manager is None:
        raise HTTPException(503, "the webhook forwarder is not running")
    return manager


async def _body(request: Request, model: type[B], *, required: bool = True) -> B:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if not required:
            return model()
        raise HTTPException(422, "request body is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise HTTPException(422, errors) from None


def _fail(exc: WebhookError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


def _created(sub: Subscription) -> dict[str, Any]:
    """The one place a secret is shown: right after create or rotate."""
    return {**sub.masked(), "secret": sub.secret}


def _attempt(attempt: Attempt) -> dict[str, Any]:
    return attempt.to_dict()


def _delivery_result(delivery: Delivery | None, attempt: Attempt) -> dict[str, Any]:
    return {
        "ok": True,
        "delivered": attempt.ok,
        "delivery": delivery.to_dict() if delivery else None,
        "attempt": _attempt(attempt),
    }


@router.get("", summary="List webhook subscriptions (secrets masked)")
async def list_webhooks(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    return {"ok": True, "items": manager.describe_masked()}


@router.post(
    "",
    status_code=201,
    summary="Subscribe a URL; the response is the only one that shows the secret",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WebhookCreate.model_json_schema()}},
        }
    },
    responses=_ERRORS,
)
async def create_webhook(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    body = await _body(request, WebhookCreate)
    try:
        sub = await manager.create(body)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {
        "ok": True,
        "webhook": _created(sub),
        "note": "store the secret now: it is not shown again (rotate it if lost)",
    }


@router.delete(
    "",
    summary="Stop sending one hook (or '*') to a URL: the simple case",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WebhookDeleteByUrl.model_json_schema()}},
        }
    },
    responses=_ERRORS,
)
async def delete_by_url(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    body = await _body(request, WebhookDeleteByUrl)
    try:
        result = await manager.delete_by_url(body.event, body.url)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {"ok": True, **result}


@router.get("/{webhook_id}", summary="One subscription with delivery counts", responses=_ERRORS)
async def get_webhook(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = _manager(request)
    try:
        sub = manager.get(webhook_id)
        counts = await asyncio.to_thread(manager.counts, webhook_id)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {"ok": True, "webhook": sub.masked(), "deliveries": counts}


@router.patch(
    "/{webhook_id}",
    summary="Change url, events, enabled or description",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WebhookPatch.model_json_schema()}},
        }
    },
    responses=_ERRORS,
)
async def patch_webhook(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = _manager(request)
    body = await _body(request, WebhookPatch)
    try:
        sub = await manager.update(webhook_id, body)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {"ok": True, "webhook": sub.masked()}


@router.delete(
    "/{webhook_id}", summary="Delete a subscription and its delivery log", responses=_ERRORS
)
async def delete_webhook(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = _manager(request)
    try:
        await manager.delete(webhook_id)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {"ok": True, "deleted": [webhook_id]}


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="New secret; the old one keeps signing too for a grace period",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": RotateSecretRequest.model_json_schema()}},
        }
    },
    responses=_ERRORS,
)
async def rotate_secret(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = _manager(request)
    body = await _body(request, RotateSecretRequest, required=False)
    try:
        sub = await manager.rotate(webhook_id, body)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {"ok": True, "webhook": _created(sub)}


@router.get("/{webhook_id}/deliveries", summary="The delivery log, newest first", responses=_ERRORS)
async def list_deliveries(
    request: Request,
    webhook_id: str,
    status: Annotated[DeliveryStatus | None, Query(description="pending|delivered|failed")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="Only deliveries with a lower id")
    ] = None,
) -> dict[str, Any]:
    manager = _manager(request)
    try:
        items = await asyncio.to_thread(manager.deliveries, webhook_id, status, limit, before)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {
        "ok": True,
        "items": [d.to_dict() for d in items],
        "next_before": items[-1].id if len(items) == limit else None,
    }


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    summary="One delivery with its envelope and every attempt",
    responses=_ERRORS,
)
async def get_delivery(request: Request, webhook_id: str, delivery_id: int) -> dict[str, Any]:
    manager = _manager(request)
    try:
        delivery, attempts = await asyncio.to_thread(manager.delivery, webhook_id, delivery_id)
    except WebhookError as exc:
        raise _fail(exc) from None
    return {
        "ok": True,
        "delivery": delivery.to_dict(envelope=True),
        "attempts": [_attempt(a) for a in attempts],
    }


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    summary="Send one delivery again now and return the attempt",
    responses=_ERRORS,
)
async def redeliver(request: Request, webhook_id: str, delivery_id: int) -> dict[str, Any]:
    manager = _manager(request)
    try:
        delivery, attempt = await manager.redeliver(webhook_id, delivery_id)
    except WebhookError as exc:
        raise _fail(exc) from None
    return _delivery_result(delivery, attempt)


@router.post(
    "/{webhook_id}/ping",
    summary="Send a signed 'ping' event now and return the attempt",
    responses=_ERRORS,
)
async def ping(request: Request, webhook_id: str) -> dict[str, Any]:
    manager = _manager(request)
    try:
        delivery, attempt = await manager.ping(webhook_id)
    except WebhookError as exc:
        raise _fail(exc) from None
    return _delivery_result(delivery, attempt)
