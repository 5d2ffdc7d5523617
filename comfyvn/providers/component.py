"""Wires the provider registry and health service into a running server."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from .config import ProviderSettings
from .health import HealthService
from .registry import ProviderRegistry

__all__ = ["DEMO_PROVIDERS", "Providers", "start_providers"]

log = logging.getLogger("comfyvn.providers")

# `make run` (--demo): a local ComfyUI (red unless one runs: the honest answer) and the
# built-in echo provider (always green), so the panel shows both colours out of the box.
DEMO_PROVIDERS: list[dict[str, Any]] = [
    {
        "id": "local-comfyui",
        "name": "Local ComfyUI",
        "kind": "comfyui",
        "base_url": "http://127.0.0.1:8188",
    },
    {"id": "echo", "name": "Echo (built-in)", "kind": "echo"},
]


@dataclass(slots=True)
class Providers:
    """What ``Services.providers`` holds."""

    settings: ProviderSettings
    registry: ProviderRegistry
    health: HealthService


async def start_providers(services: Any, stack: AsyncExitStack) -> Providers:
    settings = ProviderSettings.from_env()
    data_dir = services.settings.data_dir
    registry = ProviderRegistry(data_dir, policy=services.outbound)
    await asyncio.to_thread(registry.load)
    # Only a data dir that never had a registry gets the demo; a user's is never touched. seed()
    # decides again under the lock: workers starting at once on one data dir add it once.
    if (
        services.settings.demo
        and not registry.exists
        and await asyncio.to_thread(registry.seed, DEMO_PROVIDERS)
    ):
        log.info("demo providers added: %s", ", ".join(p["id"] for p in DEMO_PROVIDERS))
    health = HealthService(registry, settings, data_dir)
    await health.start()
    stack.push_async_callback(health.aclose)
    providers = Providers(settings=settings, registry=registry, health=health)
    services.providers = providers
    return providers
