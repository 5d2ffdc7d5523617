"""Server wiring: open the registry with the app, load demo assets, close it on shutdown."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

from .demo import load_demo
from .registry import AssetRegistry

__all__ = ["start_assets"]

log = logging.getLogger("comfyvn.assets")


async def start_assets(services: Any, stack: AsyncExitStack) -> AssetRegistry:
    """Open ``<data-dir>/assets.sqlite3`` and the assets root; with ``--demo`` add demo PNGs."""
    settings = services.settings
    registry = await asyncio.to_thread(AssetRegistry.open, settings.data_dir, services.bus)
    services.assets = registry
    stack.callback(registry.close)
    if settings.demo:
        added = await asyncio.to_thread(load_demo, registry)
        log.info("demo assets: %d added, %d registered in total", added, registry.count())
    log.info("asset registry at %s", registry.root)
    return registry
