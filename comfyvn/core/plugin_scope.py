"""Which plugin is running on this thread, and where its ``print()`` goes.

Plugin code runs on threads the host controls: the import thread, ``setup``/``teardown``, the
plugin's listener thread and its event-loop thread. Each sets the running plugin for the
duration of the call, so two things can be attributed without the plugin's help:

- a listener registered through ``modder_hooks.register_listener`` while the plugin imports,
  sets up or handles an event belongs to it and is removed when it unloads;
- text it prints goes to its own logger (``comfyvn.plugin.<name>``) instead of the server's
  stdout, where it would mix with the access log.

Threads a plugin starts itself are not attributed (their output reaches the real stdout).
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any, Protocol, TextIO

__all__ = ["PluginOwner", "active_plugin", "install_output_routing", "running_as"]


class PluginOwner(Protocol):
    """What a running plugin version offers to the scope (see ``plugin_host.PluginVersion``)."""

    def capture(self, text: str) -> None: ...

    def adopt_listener(self, fn: Any, events: Any) -> Any: ...


_local = threading.local()


def active_plugin() -> PluginOwner | None:
    return getattr(_local, "plugin", None)


@contextlib.contextmanager
def running_as(plugin: PluginOwner) -> Iterator[None]:
    previous = getattr(_local, "plugin", None)
    _local.plugin = plugin
    try:
        yield
    finally:
        _local.plugin = previous


class _RoutedStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` stand-in: plugin threads write to their plugin's log,
    every other thread to the real stream, unchanged."""

    def __init__(self, real: TextIO) -> None:
        self.real = real

    def write(self, text: str) -> int:
        plugin = active_plugin()
        if plugin is None:
            return self.real.write(text)
        plugin.capture(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer...
        return getattr(self.real, name)


_install_lock = threading.Lock()


def install_output_routing() -> None:
    """Route plugin output from now on (idempotent; other code's replacements are kept)."""
    with _install_lock:
        if not isinstance(sys.stdout, _RoutedStream):
            sys.stdout = _RoutedStream(sys.stdout)
        if not isinstance(sys.stderr, _RoutedStream):
            sys.stderr = _RoutedStream(sys.stderr)
