"""Asset routes: upload or register, list, read, download, patch meta, remove.

Every route that changes the registry answers only after its last hook event is committed.
Registry work (hashing, file moves, SQLite) runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from comfyvn.assets.errors import AssetInputError
from comfyvn.assets.paths import validate_type
from comfyvn.assets.registry import MAX_OFFSET, MAX_PAGE, AssetRegistry, Change
from comfyvn.assets.upload import read_upload
from comfyvn.core.json_input import JsonInputError, JsonLimits, read_json

from ..bodies import read_json_body, validation_detail
from ..services import commit_or_503, get_services

router = APIRouter(prefix="/api/assets", tags=["assets"])

MAX_JSON_BODY = 256 * 1024
MULTIPART_OVERHEAD = 256 * 1024  # headers, boundaries and the small form fields
M = TypeVar("M", bound=BaseModel)
UidPath = Annotated[str, Path(description="Asset uid (from the content hash).")]


def _check_type(value: str) -> str:
    try:
        return validate_type(value)
    except AssetInputError as exc:
        raise ValueError(str(exc)) from None


class AssetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Type bucket, e.g. 'character.portrait' (folder per word).")
    meta: dict[str, Any] | None = Field(
        default=None, description="Metadata object; 'tags' (list of strings) is filterable."
    )

    _type = field_validator("type")(_check_type)


class RegisterPathRequest(AssetFields):
    path: str = Field(
        description="A file already under the assets root: relative to it, or absolute inside it."
    )


class MetaPatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meta: dict[str, Any] = Field(description="JSON Merge Patch for the meta (null deletes a key).")


class AssetOut(BaseModel):
    uid: str
    type: str
    path: str = Field(description="Relative to the assets root.")
    sidecar: str = Field(description="Sidecar JSON path, relative to the assets root.")
    sha256: str
    bytes: int
    meta: dict[str, Any]
    created_at: float
    updated_at: float
    media_type: str
    url: str = Field(description="Where to download the file (same token).")


class AssetChangeResponse(BaseModel):
    ok: bool = True
    created: bool = Field(description="True for a new asset, false for identical content again.")
    resaved: bool
    asset: AssetOut
    seq: int | None = Field(description="Seq of the last event this call emitted.")


class AssetResponse(BaseModel):
    ok: bool = True
    asset: AssetOut
    seq: int | None = None


class AssetListResponse(BaseModel):
    ok: bool = True
    items: list[AssetOut]
    total: int
    limit: int
    offset: int


class AssetRemovedResponse(BaseModel):
    ok: bool = True
    uid: str
    deleted_files: bool
    seq: int | None


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "type"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "type": {"type": "string", "example": "character.portrait"},
                        "meta": {"type": "string", "description": "A JSON object, as text."},
                    },
                }
            },
            "application/json": {"schema": RegisterPathRequest.model_json_schema()},
        },
    }
}


def _registry(request: Request) -> AssetRegistry:
    registry = get_services(request).assets
    if registry is None:
        raise HTTPException(503, "the asset registry is not running")
    return registry


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run registry work off the loop (an AssetError answers with its own status)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _committed(request: Request, change: Change) -> int | None:
    """The seq of the change's last event once durable (None: it emitted nothing)."""
    if not change.events:
        return None
    return await commit_or_503(get_services(request).bus, change.events[-1])


def _field_error(loc: str, msg: str, kind: str = "value_error") -> HTTPException:
    return HTTPException(422, [{"loc": [loc], "msg": msg, "type": kind}])


async def _parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; error locations name the field alone, as for multipart."""
    value = await read_json_body(request, MAX_JSON_BODY)
    if value is None:
        raise HTTPException(422, "request body is empty; send a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc, prefix=())) from None


@router.post(
    "",
    summary="Upload a file (multipart) or register a file under the assets root (JSON)",
    status_code=201,
    response_model=AssetChangeResponse,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"description": "Identical content was already registered (resaved)"},
        400: {"description": "Unsafe or missing path, empty file, malformed multipart"},
        409: {"description": "Same content with another type, or a path held by other content"},
        413: {"description": "File or meta over the limit"},
        415: {"description": "Neither multipart/form-data nor JSON"},
        422: {"description": "Bad type bucket or meta"},
    },
)
async def create_asset(request: Request) -> JSONResponse:
    registry = _registry(request)
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        change = await _upload(request, registry, content_type)
    elif media == "application/json" or media.endswith("+json"):
        change = await _register_path(request, registry)
    else:
        raise HTTPException(
            415,
            f"unsupported Content-Type {media or '(none)'!r}: upload with multipart/form-data "
            "(file, type, meta) or register a path with application/json {path, type, meta}",
        )
    seq = await _committed(request, change)
    body = AssetChangeResponse(
        created=change.created,
        resaved=not change.created,
        asset=AssetOut(**change.record.to_dict()),
        seq=seq,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if change.created else 200)


async def _upload(request: Request, registry: AssetRegistry, content_type: str) -> Change:
    limit = registry.config.max_bytes
    declared = request.headers.get("content-length")
    allowance = limit + registry.config.max_meta_bytes + MULTIPART_OVERHEAD
    if declared is not None and declared.isdigit() and int(declared) > allowance:
        raise HTTPException(
            413, f"upload is {declared} bytes; the asset size limit is {limit} bytes"
        )
    form = await read_upload(
        request.stream(),
        content_type,
        registry.staging_writer,
        max_bytes=limit,
        max_field_bytes=registry.config.max_meta_bytes,
    )
    try:
        if form.staged is None:
            raise _field_error("file", "multipart field 'file' is required", "missing")
        meta: Any = None
        raw_meta = form.fields.get("meta")
        if raw_meta is not None and raw_meta.strip():
            try:
                meta = read_json(raw_meta, JsonLimits(registry.config.max_meta_bytes), what="meta")
            except JsonInputError as exc:
                raise _field_error("meta", str(exc), "json_invalid") from None
            if not isinstance(meta, dict):
                raise _field_error("meta", "meta must be a JSON object", "dict_type")
        try:
            fields = AssetFields.model_validate({"type": form.fields.get("type"), "meta": meta})
        except ValidationError as exc:
            raise HTTPException(422, validation_detail(exc, prefix=())) from None
    except BaseException:
        form.discard()
        raise
    staged, form.staged = form.staged, None
    return await _call(
        registry.register_staged, staged, fields.type, fields.meta, filename=form.filename
    )


async def _register_path(request: Request, registry: AssetRegistry) -> Change:
    req = await _parse(request, RegisterPathRequest)
    return await _call(registry.register_file, req.path, req.type, req.meta, copy=False)


@router.get("", summary="List assets, newest first", response_model=AssetListResponse)
async def list_assets(
    request: Request,
    type: Annotated[str | None, Query(description="Bucket; also matches its sub-buckets.")] = None,
    tag: Annotated[str | None, Query(description="One tag from meta.tags.")] = None,
    q: Annotated[
        str | None, Query(description="Case-insensitive text in path, type or meta values.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AssetListResponse:
    page = await _call(_registry(request).list, type, tag, q, limit, offset)
    return AssetListResponse(
        items=[AssetOut(**r.to_dict()) for r in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/{uid}",
    summary="One asset",
    response_model=AssetResponse,
    responses={404: {"description": "Unknown uid"}},
)
async def get_asset(request: Request, uid: UidPath) -> AssetResponse:
    record = await _call(_registry(request).get, uid)
    return AssetResponse(asset=AssetOut(**record.to_dict()))


@router.get(
    "/{uid}/file",
    summary="Download the asset's file",
    response_class=FileResponse,
    responses={404: {"description": "Unknown uid, or the file is gone"}},
)
async def get_asset_file(request: Request, uid: UidPath) -> FileResponse:
    registry = _registry(request)
    record = await _call(registry.get, uid)
    path = await _call(registry.file_path, uid)
    return FileResponse(
        path,
        media_type=record.media_type,
        headers={
            # Served from the API's origin: never let an uploaded HTML/SVG run as a page.
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "X-Asset-Uid": record.uid,
        },
    )


@router.patch(
    "/{uid}",
    summary="Patch the meta (JSON Merge Patch); rewrites the sidecar",
    response_model=AssetResponse,
    responses={404: {"description": "Unknown uid"}, 422: {"description": "Bad patch"}},
)
async def patch_asset(request: Request, uid: UidPath) -> AssetResponse:
    registry = _registry(request)
    req = await _parse(request, MetaPatchRequest)
    change = await _call(registry.update_meta, uid, req.meta)
    seq = await _committed(request, change)
    return AssetResponse(asset=AssetOut(**change.record.to_dict()), seq=seq)


@router.delete(
    "/{uid}",
    summary="Remove from the registry; delete_files=true also deletes the file and sidecar",
    response_model=AssetRemovedResponse,
    responses={404: {"description": "Unknown uid"}},
)
async def delete_asset(
    request: Request, uid: UidPath, delete_files: Annotated[bool, Query()] = False
) -> AssetRemovedResponse:
    change = await _call(_registry(request).remove, uid, delete_files)
    seq = await _committed(request, change)
    return AssetRemovedResponse(uid=uid, deleted_files=delete_files, seq=seq)
