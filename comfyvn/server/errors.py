"""The error shape every route shares, declared once so the OpenAPI schema documents it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["COMMON_ERRORS", "ErrorBody", "error_responses"]


class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="What was wrong: a message, or one entry per invalid field (loc, msg, type)."
    )


_DESCRIPTIONS = {
    400: "Bad request: the detail names the problem",
    401: "Missing or invalid API token",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Invalid input: one entry per problem",
    503: "The data dir cannot be written right now",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


# Every /api route can answer these (the security middleware, request validation, a log that
# cannot commit); routes add their own 404/409/413 where they can happen.
COMMON_ERRORS = error_responses(400, 401, 422, 503)
