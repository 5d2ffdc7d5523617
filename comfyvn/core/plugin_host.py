"""The dev-mode plugin host: modder plugins from a folder, each isolated behind its own listener.

A plugin is a ``*.py`` file or a package under the plugin root with module-level functions named
after hooks (``def on_scene_enter(payload): ...``). Plugins are imported under private module
names (``_comfyvn_plugin_<stem>_<hash>``), so a plugin called ``json.py`` or ``comfyvn.py`` never
shadows the real module. Each plugin is one bus listener with its own thread: a plugin that
raises is counted, one that hangs only stalls itself, and ``emit()`` never waits for either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .hook_bus import HookBus, ListenerHandle
from .hook_specs import HOOK_SPECS

__all__ = ["PluginHost", "PluginRecord"]

log = logging.getLogger("comfyvn.plugins")

_HOOK_NAME = re.compile(r"^on_[a-z0-9_]+$")


@dataclass
class PluginRecord:
    name: str
    path: Path
    module_name: str
    status: str = "pending"  # loaded | error | disabled
    hooks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    handle: ListenerHandle | None = None

    def describe(self, budget_s: float) -> dict[str, Any]:
        handle = self.handle
        busy_for = None
        if handle is not None and handle.busy_since is not None:
            busy_for = round(time.monotonic() - handle.busy_since, 3)
        status = self.status
        if handle is not None and busy_for is not None and busy_for > budget_s:
            status = "hung"
        return {
            "name": self.name,
            "path": str(self.path),
            "module": self.module_name,
            "status": status,
            "hooks": self.hooks,
            "problems": self.problems,
            "error": self.error,
            "calls": handle.calls if handle else 0,
            "errors": handle.errors if handle else 0,
            "last_error": handle.last_error if handle else None,
            "busy_for_s": busy_for,
        }


def _forget_modules(module_name: str) -> None:
    """Drop a plugin's private module and its submodules, so a reload imports fresh code."""
    for name in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
        del sys.modules[name]


class PluginHost:
    def __init__(
        self,
        bus: HookBus,
        root: Path,
        *,
        call_budget_s: float = 5.0,
        import_budget_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.root = Path(root)
        self.call_budget_s = call_budget_s
        self.import_budget_s = import_budget_s
        self._plugins: list[PluginRecord] = []
        # Reentrant: reload holds it across unload + load, so two reloads never interleave
        # (which left the first one's listeners registered: every plugin ran twice).
        self._lock = threading.RLock()
        self.loaded_at: float | None = None

    # -- discovery and loading ---------------------------------------------------------------
    def discover(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            is_module = entry.is_file() and entry.suffix == ".py"
            is_package = entry.is_dir() and (entry / "__init__.py").is_file()
            if is_module or is_package:
                found.append(entry)
        return found

    def load(self) -> list[PluginRecord]:
        with self._lock:
            if not self.root.is_dir():
                log.warning("plugin root %s does not exist; no plugins loaded", self.root)
            records = [self._load_one(path) for path in self.discover()]
            self._plugins = records
            self.loaded_at = time.time()
        loaded = sum(r.status == "loaded" for r in records)
        log.info("plugin host: %d of %d plugins loaded from %s", loaded, len(records), self.root)
        return records

    def reload(self) -> list[PluginRecord]:
        with self._lock:
            self.unload()
            return self.load()

    def unload(self) -> None:
        with self._lock:
            for record in self._plugins:
                if record.handle is not None:
                    self.bus.unregister_listener(record.handle)
                    record.handle = None
                _forget_modules(record.module_name)
            self._plugins = []

    def _load_one(self, path: Path) -> PluginRecord:
        name = path.stem if path.is_file() else path.name
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        safe = re.sub(r"\W", "_", name)
        record = PluginRecord(name=name, path=path, module_name=f"_comfyvn_plugin_{safe}_{digest}")
        try:
            module = self._import_within_budget(record)
        except BaseException as exc:  # SyntaxError, ImportError, SystemExit in module body...
            record.status = "error"
            record.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.error(
                "plugin %s failed to import: %s\n%s",
                name,
                record.error,
                "".join(traceback.format_exception(exc)),
            )
            _forget_modules(record.module_name)
            return record
        functions: dict[str, Callable[[dict[str, Any]], Any]] = {}
        for attr, value in vars(module).items():
            if not _HOOK_NAME.match(attr) or not callable(value):
                continue
            if attr in HOOK_SPECS:
                functions[attr] = value
            else:
                record.problems.append(
                    f"{attr}() names an unknown hook; known hooks: {', '.join(HOOK_SPECS)}"
                )
        for problem in record.problems:
            log.warning("plugin %s: %s", name, problem)
        record.hooks = sorted(functions)
        if not functions:
            record.status = "loaded"
            record.problems.append("defines no hook functions")
            return record

        def dispatch(event: str, payload: dict[str, Any]) -> None:
            functions[event](payload)

        record.handle = self.bus.register_listener(
            dispatch, events=functions, name=f"plugin:{name}"
        )
        record.status = "loaded"
        return record

    def _import_within_budget(self, record: PluginRecord) -> ModuleType:
        """Import on a helper thread: a module body that never returns is reported as an
        error after ``import_budget_s`` instead of hanging start-up or a reload forever."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["module"] = self._import(record)
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, name=f"plugin-import:{record.name}", daemon=True)
        worker.start()
        worker.join(self.import_budget_s)
        if worker.is_alive():
            raise TimeoutError(
                f"import did not finish within {self.import_budget_s:g} s (the module body is "
                "still running); the plugin is not loaded"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["module"]

    def _import(self, record: PluginRecord) -> ModuleType:
        path = record.path
        if path.is_dir():
            spec = importlib.util.spec_from_file_location(
                record.module_name, path / "__init__.py", submodule_search_locations=[str(path)]
            )
        else:
            spec = importlib.util.spec_from_file_location(record.module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[record.module_name] = module  # needed for relative imports inside packages
        spec.loader.exec_module(module)
        return module

    # -- reporting ---------------------------------------------------------------------------
    def plugins(self) -> list[PluginRecord]:
        with self._lock:
            return list(self._plugins)

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "root": str(self.root),
            "loaded_at": self.loaded_at,
            "call_budget_s": self.call_budget_s,
            "plugins": [p.describe(self.call_budget_s) for p in self.plugins()],
        }
