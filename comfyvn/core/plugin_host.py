"""The plugin host: loads modder plugins, reloads them transactionally, unloads them cleanly.

A plugin is a module (a ``*.py`` file or package in the plugin folder in dev mode, or an
installed distribution's ``comfyvn.plugins`` entry point) with, all optional:

- module-level ``on_<hook>(payload)`` functions (``async def`` works too);
- ``setup(ctx)`` after import and ``teardown(ctx)`` before unload (see :mod:`.plugin_context`).

Each loaded *version* of a plugin owns the listeners it registered (through ``ctx``, or through
``modder_hooks.register_listener`` while it imported, set up or handled an event) and its
output; unloading a version removes all of them. A reload builds the new version first and
swaps only when its import and ``setup`` succeeded; otherwise the last good version keeps
running and the answer says so (``ok: false``, ``status: "error"``, ``running: "previous"``,
the error with file and line). Plugin code never runs on the bus writer: each version's hooks
run on its own listener thread, so a raising or hanging plugin only affects itself.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .hook_bus import HookBus, ListenerHandle
from .hook_specs import HOOK_SPECS
from .plugin_config import PluginConfig, read_plugin_config
from .plugin_context import PluginContext, PluginLog, plugin_logger
from .plugin_scope import install_output_routing, running_as
from .plugin_sources import (
    PluginSource,
    folder_sources,
    forget_modules,
    installed_sources,
)

__all__ = ["LoadError", "PluginHost", "PluginVersion"]

log = logging.getLogger("comfyvn.plugins")

_HOOK_NAME = re.compile(r"^on_[a-z0-9_]+$")


class PluginLoadFailed(Exception):
    """Import or ``setup`` of a new version failed; carries where."""

    def __init__(self, error: LoadError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class LoadError:
    message: str
    file: str | None = None
    line: int | None = None
    phase: str = "import"  # import | setup

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "file": self.file, "line": self.line, "phase": self.phase}

    @classmethod
    def from_exception(cls, exc: BaseException, source: PluginSource, phase: str) -> LoadError:
        """The message, with the file and line in the plugin where it happened."""
        file: str | None = None
        line: int | None = None
        if isinstance(exc, SyntaxError) and exc.filename:
            file, line = exc.filename, exc.lineno
        else:
            frames = traceback.extract_tb(exc.__traceback__)
            inside = [f for f in frames if _belongs_to(f.filename, source)]
            frame = (inside or frames or [None])[-1]
            if frame is not None:
                file, line = frame.filename, frame.lineno
        if isinstance(exc, SyntaxError):
            text = f"{type(exc).__name__}: {exc.msg}"
        else:
            text = traceback.format_exception_only(type(exc), exc)[-1].strip()
        where = f"{file}:{line}: " if file else ""
        return cls(f"{where}{text}", file, line, phase)


def _belongs_to(filename: str, source: PluginSource) -> bool:
    if source.path is not None:
        return filename.startswith(str(source.path))
    ep = source.entry_point
    return ep is not None and ep.module.split(".", 1)[0] in Path(filename).parts


class PluginVersion:
    """One loaded version of a plugin: module, context, listeners, async loop and output."""

    def __init__(self, host: PluginHost, source: PluginSource, generation: int) -> None:
        self.host = host
        self.source = source
        self.name = source.name
        self.generation = generation
        self.module: ModuleType | None = None
        self.module_name = source.module_name(generation) if source.kind == "folder" else ""
        self.hooks: list[str] = []
        self.problems: list[str] = []
        self.handles: list[ListenerHandle] = []
        self.ctx: PluginContext | None = None
        self.loaded_at = time.time()
        self.last_call_failed = False
        self.logger = plugin_logger(self.name)
        self._partial_line = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- output and listeners, as plugin_scope.PluginOwner ------------------------------------
    def capture(self, text: str) -> None:
        """A ``print()`` from plugin code: one INFO line in the plugin's log per line."""
        with self._lock:
            text = self._partial_line + text
            *lines, self._partial_line = text.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info("%s", line.rstrip())

    def adopt_listener(self, fn: Callable[..., Any], events: Iterable[str] | None) -> Any:
        return self.register(fn, events, label=getattr(fn, "__qualname__", "listener"))

    def register(
        self,
        fn: Callable[..., Any],
        events: Iterable[str] | None,
        *,
        label: str,
        by_hook: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
    ) -> ListenerHandle:
        """A tracked listener whose calls run as this plugin (output, nested registrations)
        and may be coroutines (run on this version's own event loop thread)."""

        def call(event: str, payload: dict[str, Any]) -> None:
            with running_as(self):
                try:
                    result = by_hook[event](payload) if by_hook is not None else fn(event, payload)
                    if inspect.isawaitable(result):
                        self.run_coroutine(result)
                except BaseException as exc:
                    self.last_call_failed = True
                    self.logger.error("%s raised %s: %s", event, type(exc).__name__, exc)
                    raise
                self.last_call_failed = False

        handle = self.host.bus.register_listener(
            call, events, name=f"plugin:{self.name}" + ("" if by_hook else f":{label}")
        )
        handle.source_fn = fn  # unregister_listener(fn) finds it
        with self._lock:
            self.handles.append(handle)
        return handle

    def unregister(self, fn_or_handle: Any, events: Iterable[str] | None = None) -> bool:
        with self._lock:
            mine = [h for h in self.handles if h is fn_or_handle or h.source_fn is fn_or_handle]
        removed = False
        for handle in mine:
            if self.host.bus.narrow_listener(handle, events):
                removed = True
            if handle not in self.host.bus.listeners():
                with self._lock:
                    if handle in self.handles:
                        self.handles.remove(handle)
        return removed

    def run_coroutine(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._event_loop()).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    with running_as(self):
                        loop.call_soon(ready.set)
                        loop.run_forever()

                thread = threading.Thread(target=run, name=f"plugin-loop:{self.name}", daemon=True)
                thread.start()
                ready.wait(5)
                self._loop, self._loop_thread = loop, thread
            return self._loop

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self, *, teardown: bool) -> None:
        if (
            teardown
            and self.module is not None
            and callable(getattr(self.module, "teardown", None))
        ):
            try:
                self.host.run_bounded(self, self._call_teardown, "teardown")
            except PluginLoadFailed as exc:
                self.logger.error("teardown failed: %s", exc.error.message)
        with self._lock:
            handles, self.handles = self.handles, []
        for handle in handles:
            self.host.bus.unregister_listener(handle)
        loop, thread = self._loop, self._loop_thread
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(self.host.call_budget_s)
            if thread is None or not thread.is_alive():
                loop.close()
        if self.module_name:
            forget_modules(self.module_name)

    def _call_teardown(self) -> None:
        result = self.module.teardown(self.ctx)  # type: ignore[union-attr]
        if inspect.isawaitable(result):
            self.run_coroutine(result)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            handles = list(self.handles)
        busy = [time.monotonic() - h.busy_since for h in handles if h.busy_since is not None]
        errors = [h for h in handles if h.last_error]
        return {
            "listeners": len(handles),
            "calls": sum(h.calls for h in handles),
            "errors": sum(h.errors for h in handles),
            "last_error": errors[-1].last_error if errors else None,
            "busy_for_s": round(max(busy), 3) if busy else None,
        }


@dataclass
class PluginEntry:
    """Everything the host knows about one plugin name across its versions."""

    source: PluginSource
    enabled: bool
    log: PluginLog
    running: PluginVersion | None = None
    error: LoadError | None = None  # the last load attempt failed
    generation: int = 0
    problems: list[str] = field(default_factory=list)


class PluginHost:
    def __init__(
        self,
        bus: HookBus,
        *,
        root: Path | None,
        data_dir: Path,
        enabled: Iterable[str] = (),
        call_budget_s: float = 5.0,
        import_budget_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.root = Path(root) if root is not None else None  # None: folder plugins are off
        self.data_dir = Path(data_dir)
        self.enabled = {n.strip() for n in enabled if n.strip()}
        self.call_budget_s = call_budget_s
        self.import_budget_s = import_budget_s
        self._entries: dict[str, PluginEntry] = {}
        self._missing: list[str] = []
        self._config = PluginConfig()
        self._lock = threading.RLock()  # one load/reload/unload at a time (API and watcher)
        self.loaded_at: float | None = None
        self.watching = False

    @property
    def dev_mode(self) -> bool:
        return self.root is not None

    # -- loading -----------------------------------------------------------------------------
    def discover(self) -> list[PluginSource]:
        folder = folder_sources(self.root) if self.root is not None else []
        names = {s.name for s in folder}
        installed = [s for s in installed_sources() if s.name not in names]
        return folder + installed

    def load(self) -> dict[str, Any]:
        install_output_routing()
        if self.root is not None and not self.root.is_dir():
            log.warning("plugin root %s does not exist; no folder plugins loaded", self.root)
        report = self.reload()
        running = sum(e.running is not None for e in self._entries.values())
        log.info("plugin host: %d of %d plugins running", running, len(self._entries))
        return report

    def reload(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Load or reload ``names`` (default: every plugin, finding new and removed ones).

        Per plugin and transactional: a version that fails to import or set up leaves the
        previous one running. Unknown names raise :class:`KeyError`.
        """
        with self._lock:
            self._config = read_plugin_config(self.data_dir)
            if self._config.error:
                log.error("plugin config: %s", self._config.error)
            sources = {s.name: s for s in self.discover()}
            wanted = list(sources) + [n for n in self._entries if n not in sources]
            if names is not None:
                wanted = list(dict.fromkeys(names))
                unknown = [n for n in wanted if n not in sources and n not in self._entries]
                if unknown:
                    raise KeyError(", ".join(unknown))
            results = [self._reload_one(name, sources.get(name)) for name in wanted]
            self._missing = sorted(n for n in self.enabled if n not in sources)
            for name in self._missing:
                log.error(
                    "plugin %r is enabled but no installed distribution declares it in the "
                    "'comfyvn.plugins' entry point group",
                    name,
                )
            self.loaded_at = time.time()
        return {"ok": all(r["ok"] for r in results), "results": results}

    def _reload_one(self, name: str, source: PluginSource | None) -> dict[str, Any]:
        entry = self._entries.get(name)
        if source is None:  # its file is gone: unload it
            if entry is not None:
                self._stop(entry)
                del self._entries[name]
                log.info("plugin %s removed", name)
            return {"name": name, "ok": True, "status": "removed", "running": None, "error": None}
        if entry is None:
            entry = PluginEntry(source, enabled=self._is_enabled(source), log=PluginLog())
            plugin_logger(name).addHandler(entry.log)
            self._entries[name] = entry
        entry.source = source
        entry.enabled = self._is_enabled(source)
        if not entry.enabled:
            return self._result(entry, ok=True)
        entry.generation += 1
        try:
            version = self._build(entry)
        except PluginLoadFailed as exc:
            entry.error = exc.error
            log.error(
                "plugin %s: %s failed, %s: %s",
                name,
                exc.error.phase,
                "the previous version keeps running" if entry.running else "not running",
                exc.error.message,
            )
            plugin_logger(name).error("%s failed: %s", exc.error.phase, exc.error.message)
            return self._result(entry, ok=False)
        previous, entry.running, entry.error = entry.running, version, None
        if previous is not None:
            previous.stop(teardown=True)
        for problem in version.problems:
            log.warning("plugin %s: %s", name, problem)
        return self._result(entry, ok=True)

    def _is_enabled(self, source: PluginSource) -> bool:
        return source.kind == "folder" or source.name in self.enabled

    def _build(self, entry: PluginEntry) -> PluginVersion:
        version = PluginVersion(self, entry.source, entry.generation)
        try:
            version.module = self.run_bounded(version, version_import(version), "import")
            version.ctx = self._context(version)  # teardown(ctx) gets one even without setup
            self._bind_hooks(version)
            if callable(getattr(version.module, "setup", None)):
                self.run_bounded(version, _setup_call(version), "setup")
        except PluginLoadFailed:
            version.stop(teardown=False)
            raise
        return version

    def _context(self, version: PluginVersion) -> PluginContext:
        return PluginContext(
            name=version.name,
            data_dir=self.data_dir,
            config=self._config.for_plugin(version.name),
            log=version.logger,
            _register=lambda fn, events: version.register(
                fn, events, label=getattr(fn, "__qualname__", "listener")
            ),
            _unregister=version.unregister,
        )

    def _bind_hooks(self, version: PluginVersion) -> None:
        functions: dict[str, Callable[[dict[str, Any]], Any]] = {}
        for attr, value in vars(version.module).items():
            if not _HOOK_NAME.match(attr) or not callable(value):
                continue
            if attr in HOOK_SPECS:
                functions[attr] = value
                continue
            close = difflib.get_close_matches(attr, list(HOOK_SPECS), n=1, cutoff=0.6)
            hint = (
                f"; did you mean {close[0]}?"
                if close
                else f"; known hooks: {', '.join(HOOK_SPECS)}"
            )
            version.problems.append(f"{attr}() names an unknown hook{hint}")
        version.hooks = sorted(functions)
        if functions:
            version.register(lambda e, p: None, functions, label="hooks", by_hook=functions)
        elif not callable(getattr(version.module, "setup", None)):
            version.problems.append("defines no hook functions and no setup()")

    def run_bounded(self, version: PluginVersion, fn: Callable[[], Any], phase: str) -> Any:
        """Run plugin code as ``version`` on a helper thread: a body that never returns is an
        error after the budget instead of hanging start-up, a reload or shutdown forever."""
        budget = self.import_budget_s if phase == "import" else self.call_budget_s
        outcome: dict[str, Any] = {}

        def run() -> None:
            with running_as(version):
                try:
                    outcome["value"] = fn()
                except BaseException as exc:  # SyntaxError, SystemExit from a plugin body...
                    outcome["error"] = exc

        worker = threading.Thread(target=run, name=f"plugin-{phase}:{version.name}", daemon=True)
        worker.start()
        worker.join(budget)
        if worker.is_alive():
            raise PluginLoadFailed(
                LoadError(
                    f"{phase} did not finish within {budget:g} s (the plugin is still running "
                    "it); this version is not used",
                    phase=phase,
                )
            )
        if "error" in outcome:
            raise PluginLoadFailed(
                LoadError.from_exception(outcome["error"], version.source, phase)
            )
        return outcome.get("value")

    # -- unloading ---------------------------------------------------------------------------
    def _stop(self, entry: PluginEntry) -> None:
        if entry.running is not None:
            entry.running.stop(teardown=True)
            entry.running = None

    def unload(self) -> None:
        """Shutdown: ``teardown`` each running plugin and remove all its listeners."""
        with self._lock:
            for entry in self._entries.values():
                self._stop(entry)
                plugin_logger(entry.source.name).removeHandler(entry.log)
            self._entries.clear()

    # -- reporting ---------------------------------------------------------------------------
    def _result(self, entry: PluginEntry, *, ok: bool) -> dict[str, Any]:
        view = self._describe_entry(entry)
        return {k: view[k] for k in ("name", "status", "running", "error")} | {"ok": ok}

    def _describe_entry(self, entry: PluginEntry) -> dict[str, Any]:
        source, version = entry.source, entry.running
        stats = version.stats() if version is not None else {}
        busy = stats.get("busy_for_s")
        problems = list(version.problems) if version is not None else []
        if self._config.error:
            problems.append(f"plugins.toml: {self._config.error}")
        if not entry.enabled:
            status = "available"
        elif entry.error is not None:
            status = "error"
        elif version is None:
            status = "unloaded"
        elif busy is not None and busy > self.call_budget_s:
            status = "hung"
        elif version.last_call_failed:
            status = "failing"
        elif problems:
            status = "warning"
        else:
            status = "loaded"
        running = None
        if version is not None:
            running = "previous" if entry.error is not None else "current"
        return {
            "name": source.name,
            "source": source.kind,
            "path": str(source.path) if source.path is not None else None,
            "entry_point": source.entry_point.value if source.entry_point is not None else None,
            "distribution": source.distribution,
            "version": source.version,
            "enabled": entry.enabled,
            "status": status,
            "running": running,
            "module": version.module_name
            or (source.entry_point.module if source.entry_point else "")
            if version is not None
            else None,
            "hooks": version.hooks if version is not None else [],
            "problems": problems,
            "error": entry.error.to_dict() if entry.error is not None else None,
            "loaded_at": version.loaded_at if version is not None else None,
            "listeners": stats.get("listeners", 0),
            "calls": stats.get("calls", 0),
            "errors": stats.get("errors", 0),
            "last_error": stats.get("last_error"),
            "busy_for_s": busy,
            "config_keys": sorted(self._config.for_plugin(source.name)),
            "log": entry.log.recent(),
        }

    def describe(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self._entries.values())
            missing = list(self._missing)
        plugins = [self._describe_entry(e) for e in entries]
        for name in missing:
            plugins.append(
                {
                    "name": name,
                    "source": "installed",
                    "enabled": True,
                    "status": "error",
                    "running": None,
                    "hooks": [],
                    "problems": [],
                    "error": {
                        "message": f"no installed distribution declares a plugin {name!r} in "
                        "the 'comfyvn.plugins' entry point group",
                        "file": None,
                        "line": None,
                        "phase": "import",
                    },
                    "calls": 0,
                    "errors": 0,
                    "log": [],
                }
            )
        return {
            "enabled": True,
            "dev_mode": self.dev_mode,
            "root": str(self.root) if self.root is not None else None,
            "watching": self.watching,
            "loaded_at": self.loaded_at,
            "call_budget_s": self.call_budget_s,
            "enabled_installed": sorted(self.enabled),
            "plugins": plugins,
        }


def _module_of(version: PluginVersion | None) -> str | None:
    if version is None:
        return None
    ep = version.source.entry_point
    return version.module_name or (ep.module if ep is not None else None)


def version_import(version: PluginVersion) -> Callable[[], ModuleType]:
    return lambda: version.source.import_module(version.generation)


def _setup_call(version: PluginVersion) -> Callable[[], None]:
    def call() -> None:
        result = version.module.setup(version.ctx)  # type: ignore[union-attr]
        if inspect.isawaitable(result):
            version.run_coroutine(result)

    return call
