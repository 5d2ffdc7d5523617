"""Provider routes: the registry (secrets masked), templates for the Studio's Add / Edit dialog,
one check of an unsaved provider, fresh concurrent health checks, last results with history for
the Studio panel, and quota."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.routing import APIRoute

from comfyvn.providers.component import Providers
from comfyvn.providers.health import Check
from comfyvn.providers.models import (
    KINDS,
    QUOTA_KINDS,
    ProviderCreate,
    ProviderUpdate,
    Thresholds,
)
from comfyvn.providers.templates import TemplateList, provider_templates

from ..bodies import parse_json, read_limited_body
from ..errors import error_responses
from ..services import get_services

MAX_BODY_BYTES = 64 * 1024  # a provider is a few hundred bytes; refuse before parsing more


class _LimitedBodyRoute(APIRoute):
    """Reads at most ``MAX_BODY_BYTES`` of a body before FastAPI parses it; beyond that a 413
    with a JSON ``detail`` (FastAPI's own ``max_body_size`` answers in plain text). The JSON is
    parsed by the guarded reader; FastAPI's ``request.json()`` returns that value."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            if request.method in ("POST", "PUT"):
                # What FastAPI's own request.body() and request.json() return: read under the
                # limit and parsed by the guarded reader, so FastAPI never parses it unguarded.
                request._body = await read_limited_body(request, MAX_BODY_BYTES)
                if request._body.strip():
                    request._json = parse_json(request._body, MAX_BODY_BYTES)
            return await handler(request)

        return limited


router = APIRouter(prefix="/api/providers", tags=["providers"], route_class=_LimitedBodyRoute)

IdsQuery = Annotated[
    list[str] | None,
    Query(
        alias="id",
        description="Provider id(s); repeat the parameter or separate with commas. "
        "Omit for every provider.",
    ),
]
_ERRORS = error_responses(404)  # plus COMMON_ERRORS (400/401/422/503) added by the app


def _providers(request: Request) -> Providers:
    providers = get_services(request).providers
    if providers is None:
        raise HTTPException(503, "the provider registry is not running")
    return providers


def _select(providers: Providers, raw_ids: list[str] | None) -> list[Any]:
    """The providers named by ``?id=`` (in registry order when omitted); unknown ids are a 404."""
    if not raw_ids:
        return providers.registry.list()
    wanted: list[str] = []
    for chunk in raw_ids:
        for item in chunk.split(","):
            item = item.strip()
            if item and item not in wanted:
                wanted.append(item)
    if not wanted:
        raise HTTPException(422, "query parameter 'id' is empty")
    known = {spec.id: spec for spec in providers.registry.list()}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise HTTPException(404, f"no provider with id(s) {', '.join(map(repr, unknown))}")
    return [known[i] for i in wanted]


@router.get("", summary="List providers; secrets appear only as {set, hint}")
async def list_providers(request: Request) -> dict[str, Any]:
    providers = _providers(request)
    registry = providers.registry
    scrubber = registry.scrubber()
    return {
        "ok": True,
        "providers": [registry.describe(spec, scrubber) for spec in registry.list()],
        "kinds": [
            {"kind": kind, "description": text, "supports_quota": kind in QUOTA_KINDS}
            for kind, text in KINDS.items()
        ],
        "default_thresholds": Thresholds().as_dict(),
        "timeout_s": providers.settings.timeout_s,
    }


@router.post(
    "",
    status_code=201,
    summary="Add a provider; a client-supplied id (slug) is kept",
    responses=error_responses(409, 413),
)
async def create_provider(request: Request, body: ProviderCreate) -> dict[str, Any]:
    registry = _providers(request).registry
    spec = await registry.create(body)
    return {"ok": True, "provider": registry.describe(spec)}


@router.get(
    "/templates",
    summary="One template per kind: the fields of a POST body, their defaults, which are secret",
    response_model=TemplateList,
)
async def templates() -> TemplateList:
    return TemplateList(templates=provider_templates())


def _tested(check: Check) -> dict[str, Any]:
    """``ok``: the test ran (``result.ok``: the provider is up); nothing was saved."""
    return {"ok": True, "saved": False, "result": check.result.to_dict(), "raw": check.raw}


@router.post(
    "/test",
    summary="One check of a provider before it is saved (the POST /api/providers body); "
    "stores nothing",
    responses=error_responses(413),
)
async def test_new_provider(request: Request, body: ProviderCreate) -> dict[str, Any]:
    providers = _providers(request)
    spec, secrets = await providers.registry.prepare_create(body)
    return _tested(await providers.health.test(spec, secrets))


@router.post(
    "/{provider_id}/test",
    summary="One check of a provider as a PUT body would change it (stored secrets kept unless "
    "replaced); stores nothing",
    responses=error_responses(404, 413),
)
async def test_changed_provider(
    request: Request, provider_id: str, body: ProviderUpdate
) -> dict[str, Any]:
    providers = _providers(request)
    spec, secrets = await providers.registry.prepare_update(provider_id, body)
    return _tested(await providers.health.test(spec, secrets))


@router.get("/health", summary="Run fresh checks concurrently and return them", responses=_ERRORS)
async def health(request: Request, ids: IdsQuery = None) -> dict[str, Any]:
    providers = _providers(request)
    specs = _select(providers, ids)
    started = time.perf_counter()
    checks = await providers.health.check(specs)
    results = [c.result.to_dict() for c in checks]
    summary: dict[str, int] = {"green": 0, "amber": 0, "red": 0, "gray": 0}
    for result in results:
        summary[result["status"]] += 1
    return {
        "ok": True,
        "checked_at": time.time(),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        "timeout_s": providers.settings.timeout_s,
        "summary": summary,
        "results": results,
    }


@router.get(
    "/status",
    summary="Last results without checking, with recent history for sparklines",
    responses=_ERRORS,
)
async def status(request: Request, ids: IdsQuery = None) -> dict[str, Any]:
    providers = _providers(request)
    specs = _select(providers, ids)
    return {
        "ok": True,
        "results": [providers.health.last(spec).to_dict() for spec in specs],
        "history": {spec.id: providers.health.history(spec.id) for spec in specs},
        "history_size": providers.settings.history_size,
    }


@router.get(
    "/quota",
    summary="Fresh quota for one provider; supported: false (200) for kinds without quota",
    responses=_ERRORS,
)
async def quota(
    request: Request,
    provider_id: Annotated[str, Query(alias="id", description="Provider id")],
) -> dict[str, Any]:
    providers = _providers(request)
    spec = providers.registry.get(provider_id)
    if spec.kind not in QUOTA_KINDS:
        return {
            "ok": True,
            "provider_id": spec.id,
            "kind": spec.kind,
            "supported": False,
            "quota": None,
            "reason": f"{spec.kind} providers report no quota",
        }
    check = (await providers.health.check([spec]))[0]
    result = check.result
    return {
        "ok": result.ok and result.quota is not None,
        "provider_id": spec.id,
        "kind": spec.kind,
        "supported": True,
        "quota": result.quota,
        "raw": check.raw,
        "status": result.status,
        "reason": result.reason,
        "error": result.error,
        "checked_at": result.checked_at,
    }


@router.get("/{provider_id}", summary="One provider, masked", responses=_ERRORS)
async def get_provider(request: Request, provider_id: str) -> dict[str, Any]:
    registry = _providers(request).registry
    return {"ok": True, "provider": registry.describe(registry.get(provider_id))}


@router.put(
    "/{provider_id}",
    summary="Change a provider: given fields replace; secrets merge (null removes one)",
    responses=error_responses(404, 413),
)
async def update_provider(request: Request, provider_id: str, body: ProviderUpdate) -> dict:
    registry = _providers(request).registry
    spec = await registry.update(provider_id, body)
    return {"ok": True, "provider": registry.describe(spec)}


@router.delete(
    "/{provider_id}",
    summary="Remove a provider and its secrets",
    responses=_ERRORS,
)
async def delete_provider(request: Request, provider_id: str) -> dict[str, Any]:
    providers = _providers(request)
    await providers.registry.delete(provider_id)
    providers.health.forget(provider_id)
    return {"ok": True, "deleted": provider_id}
