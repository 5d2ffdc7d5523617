"""Plain-text views of API data for the panels: pure functions, no Qt, easy to test."""

from __future__ import annotations

import json
import re
import time
from pathlib import PurePath
from typing import Any

__all__ = [
    "PLUGIN_STATUS",
    "STATUS_LABELS",
    "SUMMARY_LABELS",
    "envelope_summary",
    "format_clock",
    "format_latency",
    "format_quota",
    "format_value",
    "mask_userinfo",
    "masked_config_lines",
    "plugin_error_text",
    "plugin_issue",
    "plugin_status",
    "quota_lines",
    "reload_summary",
    "webhook_state",
]

STATUS_LABELS = {"green": "OK", "amber": "Degraded", "red": "Down", "gray": "Not checked"}
# Summary buckets: gray splits into "disabled" (on purpose) and "gray" (enabled, never checked),
# so a summary right after a check never calls a disabled provider "not checked".
SUMMARY_LABELS = {**STATUS_LABELS, "disabled": "Disabled"}
GIB = 1024**3


def format_clock(ts: float | None, *, millis: bool = False) -> str:
    if ts is None:
        return "never"
    local = time.localtime(ts)
    text = time.strftime("%H:%M:%S", local)
    if millis:
        text += f".{int((ts % 1) * 1000):03d}"
    return text


def format_latency(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _money(value: Any) -> str | None:
    return f"${value:,.2f}" if isinstance(value, int | float) else None


def _count(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:g}"


def format_quota(
    kind: str, quota: dict[str, Any] | None, supported: bool = True, status: str | None = None
) -> str:
    """One line for the Quota column: the fields that matter per kind, else the server's summary."""
    if not supported:
        return "—"
    if not quota:
        return "not checked yet" if status in (None, "gray") else "unavailable"
    parts: list[str] = []
    if kind == "runpod":
        balance = _money(quota.get("balance"))
        spend = _money(quota.get("spend_per_hr"))
        if balance:
            parts.append(f"balance {balance}")
        if spend:
            parts.append(f"{spend}/h")
        if isinstance(quota.get("hours_left"), int | float):
            parts.append(f"~{quota['hours_left']:g} h left")
    elif kind == "comfyui":
        total, free = quota.get("vram_total"), quota.get("vram_free")
        if isinstance(total, int | float) and total > 0 and isinstance(free, int | float):
            parts.append(f"VRAM {free / GIB:.1f}/{total / GIB:.1f} GiB free")
        if quota.get("queue_running") is not None:
            parts.append(f"{quota['queue_running']} running, {quota['queue_pending']} pending")
    elif kind == "openai":
        for unit, short in (("requests", "req"), ("tokens", "tok")):
            limit, left = quota.get(f"{unit}_limit"), quota.get(f"{unit}_remaining")
            if limit is not None and left is not None:
                parts.append(f"{short} {_count(left)}/{_count(limit)} left")
    if parts:
        return " · ".join(parts)
    return str(quota.get("summary") or "—")


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return str(value)


def masked_config_lines(provider: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for an expanded provider: exactly what the API returned, which is
    masked already; secrets show only whether they are set and their hint."""
    rows: list[tuple[str, str]] = [
        ("id", str(provider.get("id", ""))),
        ("base_url", provider.get("base_url") or "— (no network)"),
        ("enabled", format_value(provider.get("enabled", True))),
    ]
    for key, value in sorted((provider.get("config") or {}).items()):
        rows.append((f"config.{key}", format_value(value)))
    secrets = provider.get("secrets") or {}
    if not secrets:
        rows.append(("secrets", "none set"))
    for name, masked in sorted(secrets.items()):
        if isinstance(masked, dict) and masked.get("set"):
            if masked.get("source") == "env":
                if masked.get("refused"):
                    state = f"refused: {masked['refused']}"
                elif masked.get("resolved"):
                    state = "set"
                else:
                    state = "NOT set in the server's environment"
                text = f"from ${masked.get('env')} ({state})"
            else:
                text = masked.get("hint") or "set (too short for a hint)"
            rows.append((f"secrets.{name}", text))
        else:
            rows.append((f"secrets.{name}", "not set"))
    for key, value in sorted((provider.get("threshold_overrides") or {}).items()):
        rows.append((f"thresholds.{key}", format_value(value)))
    return rows


def quota_lines(quota: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not quota:
        return []
    return [(f"quota.{k}", format_value(v)) for k, v in quota.items() if k != "summary"]


def envelope_summary(envelope: dict[str, Any]) -> str:
    """A short human line for the hooks table."""
    if envelope.get("gap"):
        return f"gap: events {envelope.get('from')}..{envelope.get('to')} were pruned from the log"
    data = envelope.get("data") or {}
    event = envelope.get("event", "")
    if event == "on_scene_enter":
        end = " (finished)" if data.get("finished") else ""
        return f"{data.get('scene_id')} → {data.get('node')} as {data.get('pov')}{end}"
    if event == "on_choice_render":
        labels = [str(c.get("label", c.get("id"))) for c in data.get("choices") or []]
        shown = ", ".join(labels[:3]) + (" …" if len(labels) > 3 else "")
        return f"{data.get('scene_id')}/{data.get('node')}: {len(labels)} choice(s): {shown}"
    if event.startswith("on_asset_"):
        return f"{data.get('type')} {str(data.get('uid', ''))[:12]} {data.get('path', '')}".strip()
    parts = [f"{k}={format_value(v)}" for k, v in list(data.items())[:4]]
    return ", ".join(parts)[:160]


# -- plugins -------------------------------------------------------------------------------------
PLUGIN_STATUS = {  # the plugin host's status -> (dot colour, label)
    "loaded": ("green", "Loaded"),
    "warning": ("amber", "Warning"),
    "failing": ("amber", "Failing"),
    "hung": ("red", "Hung"),
    "error": ("red", "Error"),
    "available": ("gray", "Available"),
    "unloaded": ("gray", "Unloaded"),
}


def plugin_status(status: Any) -> tuple[str, str]:
    """(dot colour, label) for a plugin status; an unknown one is gray under its own name."""
    known = PLUGIN_STATUS.get(str(status))
    if known is not None:
        return known
    return "gray", str(status or "unknown").capitalize()


def plugin_error_text(error: dict[str, Any] | None, *, full_path: bool = False) -> str:
    """``demo.py:3 SyntaxError: invalid syntax``: a load error with its file and line up front
    (the file's name only, unless ``full_path``)."""
    if not error:
        return ""
    message = str(error.get("message") or "")
    file, line = error.get("file"), error.get("line")
    if not file:
        return message
    prefix = f"{file}:{line}: "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    name = str(file) if full_path else PurePath(str(file)).name
    return f"{name}:{line} {message}" if line is not None else f"{name} {message}"


def _running_note(running: Any, *, table: bool) -> str:
    if running == "previous":
        return "running previous version" if table else "previous version still running"
    return "not running" if running is None else ""


def plugin_issue(plugin: dict[str, Any]) -> tuple[str, str] | None:
    """(colour, text) of the one line under a plugin's row, or None when all is well: its load
    error (and which version runs), a hung call, or the last error one of its hooks raised."""
    error = plugin.get("error")
    if error:  # which version runs comes first: a long message is cut at the end
        note = _running_note(plugin.get("running"), table=True)
        return "red", (f"{note} · " if note else "") + plugin_error_text(error)
    if plugin.get("status") == "hung":
        busy = plugin.get("busy_for_s")
        took = f"{busy:g} s" if isinstance(busy, int | float) else "too long"
        return "red", f"a hook call has been running for {took}"
    last = plugin.get("last_error")
    if last:
        return ("amber" if plugin.get("status") == "failing" else "gray"), f"last error: {last}"
    return None


def reload_summary(
    body: dict[str, Any], name: str | None, when: float, known: set[str] | None = None
) -> tuple[bool, str]:
    """(ok, one line) for the status line after ``POST /api/modder/hooks/plugins/reload``."""
    results = [r for r in body.get("results") or [] if isinstance(r, dict)]
    failed = [r for r in results if not r.get("ok")]
    if failed:
        parts = []
        for result in failed:
            text = plugin_error_text(result.get("error")) or f"status {result.get('status')}"
            note = _running_note(result.get("running"), table=False)
            parts.append(f"{result.get('name')}: {text}" + (f" ({note})" if note else ""))
        return False, "reload failed for " + "; ".join(parts)
    removed = sorted(str(r.get("name")) for r in results if r.get("status") == "removed")
    kept = [r for r in results if r.get("status") != "removed"]
    text = f"Reloaded {name}" if name else f"Reloaded {len(kept)} plugin(s)"
    text += f" at {format_clock(when)}"
    if known is not None:
        new = sorted(str(r.get("name")) for r in kept if r.get("name") not in known)
        if new:
            text += f"; new: {', '.join(new)}"
    if removed:
        text += f"; removed: {', '.join(removed)}"
    return True, text


# -- webhooks ------------------------------------------------------------------------------------
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


def mask_userinfo(text: Any) -> str:
    """Any ``scheme://user:password@`` in the text becomes ``scheme://user:****@``; the server
    masks already, this is the Studio's own second line so nothing it shows ever leaks one."""
    return _USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:****@", "" if text is None else str(text)
    )


def webhook_state(sub: dict[str, Any]) -> tuple[str, str, str]:
    """(dot colour, label, reason) of a subscription: Disabled (and why), Failing (failures
    since the last success), else Enabled."""
    if not sub.get("enabled", True):
        reason = sub.get("disabled_reason") or "disabled"
        return "gray", "Disabled", mask_userinfo(reason)
    failures = int(sub.get("consecutive_failures") or 0)
    failed_at, ok_at = sub.get("last_failure_at"), sub.get("last_success_at")
    if failures or (failed_at is not None and (ok_at is None or failed_at > ok_at)):
        parts = [f"{failures} failed deliver{'y' if failures == 1 else 'ies'} in a row"]
        if not failures:
            parts = ["the last attempt failed"]
        parts.append(f"last failure {format_clock(failed_at)}")
        if ok_at is not None:
            parts.append(f"last success {format_clock(ok_at)}")
        return "red" if failures else "amber", "Failing", " · ".join(parts)
    if ok_at is not None:
        return "green", "Enabled", f"healthy · last success {format_clock(ok_at)}"
    return "green", "Enabled", "no deliveries yet"
