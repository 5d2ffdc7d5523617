"""RunPod: its GraphQL API at the provider's ``base_url`` (default https://api.runpod.io/graphql),
``query { myself { clientBalance currentSpendPerHr spendLimit } }``.

RunPod's public examples pass the key as ``?api_key=``; we send it as a Bearer header instead,
so no URL (and therefore no httpx error message) ever contains it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .base import Adapter, AdapterError, Outcome, http_failure

__all__ = ["QUERY", "RunPodAdapter"]

QUERY = "query { myself { clientBalance currentSpendPerHr spendLimit } }"
_AUTH_WORDS = ("unauthori", "authenticat", "api key", "forbidden", "permission")


def _money(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdapterError("bad_response", f"RunPod 'myself.{name}' is not a number")
    return float(value)


class RunPodAdapter(Adapter):
    kind = "runpod"
    supports_quota = True
    needs_key = True
    key_help = (
        "Your RunPod API key (RunPod console: Settings > API Keys); sent as a Bearer header, "
        "never in a URL."
    )

    def endpoint(self) -> str:
        """The base_url itself; a bare host (no path) gets RunPod's ``/graphql``."""
        base = (self.spec.base_url or "").rstrip("/")
        return base if urlsplit(base).path not in ("", "/") else base + "/graphql"

    async def health(self) -> Outcome:
        if not self.api_key:
            return Outcome(
                "red",
                "missing_secret",
                "secrets.api_key is not set: RunPod needs an API key",
                error="missing secrets.api_key",
            )
        response = await self.client.post(
            self.endpoint(),
            json={"query": QUERY},
            headers={**self.headers(), "Content-Type": "application/json"},
        )
        failed = http_failure(response, "RunPod GraphQL")
        if failed is not None:
            return failed
        body = self.json_of(response, "RunPod GraphQL")
        if not isinstance(body, dict):
            raise AdapterError("bad_response", "RunPod GraphQL answered with a non-object")
        errors = body.get("errors")
        if errors:
            # Uncut: the health service scrubs, then cuts (a cut here could halve an echoed key).
            messages = "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors
            )
            if any(word in messages.lower() for word in _AUTH_WORDS):
                return Outcome(
                    "red", "auth_rejected", "RunPod rejected the API key", error=messages
                )
            return Outcome(
                "red", "bad_response", f"RunPod GraphQL error: {messages}", error=messages
            )
        data = body.get("data")
        myself = data.get("myself") if isinstance(data, dict) else None
        if myself is None:
            return Outcome(
                "red",
                "auth_rejected",
                "RunPod returned no account (myself is null): the API key was not accepted",
                error="myself is null",
            )
        if not isinstance(myself, dict):
            raise AdapterError("bad_response", "RunPod 'myself' is not an object")
        balance = _money(myself.get("clientBalance"), "clientBalance")
        spend = _money(myself.get("currentSpendPerHr"), "currentSpendPerHr")
        limit = _money(myself.get("spendLimit"), "spendLimit")
        hours_left = round(balance / spend, 2) if balance is not None and spend else None
        summary = f"balance ${balance:.2f}" if balance is not None else "balance unknown"
        if spend is not None:
            summary += f", spending ${spend:.2f}/h"
        if hours_left is not None:
            summary += f" (~{hours_left:g} h left)"
        if limit is not None:
            summary += f", spend limit {limit:g}"
        quota = {
            "summary": summary,
            "balance": balance,
            "spend_per_hr": spend,
            "spend_limit": limit,
            "hours_left": hours_left,
            "low_balance": self.thresholds.low_balance,
            "currency": "USD",
        }
        outcome = Outcome(
            "green",
            "ok",
            f"RunPod account reachable: {summary}",
            details={"account": "myself"},
            quota=quota,
            raw={"myself": myself},
        )
        if balance is not None and balance < self.thresholds.low_balance:
            outcome.status, outcome.reason_code = "amber", "low_balance"
            outcome.reason = (
                f"low balance: ${balance:.2f} is under ${self.thresholds.low_balance:.2f}"
            )
        return outcome
