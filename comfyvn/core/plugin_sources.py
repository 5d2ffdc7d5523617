"""Where plugins come from: a folder (dev mode) or installed distributions (entry points).

Folder plugins are ``*.py`` files and packages under the plugin root, imported by path under a
private module name. Installed plugins are Python distributions that declare an entry point in
the ``comfyvn.plugins`` group (``name = "package.module"``); they are always listed and loaded
only when enabled by name (``--plugin NAME``, ``COMFYVN_PLUGINS``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginSource",
    "folder_sources",
    "installed_sources",
    "plugin_name_for",
]

ENTRY_POINT_GROUP = "comfyvn.plugins"


@dataclass(frozen=True, slots=True)
class PluginSource:
    name: str
    kind: str  # "folder" | "installed"
    path: Path | None = None  # folder plugins: the file or package folder
    entry_point: EntryPoint | None = None
    distribution: str | None = None
    version: str | None = None

    @property
    def where(self) -> str:
        if self.path is not None:
            return str(self.path)
        assert self.entry_point is not None
        return f"{self.entry_point.value} ({self.distribution or '?'} {self.version or ''})".strip()

    def module_name(self, generation: int) -> str:
        """Folder plugins: a private name per load, so a new version never reuses the old
        module object and a plugin named ``json`` never shadows the real one."""
        digest = hashlib.sha1(str(self.path).encode()).hexdigest()[:8]
        safe = re.sub(r"\W", "_", self.name)
        return f"_comfyvn_plugin_{safe}_{digest}_{generation}"

    def import_module(self, generation: int) -> ModuleType:
        if self.kind == "installed":
            return _import_installed(self)
        return _import_folder(self, self.module_name(generation))


def plugin_name_for(root: Path, changed: Path) -> str | None:
    """The folder plugin a changed path belongs to (its top-level entry under ``root``)."""
    try:
        first = changed.relative_to(root).parts[0]
    except (ValueError, IndexError):
        return None
    if first.startswith(("_", ".")):
        return None
    return first[:-3] if first.endswith(".py") else first


def folder_sources(root: Path) -> list[PluginSource]:
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            found.append(PluginSource(entry.stem, "folder", path=entry))
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.append(PluginSource(entry.name, "folder", path=entry))
    return found


def installed_sources() -> list[PluginSource]:
    found: dict[str, PluginSource] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.setdefault(
            ep.name,
            PluginSource(
                ep.name,
                "installed",
                entry_point=ep,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            ),
        )
    return sorted(found.values(), key=lambda s: s.name)


def _import_folder(source: PluginSource, module_name: str) -> ModuleType:
    path = source.path
    assert path is not None
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # relative imports inside packages need it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        forget_modules(module_name)
        raise
    return module


def _import_installed(source: PluginSource) -> ModuleType:
    """The entry point's module, imported afresh (a reload picks up an upgraded package)."""
    ep = source.entry_point
    assert ep is not None
    top = ep.module.split(".", 1)[0]
    forget_modules(top)
    importlib.invalidate_caches()
    module = importlib.import_module(ep.module)
    if ep.attr:  # "pkg.mod:obj": the plugin is that object's attributes
        target = module
        for part in ep.attr.split("."):
            target = getattr(target, part)
        if isinstance(target, ModuleType):
            return target
        shim = ModuleType(f"{ep.module}:{ep.attr}")
        shim.__dict__.update({k: getattr(target, k) for k in dir(target) if not k.startswith("_")})
        return shim
    return module


def forget_modules(module_name: str) -> None:
    """Drop a module and its submodules from ``sys.modules`` so the next import is fresh."""
    for name in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
        del sys.modules[name]
