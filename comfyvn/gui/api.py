"""The Studio's view of the server: the shared sync client plus messages that say what failed."""

from __future__ import annotations

from typing import Any

import httpx

from comfyvn.client.api import ApiClient, ApiError, Connection

__all__ = ["StudioApi", "describe_failure"]


class StudioApi:
    """One keep-alive client per connection, used from worker threads (httpx is thread-safe)."""

    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self._client = ApiClient(conn, timeout=timeout_s)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._client.post(path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self._client.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self._client.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self._client.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self._client.close()


def describe_failure(exc: BaseException, server: str, timeout_s: float | None = None) -> str:
    """A sentence for the panel: what went wrong and, where we know it, what to do."""
    if isinstance(exc, ApiError):
        if exc.status == 401:
            return (
                f"the server at {server} refused the token (401): pass --token, set "
                "COMFYVN_API_TOKEN, or use --data-dir of that server"
            )
        detail = exc.detail
        if isinstance(detail, list):  # pydantic-style error list
            detail = "; ".join(
                str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail
            )
        return f"the server answered {exc.status}: {detail}"
    if isinstance(exc, httpx.TimeoutException):
        within = f" within {timeout_s:g} s" if timeout_s else ""
        return f"the server at {server} did not answer{within}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the server at {server} (connection refused or host down)"
    if isinstance(exc, httpx.HTTPError):
        return f"connection to {server} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, ValueError):
        return f"the server at {server} sent something unreadable: {exc}"
    return f"{type(exc).__name__}: {exc}"
