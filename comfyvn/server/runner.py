"""Run the app under uvicorn: logging with token redaction, a ready line, clean signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

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


def serve(settings: Settings, *, log_level: str = "INFO", exclusive: bool = True) -> int:
    """Run until SIGINT/SIGTERM. The data dir is locked before anything opens it (the event log
    in ``create_app``) and stays locked for the process lifetime; a second server on it exits 2
    naming the first one's URL.

    ``exclusive=False`` is the hook for a future shared-bus mode (several processes on one data
    dir): it skips the lock and ``server.json``. No command-line flag sets it yet."""
    # Everything this process creates (SQLite files and their -wal/-shm, assets, sidecars,
    # JSON stores) is private to its user: the data dir holds tokens and provider config.
    os.umask(0o077)
    configure_logging(log_level)
    lock: DataDirLock | None = None
    if exclusive:
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
        return _run(settings, log_level, lock)
    finally:
        if lock is not None:
            lock.release()  # removes our server.json too; a crash leaves it stale, not binding


def _run(settings: Settings, log_level: str, lock: DataDirLock | None) -> int:
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
