"""A small synchronous API client shared by the CLI commands and the Studio's worker threads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from comfyvn.core.server_file import ServerInfo, read_server_info
from comfyvn.core.settings import default_data_dir, read_token

__all__ = [
    "ApiClient",
    "ApiError",
    "Connection",
    "candidate_data_dirs",
    "find_server",
    "resolve_connection",
]

DEFAULT_SERVER = "http://127.0.0.1:8001"
# The data dir `make run` serves (Makefile: DATA ?= var/studio), relative to the current
# directory: in a checkout, `comfyvn hooks tail` with no flags finds the dev server.
MAKE_RUN_DATA_DIR = Path("var/studio")


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


def candidate_data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where to look for a running server's ``server.json``, in order.

    ``--data-dir`` alone if given, else ``COMFYVN_DATA_DIR`` alone if set, else the default data
    dir of ``comfyvn serve`` (``~/.comfyvn``) and then ``./var/studio`` (the ``make run`` data
    dir, when the current directory is a checkout)."""
    if data_dir:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("COMFYVN_DATA_DIR")
    if env:
        return [Path(env).expanduser()]
    return [default_data_dir(), MAKE_RUN_DATA_DIR]


def find_server(data_dir: str | Path | None = None) -> ServerInfo | None:
    """The first live server (its ``server.json``, lock held, pid alive) among
    :func:`candidate_data_dirs`."""
    for directory in candidate_data_dirs(data_dir):
        info = read_server_info(directory)
        if info is not None:
            return info
    return None


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def _token_of(info: ServerInfo | None, directory: Path) -> str | None:
    if info is not None and info.token_file:
        try:
            value = Path(info.token_file).read_text(encoding="utf-8").strip()
        except OSError:
            value = ""
        if value:
            return value
    return read_token(directory)


def resolve_connection(
    server: str | None = None, token: str | None = None, data_dir: str | Path | None = None
) -> Connection:
    """One rule for every command and the Studio.

    URL: ``--server``, else ``COMFYVN_SERVER``, else the ``url`` in the ``server.json`` of a
    running server (see :func:`candidate_data_dirs`), else http://127.0.0.1:8001.
    Token: ``--token``, else ``COMFYVN_API_TOKEN``, else the ``api_token`` of that server's data
    dir (with an explicit URL: of the data dir whose ``server.json`` names that URL), else of the
    first candidate data dir."""
    dirs = candidate_data_dirs(data_dir)
    explicit = server or os.environ.get("COMFYVN_SERVER") or None
    info: ServerInfo | None = None
    for directory in dirs:
        found = read_server_info(directory)
        if found is not None and (explicit is None or _same_url(found.url, explicit)):
            info = found
            break
    fallback = info.url if info is not None else DEFAULT_SERVER
    url = explicit.rstrip("/") if explicit else fallback
    tok = token or os.environ.get("COMFYVN_API_TOKEN") or None
    if tok is None:
        directory = info.data_dir if info is not None and info.data_dir else dirs[0]
        tok = _token_of(info, directory)
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
