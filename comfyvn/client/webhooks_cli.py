"""``comfyvn webhooks list | add URL | deliveries ID | redeliver ID DELIVERY_ID | ping ID | rm ID``.

Every subcommand asks the running server (``/api/modder/hooks/webhooks``), found like every
other command (:func:`comfyvn.client.api.resolve_connection`). Human tables by default,
``--json`` prints the server's answer. Secrets: the server masks them everywhere except the
answer to ``add``, which this prints once with a note to store it. Passwords in URLs are masked
in every table and line (``--json`` prints what the server sent, which masks them too).

Exit codes: 0 done; 1 the server answered but the receiver did not take a ping/redeliver
(non-2xx or no connection); 2 no usable answer (unreachable server, refused token, 4xx/5xx).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from comfyvn.client.api import Connection, resolve_connection
from comfyvn.client.cli_support import CommandFailed, request_or_fail, use_color
from comfyvn.net import redact_url

__all__ = [
    "render_deliveries",
    "render_webhooks",
    "run_add",
    "run_deliveries",
    "run_list",
    "run_ping",
    "run_redeliver",
    "run_rm",
]

WEBHOOKS = "/api/modder/hooks/webhooks"
COLORS = {
    "enabled": "\033[32m",
    "delivered": "\033[32m",
    "pending": "\033[33m",
    "disabled": "\033[90m",
    "failed": "\033[31m",
}
RESET = "\033[0m"


def _conn(args: argparse.Namespace) -> Connection:
    return resolve_connection(args.server, args.token, args.data_dir)


def _stamp(ts: Any) -> str:
    if not isinstance(ts, int | float) or not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]], color_col: int | None,
           color: bool) -> str:  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        if color and color_col is not None and row[color_col] in COLORS:
            cells[color_col] = f"{COLORS[row[color_col]]}{cells[color_col]}{RESET}"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _state(hook: dict[str, Any]) -> str:
    return "enabled" if hook.get("enabled") else "disabled"


def render_webhooks(hooks: list[dict[str, Any]], color: bool = False) -> str:
    headers = ("ID", "STATE", "EVENTS", "URL", "FAILURES", "LAST OK", "DESCRIPTION")
    rows = []
    for h in hooks:
        state = _state(h)
        description = str(h.get("description") or "")
        if not h.get("enabled") and h.get("disabled_reason"):
            description = f"{description} (disabled: {h['disabled_reason']})".strip()
        rows.append(
            (
                str(h.get("id", "?")),
                state,
                ",".join(h.get("events") or []) or "*",
                redact_url(str(h.get("url", ""))),
                str(h.get("consecutive_failures", 0)),
                _stamp(h.get("last_success_at")),
                description,
            )
        )
    return _table(headers, rows, 1, color)


def _latency(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def render_deliveries(items: list[dict[str, Any]], color: bool = False) -> str:
    headers = ("ID", "EVENT", "SEQ", "STATUS", "ATTEMPTS", "LAST CODE", "LATENCY", "UPDATED",
               "ERROR")  # fmt: skip
    rows = [
        (
            str(d.get("id", "?")),
            str(d.get("event", "?")),
            "-" if d.get("seq") is None else str(d["seq"]),
            str(d.get("status", "?")),
            str(d.get("attempts", 0)),
            "-" if d.get("last_status_code") is None else str(d["last_status_code"]),
            _latency(d.get("last_latency_ms")),
            _stamp(d.get("updated_at")),
            str(d.get("last_error") or ""),
        )
        for d in items
    ]
    return _table(headers, rows, 3, color)


def _print_json(body: Any, out: TextIO) -> None:
    print(json.dumps(body, indent=2), file=out)


def run_list(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        body = request_or_fail(_conn(args), "GET", WEBHOOKS, err, args.timeout)
    except CommandFailed as failed:
        return failed.code
    if args.json:
        _print_json(body, out)
        return 0
    hooks = body.get("items") or []
    if not hooks:
        print("no webhooks (add one with `comfyvn webhooks add URL`)", file=out)
        return 0
    print(render_webhooks(hooks, use_color(args, out)), file=out)
    enabled = sum(1 for h in hooks if h.get("enabled"))
    print(
        f"\n{len(hooks)} webhook(s): {enabled} enabled, {len(hooks) - enabled} disabled", file=out
    )
    return 0


def run_add(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    body: dict[str, Any] = {"url": args.url}
    if args.events:
        body["events"] = [e.strip() for e in args.events.split(",") if e.strip()]
    if args.description is not None:
        body["description"] = args.description
    try:
        answer = request_or_fail(_conn(args), "POST", WEBHOOKS, err, args.timeout, json=body)
    except CommandFailed as failed:
        return failed.code
    if args.json:
        _print_json(answer, out)
        return 0
    hook = answer.get("webhook") or {}
    print(f"added webhook {hook.get('id')}", file=out)
    print(f"  url:     {redact_url(str(hook.get('url', '')))}", file=out)
    print(f"  events:  {','.join(hook.get('events') or []) or '*'}", file=out)
    if hook.get("description"):
        print(f"  about:   {hook['description']}", file=out)
    print(f"  secret:  {hook.get('secret')}", file=out)
    print(
        "store the secret now: it is shown only this once (verify signatures with it; "
        "`POST .../rotate-secret` makes a new one if it is lost)",
        file=out,
    )
    return 0


def run_deliveries(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    try:
        body = request_or_fail(
            _conn(args), "GET", f"{WEBHOOKS}/{args.id}/deliveries", err, args.timeout,
            params=params,
        )  # fmt: skip
    except CommandFailed as failed:
        return failed.code
    if args.json:
        _print_json(body, out)
        return 0
    items = body.get("items") or []
    if not items:
        print(f"no deliveries for webhook {args.id}", file=out)
        return 0
    print(render_deliveries(items, use_color(args, out)), file=out)
    more = " (more: older ones exist)" if body.get("next_before") else ""
    print(f"\n{len(items)} deliver{'y' if len(items) == 1 else 'ies'}, newest first{more}",
          file=out)  # fmt: skip
    return 0


def _print_attempt(what: str, body: dict[str, Any], out: TextIO, err: TextIO) -> int:
    attempt = body.get("attempt") or {}
    delivery = body.get("delivery") or {}
    code = attempt.get("status_code")
    latency = _latency(attempt.get("latency_ms"))
    if body.get("delivered"):
        print(f"{what}: delivered (HTTP {code}, {latency}); delivery {delivery.get('id')}",
              file=out)  # fmt: skip
        return 0
    why = attempt.get("error") or (f"HTTP {code}" if code is not None else "failed")
    print(f"{what}: not delivered: {why} ({latency}); delivery {delivery.get('id')}", file=out)
    if attempt.get("response"):
        print(f"  response: {attempt['response']}", file=out)
    print(f"{what} failed", file=err)
    return 1


def _send_one(args: argparse.Namespace, path: str, what: str, out: TextIO, err: TextIO) -> int:
    """Ping and redeliver: one attempt sent now; exit 0 if the receiver took it, else 1."""
    try:
        body = request_or_fail(_conn(args), "POST", path, err, args.timeout)
    except CommandFailed as failed:
        return failed.code
    if args.json:
        _print_json(body, out)
        return 0 if body.get("delivered") else 1
    return _print_attempt(what, body, out, err)


def run_redeliver(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    path = f"{WEBHOOKS}/{args.id}/deliveries/{args.delivery_id}/redeliver"
    return _send_one(
        args, path, f"redeliver {args.delivery_id}", out or sys.stdout, err or sys.stderr
    )


def run_ping(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    path = f"{WEBHOOKS}/{args.id}/ping"
    return _send_one(args, path, f"ping {args.id}", out or sys.stdout, err or sys.stderr)


def run_rm(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        body = request_or_fail(_conn(args), "DELETE", f"{WEBHOOKS}/{args.id}", err, args.timeout)
    except CommandFailed as failed:
        return failed.code
    if args.json:
        _print_json(body, out)
        return 0
    print(f"removed webhook {args.id} and its delivery log", file=out)
    return 0
