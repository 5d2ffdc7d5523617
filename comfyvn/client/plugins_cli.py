"""``comfyvn plugins list | reload [NAME] | new NAME``.

``list`` and ``reload`` ask the running server (``/api/modder/hooks/plugins``); ``new`` writes a
commented template plugin into the plugin folder and needs no server. Colour only when stdout
is a terminal, so logs and pipes stay plain text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from comfyvn.client.api import resolve_connection
from comfyvn.client.cli_support import CommandFailed, request_or_fail, use_color

__all__ = ["default_plugin_root", "render_table", "run_list", "run_new", "run_reload"]

COLORS = {
    "loaded": "\033[32m",  # green
    "warning": "\033[33m",  # amber
    "failing": "\033[31m",  # red
    "hung": "\033[31m",
    "error": "\033[31m",
    "available": "\033[90m",  # gray
    "unloaded": "\033[90m",
    "removed": "\033[90m",
}
RESET = "\033[0m"
HEADERS = ("NAME", "SOURCE", "STATUS", "RUNNING", "HOOKS", "CALLS", "ERRORS", "DETAIL")
STATUS_COLUMN = HEADERS.index("STATUS")


def _error_text(error: dict[str, Any] | None) -> str:
    """The load error's message, with its file and line (the server usually puts them first)."""
    if not error:
        return ""
    message = str(error.get("message") or "")
    file, line = error.get("file"), error.get("line")
    if file:
        where = f"{file}:{line}" if line is not None else str(file)
        if where not in message:
            message = f"{where}: {message}"
    phase = error.get("phase")
    return f"{phase} failed: {message}" if phase and phase != "import" else message


def _detail(plugin: dict[str, Any]) -> str:
    if plugin.get("error"):
        return _error_text(plugin["error"])
    problems = plugin.get("problems") or []
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{problems[0]}{more}"
    return str(plugin.get("last_error") or "")


def render_table(plugins: list[dict[str, Any]], color: bool) -> str:
    rows = [
        (
            str(p.get("name", "?")),
            str(p.get("source") or "?"),
            str(p.get("status") or "?"),
            str(p.get("running") or "-"),
            ",".join(p.get("hooks") or []) or "-",
            str(p.get("calls", 0)),
            str(p.get("errors", 0)),
            _detail(p),
        )
        for p in plugins
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        status = row[STATUS_COLUMN]
        if color and status in COLORS:  # pad first: escape codes have no width
            cells[STATUS_COLUMN] = f"{COLORS[status]}{cells[STATUS_COLUMN]}{RESET}"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _paint(text: str, status: str, color: bool) -> str:
    return f"{COLORS[status]}{text}{RESET}" if color and status in COLORS else text


def run_list(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    conn = resolve_connection(args.server, args.token, args.data_dir)
    try:
        body = request_or_fail(conn, "GET", "/api/modder/hooks/plugins", err, args.timeout)
    except CommandFailed as failed:
        return failed.code
    if args.json:
        print(json.dumps(body, indent=2), file=out)
        return 0
    if body.get("enabled") is False:
        print(f"plugins are off on this server: {body.get('reason') or 'not enabled'}", file=out)
    plugins = body.get("plugins") or []
    if not plugins:
        if body.get("dev_mode"):
            print(
                f"no plugins in {body.get('root')} (write one with `comfyvn plugins new NAME`)",
                file=out,
            )
        elif body.get("enabled") is not False:
            print("no plugins", file=out)
        return 0
    print(render_table(plugins, use_color(args, out)), file=out)
    counts: dict[str, int] = {}
    for plugin in plugins:
        status = str(plugin.get("status") or "?")
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    where = []
    if body.get("dev_mode"):
        where.append(f"folder {body.get('root')}")
        where.append("watching for changes" if body.get("watching") else "not watching")
    print(
        f"\n{len(plugins)} plugin(s): {summary}" + (f"; {', '.join(where)}" if where else ""),
        file=out,
    )
    if args.log:
        for plugin in plugins:
            lines = (plugin.get("log") or [])[-args.log :]
            print(f"\n{plugin.get('name', '?')}: " + ("" if lines else "(no log lines)"), file=out)
            for entry in lines:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry.get("ts") or 0))
                level, message = entry.get("level", "?"), entry.get("message", "")
                print(f"  {stamp} {level:<7} {message}", file=out)
    return 0


def run_reload(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    conn = resolve_connection(args.server, args.token, args.data_dir)
    params = {"name": args.name} if args.name else None
    try:
        body = request_or_fail(
            conn, "POST", "/api/modder/hooks/plugins/reload", err, args.timeout, params=params
        )
    except CommandFailed as failed:
        return failed.code
    if args.json:
        print(json.dumps(body, indent=2), file=out)
        return 0 if body.get("ok") else 1
    color = use_color(args, out)
    results = body.get("results") or []
    if not results:
        print(f"no plugins to reload in {body.get('root')}", file=out)
    width = max((len(str(r.get("name", "?"))) for r in results), default=0)
    for result in results:
        status = str(result.get("status") or "?")
        running = result.get("running")
        parts = [
            str(result.get("name", "?")).ljust(width),
            _paint(status, status, color),
            f"running: {running or 'nothing'}",
        ]
        if status == "error" and running == "previous":
            parts[-1] += " (the last good version keeps running)"
        error = _error_text(result.get("error"))
        line = "  ".join(parts) + (f"\n    {error}" if error else "")
        print(line, file=out)
    if not body.get("ok", False):
        failed = sum(1 for r in results if not r.get("ok", True))
        print(f"{failed} plugin(s) failed to reload", file=err)
        return 1
    return 0


def default_plugin_root() -> Path:
    """The same default as ``comfyvn serve``: ``$COMFYVN_MOD_PLUGIN_ROOT`` or
    ``dev/modder_hooks``, from the Settings field itself so the two cannot drift."""
    from comfyvn.core.settings import Settings

    field = next(f for f in dataclasses.fields(Settings) if f.name == "plugin_root")
    return Path(field.default_factory())  # type: ignore[misc]


def run_new(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from comfyvn.core.plugin_template import check_plugin_name, render_plugin_template

    out = out or sys.stdout
    err = err or sys.stderr
    name: str = args.name
    problem = check_plugin_name(name)
    if problem is not None:
        print(f"error: {problem}; choose a name like my_plugin", file=err)
        return 2
    explicit_root = args.plugin_root is not None
    root = Path(args.plugin_root) if explicit_root else default_plugin_root()
    root = root.expanduser().resolve()
    path = root / f"{name}.py"
    package = root / name
    if (package / "__init__.py").is_file():
        print(f"error: {package} is already a plugin named {name!r} (a package)", file=err)
        return 2
    if path.exists() and not args.force:
        print(f"error: {path} exists; pass --force to overwrite it", file=err)
        return 2
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(render_plugin_template(name), encoding="utf-8")
        os.replace(tmp, path)  # a watching server never imports a half-written file
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=err)
        return 2
    serve = "comfyvn serve --dev"
    if explicit_root:
        serve += f" --plugin-root {root}"
    print(f"wrote {path}", file=out)
    print(
        f"next: start `{serve}` (a dev server already watching {root} loads it by itself); "
        "edit the file and the server reloads it on save. "
        "`comfyvn plugins list --log` shows its status and log.",
        file=out,
    )
    return 0
