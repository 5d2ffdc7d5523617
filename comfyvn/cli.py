"""The ``comfyvn`` command. Each subcommand imports its implementation lazily, so ``comfyvn
serve`` never loads Qt and ``comfyvn studio`` never loads the server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from comfyvn import __version__

__all__ = ["build_parser", "main"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from comfyvn.core.settings import EnvError, Settings, env_flag
    from comfyvn.server.runner import serve

    try:  # a bad COMFYVN_* value is named in one line, never a traceback
        kwargs: dict = {
            "host": args.host,
            "port": args.port if args.port is not None else _env_port(),
            "dev_mode": args.dev or env_flag("COMFYVN_DEV_MODE"),
            "demo": args.demo,
        }
        if args.data_dir:
            kwargs["data_dir"] = Path(args.data_dir)
        if args.plugin_root:
            kwargs["plugin_root"] = Path(args.plugin_root)
        if args.plugin:
            kwargs["plugins"] = tuple(
                name.strip() for item in args.plugin for name in item.split(",") if name.strip()
            )
        if args.no_watch:
            kwargs["watch_plugins"] = False
        if args.bus is not None:
            kwargs["bus_url"] = args.bus.strip()
        if args.bus_namespace is not None:
            kwargs["bus_namespace"] = args.bus_namespace.strip()
        settings = Settings(**kwargs)
    except EnvError as exc:
        print(f"comfyvn serve: {exc}", file=sys.stderr)
        return 2
    return serve(
        settings,
        log_level=args.log_level,
        workers=args.workers,
        worker_fd=args.worker_fd,
        argv=getattr(args, "argv", None),
    )


def _env_port() -> int:
    from comfyvn.core.env import EnvError, env_number

    port = int(env_number("COMFYVN_PORT", 8001, minimum=0, integer=True))
    if port > 65535:
        raise EnvError(f"COMFYVN_PORT={port} is above the maximum of 65535")
    return port


def _port(raw: str) -> int:
    """A TCP port for argparse: a bad value is a usage error, not a traceback from uvicorn."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0 to 65535)")
    return value


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _cmd_hooks_tail(args: argparse.Namespace) -> int:
    from comfyvn.client.api import resolve_connection
    from comfyvn.client.tail import tail

    conn = resolve_connection(args.server, args.token, args.data_dir)
    topics = [t.strip() for t in args.topics.split(",") if t.strip()] if args.topics else None
    return tail(conn, topics=topics, since=args.since, count=args.count)


def _cmd_hooks_docs(args: argparse.Namespace) -> int:
    from comfyvn.core.hook_docs import sync_reference

    path = Path(args.path)
    if sync_reference(path, write=not args.check):
        print(f"{path}: hook reference is up to date")
        return 0
    if args.check:
        print(f"{path}: hook reference is stale; run 'comfyvn hooks docs --write'", file=sys.stderr)
        return 1
    print(f"{path}: hook reference regenerated")
    return 0


def _cmd_scenario_play(args: argparse.Namespace) -> int:
    from comfyvn.scenario.player import play_command

    return play_command(args)


def _cmd_scenario_validate(args: argparse.Namespace) -> int:
    from comfyvn.scenario.player import validate_command

    return validate_command(args)


def _cmd_providers_check(args: argparse.Namespace) -> int:
    from comfyvn.providers.cli_check import run

    return run(args)


def _cmd_plugins_list(args: argparse.Namespace) -> int:
    from comfyvn.client.plugins_cli import run_list

    return run_list(args)


def _cmd_plugins_reload(args: argparse.Namespace) -> int:
    from comfyvn.client.plugins_cli import run_reload

    return run_reload(args)


def _cmd_plugins_new(args: argparse.Namespace) -> int:
    from comfyvn.client.plugins_cli import run_new

    return run_new(args)


def _cmd_webhooks(args: argparse.Namespace) -> int:
    from comfyvn.client import webhooks_cli

    run: Callable[[argparse.Namespace], int] = getattr(webhooks_cli, f"run_{args.webhooks_command}")
    return run(args)


def _cmd_studio(args: argparse.Namespace) -> int:
    try:
        from comfyvn.gui.app import studio_command
    except ImportError as exc:
        print(f"comfyvn studio needs PySide6 ({exc}): pip install 'comfyvn[gui]'", file=sys.stderr)
        return 2
    return studio_command(args)


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        help="server URL (default: $COMFYVN_SERVER, else the url in <data-dir>/server.json of "
        "a running server, else http://127.0.0.1:8001)",
    )
    parser.add_argument(
        "--token",
        help="API token; --token=VALUE (default: $COMFYVN_API_TOKEN or that server's "
        "<data-dir>/api_token)",
    )
    parser.add_argument(
        "--data-dir",
        help="data dir of the server (default: $COMFYVN_DATA_DIR, else ~/.comfyvn, then "
        "./var/studio: the first with a running server)",
    )


def _add_webhooks_parsers(sub: Any) -> None:
    """``comfyvn webhooks ...``: the implementation (comfyvn.client.webhooks_cli) loads lazily."""
    hooks = sub.add_parser(
        "webhooks", help="webhook subscriptions of the running server"
    ).add_subparsers(dest="webhooks_command", required=True)

    def command(name: str, help: str, timeout: float = 30.0) -> argparse.ArgumentParser:
        parser = hooks.add_parser(name, help=help)
        _add_connection_args(parser)
        parser.add_argument("--json", action="store_true", help="print the server's JSON answer")
        parser.add_argument(
            "--timeout", type=float, default=timeout, help=f"seconds to wait (default {timeout:g})"
        )
        parser.set_defaults(func=_cmd_webhooks)
        return parser

    wlist = command("list", "subscriptions as a table (secrets and URL passwords masked)")
    wlist.add_argument("--no-color", action="store_true", help="never colour the state")
    wadd = command("add", "subscribe URL to hooks; prints the signing secret once")
    wadd.add_argument("url", help="receiver URL (http or https)")
    wadd.add_argument("--events", help="hook names, comma-separated (default: every hook)")
    wadd.add_argument("--description", help="a note for people")
    wdel = command("deliveries", "a webhook's delivery log, newest first")
    wdel.add_argument("id", help="webhook id (from `comfyvn webhooks list`)")
    wdel.add_argument("--status", choices=["pending", "delivered", "failed"])
    wdel.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    wdel.add_argument("--no-color", action="store_true", help="never colour the status")
    wred = command(
        "redeliver", "send one delivery again now; exit 1 if the receiver did not take it", 60.0
    )
    wred.add_argument("id", help="webhook id")
    wred.add_argument("delivery_id", type=int, help="delivery id (from `deliveries`)")
    wping = command(
        "ping", "send a signed 'ping' now; exit 1 if the receiver did not take it", 60.0
    )
    wping.add_argument("id", help="webhook id")
    wrm = command("rm", "delete a subscription and its delivery log")
    wrm.add_argument("id", help="webhook id")


class _Parser(argparse.ArgumentParser):
    """No abbreviated options, on every subcommand (subparsers inherit the class): argparse
    would otherwise read ``--plugin acc`` as ``--plugin-root acc`` before ``--plugin`` existed,
    and a future option can silently change what an abbreviation means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="comfyvn", description="ComfyVN Studio core")
    parser.add_argument("--version", action="version", version=f"comfyvn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the studio server (FastAPI + uvicorn)")
    serve.add_argument("--host", default=os.environ.get("COMFYVN_HOST", "127.0.0.1"))
    serve.add_argument(
        "--port",
        type=_port,
        help="TCP port (default: $COMFYVN_PORT or 8001); 0 picks a free one (the ready line "
        "prints it)",
    )
    serve.add_argument("--data-dir", help="data dir (default: $COMFYVN_DATA_DIR or ~/.comfyvn)")
    serve.add_argument("--dev", action="store_true", help="dev mode: load modder plugins")
    serve.add_argument("--demo", action="store_true", help="load the demo content at start")
    serve.add_argument(
        "--plugin-root",
        help="plugin folder (default: $COMFYVN_MOD_PLUGIN_ROOT or dev/modder_hooks)",
    )
    serve.add_argument(
        "--plugin",
        action="append",
        metavar="NAME",
        help="load this installed plugin (entry point group comfyvn.plugins); repeatable "
        "(default: $COMFYVN_PLUGINS)",
    )
    serve.add_argument(
        "--no-watch",
        action="store_true",
        help="dev mode: do not reload plugins when their files change",
    )
    serve.add_argument(
        "--bus",
        metavar="URL",
        help="share the hook bus over NATS JetStream (nats://HOST:PORT) with other servers "
        "(default: $COMFYVN_BUS_URL; none: the embedded event log of the data dir)",
    )
    serve.add_argument(
        "--bus-namespace",
        metavar="NS",
        help="the bus's stream and subject prefix; servers with the same one share history "
        "(default: $COMFYVN_BUS_NAMESPACE or comfyvn)",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="N server processes on one port and data dir (needs --bus)",
    )
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # set by --workers
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    serve.set_defaults(func=_cmd_serve)

    hooks = sub.add_parser("hooks", help="modder hook tools").add_subparsers(
        dest="hooks_command", required=True
    )
    tail = hooks.add_parser("tail", help="print live envelopes as JSON lines; resumes on reconnect")
    tail.add_argument("--topics", help="hook names, comma-separated (default: all)")
    tail.add_argument("--since", type=int, help="replay envelopes after this seq first")
    tail.add_argument(
        "--count", type=_positive_int, metavar="N", help="exit 0 after printing N envelopes"
    )
    _add_connection_args(tail)
    tail.set_defaults(func=_cmd_hooks_tail)
    docs = hooks.add_parser("docs", help="regenerate the hook reference in the modder docs")
    docs.add_argument("--path", default="docs/dev_notes_modder_hooks.md")
    mode = docs.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the block (default)")
    mode.add_argument("--check", action="store_true", help="exit 1 if the block is stale")
    docs.set_defaults(func=_cmd_hooks_docs)

    scenario = sub.add_parser("scenario", help="scenario tools").add_subparsers(
        dest="scenario_command", required=True
    )
    play = scenario.add_parser("play", help="play a scene in the terminal (numbered choices)")
    play.add_argument("file", help="scene JSON file, or a bundled demo name ('lighthouse')")
    play.add_argument("--seed", type=int, help="seed for Enter / --auto picks")
    play.add_argument("--pov", help="point of view (default: the scene's default_pov)")
    play.add_argument("--auto", action="store_true", help="let the seeded generator pick all")
    play.add_argument("--show-hooks", action="store_true", help="in-process: print hooks")
    _add_connection_args(play)  # --server plays through the API; without it, in-process
    play.set_defaults(func=_cmd_scenario_play)
    check = scenario.add_parser("validate", help="list a scene's errors and warnings")
    check.add_argument("file", help="scene JSON file, or a bundled demo name")
    check.set_defaults(func=_cmd_scenario_validate)

    providers = sub.add_parser("providers", help="compute provider tools").add_subparsers(
        dest="providers_command", required=True
    )
    pcheck = providers.add_parser(
        "check", help="fresh health checks from the running server, as a table"
    )
    _add_connection_args(pcheck)
    pcheck.add_argument("--id", action="append", help="only this provider (repeatable)")
    pcheck.add_argument("--json", action="store_true", help="print the server's JSON answer")
    pcheck.add_argument("--no-color", action="store_true", help="never colour the status")
    pcheck.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    pcheck.add_argument(
        "--exit-code",
        action="store_true",
        help="exit 1 when an enabled provider is red (for scripts and CI)",
    )
    pcheck.set_defaults(func=_cmd_providers_check)

    plugins = sub.add_parser("plugins", help="modder plugin tools").add_subparsers(
        dest="plugins_command", required=True
    )
    plist = plugins.add_parser(
        "list", help="the running server's plugins: status, hooks, calls, errors, as a table"
    )
    _add_connection_args(plist)
    plist.add_argument("--json", action="store_true", help="print the server's JSON answer")
    plist.add_argument("--no-color", action="store_true", help="never colour the status")
    plist.add_argument(
        "--log",
        nargs="?",
        type=int,
        const=10,
        default=0,
        metavar="N",
        help="also print each plugin's last N log lines (default N: 10)",
    )
    plist.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    plist.set_defaults(func=_cmd_plugins_list)
    preload = plugins.add_parser(
        "reload",
        help="reload plugins on the running server; exit 1 if a new version failed (the "
        "previous one keeps running)",
    )
    preload.add_argument("name", nargs="?", help="only this plugin (default: all)")
    _add_connection_args(preload)
    preload.add_argument("--json", action="store_true", help="print the server's JSON answer")
    preload.add_argument("--no-color", action="store_true", help="never colour the status")
    preload.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait (default 120)"
    )
    preload.set_defaults(func=_cmd_plugins_reload)
    pnew = plugins.add_parser("new", help="write a commented template plugin that works as is")
    pnew.add_argument("name", help="plugin name: a Python identifier; the file is NAME.py")
    pnew.add_argument(
        "--plugin-root",
        help="plugin folder (default: $COMFYVN_MOD_PLUGIN_ROOT or dev/modder_hooks, as serve)",
    )
    pnew.add_argument("--force", action="store_true", help="overwrite an existing NAME.py")
    pnew.set_defaults(func=_cmd_plugins_new)

    _add_webhooks_parsers(sub)

    studio = sub.add_parser("studio", help="the PySide6 Studio (starts a server if none runs)")
    _add_connection_args(studio)
    studio.add_argument("--workspace", choices=["scenario", "system"], help="open this workspace")
    studio.add_argument("--scene", help="play this scene (catalogue id) in the Scenario workspace")
    studio.add_argument(
        "--hooks-tab",
        choices=["stream", "plugins"],
        help="open this tab of the Modder Hooks dock (default: the last one used)",
    )
    studio.add_argument("--screenshot", metavar="FILE", help="render offscreen to a PNG and exit")
    studio.add_argument(
        "--check",
        action="store_true",
        help="attach (or start a server) without a window, print the server and exit: 0 once "
        "the hook stream is live, else 1 (also $COMFYVN_STUDIO_CHECK=1)",
    )
    studio.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="--screenshot, --check: longest wait (default 20)",
    )
    studio.set_defaults(func=_cmd_studio)
    return parser


# Options whose values may start with "-" (an API token can): "--token -abc" is read as
# "--token=-abc" instead of a missing value followed by an unknown option.
_DASH_VALUE_OPTIONS = ("--token",)


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item in _DASH_VALUE_OPTIONS and i + 1 < len(items) and items[i + 1].startswith("-"):
            out.append(f"{item}={items[i + 1]}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = _join_dash_values(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.argv = list(raw)  # `serve --workers` starts its workers with these arguments
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
