"""Run the app under uvicorn: logging with token redaction, a ready line, clean signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

import uvicorn

from comfyvn.core.event_log import EventLogError
from comfyvn.core.settings import DataDirError, EnvError, Settings

from .app import create_app
from .security import RedactingFormatter, install_log_redaction

__all__ = ["serve"]


class _ReadyServer(uvicorn.Server):
    """Prints the URL once the socket is bound, so scripts and tests can wait for it."""

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


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    install_log_redaction()


def serve(settings: Settings, *, log_level: str = "INFO") -> int:
    # Everything this process creates (SQLite files and their -wal/-shm, assets, sidecars,
    # JSON stores) is private to its user: the data dir holds tokens and provider config.
    os.umask(0o077)
    configure_logging(log_level)
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
    server.run()
    return 0 if server.started else 1
