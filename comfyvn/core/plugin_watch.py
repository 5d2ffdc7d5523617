"""Watch mode: in dev mode, a changed plugin file reloads that plugin by itself.

``watchfiles`` (inotify on Linux) reports changes under the plugin root in debounced batches; each
batch reloads the plugins it touched, through the same transactional reload as the API (a broken
save keeps the last good version running and is reported). New files load, deleted ones unload.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchfiles import Change, watch

from .plugin_host import PluginHost
from .plugin_sources import plugin_name_for

__all__ = ["PluginWatcher"]

log = logging.getLogger("comfyvn.plugins")

DEBOUNCE_MS = 300


class PluginWatcher:
    def __init__(self, host: PluginHost, root: Path, *, debounce_ms: int = DEBOUNCE_MS) -> None:
        self.host = host
        self.root = Path(root).resolve()
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.root.is_dir():
            log.warning("plugin root %s does not exist; watch mode is off", self.root)
            return
        self._thread = threading.Thread(target=self._run, name="plugin-watch", daemon=True)
        self._thread.start()
        self.host.watching = True
        log.info("watching %s: changed plugins reload by themselves", self.root)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.host.watching = False

    def _run(self) -> None:
        try:
            for changes in watch(
                self.root,
                stop_event=self._stop,
                debounce=self.debounce_ms,
                step=50,
                rust_timeout=1000,
                yield_on_timeout=False,
                raise_interrupt=False,
            ):
                self._apply(changes)
        except Exception:  # the watcher must never take the server down
            log.exception("plugin watch stopped")
            self.host.watching = False

    def _apply(self, changes: set[tuple[Change, str]]) -> None:
        names: set[str] = set()
        for _change, raw in changes:
            path = Path(raw)
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".swp", ".tmp"):
                continue
            name = plugin_name_for(self.root, path)
            if name is not None:
                names.add(name)
        if not names:
            return
        known = {entry["name"] for entry in self.host.describe()["plugins"]}
        present = {s.name for s in self.host.discover()}
        touched = sorted(n for n in names if n in known or n in present)
        if not touched:
            return
        log.info("plugin files changed: reloading %s", ", ".join(touched))
        try:
            self.host.reload(touched)
        except KeyError:  # appeared and vanished again between the scan and the reload
            self.host.reload()
