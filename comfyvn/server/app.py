"""The app factory: one FastAPI app per data dir, its parts started and stopped by the lifespan."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from comfyvn import __version__
from comfyvn.assets.component import start_assets
from comfyvn.core import modder_hooks
from comfyvn.core.errors import RefusedError
from comfyvn.core.event_log import RetentionPolicy, SQLiteEventLog
from comfyvn.core.hook_bus import CommitTimeout, HookBus
from comfyvn.core.settings import Settings, ensure_token, prepare_data_dir
from comfyvn.net import policy_from_settings
from comfyvn.providers.component import start_providers
from comfyvn.webhooks import start_webhooks

from .errors import COMMON_ERRORS
from .routes import assets as asset_routes
from .routes import hooks, streams
from .routes import providers as provider_routes
from .routes import scenario as scenario_routes
from .routes import webhooks as webhook_routes
from .security import SecurityMiddleware, register_secret
from .services import Services

__all__ = ["create_app"]

log = logging.getLogger("comfyvn.server")

ROUTERS = [
    hooks.router,
    streams.router,
    scenario_routes.router,
    asset_routes.router,
    provider_routes.router,
    webhook_routes.router,
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    prepare_data_dir(settings.data_dir)
    if not settings.bus_url:  # a damaged log stops start-up with a clear error
        SQLiteEventLog(settings.events_db).close()
    token = ensure_token(settings)
    register_secret(token)
    outbound = policy_from_settings(settings)  # a malformed allow/deny entry stops start-up

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Plugins and child tools find the data dir the same way the server resolved it.
        os.environ["COMFYVN_DATA_DIR"] = str(settings.data_dir)
        bus = await asyncio.to_thread(open_bus, settings)
        services = Services(settings=settings, bus=bus, token=token, outbound=outbound)
        app.state.services = services
        modder_hooks.set_current_bus(bus)
        async with AsyncExitStack() as stack:
            stack.callback(_close_bus, bus)
            await _start_components(services, stack)
            log.info("data dir %s, dev mode %s", settings.data_dir, settings.dev_mode)
            # Everything alive now (modules, the app, pydantic's schemas) lives as long as the
            # server: kept out of the collector's full passes, which otherwise rescan it all
            # and showed up as 20-40 ms pauses in the API's latency tail.
            gc.collect()
            gc.freeze()
            yield
        log.info("server stopped; %d events committed", bus.committed_seq)

    app = FastAPI(
        title="ComfyVN Studio API",
        version=__version__,
        description="Modder hooks, scenario, assets, webhooks and provider diagnostics.",
        lifespan=lifespan,
    )
    app.add_middleware(
        SecurityMiddleware,
        token=token,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RefusedError, _refused)
    app.add_exception_handler(CommitTimeout, _bus_unavailable)
    if settings.bus_url:  # a read from the shared bus while NATS is down: a 503 naming it
        from comfyvn.core.jetstream import BusUnreachableError

        app.add_exception_handler(BusUnreachableError, _bus_unavailable)
    app.add_exception_handler(OSError, _storage_error)
    app.add_exception_handler(sqlite3.OperationalError, _storage_error)

    @app.get("/health", tags=["server"], summary="Liveness; needs no token")
    async def health(request: Request) -> dict[str, Any]:
        services: Services | None = getattr(request.app.state, "services", None)
        bus = services.bus if services else None
        answer = {
            "ok": bus is not None and bus.write_error is None,
            "version": __version__,
            "seq": bus.committed_seq if bus else None,
            "dev_mode": settings.dev_mode,
            "event_log_error": bus.write_error if bus else None,
        }
        if settings.bus_url:  # no token here: whether, not where (GET /api/modder/hooks has it)
            answer["bus"] = {"kind": "nats", "connected": bus is not None and bus.link.connected}
            if services is not None:
                answer.update(services.node)  # which process answered (host:pid)
        return answer

    for router in ROUTERS:
        app.include_router(router, responses=COMMON_ERRORS)
    return app


async def _start_components(services: Services, stack: AsyncExitStack) -> None:
    """Start the optional parts; each registers its own shutdown on ``stack``."""
    # First: events emitted at start-up get deliveries.
    if services.settings.bus_url:
        from comfyvn.webhooks.shared import start_shared_webhooks

        await start_shared_webhooks(services, stack)  # subscriptions and outbox in JetStream
    else:
        await start_webhooks(services, stack)
    _start_plugin_host(services, stack)
    await scenario_routes.start(services, stack)
    await start_assets(services, stack)
    await start_providers(services, stack)


def open_bus(settings: Settings) -> HookBus:
    """The embedded SQLite bus of the data dir, or the shared JetStream bus of ``--bus``."""
    retention = RetentionPolicy(settings.history_max_events, settings.history_max_age_s)
    if not settings.bus_url:
        return HookBus(
            SQLiteEventLog(settings.events_db),
            retention=retention,
            commit_timeout_s=settings.commit_timeout_s,
        )
    from comfyvn.core import jetstream

    return jetstream.open_bus(
        settings.bus_url,
        settings.bus_namespace,
        name=f"comfyvn pid {os.getpid()}",  # in NATS monitoring and our log lines
        retention=retention,
        commit_timeout_s=settings.commit_timeout_s,
        buffer_limit=settings.bus_buffer,
    )


def _start_plugin_host(services: Services, stack: AsyncExitStack) -> None:
    """Folder plugins in dev mode only; installed plugins whenever enabled by name. Outside
    dev mode, with none enabled, the host only lists what is installed: no plugin code runs."""
    from comfyvn.core.plugin_host import PluginHost

    settings = services.settings
    budget = settings.plugin_call_budget_s
    host = PluginHost(
        services.bus,
        root=settings.plugin_root if settings.dev_mode else None,
        data_dir=settings.data_dir,
        enabled=settings.plugins,
        call_budget_s=budget,
    )
    services.bus.listener_budget_s = budget
    host.load()
    services.plugin_host = host
    stack.callback(host.unload)
    if settings.dev_mode and settings.watch_plugins:
        from comfyvn.core.plugin_watch import PluginWatcher

        watcher = PluginWatcher(host, settings.plugin_root)
        watcher.start()
        stack.callback(watcher.stop)


def _close_bus(bus: HookBus) -> None:
    modder_hooks.set_current_bus(None)
    bus.close()


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    """A component refused the request: its own status and detail, the same for every route."""
    assert isinstance(exc, RefusedError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


async def _bus_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The event log or the shared bus cannot take the event (a full buffer while NATS is
    unreachable) or cannot be read (NATS down): the server's state, a 503 naming it."""
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    """A disk that is full, read-only or over a size limit is the server's state, not a bug in
    the request: a 503 that names the problem, and the traceback in the log once. A name the
    OS refuses for its length came from the request: a 422, and no traceback."""
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        detail = "a file name in the request is longer than the file system allows (255 bytes)"
        return JSONResponse({"detail": detail}, status_code=422)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    log.error("storage error on %s %s: %s", request.method, request.url.path, reason, exc_info=exc)
    detail = f"the data dir could not be written ({reason}); nothing was changed"
    return JSONResponse({"detail": detail}, status_code=503)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)
