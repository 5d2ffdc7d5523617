"""OpenAI-compatible APIs: ``GET /v1/models`` with the Bearer key. Quota comes from the
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` response headers, where present
(OpenAI sends them; many compatible servers do not)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import Adapter, AdapterError, Outcome, combine, http_failure

__all__ = ["OpenAIAdapter", "parse_duration", "parse_rate_limits"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset headers are Go-style durations (``12ms``, ``6m0s``, ``1h2m3.5s``);
    a bare number is seconds. Anything else is ``None``."""
    if text is None:
        return None
    value = text.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return round(sum(float(n) * _UNIT_S[u] for n, u in parts), 6)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(float(text.strip()))
    except ValueError:
        return None


def parse_rate_limits(headers: httpx.Headers) -> dict[str, Any]:
    """Normalized rate-limit fields; ``None`` where the header is absent or unreadable."""
    out: dict[str, Any] = {}
    for unit in ("requests", "tokens"):
        out[f"{unit}_limit"] = _int(headers.get(f"x-ratelimit-limit-{unit}"))
        out[f"{unit}_remaining"] = _int(headers.get(f"x-ratelimit-remaining-{unit}"))
        out[f"{unit}_reset_s"] = parse_duration(headers.get(f"x-ratelimit-reset-{unit}"))
    return out


class OpenAIAdapter(Adapter):
    kind = "openai"
    supports_quota = True
    key_help = (
        "Sent as 'Authorization: Bearer <key>'; a local OpenAI-compatible server may need none."
    )

    def models_url(self) -> str:
        configured = self.spec.config.get("models_path")
        if configured:
            return self.url(configured)
        base = (self.spec.base_url or "").rstrip("/")
        path = urlsplit(base).path
        return base + ("/models" if path.endswith("/v1") else "/v1/models")

    async def health(self) -> Outcome:
        response = await self.client.get(self.models_url(), headers=self.headers())
        limits = parse_rate_limits(response.headers)
        quota = self._quota(limits)
        raw = {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}
        failed = http_failure(response, "/models")
        if failed is not None:
            failed.quota, failed.raw = quota, {"headers": raw}
            return failed
        body = self.json_of(response, "/models")
        models = body.get("data") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise AdapterError("bad_response", "/models is not OpenAI's shape (no 'data' list)")
        ids = [str(m.get("id")) for m in models if isinstance(m, dict) and m.get("id")]
        base = Outcome(
            "green",
            "ok",
            f"{len(ids)} model(s) listed; {quota['summary']}",
            details={"models": len(ids), "sample": ids[:5], "key_sent": bool(self.api_key)},
            quota=quota,
            raw={"headers": raw},
        )
        return combine(self._findings(limits), base)

    def _findings(self, limits: dict[str, Any]) -> list[Outcome]:
        findings = []
        threshold = self.thresholds.rate_limit_amber_ratio
        for unit in ("requests", "tokens"):
            limit, remaining = limits[f"{unit}_limit"], limits[f"{unit}_remaining"]
            if not limit or remaining is None:
                continue
            if remaining / limit < threshold or remaining == 0:
                reset = limits[f"{unit}_reset_s"]
                findings.append(
                    Outcome(
                        "amber",
                        "low_quota",
                        f"low quota: {remaining} of {limit} {unit} left"
                        + (f" (resets in {reset:g} s)" if reset is not None else ""),
                    )
                )
        return findings

    @staticmethod
    def _quota(limits: dict[str, Any]) -> dict[str, Any]:
        parts = []
        for unit in ("requests", "tokens"):
            limit, remaining = limits[f"{unit}_limit"], limits[f"{unit}_remaining"]
            if limit is not None and remaining is not None:
                parts.append(f"{remaining}/{limit} {unit}")
        return {
            "summary": ", ".join(parts) if parts else "no rate-limit headers",
            "reported": bool(parts),
            **limits,
        }
