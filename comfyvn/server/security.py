"""Request guards for the local API: bearer token, Host check and WebSocket Origin check.

A pure ASGI middleware so the same rules cover HTTP routes, Server-Sent Events and WebSocket
upgrades. Refusals name the problem but never echo a credential.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

__all__ = [
    "RedactingFormatter",
    "SecurityMiddleware",
    "TokenRedactingFilter",
    "install_log_redaction",
    "redact",
    "register_secret",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
# Streams may carry the token in the query string (browsers cannot set headers on WebSocket or
# EventSource); every other route must use the Authorization header. Exact paths: a suffix rule
# once let `DELETE /api/providers/ws?token=...` through.
QUERY_TOKEN_PATHS = frozenset({"/api/modder/hooks/ws", "/api/modder/hooks/subscribe"})


def split_host(host_header: str) -> str:
    """The host name of a Host/Origin authority, without port or IPv6 brackets, lower-cased."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end != -1 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        bind_host: str,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._token = token.encode()
        bind = split_host(bind_host)
        self._any_ip = bind in _WILDCARD_BINDS
        self._hosts = set(LOOPBACK_NAMES) | {h.lower() for h in allowed_hosts}
        if not self._any_ip:
            self._hosts.add(bind)
        self._origins = {o.lower().rstrip("/") for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host_header = headers.get("host", "")
        host = split_host(host_header)
        if not (host in self._hosts or (self._any_ip and _is_ip(host))):
            await self._deny(
                scope,
                receive,
                send,
                400,
                f"Host header {host_header!r} is not "
                "allowed; add the name to COMFYVN_ALLOWED_HOSTS to serve it",
            )
            return
        if scope["type"] == "websocket":
            origin = headers.get("origin")
            if origin is not None and not self._origin_ok(origin, host_header):
                await self._deny(
                    scope,
                    receive,
                    send,
                    403,
                    f"WebSocket Origin {origin!r} is not "
                    "this server; cross-site WebSocket connections are refused",
                )
                return
        if scope["path"].startswith("/api/") and not self._authorized(scope, headers):
            await self._deny(
                scope,
                receive,
                send,
                401,
                "missing or invalid API token: send "
                "'Authorization: Bearer <token>' (see <data-dir>/api_token)",
            )
            return
        await self.app(scope, receive, send)

    def _origin_ok(self, origin: str, host_header: str) -> bool:
        origin = origin.lower().rstrip("/")
        if origin in self._origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host_header.lower()

    def _authorized(self, scope: Scope, headers: Headers) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, credential = auth.partition(" ")
        if scheme.lower() == "bearer" and credential:
            return hmac.compare_digest(credential.strip().encode(), self._token)
        if scope["path"] in QUERY_TOKEN_PATHS:
            query = scope.get("query_string", b"").decode("latin-1")
            for key, value in parse_qsl(query):
                if key == "token":
                    return hmac.compare_digest(value.encode(), self._token)
        return False

    async def _deny(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str):
        response = JSONResponse({"detail": detail}, status_code=status)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)  # Starlette prefixes "websocket." for denial
        else:
            await WebSocketClose(code=1008, reason=detail[:120])(scope, receive, send)


_TOKEN_IN_TEXT = re.compile(r"((?:[?&]|\b)token=)[^&\s\"']+", re.IGNORECASE)
_BEARER_IN_TEXT = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# The user-info part of any URL (``http://user:password@host``), whoever logs it (httpx logs
# every request URL at INFO); the whole part goes, as a user name alone can be a token.
_USERINFO_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s\"'<>]+@")


_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """Redact this exact value wherever it appears: a token set by the user may hold
    characters (``:``, ``!``, spaces) that the patterns below stop at, leaking the rest."""
    if value:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    # The patterns run only where their anchor occurs: most lines (access log lines without a
    # query token) pay three substring checks instead of three regex scans.
    if "@" in text:
        text = _USERINFO_IN_URL.sub(r"\1[redacted]@", text)
    lowered = text.lower()
    if "token=" in lowered:
        text = _TOKEN_IN_TEXT.sub(r"\1[redacted]", text)
    if "bearer" in lowered:
        text = _BEARER_IN_TEXT.sub(r"\1[redacted]", text)
    return text


class TokenRedactingFilter(logging.Filter):
    """Rewrites log records so a token passed in a URL or header never reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {
                    k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
                }
        return True


class RedactingFormatter(logging.Formatter):
    """Redacts the finished line, tracebacks included, whichever logger the record came from
    (logger filters do not see records that propagate up from child loggers)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def install_log_redaction() -> None:
    """Redact every handler's output exactly once: handlers with a :class:`RedactingFormatter`
    (the server's own) already redact the finished line; any other handler gets a filter."""
    flt = TokenRedactingFilter()
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            continue
        if not any(isinstance(f, TokenRedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
