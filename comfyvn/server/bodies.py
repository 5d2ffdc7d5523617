"""Reading request bodies with a size limit, and turning validation errors into one shape.

Routes read their JSON through here so that every oversize body is a 413 with a JSON
``detail`` (counted while streaming, not after buffering it all), every empty or malformed body
is a 422 that names the problem, and every validation error lists ``loc``/``msg``/``type``.
The JSON itself is parsed by the one guarded reader (:mod:`comfyvn.core.json_input`): nesting,
huge numbers, NaN and lone surrogates are refused here, before any model or store sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from comfyvn.core.json_input import JsonInputError, JsonLimits, read_json

__all__ = [
    "json_input_error",
    "parse_json",
    "parse_json_body",
    "read_json_body",
    "read_limited_body",
    "validation_detail",
]

M = TypeVar("M", bound=BaseModel)


async def read_limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_input_error(exc: JsonInputError) -> HTTPException:
    """The HTTP answer to refused JSON: 413 when too large, else 422 with the reader's message."""
    return HTTPException(413 if exc.reason == "too_large" else 422, str(exc))


def parse_json(body: bytes, limit: int, what: str = "request body") -> Any:
    try:
        return read_json(body, JsonLimits(max_bytes=limit), what=what)
    except JsonInputError as exc:
        raise json_input_error(exc) from None


async def read_json_body(request: Request, limit: int) -> Any:
    """The body as guarded JSON (``None`` when empty), for routes that validate it themselves."""
    body = await read_limited_body(request, limit)
    return parse_json(body, limit) if body.strip() else None


def validation_detail(
    exc: ValidationError, prefix: Sequence[str | int] = ("body",)
) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


async def parse_json_body(
    request: Request,
    model: type[M],
    *,
    limit: int,
    empty: str = "request body is empty; send a JSON object",
    required: bool = True,
) -> M:
    """The body as ``model``, whatever the Content-Type (``curl -d`` sends a form type)."""
    body = await read_limited_body(request, limit)
    if not body.strip():
        if not required:
            return model()
        raise HTTPException(422, empty)
    value = parse_json(body, limit)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc)) from None
