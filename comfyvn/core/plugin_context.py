"""What a plugin's ``setup(ctx)`` and ``teardown(ctx)`` receive, and the plugin's own log.

``ctx.register_listener`` is tracked: the host removes every listener a plugin version
registered when that version unloads (reload, delete, shutdown), so nothing leaks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LOG_LINES", "PluginContext", "PluginLog"]

LOG_LINES = 200  # per plugin, kept for the API and the Studio's Plugins tab


class PluginLog(logging.Handler):
    """The last ``LOG_LINES`` records of one plugin's logger, newest last."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[dict[str, Any]] = deque(maxlen=LOG_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a plugin's log call
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message = f"{message}: {type(exc).__name__}: {exc}"
        self.lines.append(
            {"ts": round(record.created, 3), "level": record.levelname, "message": message}
        )

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.lines)[-limit:]


def plugin_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"comfyvn.plugin.{name}")


@dataclass
class PluginContext:
    """Handed to ``setup(ctx)`` and ``teardown(ctx)``.

    ``log`` is the logger ``comfyvn.plugin.<name>`` (shown per plugin in the API and the
    Studio, and in the server log); ``config`` is the plugin's table in
    ``<data-dir>/plugins.toml``; ``state`` is a dict the plugin may use between setup, its hooks
    and teardown.
    """

    name: str
    data_dir: Path
    config: dict[str, Any]
    log: logging.Logger
    _register: Callable[[Callable[[str, dict[str, Any]], Any], Iterable[str] | None], Any]
    _unregister: Callable[[Any, Iterable[str] | None], bool]
    state: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def register_listener(
        self, fn: Callable[[str, dict[str, Any]], Any], events: Iterable[str] | None = None
    ) -> Any:
        """Call ``fn(event, payload)`` for each committed event (``async def`` works too);
        removed automatically when this plugin version unloads."""
        return self._register(fn, events)

    def unregister_listener(self, fn_or_handle: Any, events: Iterable[str] | None = None) -> bool:
        return self._unregister(fn_or_handle, events)
