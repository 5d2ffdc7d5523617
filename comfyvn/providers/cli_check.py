"""``comfyvn providers check``: ask the running server for fresh health checks and print a
table. Colour only when stdout is a terminal, so logs and pipes stay plain text.

Exit codes: 0 checked; 1 no answer from the server, or (with ``--exit-code``) an enabled
provider is red; disabled providers are gray and never count."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

import httpx

from comfyvn.client.api import ApiClient, ApiError, resolve_connection

__all__ = ["red_providers", "render_table", "run"]

COLORS = {"green": "\033[32m", "amber": "\033[33m", "red": "\033[31m", "gray": "\033[90m"}
RESET = "\033[0m"
HEADERS = ("ID", "KIND", "STATUS", "LATENCY", "QUOTA", "REASON")


def _latency(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def render_table(results: list[dict[str, Any]], color: bool) -> str:
    rows = [
        (
            str(r.get("provider_id", "?")),
            str(r.get("kind", "?")),
            str(r.get("status", "?")),
            _latency(r.get("latency_ms")),
            str((r.get("quota") or {}).get("summary") or "-"),
            str(r.get("reason") or ""),
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        if color and row[2] in COLORS:  # pad first: escape codes have no width
            cells[2] = f"{COLORS[row[2]]}{cells[2]}{RESET}"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def red_providers(results: list[dict[str, Any]]) -> list[str]:
    """Ids of the enabled providers whose check is red."""
    return [
        str(r.get("provider_id", "?"))
        for r in results
        if r.get("status") == "red" and r.get("enabled", True) is not False
    ]


def _verdict(args: argparse.Namespace, results: list[dict[str, Any]], err: TextIO) -> int:
    if not getattr(args, "exit_code", False):
        return 0
    red = red_providers(results)
    if red:
        print(f"{len(red)} enabled provider(s) red: {', '.join(red)}", file=err)
        return 1
    return 0


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    conn = resolve_connection(args.server, args.token, args.data_dir)
    params = [("id", i) for i in args.id] if args.id else None
    try:
        with ApiClient(conn, timeout=args.timeout) as client:
            body = client.get("/api/providers/health", params=params)
    except httpx.TransportError as exc:
        print(
            f"error: cannot reach the ComfyVN server at {conn.server} ({type(exc).__name__}). "
            "Is `comfyvn serve` running? Point at it with --server URL.",
            file=err,
        )
        return 1
    except ApiError as exc:
        if exc.status == 401:
            print(
                f"error: the server at {conn.server} refused the API token; pass --token, "
                "set COMFYVN_API_TOKEN, or --data-dir of that server (its api_token file)",
                file=err,
            )
        else:
            print(f"error: {exc.status} from {conn.server}: {exc.detail}", file=err)
        return 1
    results = body.get("results", [])
    if args.json:
        print(json.dumps(body, indent=2), file=out)
        return _verdict(args, results, err)
    if not results:
        print(
            "no providers registered (add one with POST /api/providers, or Add provider... in "
            "the Studio's Debug Integrations panel)",
            file=out,
        )
        return 0
    color = out.isatty() and not args.no_color
    print(render_table(results, color), file=out)
    summary = body.get("summary") or {}
    counts = ", ".join(f"{n} {s}" for s, n in summary.items() if n)
    stamp = time.strftime("%H:%M:%S", time.localtime(body.get("checked_at") or time.time()))
    print(f"\n{len(results)} provider(s): {counts}; checked at {stamp}", file=out)
    return _verdict(args, results, err)
