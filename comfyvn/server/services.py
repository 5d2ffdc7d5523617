"""The long-lived parts a running server holds, created and closed by the app's lifespan."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.requests import HTTPConnection

from comfyvn.core.hook_bus import CommitTimeout, Emitted, HookBus
from comfyvn.core.settings import Settings
from comfyvn.net import AddressPolicy

__all__ = ["Services", "commit_or_503", "get_services"]


@dataclass
class Services:
    settings: Settings
    bus: HookBus
    token: str
    outbound: AddressPolicy  # the one policy for every request the server sends
    # Filled in by the components that own them (plugin host, webhooks, assets, providers...).
    plugin_host: Any = None
    webhooks: Any = None
    assets: Any = None  # comfyvn.assets.registry.AssetRegistry
    scenarios: Any = None  # comfyvn.scenario.catalog.SceneCatalog
    providers: Any = None  # comfyvn.providers.component.Providers
    webhooks_unavailable: str | None = None  # why ``webhooks`` is None, for the 503

    @property
    def node(self) -> dict[str, str]:
        """On a shared bus, which server process answers (``host:pid``): hello frames and
        ``/health`` carry it, so a client knows which node it is on. Empty when embedded."""
        if not self.settings.bus_url:
            return {}
        return {"node": f"{socket.gethostname()}:{os.getpid()}"}

    def describe_plugin_host(self) -> dict[str, Any]:
        if self.plugin_host is None:
            return {"enabled": False, "dev_mode": False, "plugins": [], "reason": "not started"}
        described = self.plugin_host.describe()
        if not self.settings.dev_mode and not self.settings.plugins:
            described["enabled"] = False
            described["reason"] = (
                "dev mode is off and no installed plugin is enabled: no plugin code runs "
                "(--dev for folder plugins, --plugin NAME for installed ones)"
            )
        return described

    def describe_webhooks(self) -> list[dict[str, Any]]:
        if self.webhooks is None:
            return []
        return self.webhooks.describe_masked()


def get_services(conn: HTTPConnection) -> Services:
    return conn.app.state.services


async def commit_or_503(bus: HookBus, emitted: Emitted) -> int:
    """Answer only once ``emitted`` is durable and return its seq; a log that cannot commit (or
    a shared bus that is unreachable) is a 503 naming why, not a 500.

    Every route that emits awaits this for its last event before it answers (DESIGN.md s.3);
    the bus commits (or publishes) in order, so the last one durable means all of them are.
    """
    try:
        return await bus.acknowledge(emitted)
    except CommitTimeout as exc:
        raise HTTPException(503, str(exc)) from None
