"""Provider shapes: pydantic models at the edges (API bodies, files), dataclasses inside.

A provider's non-secret config lives in ``providers.json``; its secrets live apart (see
:mod:`comfyvn.providers.secrets`) and only ever leave the server masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comfyvn.core.env import EnvError, env_names

__all__ = [
    "DEFAULT_BASE_URLS",
    "KINDS",
    "KIND_CONFIG",
    "QUOTA_KINDS",
    "RESERVED_IDS",
    "CheckResult",
    "Kind",
    "MaskedSecret",
    "ProviderCreate",
    "ProviderSpec",
    "ProviderUpdate",
    "Status",
    "ThresholdOverrides",
    "Thresholds",
    "env_ref_refusal",
    "slugify",
]

Kind = Literal["comfyui", "runpod", "openai", "http", "echo"]
Status = Literal["green", "amber", "red", "gray"]

KINDS: dict[str, str] = {
    "comfyui": "ComfyUI server: /system_stats (devices, VRAM) and /queue (running, pending)",
    "runpod": "RunPod GraphQL API: account balance and spend (myself { clientBalance ... })",
    "openai": "OpenAI-compatible API: GET /v1/models; quota from x-ratelimit-* headers",
    "http": "Generic HTTP endpoint: a health path and the status codes that count as up",
    "echo": "Built-in loopback provider: always green, no network",
}
# Kinds whose adapter reports quota-like fields (GET /api/providers/quota says supported: true).
QUOTA_KINDS = frozenset({"comfyui", "runpod", "openai"})
# Kinds whose base_url may be omitted (echo has none; the others have a well-known default).
DEFAULT_BASE_URLS: dict[str, str | None] = {
    "echo": None,
    "comfyui": "http://127.0.0.1:8188",
    "runpod": "https://api.runpod.io/graphql",
    "openai": "https://api.openai.com/v1",
}

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Path segments of /api/providers routes: a provider with one of these ids could not be read
# back with GET /api/providers/{id}, so new providers may not take them.
RESERVED_IDS = frozenset({"health", "status", "quota", "templates", "test"})
SECRET_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ENV_REF_RE = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]{0,127})$")
# ``env:NAME`` may only name variables meant for it: without the rule, ``env:PATH`` (or any
# variable of the server) would be sent as a bearer token to whatever base_url the caller chose.
SECRET_ENV_PREFIX = "COMFYVN_SECRET_"
SECRET_ENV_ALLOW = "COMFYVN_SECRET_ENV_ALLOW"
MAX_SECRET_CHARS = 4096
# Config keys that look like credentials: they belong in ``secrets`` so they are never echoed.
CREDENTIAL_KEYS = frozenset(
    {"api_key", "apikey", "key", "token", "access_token", "password", "secret", "authorization"}
)


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63]
    return slug or "provider"


class ThresholdOverrides(BaseModel):
    """Per-provider overrides; unset fields fall back to :class:`Thresholds` defaults.

    ``json_schema_extra["kinds"]`` names the kinds a threshold applies to (the provider
    templates offer each only there)."""

    model_config = ConfigDict(extra="forbid")

    latency_amber_ms: float | None = Field(
        None,
        ge=0,
        title="Slow above (ms)",
        description="Amber above this latency.",
        json_schema_extra={"kinds": ["comfyui", "runpod", "openai", "http"]},
    )
    low_balance: float | None = Field(
        None,
        ge=0,
        title="Low balance (USD)",
        description="RunPod: amber when clientBalance is under this.",
        json_schema_extra={"kinds": ["runpod"]},
    )
    queue_amber: int | None = Field(
        None,
        ge=1,
        title="Long queue (pending prompts)",
        description="ComfyUI: amber when this many prompts are pending.",
        json_schema_extra={"kinds": ["comfyui"]},
    )
    vram_free_amber_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        title="Low free VRAM (ratio)",
        description="ComfyUI: amber when a device's free VRAM ratio is under this.",
        json_schema_extra={"kinds": ["comfyui"]},
    )
    rate_limit_amber_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        title="Low rate limit (ratio)",
        description="OpenAI: amber when remaining/limit requests or tokens is under this.",
        json_schema_extra={"kinds": ["openai"]},
    )


@dataclass(frozen=True, slots=True)
class Thresholds:
    latency_amber_ms: float = 1000.0
    low_balance: float = 5.0
    queue_amber: int = 10
    vram_free_amber_ratio: float = 0.1
    rate_limit_amber_ratio: float = 0.1

    @classmethod
    def effective(cls, overrides: dict[str, Any] | None) -> Thresholds:
        return cls(**{k: v for k, v in (overrides or {}).items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_amber_ms": self.latency_amber_ms,
            "low_balance": self.low_balance,
            "queue_amber": self.queue_amber,
            "vram_free_amber_ratio": self.vram_free_amber_ratio,
            "rate_limit_amber_ratio": self.rate_limit_amber_ratio,
        }


class MaskedSecret(BaseModel):
    """What the API shows for a secret; sent back unchanged it means "keep the stored value"."""

    model_config = ConfigDict(extra="allow")

    set: bool


SecretInput = str | MaskedSecret | None


class _HttpConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    health_path: str = Field(
        "/", title="Health path", description="Path requested on base_url, starting with '/'."
    )
    method: Literal["GET", "HEAD"] = Field("GET", title="Method", description="GET or HEAD.")
    accepted_status: list[int] | None = Field(
        None,
        title="Accepted status codes",
        description="Status codes that count as up, e.g. 200, 204; empty: any 2xx.",
    )
    auth_header: str = Field(
        "Authorization",
        title="Key header",
        description="Header that carries the API key: 'Authorization' sends 'Bearer <key>', "
        "any other header the bare key.",
    )

    @field_validator("health_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("health_path must start with '/'")
        return value

    @field_validator("accepted_status")
    @classmethod
    def _codes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("accepted_status must list at least one code (omit it for any 2xx)")
        bad = [c for c in value if not 100 <= c <= 599]
        if bad:
            raise ValueError(f"accepted_status has codes outside 100..599: {bad}")
        return value

    @field_validator("auth_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
            raise ValueError("auth_header must be an HTTP header name")
        return value


class _OpenAIConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    models_path: str | None = Field(
        None,
        title="Models path",
        description="Path of the model list, starting with '/'; empty: /v1/models "
        "(or /models when base_url ends in /v1).",
    )

    @field_validator("models_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("models_path must start with '/'")
        return value


# The ``config`` each kind reads (validated at creation); the provider templates list its fields.
KIND_CONFIG: dict[str, type[BaseModel]] = {"http": _HttpConfig, "openai": _OpenAIConfig}


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("base_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("base_url must not carry credentials; put them in secrets.api_key")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not have a query or fragment; keys go in secrets")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("base_url has an invalid port") from None
    return value.rstrip("/")


def _slug(value: str | None) -> str | None:
    if value is not None and not SLUG_RE.fullmatch(value):
        raise ValueError(
            "id must be a slug: 1-63 characters, lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


def _url_or_none(value: str | None) -> str | None:
    return None if value is None else _check_base_url(value)


def _check_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    leaked = sorted(k for k in config if k.lower() in CREDENTIAL_KEYS)
    if leaked:
        raise ValueError(
            f"config key(s) {leaked} look like credentials; send them in 'secrets' instead"
        )
    model = KIND_CONFIG.get(kind)
    if model is not None:
        model.model_validate(config)
    return config


class ProviderSpec(BaseModel):
    """The stored, non-secret part of a provider (one entry of ``providers.json``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Slug: lower-case letters, digits, '-' and '_'.")
    name: str = Field(min_length=1, max_length=120)
    kind: Kind
    base_url: str | None = Field(None, max_length=2048)
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    thresholds: ThresholdOverrides = Field(default_factory=ThresholdOverrides)
    created_at: float = 0.0
    updated_at: float = 0.0

    _id = field_validator("id")(_slug)
    _url = field_validator("base_url")(_url_or_none)

    @model_validator(mode="after")
    def _per_kind(self) -> ProviderSpec:
        if self.base_url is None:
            if self.kind not in DEFAULT_BASE_URLS:
                raise ValueError(f"base_url is required for kind {self.kind!r}")
            self.base_url = DEFAULT_BASE_URLS[self.kind]
        elif self.kind == "echo":
            self.base_url = None  # the built-in echo provider never touches the network
        _check_config(self.kind, self.config)
        return self


class _SecretsField(BaseModel):
    secrets: dict[str, SecretInput] = Field(default_factory=dict)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: dict[str, SecretInput]) -> dict[str, SecretInput]:
        for name, secret in value.items():
            if not SECRET_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"secret name {name!r} must be lower-case letters, digits and '_' "
                    "(the API key is 'api_key')"
                )
            if isinstance(secret, str):
                _check_secret_value(name, secret)
        return value


def env_ref_refusal(variable: str) -> str | None:
    """Why the reference ``env:variable`` may not be resolved, or ``None`` when it may.

    Checked before the environment is read, at creation and again at every resolution, so a
    reference stored before the rule existed is never resolved either. The allow-list is read
    at each call (it is a few names), so the rule is the same wherever it is applied."""
    if variable.startswith(SECRET_ENV_PREFIX) and variable not in (
        SECRET_ENV_PREFIX,
        SECRET_ENV_ALLOW,
    ):
        return None
    rule = (
        f"secret references must name a variable {SECRET_ENV_PREFIX}* "
        f"or one listed in {SECRET_ENV_ALLOW}"
    )
    try:
        allowed = env_names(SECRET_ENV_ALLOW)
    except EnvError as exc:
        return f"env:{variable} is not allowed: {rule} ({exc})"
    if variable in allowed and variable != SECRET_ENV_ALLOW:
        return None
    return f"env:{variable} is not allowed: {rule}"


def _check_secret_value(name: str, value: str) -> None:
    """Messages name the secret, never its value or length."""
    if not value.strip():
        raise ValueError(f"secret {name!r} is empty; send null to remove it")
    if len(value) > MAX_SECRET_CHARS:
        raise ValueError(f"secret {name!r} is longer than {MAX_SECRET_CHARS} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"secret {name!r} contains control characters")
    if value.startswith("env:"):
        ref = ENV_REF_RE.fullmatch(value)
        if ref is None:
            raise ValueError(
                f"secret {name!r}: an env reference must look like 'env:VARIABLE_NAME'"
            )
        refusal = env_ref_refusal(ref.group(1))
        if refusal is not None:
            raise ValueError(f"secret {name!r}: {refusal}")


class ProviderCreate(_SecretsField):
    """``POST /api/providers``: ``id`` is optional (derived from ``name``) but kept when given."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None,
        title="ID",
        description="A slug (lower-case letters, digits, '-' and '_'); derived from the name "
        "when omitted. It cannot be changed later.",
    )
    name: str | None = Field(
        None, min_length=1, max_length=120, title="Name", description="Shown in the Studio."
    )
    kind: Kind
    base_url: str | None = Field(
        None,
        max_length=2048,
        title="Base URL",
        description="http:// or https://, without credentials or a query (keys go in secrets).",
    )
    enabled: bool = Field(
        True, title="Enabled", description="A disabled provider is gray and never contacted."
    )
    config: dict[str, Any] = Field(default_factory=dict)
    thresholds: ThresholdOverrides = Field(default_factory=ThresholdOverrides)

    _id = field_validator("id")(_slug)
    _url = field_validator("base_url")(_url_or_none)

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value in RESERVED_IDS:
            raise ValueError(
                f"id {value!r} is reserved (GET /api/providers/{value} is a route of its own); "
                "choose another"
            )
        return value

    @model_validator(mode="after")
    def _named(self) -> ProviderCreate:
        if self.id is None and self.name is None:
            raise ValueError("give an 'id' (a slug) or a 'name'")
        for name, secret in self.secrets.items():
            if isinstance(secret, MaskedSecret):
                raise ValueError(
                    f"secret {name!r} is a masked value; send the secret itself when creating"
                )
        return self


class ProviderUpdate(_SecretsField):
    """``PUT /api/providers/{id}``: fields given replace the stored ones; ``secrets`` merges
    (a string sets, ``null`` removes, a masked value or an omitted name keeps)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    name: str | None = Field(None, min_length=1, max_length=120)
    kind: Kind | None = None
    base_url: str | None = Field(None, max_length=2048)
    enabled: bool | None = None
    config: dict[str, Any] | None = None
    thresholds: ThresholdOverrides | None = None

    _id = field_validator("id")(_slug)
    _url = field_validator("base_url")(_url_or_none)


@dataclass(slots=True)
class CheckResult:
    """One health check. ``reason`` is for people, ``reason_code`` for code."""

    provider_id: str
    provider_name: str
    kind: str
    status: str
    reason_code: str
    reason: str
    checked_at: float | None
    latency_ms: float | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    quota: dict[str, Any] | None = None
    enabled: bool = True

    @property
    def ok(self) -> bool:
        return self.status in ("green", "amber")

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id,
            "provider_name": self.provider_name,
            "kind": self.kind,
            "enabled": self.enabled,
            "status": self.status,
            "ok": self.ok,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "checked_at": self.checked_at,
            "details": self.details,
            "quota": self.quota,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            provider_id=data["provider_id"],
            provider_name=data.get("provider_name", data["provider_id"]),
            kind=data.get("kind", ""),
            status=data.get("status", "gray"),
            reason_code=data.get("reason_code", ""),
            reason=data.get("reason", ""),
            checked_at=data.get("checked_at"),
            latency_ms=data.get("latency_ms"),
            error=data.get("error"),
            details=data.get("details") or {},
            quota=data.get("quota"),
            enabled=data.get("enabled", True),
        )
