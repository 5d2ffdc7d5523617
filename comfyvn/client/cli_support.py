"""What the server-talking subcommands share: one request helper whose failures are one line
and an exit code, and the rule for colour (only on a terminal, never with ``--no-color``)."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

import httpx

from .api import ApiClient, ApiError, Connection

__all__ = ["CommandFailed", "detail_text", "request_or_fail", "use_color"]


class CommandFailed(Exception):
    """A request that got no answer to work with; ``code`` is the command's exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def detail_text(detail: Any) -> str:
    """A server ``detail`` (a message, an object or pydantic-style errors) as one line."""
    if isinstance(detail, dict):
        return str(detail.get("message") or detail.get("detail") or json.dumps(detail))
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)


def request_or_fail(
    conn: Connection, method: str, path: str, err: TextIO, timeout: float, **kwargs: Any
) -> Any:
    """The server's JSON answer; an unreachable server, a refused token or an error status is
    one line on ``err`` and :class:`CommandFailed` with exit code 2."""
    try:
        with ApiClient(conn, timeout=timeout) as client:
            return client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        print(
            f"error: cannot reach the ComfyVN server at {conn.server} ({type(exc).__name__}). "
            "Is `comfyvn serve` running? Point at it with --data-dir DIR or --server URL.",
            file=err,
        )
    except ApiError as exc:
        if exc.status == 401:
            print(
                f"error: the server at {conn.server} refused the API token; pass --token, "
                "set COMFYVN_API_TOKEN, or --data-dir of that server (its api_token file)",
                file=err,
            )
        else:
            print(f"error: {exc.status} from {conn.server}: {detail_text(exc.detail)}", file=err)
    raise CommandFailed(2)


def use_color(args: argparse.Namespace, out: TextIO) -> bool:
    return out.isatty() and not getattr(args, "no_color", False)
