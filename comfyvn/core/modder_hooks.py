"""Modder hooks: the public face of the hook bus.

Emitters and in-process tools import from here::

    from comfyvn.core import modder_hooks

    handle = modder_hooks.register_listener(print, events=["on_scene_enter"])
    modder_hooks.emit("on_scene_enter", {...})

The module-level functions act on the process's current bus, installed by whoever owns the data
dir (the server at start-up, or a test). Specs live in :mod:`comfyvn.core.hook_specs`, the bus in
:mod:`comfyvn.core.hook_bus`, the durable history in :mod:`comfyvn.core.event_log`.
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
    "hook_names",
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
    return current_bus().register_listener(fn, events)


def unregister_listener(handle: ListenerHandle) -> bool:
    return current_bus().unregister_listener(handle)
