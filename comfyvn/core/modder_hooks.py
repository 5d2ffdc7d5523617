"""Modder hooks: the public face of the hook bus.

Emitters and in-process tools import from here::

    from comfyvn.core import modder_hooks

    handle = modder_hooks.register_listener(print, events=["on_scene_enter"])
    modder_hooks.emit("on_scene_enter", {...})

The module-level functions act on the process's current bus, installed by whoever owns the data
dir (the server at start-up, or a test). Specs live in :mod:`comfyvn.core.hook_specs`, the bus in
:mod:`comfyvn.core.hook_bus`, the durable history in :mod:`comfyvn.core.event_log`.

Called from plugin code (while it imports, in ``setup`` or in a hook), ``register_listener``
registers the listener *for that plugin*: it is removed when the plugin unloads or reloads, so
a plugin that registers at import time never leaks listeners across reloads.

``unregister_listener``, ``history`` and ``hook_specs`` also take the forms of ComfyVN's
earlier ``modder_hooks`` module: ``unregister_listener(fn, events)`` with the function that was
registered, ``history(limit=...)`` and ``hook_specs()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .event_log import RetentionPolicy, SQLiteEventLog
from .hook_bus import (
    BusClosedError,
    CommitTimeout,
    Emitted,
    Gap,
    HookBus,
    Listener,
    ListenerHandle,
    Subscription,
    UnknownHookError,
    envelope_dict,
    envelope_json,
)
from .hook_specs import HOOK_SPECS, HookSpec, define_hook, hook_names
from .plugin_scope import active_plugin

__all__ = [
    "HOOK_SPECS",
    "BusClosedError",
    "CommitTimeout",
    "Emitted",
    "Gap",
    "HookBus",
    "HookSpec",
    "ListenerHandle",
    "RetentionPolicy",
    "SQLiteEventLog",
    "Subscription",
    "UnknownHookError",
    "current_bus",
    "define_hook",
    "emit",
    "envelope_dict",
    "envelope_json",
    "history",
    "hook_names",
    "hook_specs",
    "register_listener",
    "set_current_bus",
    "unregister_listener",
]

_current: HookBus | None = None


def set_current_bus(bus: HookBus | None) -> None:
    global _current
    _current = bus


def current_bus() -> HookBus:
    if _current is None:
        raise RuntimeError("no hook bus is running in this process (start the server first)")
    return _current


def emit(event: str, payload: Mapping[str, Any]) -> Emitted:
    return current_bus().emit(event, payload)


def register_listener(fn: Listener, events: Iterable[str] | None = None) -> ListenerHandle:
    """Call ``fn(event, payload)`` for every committed event (of ``events``, default all)."""
    plugin = active_plugin()
    if plugin is not None:
        return plugin.adopt_listener(fn, events)
    return current_bus().register_listener(fn, events)


def unregister_listener(
    fn_or_handle: ListenerHandle | Listener, events: Iterable[str] | None = None
) -> bool:
    """Stop a listener: its handle, or the function that was registered. With ``events``, only
    those events stop (the rest keep coming). True if anything was removed."""
    return current_bus().unregister_matching(fn_or_handle, events)


def history(
    limit: int = 25, *, since: int | None = None, events: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Committed envelopes, oldest first: the last ``limit``, or those after ``since``."""
    return current_bus().history(limit=limit, since=since, events=events)


def hook_specs() -> dict[str, dict[str, Any]]:
    """Every hook: name -> ``{name, description, version, payload, schema}``."""
    return {name: spec.describe() for name, spec in HOOK_SPECS.items()}
