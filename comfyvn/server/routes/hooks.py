"""Modder hook routes: catalogue, history, test emit and plugins (the streams: streams.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError

from comfyvn.core.hook_bus import UnknownHookError
from comfyvn.core.hook_specs import HOOK_SPECS

from ..bodies import parse_json_body, validation_detail
from ..services import commit_or_503, get_services

router = APIRouter(prefix="/api/modder/hooks", tags=["modder hooks"])
log = logging.getLogger("comfyvn.server.streams")

MAX_TEST_PAYLOAD_BYTES = 256 * 1024
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER range; a larger cursor is a client error, not a 500


class TestEmitRequest(BaseModel):
    event: str = Field(description="Hook name, e.g. 'on_scene_enter'.")
    payload: dict[str, Any] = Field(description="Payload; validated against the hook's model.")


class TestEmitResponse(BaseModel):
    ok: bool = True
    event: str
    seq: int
    id: str


class HistoryResponse(BaseModel):
    ok: bool = True
    items: list[dict[str, Any]]
    next_since: int


def parse_topics(raw: str | list[str] | None) -> list[str] | None:
    """``None`` or ``*`` means every hook; unknown names raise :class:`UnknownHookError`."""
    if raw is None:
        return None
    names = raw if isinstance(raw, list) else raw.split(",")
    cleaned = [str(n).strip() for n in names if str(n).strip()]
    if not cleaned or "*" in cleaned:
        return None
    for name in cleaned:
        if name not in HOOK_SPECS:
            raise UnknownHookError(name)
    return cleaned


@router.get("", summary="List hooks with payload descriptions, webhooks, plugins and history")
async def list_hooks(request: Request) -> dict[str, Any]:
    services = get_services(request)
    bus = services.bus
    history = await asyncio.to_thread(bus.history, limit=15)
    return {
        "ok": True,
        "hooks": [spec.describe() for spec in HOOK_SPECS.values()],
        "webhooks": services.describe_webhooks(),
        "plugin_host": services.describe_plugin_host(),
        "history": history,
        "bus": bus.stats(),
    }


@router.get("/history", summary="Committed envelopes, oldest first", response_model=HistoryResponse)
async def history(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 25,
    since: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    event: Annotated[str | None, Query(description="Hook name(s), comma-separated")] = None,
) -> HistoryResponse:
    bus = get_services(request).bus
    try:
        events = parse_topics(event)
    except UnknownHookError as exc:
        raise HTTPException(400, str(exc)) from None
    items = await asyncio.to_thread(bus.history, limit=limit, since=since, events=events)
    next_since = items[-1]["seq"] if items else (since if since is not None else bus.committed_seq)
    return HistoryResponse(items=items, next_since=next_since)


@router.post(
    "/test",
    summary="Emit a real event with a validated payload; answers after the commit",
    response_model=TestEmitResponse,
    responses={400: {"description": "Unknown hook"}, 413: {"description": "Payload too large"}},
)
async def test_emit(request: Request) -> Response:
    services = get_services(request)
    req = await parse_json_body(
        request,
        TestEmitRequest,
        limit=MAX_TEST_PAYLOAD_BYTES,
        empty="request body is empty; send JSON {event, payload}",
    )
    spec = HOOK_SPECS.get(req.event)
    if spec is None:
        raise HTTPException(400, str(UnknownHookError(req.event)))
    try:
        payload = spec.payload_model.model_validate(req.payload).model_dump(mode="json")
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc, prefix=("payload",))) from None
    emitted = services.bus.emit(req.event, payload)
    seq = await commit_or_503(services.bus, emitted)
    # The answer's shape is TestEmitResponse (documented above); written directly, since
    # validating our own three fields on every call is a measurable part of this hot route.
    body = f'{{"ok":true,"event":"{req.event}","seq":{seq},"id":"{emitted.id}"}}'
    return Response(body, media_type="application/json")


# -- plugins -----------------------------------------------------------------------------------
@router.get("/plugins", summary="Dev-mode plugins: status, hooks, errors")
async def list_plugins(request: Request) -> dict[str, Any]:
    return {"ok": True, **get_services(request).describe_plugin_host()}


@router.post(
    "/plugins/reload",
    summary="Reload plugins without restarting the server; transactional per plugin",
    description="Every plugin, or only `name`. A plugin whose new version fails to import or "
    "set up keeps its previous version running: the answer is `ok: false` and that plugin's "
    "result has `status: error`, `running: previous` and the error with file and line.",
    responses={404: {"description": "No plugin of that name"}, 409: {"description": "No plugins"}},
)
async def reload_plugins(
    request: Request,
    name: Annotated[str | None, Query(description="Only this plugin")] = None,
) -> dict[str, Any]:
    services = get_services(request)
    host = services.plugin_host
    if host is None or (not services.settings.dev_mode and not services.settings.plugins):
        raise HTTPException(
            409,
            "no plugins run on this server: dev mode is off and no installed plugin is "
            "enabled (start with --dev, or --plugin NAME)",
        )
    try:
        report = await asyncio.to_thread(host.reload, [name] if name else None)
    except KeyError:
        known = ", ".join(repr(p["name"]) for p in host.describe()["plugins"]) or "none"
        raise HTTPException(404, f"no plugin named {name!r}; known plugins: {known}") from None
    return {**services.describe_plugin_host(), **report}
