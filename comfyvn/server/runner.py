"""Run the app under uvicorn: logging with token redaction, a ready line, clean signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

import uvicorn

from comfyvn import __version__
from comfyvn.core.event_log import EventLogError
from comfyvn.core.settings import DataDirError, EnvError, Settings, prepare_data_dir

from .app import create_app
from .ownership import DataDirBusy, DataDirLock, acquire
from .security import RedactingFormatter, install_log_redaction

__all__ = ["serve"]


class _ReadyServer(uvicorn.Server):
    """Prints the URL once the socket is bound, so scripts and tests can wait for it; first
    ``on_ready(url)`` publishes it in ``server.json`` (the line is the signal that it exists)."""

    on_ready: Callable[[str], None] | None = None

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.config.host, self.config.port
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                port = sock.getsockname()[1]
                break
        shown = f"[{host}]" if ":" in host else host
        if self.on_ready is not None:
            self.on_ready(f"http://{_client_host(host)}:{port}")
        print(f"ComfyVN Studio server ready at http://{shown}:{port}", flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Graceful shutdown on SIGINT/SIGTERM, then exit 0 (uvicorn would re-raise the signal)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _client_host(host: str) -> str:
    """Where a local client connects: a wildcard bind is reached through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    install_log_redaction()


def serve(
    settings: Settings,
    *,
    log_level: str = "INFO",
    workers: int = 1,
    worker_fd: int | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM. The data dir is locked before anything opens it (the event log
    in ``create_app``) and stays locked for the process lifetime; a second server on it exits 2
    naming the first one's URL.

    ``workers > 1`` (shared bus only) makes this process the supervisor of that many workers
    on one socket; ``worker_fd`` is how such a worker is started: it serves the inherited
    socket and leaves the lock and ``server.json`` to its supervisor."""
    # Everything this process creates (SQLite files and their -wal/-shm, assets, sidecars,
    # JSON stores) is private to its user: the data dir holds tokens and provider config.
    os.umask(0o077)
    configure_logging(log_level)
    if workers > 1 and not settings.bus_url:
        print(
            "comfyvn serve: --workers needs a shared bus: add --bus nats://HOST:PORT (or set "
            "COMFYVN_BUS_URL); with the embedded event log one process owns the data dir",
            file=sys.stderr,
        )
        return 2
    if settings.bus_url:
        problem = _check_bus(settings)
        if problem:
            print(f"comfyvn serve: {problem}", file=sys.stderr)
            return 2
    lock: DataDirLock | None = None
    if worker_fd is None:
        try:
            prepare_data_dir(settings.data_dir)
            lock = acquire(settings.data_dir)
        except (DataDirError, DataDirBusy) as exc:
            print(f"comfyvn serve: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(
                f"comfyvn serve: cannot lock data dir {settings.data_dir}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
    try:
        if workers > 1:
            return _supervise(settings, workers, lock, list(argv or sys.argv[1:]))
        return _run(settings, log_level, lock, worker_fd)
    finally:
        if lock is not None:
            lock.release()  # removes our server.json too; a crash leaves it stale, not binding


def _check_bus(settings: Settings) -> str | None:
    """The shared bus is usable (nats-py installed, namespace valid, server reachable), or
    why not, in one line: better than a traceback from inside the app's start-up."""
    try:
        from comfyvn.core.jetstream import BusUnreachableError, NatsLink, check_namespace
        from comfyvn.core.jetstream.link import display_url, server_urls
    except ImportError:  # pragma: no cover - the bus extra is missing
        return "the shared bus needs nats-py: pip install 'comfyvn[bus]'"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "the shared bus needs nats-py: pip install 'comfyvn[bus]'"
    try:
        check_namespace(settings.bus_namespace)
    except ValueError as exc:
        return str(exc)
    for server in server_urls(settings.bus_url):
        if not server.startswith(("nats://", "tls://")):
            return f"--bus {display_url(server)!r} is not a nats:// or tls:// URL"
    link = NatsLink(settings.bus_url, connect_timeout_s=3.0)
    try:
        link.start()
    except BusUnreachableError as exc:
        return str(exc)
    link.close()
    return None


def _supervise(settings: Settings, workers: int, lock: DataDirLock | None, argv: list[str]) -> int:
    from comfyvn.core.settings import ensure_token

    from .workers import Supervisor, listening_socket

    ensure_token(settings)  # once, here: the workers read it
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:
        print(
            f"comfyvn serve: cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    port = sock.getsockname()[1]
    url = f"http://{_client_host(settings.host)}:{port}"

    def ready() -> None:
        if lock is not None:
            try:
                lock.publish(url, settings.token_path, __version__)
            except OSError as exc:
                logging.getLogger("comfyvn.server").warning(
                    "could not write %s/server.json: %s", settings.data_dir, exc
                )
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(f"{workers} workers share the port and the bus {settings.bus_namespace!r}")
        print(f"ComfyVN Studio server ready at http://{shown}:{port}", flush=True)

    return Supervisor(workers, argv, sock).run(ready)


def _run(
    settings: Settings, log_level: str, lock: DataDirLock | None, worker_fd: int | None = None
) -> int:
    try:
        app = create_app(settings)
    except (DataDirError, EventLogError, EnvError) as exc:
        print(f"comfyvn serve: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=5,
        # Protocol pings find dead peers; our JSON heartbeat keeps idle proxies and clients honest.
        ws_ping_interval=settings.ws_ping_s,
        ws_ping_timeout=settings.ws_ping_s,
    )
    server = _ReadyServer(config)
    if worker_fd is not None:
        from .workers import watch_parent

        watch_parent()
        server.run(sockets=[socket.socket(fileno=worker_fd)])
        return 0 if server.started else 1
    if lock is not None:

        def publish(url: str) -> None:
            try:
                lock.publish(url, settings.token_path, __version__)
            except OSError as exc:  # discovery is a convenience: the server still serves
                logging.getLogger("comfyvn.server").warning(
                    "could not write %s/server.json: %s", settings.data_dir, exc
                )

        server.on_ready = publish
    server.run()
    return 0 if server.started else 1
