"""A small synchronous API client shared by the CLI commands and the Studio's worker threads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from comfyvn.core.settings import default_data_dir, read_token

__all__ = ["ApiClient", "ApiError", "Connection", "resolve_connection"]

DEFAULT_SERVER = "http://127.0.0.1:8001"


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: Any, url: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status} from {url}: {detail}")


@dataclass(frozen=True, slots=True)
class Connection:
    server: str
    token: str | None

    @property
    def ws_base(self) -> str:
        return "ws" + self.server[len("http") :] if self.server.startswith("http") else self.server


def resolve_connection(
    server: str | None = None, token: str | None = None, data_dir: str | Path | None = None
) -> Connection:
    """``--server``/``--token`` first, then ``COMFYVN_SERVER``/``COMFYVN_API_TOKEN``, then the
    data dir's ``api_token`` file."""
    url = (server or os.environ.get("COMFYVN_SERVER") or DEFAULT_SERVER).rstrip("/")
    tok = token or os.environ.get("COMFYVN_API_TOKEN") or None
    if tok is None:
        directory = Path(data_dir) if data_dir else default_data_dir()
        tok = read_token(directory)
    return Connection(url, tok)


class ApiClient:
    def __init__(self, conn: Connection, timeout: float = 10.0) -> None:
        self.conn = conn
        headers = {"Authorization": f"Bearer {conn.token}"} if conn.token else {}
        self._http = httpx.Client(base_url=conn.server, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        where = f"{method} {path}"
        try:
            body = response.json()
        except ValueError:  # not JSON: most likely --server points at something else
            body = None
            if response.status_code < 400:
                raise ApiError(
                    response.status_code,
                    "the answer is not JSON; is --server a ComfyVN Studio server?",
                    where,
                ) from None
        if response.status_code >= 400:
            detail = body.get("detail", body) if isinstance(body, dict) else body
            raise ApiError(response.status_code, detail or response.text, where)
        return body

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
