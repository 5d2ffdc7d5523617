"""What every adapter shares: the outcome shape, status ranking and HTTP status classification.

Adapters only ever send keys in headers, never in URLs, so an httpx error that quotes a URL
cannot carry a key; the health service still scrubs every message before it is kept.

Adapters never cut or reformat text from an upstream: an error carries the whole body, and the
health service scrubs it and only then cuts it (``Scrubber.clip``). Cutting here first would
leave the head of a key that an upstream echoed at the cut edge, which no scrubber recognises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from ..models import ProviderSpec, Thresholds
from ..secrets import ResolvedSecrets

__all__ = [
    "Adapter",
    "AdapterError",
    "Outcome",
    "combine",
    "describe_exception",
    "http_failure",
]

RANK = {"gray": -1, "green": 0, "amber": 1, "red": 2}


@dataclass(slots=True)
class Outcome:
    status: str
    reason_code: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    quota: dict[str, Any] | None = None
    raw: Any = None
    error: str | None = None


class AdapterError(Exception):
    """A provider answered in a way we cannot use; carries the status it implies."""

    def __init__(self, reason_code: str, message: str, status: str = "red") -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.status = status


def combine(findings: list[Outcome], base: Outcome) -> Outcome:
    """The worst finding wins; several findings of that colour are all named in the reason."""
    if not findings:
        return base
    worst = max(RANK[f.status] for f in findings)
    top = [f for f in findings if RANK[f.status] == worst]
    base.status = top[0].status
    base.reason_code = top[0].reason_code
    base.reason = "; ".join(f.reason for f in top)
    return base


def body_text(response: httpx.Response) -> str:
    """The whole decoded body, uncut and unnormalised: see the module docstring for why."""
    try:
        return response.text.strip()
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""


def http_failure(response: httpx.Response, what: str) -> Outcome | None:
    """The outcome a non-2xx answer implies, or ``None`` for a 2xx."""
    code = response.status_code
    if 200 <= code < 300:
        return None
    body = body_text(response)
    error = f"HTTP {code} from {what}" + (f": {body}" if body else "")
    if code in (401, 403):
        return Outcome("red", "auth_rejected", f"credentials rejected ({code})", error=error)
    if code == 429:
        retry = response.headers.get("retry-after")
        reason = "rate limited (429)" + (f"; retry after {retry}s" if retry else "")
        details = {"retry_after": retry} if retry else {}
        return Outcome("amber", "rate_limited", reason, details=details, error=error)
    if code >= 500:
        return Outcome("red", "server_error", f"server error ({code})", error=error)
    if 300 <= code < 400:
        target = response.headers.get("location", "?")
        return Outcome(
            "red",
            "redirected",
            f"redirected ({code}) to {target}; set base_url to the final address",
            error=error,
        )
    return Outcome("red", "http_error", f"unexpected HTTP {code} from {what}", error=error)


def describe_exception(exc: BaseException, base_url: str | None, timeout_s: float) -> Outcome:
    """Network failures: the message names the host, never a key (keys are not in URLs)."""
    where = _authority(base_url)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return Outcome(
            "red",
            "timeout",
            f"no answer from {where} within {timeout_s:g} s",
            error=f"timeout after {timeout_s:g} s",
        )
    if isinstance(exc, AdapterError):
        return Outcome(exc.status, exc.reason_code, str(exc), error=str(exc))
    if isinstance(exc, httpx.ConnectError):
        return Outcome(
            "red", "unreachable", f"cannot connect to {where}", error=_message(exc, "connect error")
        )
    if isinstance(exc, httpx.HTTPError):
        return Outcome(
            "red",
            "unreachable",
            f"connection to {where} failed ({type(exc).__name__})",
            error=_message(exc, type(exc).__name__),
        )
    return Outcome(
        "red",
        "internal_error",
        f"the check itself failed ({type(exc).__name__}); see the server log",
        error=_message(exc, type(exc).__name__),
    )


def _message(exc: BaseException, fallback: str) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else fallback


def _authority(base_url: str | None) -> str:
    if not base_url:
        return "the provider"
    parts = urlsplit(base_url)
    return parts.netloc or base_url


class Adapter:
    """One provider kind. ``health()`` always; ``quota()`` where the service reports one."""

    kind: ClassVar[str] = ""
    supports_quota: ClassVar[bool] = False
    # Whether the adapter sends ``secrets.api_key`` at all, must have it, and how the provider
    # templates (GET /api/providers/templates) describe it.
    uses_key: ClassVar[bool] = True
    needs_key: ClassVar[bool] = False
    key_help: ClassVar[str] = "Optional; sent as 'Authorization: Bearer <key>', never in a URL."

    def __init__(
        self,
        spec: ProviderSpec,
        secrets: ResolvedSecrets,
        client: httpx.AsyncClient,
        thresholds: Thresholds,
        timeout_s: float,
    ) -> None:
        self.spec = spec
        self.secrets = secrets
        self.client = client
        self.thresholds = thresholds
        self.timeout_s = timeout_s

    @property
    def api_key(self) -> str | None:
        return self.secrets.get("api_key")

    def url(self, path: str) -> str:
        return (self.spec.base_url or "").rstrip("/") + path

    def headers(self) -> dict[str, str]:
        key = self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def health(self) -> Outcome:
        raise NotImplementedError

    async def quota(self) -> Outcome:
        """Quota comes from the same calls as health; adapters without quota never get here."""
        return await self.health()

    @staticmethod
    def json_of(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise AdapterError("bad_response", f"{what} did not answer with JSON") from None
