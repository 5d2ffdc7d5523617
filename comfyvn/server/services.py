"""The long-lived parts a running server holds, created and closed by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.requests import HTTPConnection

from comfyvn.core.hook_bus import CommitTimeout, HookBus
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


async def commit_or_503(bus: HookBus, seq: int) -> None:
    """Answer only once ``seq`` is durable; a log that cannot commit is a 503, not a 500.

    Every route that emits awaits this for its last event before it answers (DESIGN.md s.3).
    """
    try:
        await bus.wait_committed(seq)
    except CommitTimeout as exc:
        raise HTTPException(503, str(exc)) from None
