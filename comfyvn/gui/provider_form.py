"""The provider Add / Edit form without Qt: read a template (``GET /api/providers/templates``),
turn what was typed into a ``POST`` or ``PUT /api/providers`` body, and describe a test result or
a refusal in a sentence. Pure functions, so the rules are tested without a window.

Secrets are write-only: an edit form never has the stored value (the server sends only a masked
hint), an empty secret field means "keep the stored one", a typed one replaces it, and "remove"
sends ``null``.
"""

from __future__ import annotations

import re
from typing import Any

from comfyvn.client.api import ApiError

from .formatting import STATUS_LABELS, format_latency

__all__ = [
    "FormError",
    "create_body",
    "describe_error",
    "describe_test",
    "display_text",
    "initial_value",
    "missing_required",
    "parse_value",
    "secret_hint",
    "update_body",
]

GROUP_TITLES = {
    "general": "Provider",
    "credentials": "Credentials",
    "options": "Options",
    "thresholds": "Thresholds (empty: server default)",
}


class FormError(ValueError):
    """A value that cannot be sent; the message names the field."""


def _split(name: str) -> tuple[str, str | None]:
    head, _, rest = name.partition(".")
    return head, rest or None


def _put(body: dict[str, Any], name: str, value: Any) -> None:
    head, rest = _split(name)
    if rest is None:
        body[head] = value
    else:
        body.setdefault(head, {})[rest] = value


def parse_value(field: dict[str, Any], raw: Any) -> Any:
    """The value to send for what a widget holds (``None``: nothing entered)."""
    kind, label = field.get("type"), field.get("label") or field.get("name")
    if kind == "boolean":
        return bool(raw)
    text = str(raw or "").strip()
    if not text:
        return None
    if kind == "choice":
        choices = field.get("choices") or []
        if choices and text not in choices:
            raise FormError(f"{label}: choose one of {', '.join(choices)}")
        return text
    if kind in ("integer", "number"):
        try:
            value: Any = int(text) if kind == "integer" else float(text)
        except ValueError:
            what = "a whole number" if kind == "integer" else "a number"
            raise FormError(f"{label}: {text!r} is not {what}") from None
        _bounds(field, label, value)
        return value
    if kind == "integers":
        try:
            return [int(part) for part in re.split(r"[,\s]+", text) if part]
        except ValueError:
            raise FormError(f"{label}: list whole numbers separated by commas") from None
    return text


def _bounds(field: dict[str, Any], label: str, value: float) -> None:
    low, high = field.get("minimum"), field.get("maximum")
    if low is not None and value < low:
        raise FormError(f"{label}: must be at least {low:g}")
    if high is not None and value > high:
        raise FormError(f"{label}: must be at most {high:g}")


def display_text(value: Any) -> str:
    """How a value shows in a text field."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def initial_value(field: dict[str, Any], provider: dict[str, Any] | None) -> Any:
    """What the form starts with: the template default (Add), else the provider's current value
    from its masked view (Edit). Secrets always start empty."""
    if field.get("secret"):
        return None
    if provider is None:
        return field.get("default")
    head, rest = _split(str(field["name"]))
    if rest is None:
        return provider.get(head, field.get("default"))
    if head == "config":
        return (provider.get("config") or {}).get(rest, field.get("default"))
    if head == "thresholds":
        return (provider.get("threshold_overrides") or {}).get(rest)
    return None


def secret_hint(masked: Any) -> str | None:
    """The stored secret as the server masked it (``None`` when none is stored)."""
    if not isinstance(masked, dict) or not masked.get("set"):
        return None
    if masked.get("source") == "env":
        if masked.get("refused"):
            return f"from ${masked.get('env')} (refused: {masked['refused']})"
        state = "set" if masked.get("resolved") else "NOT set in the server's environment"
        return f"from ${masked.get('env')} ({state})"
    return str(masked.get("hint") or "set (too short for a hint)")


def missing_required(
    fields: list[dict[str, Any]],
    values: dict[str, Any],
    stored_secrets: set[str] | None = None,
) -> list[str]:
    """Labels of required fields left empty. In an edit form a required secret that is stored
    (and not being removed) counts as given: empty means "keep it"."""
    stored = stored_secrets or set()
    missing = []
    for field in fields:
        if not field.get("required") or values.get(field["name"]) is not None:
            continue
        head, rest = _split(str(field["name"]))
        if head == "secrets" and rest in stored:
            continue
        missing.append(str(field.get("label") or field["name"]))
    return missing


def create_body(kind: str, fields: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """A ``POST /api/providers`` (and ``POST /api/providers/test``) body. Empty fields are left
    out (the server's default applies), and so are options still at their default."""
    body: dict[str, Any] = {"kind": kind}
    for field in fields:
        value = values.get(field["name"])
        if value is None:
            continue
        if field.get("group") == "options" and value == field.get("default"):
            continue
        _put(body, str(field["name"]), value)
    return body


def update_body(
    provider: dict[str, Any],
    fields: list[dict[str, Any]],
    values: dict[str, Any],
    remove_secrets: set[str] | None = None,
) -> dict[str, Any]:
    """A ``PUT /api/providers/{id}`` (and ``POST /api/providers/{id}/test``) body. ``config`` and
    ``thresholds`` are sent whole (a PUT replaces them), keeping keys the template does not
    list; a secret is sent only when typed (replace) or in ``remove_secrets`` (``null``)."""
    body: dict[str, Any] = {}
    config = dict(provider.get("config") or {})
    thresholds = dict(provider.get("threshold_overrides") or {})
    secrets: dict[str, Any] = {}
    remove = remove_secrets or set()
    for field in fields:
        name = str(field["name"])
        head, rest = _split(name)
        value = values.get(name)
        if rest is None:
            if head != "id":  # ids cannot change
                body[head] = value
        elif head == "config":
            if value is None or value == field.get("default"):
                config.pop(rest, None)
            else:
                config[rest] = value
        elif head == "thresholds":
            if value is None:
                thresholds.pop(rest, None)
            else:
                thresholds[rest] = value
        elif head == "secrets":
            if value is not None:
                secrets[rest] = value
            elif rest in remove:
                secrets[rest] = None
    body["config"] = config
    body["thresholds"] = thresholds
    if secrets:
        body["secrets"] = secrets
    return body


def describe_test(result: dict[str, Any]) -> str:
    """One or two lines for a test result: status, latency, reason, and the error if it adds
    anything (all scrubbed by the server)."""
    status = str(result.get("status") or "gray")
    label = STATUS_LABELS.get(status, status)
    latency = result.get("latency_ms")
    head = f"{label} · {format_latency(latency)}" if latency is not None else label
    text = f"{head}: {result.get('reason') or result.get('reason_code') or 'no reason given'}"
    error = result.get("error")
    if error and error != result.get("reason"):
        text += f"\nerror: {error}"
    return text


def describe_error(exc: BaseException, fallback: str) -> str:
    """A refusal as the form shows it: each invalid field by name (``secrets.api_key: ...``);
    ``fallback`` (the panel's usual sentence) for anything else."""
    if isinstance(exc, ApiError) and isinstance(exc.detail, list):
        parts = []
        for item in exc.detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(p) for p in item.get("loc") or [] if p != "body"]
            msg = str(item.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
        return f"the server refused it ({exc.status}): " + "; ".join(parts)
    return fallback
